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
        required=True,
        help="mesh config (repeatable)",
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
    raise AssertionError(command)  # argparse only accepts the commands above


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
