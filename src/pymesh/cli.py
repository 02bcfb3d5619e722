"""The `pymesh` command (argparse). Parsing only: each command's work lives in its package.

Commands and flags are contracts (DESIGN.md §3): add, never rename.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pymesh._version import __version__

__all__ = ["build_parser", "main"]

_EPILOG_VALIDATE = """examples:
  pymesh validate examples/shop/mesh.yaml
  pymesh validate mesh/            # every *.yaml in the directory
"""

_EPILOG_PROXY = """examples:
  # sidecar for 'orders' from a local config; the app listens on 127.0.0.1:9001
  pymesh proxy --config mesh.yaml --service orders --app 127.0.0.1:9001
  # explicit listeners
  pymesh proxy --config mesh.yaml --service web --inbound 127.0.0.1:16006 \\
      --outbound 127.0.0.1:16001 --admin 127.0.0.1:16000 --app 127.0.0.1:8000
  # then, from the app:  http_proxy=http://127.0.0.1:15001 curl http://orders/api
"""

_EPILOG_UP = """examples:
  pymesh up examples/shop/mesh.yaml          # prints one line per service, then 'ready'
  pymesh up examples/shop/mesh.yaml --json
"""

_EPILOG_DEMO = """examples:
  pymesh demo                   # the bundled shop mesh, 20 s of traffic and a live table
  pymesh demo --duration 5
"""


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="validate mesh config files or directories",
        description="Load and validate config; print 'ok: N resources' or every error "
        "(FILE:LINE: KIND/NAMESPACE/NAME: spec.field: problem) and exit 1.",
        epilog=_EPILOG_VALIDATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")


def _add_proxy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="run a sidecar proxy for one service",
        description="Run a sidecar: inbound listener in front of the app, outbound listener "
        "for the app's calls (http_proxy, Host routing, CONNECT), admin endpoint.",
        epilog=_EPILOG_PROXY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="FILE_OR_DIR",
        action="append",
        help="mesh config (repeatable); or use --control-plane",
    )
    p.add_argument(
        "--control-plane",
        metavar="URL",
        action="append",
        default=[],
        help="https://HOST:PORT of a control plane (repeatable: replicas); needs --token-file",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="bootstrap token from 'pymesh control-plane token' (with --control-plane)",
    )
    p.add_argument(
        "--service",
        required=True,
        metavar="NAME",
        help="the service this sidecar serves: NAME or NAMESPACE/NAME",
    )
    p.add_argument(
        "--inbound",
        default="127.0.0.1:15006",
        metavar="HOST:PORT",
        help="inbound listener (default %(default)s)",
    )
    p.add_argument(
        "--outbound",
        default="127.0.0.1:15001",
        metavar="HOST:PORT",
        help="outbound listener (default %(default)s)",
    )
    p.add_argument(
        "--admin",
        default="127.0.0.1:15000",
        metavar="HOST:PORT",
        help="admin endpoint (default %(default)s)",
    )
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="[SERVICEPORT=]HOST:PORT",
        help="the local application; SERVICEPORT=HOST:PORT per port (repeatable)",
    )
    p.add_argument(
        "--identity-dir",
        metavar="DIR",
        help="cert.pem, key.pem, bundle.pem for mTLS (standalone mode)",
    )
    p.add_argument(
        "--http1-codec",
        choices=("httptools", "h11"),
        default="httptools",
        help="HTTP/1.1 codec (default %(default)s; h11 is pure Python)",
    )
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may finish (default %(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--no-access-log", action="store_true", help="disable the access log")


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run a whole mesh on this machine (a sidecar process per service)",
        description="Start each Service's sidecar as its own process (and its command, with "
        "PORT and http_proxy/HTTP_PROXY set), print one line per service, then 'ready'. "
        "Stops everything on SIGINT/SIGTERM.",
        epilog=_EPILOG_UP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="FILE_OR_DIR")
    p.add_argument("--json", action="store_true", help="print the service lines as JSON")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--http1-codec", choices=("httptools", "h11"), default="httptools")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the bundled example mesh with traffic and a live table",
        description="pymesh up on a bundled mesh of three services calling each other through "
        "their sidecars, a client generating traffic, and a live table of requests, errors and "
        "p50/p99 per service read from the sidecars' /metrics.",
        epilog=_EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long to run (default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=50.0,
        metavar="RPS",
        help="client requests per second (default %(default)s)",
    )
    p.add_argument(
        "--config", metavar="FILE_OR_DIR", help="another mesh to demo instead of the bundled one"
    )


_EPILOG_CA = """examples:
  pymesh ca init --dir ca/ --trust-domain shop.local
  pymesh ca issue --dir ca/ --spiffe-id spiffe://shop.local/ns/default/sa/orders --out orders/
  pymesh ca issue --dir ca/ --spiffe-id spiffe://shop.local/ns/default/sa/curl --out curl/ --ttl 1h
  pymesh ca inspect orders/cert.pem
"""

_EPILOG_EXPLAIN = """examples:
  pymesh explain --config mesh.yaml --from web --to api GET /api/orders
  pymesh explain --config mesh.yaml --from prometheus --to api \\
      --header accept=text/plain GET /metrics
  pymesh explain --config mesh.yaml --from web --to db --port 5432      # a TCP connection
"""


_EPILOG_CP = """examples:
  pymesh control-plane init --state-dir /var/lib/pymesh --trust-domain shop.local
  pymesh control-plane token --state-dir /var/lib/pymesh --service orders --ttl 1h > orders.token
  pymesh control-plane --config mesh/ --listen 0.0.0.0:15010 --state-dir /var/lib/pymesh
  pymesh control-plane --config mesh/ --listen 0.0.0.0:15010 --state-dir /var/lib/pymesh \\
      --store etcd://10.0.0.5:2379
  # then, on each host:
  pymesh proxy --control-plane https://cp:15010 --service orders --token-file orders.token
"""


def _add_control_plane(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "control-plane",
        help="serve config and certificates to sidecars (init, token, or run)",
        description="Run a control plane: watch the config, validate every change, stream each "
        "sidecar its view over HTTP/2 + TLS, sign workload CSRs. 'init' creates the state "
        "directory (CA, token-signing key); 'token' prints a sidecar's bootstrap token.",
        epilog=_EPILOG_CP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE_OR_DIR", action="append", help="mesh config")
    p.add_argument(
        "--listen",
        default="0.0.0.0:15010",
        metavar="HOST:PORT",
        help="where sidecars connect (default %(default)s)",
    )
    p.add_argument("--state-dir", metavar="DIR", help="from 'pymesh control-plane init'")
    p.add_argument(
        "--store",
        default="memory://",
        metavar="URL",
        help="memory:// (default) or etcd://HOST:PORT (several replicas, one mesh)",
    )
    p.add_argument(
        "--admin",
        default="127.0.0.1:15011",
        metavar="HOST:PORT",
        help="admin endpoint: /ready /metrics /config_dump (default %(default)s)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a sidecar's endpoint outlives its last heartbeat (default %(default)s)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the config files are checked for changes (default %(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    cp = p.add_subparsers(dest="cp_command", metavar="SUBCOMMAND")
    init = cp.add_parser(
        "init",
        help="create the state directory: CA and token-signing key (mode 0600)",
        epilog=_EPILOG_CP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--state-dir", required=True, metavar="DIR", dest="init_state_dir")
    init.add_argument("--trust-domain", required=True, metavar="TD")
    token = cp.add_parser(
        "token",
        help="print a bootstrap token for one service (offline)",
        epilog=_EPILOG_CP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("--state-dir", required=True, metavar="DIR", dest="token_state_dir")
    token.add_argument("--service", required=True, metavar="NAME", help="NAME or NAMESPACE/NAME")
    token.add_argument(
        "--ttl", default="24h", metavar="DURATION", help="validity (default %(default)s)"
    )


def _add_ca(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ca",
        help="the mesh certificate authority: init, issue, inspect",
        description="Create a CA (root + intermediate, ECDSA P-256), issue SPIFFE X.509-SVIDs, "
        "and inspect certificates.",
        epilog=_EPILOG_CA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca = p.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)
    init = ca.add_parser(
        "init",
        help="create a CA directory (root and intermediate issuer)",
        description="Create DIR with a self-signed root and an intermediate issuer (keys mode "
        "0600). With --intermediate-cert/--intermediate-key/--root-cert, adopt an intermediate "
        "signed by your organisation's root instead of creating a root.",
        epilog=_EPILOG_CA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--dir", required=True, metavar="DIR", help="new or empty directory")
    init.add_argument("--trust-domain", required=True, metavar="TD", help="e.g. shop.local")
    init.add_argument("--intermediate-cert", metavar="PEM", help="bring-your-own intermediate")
    init.add_argument("--intermediate-key", metavar="PEM", help="its private key")
    init.add_argument("--root-cert", metavar="PEM", help="the root(s) that signed it")
    issue = ca.add_parser(
        "issue",
        help="issue an X.509-SVID (writes cert.pem, key.pem, bundle.pem)",
        description="Issue a SPIFFE X.509-SVID for ID into OUT (new or empty): cert.pem (leaf "
        "and chain), key.pem (mode 0600), bundle.pem (trust bundle).",
        epilog=_EPILOG_CA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument("--dir", required=True, metavar="CADIR", help="a directory from ca init")
    issue.add_argument("--spiffe-id", required=True, metavar="ID")
    issue.add_argument("--out", required=True, metavar="DIR")
    issue.add_argument(
        "--ttl", metavar="DURATION", help="lifetime, e.g. 24h, 90m (default: the Mesh's, 24h)"
    )
    issue.add_argument(
        "--config", metavar="FILE_OR_DIR", help="take the default TTL from this mesh's Mesh"
    )
    inspect = ca.add_parser(
        "inspect",
        help="show a certificate's identity, issuer, validity and SVID verdict",
        epilog=_EPILOG_CA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("file", metavar="FILE", help="PEM certificate (first one is the leaf)")
    inspect.add_argument("--json", action="store_true", help="print JSON")


def _add_explain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="would the mesh allow this call? (ALLOW/DENY and the rule that decided)",
        description="Evaluate the authorization policy (SMI TrafficTarget) for one request or "
        "TCP connection. Prints ALLOW or DENY first, then the TrafficTarget and route match "
        "that decided it (or what is missing). Exits 0 either way; 1 on a config error, 2 on a "
        "bad argument (unknown service, bad --header, a PATH without a METHOD).",
        epilog=_EPILOG_EXPLAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", action="append", required=True, metavar="FILE_OR_DIR")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help="a Service (NAME or NS/NAME), a SPIFFE ID, or - for an unauthenticated client",
    )
    p.add_argument("--to", dest="destination", required=True, metavar="SERVICE")
    p.add_argument(
        "--port",
        type=int,
        help="destination service port (default: the Service's port for the protocol)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request header (repeatable)",
    )
    p.add_argument("method", nargs="?", metavar="METHOD", help="omit for a TCP connection")
    p.add_argument("path", nargs="?", metavar="PATH")


def build_parser() -> argparse.ArgumentParser:
    """The full `pymesh` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pymesh",
        description="pymesh: a service mesh in Python (sidecar proxy, mTLS, SMI policy).",
        epilog="Run 'pymesh COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"pymesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_validate(sub)
    _add_proxy(sub)
    _add_up(sub)
    _add_demo(sub)
    _add_control_plane(sub)
    _add_ca(sub)
    _add_explain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pymesh` console script and `python -m pymesh`."""
    args = build_parser().parse_args(argv)
    command: str = args.command
    if command == "validate":
        from pymesh.policy.loader import validate_main

        return validate_main(args.paths)
    if command == "proxy":
        from pymesh.proxy.sidecar import proxy_main

        return proxy_main(args)
    if command == "up":
        from pymesh.control.up import up_main

        return up_main(args)
    if command == "demo":
        from pymesh.control.demo import demo_main

        return demo_main(args)
    if command == "control-plane":
        from pymesh.control.main import control_plane_main

        return control_plane_main(args)
    if command == "ca":
        from pymesh.tls.cli import ca_main

        return ca_main(args)
    if command == "explain":
        from pymesh.policy.authz import explain_main

        return explain_main(args)
    raise AssertionError(command)  # argparse only accepts the commands above


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
