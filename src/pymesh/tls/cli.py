"""`pymesh ca init | issue | inspect`: the certificate authority from the command line.

Exit status: 0 on success; 1 on any error (said on stderr, one line each), and for
`inspect`, 1 as well when the certificate is not a valid X509-SVID (its broken rules are
listed on stdout), so `pymesh ca inspect cert.pem && deploy` does what it says.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from pymesh.errors import ConfigError
from pymesh.tls.ca import DEFAULT_SVID_TTL_S, CertificateAuthority
from pymesh.tls.identity import (
    BUNDLE_FILE,
    CERT_FILE,
    KEY_FILE,
    Identity,
    format_time,
    load_certificates,
)
from pymesh.tls.svid import svid_problems

__all__ = ["ca_main", "inspect_certificate"]


def _fail(command: str, message: str) -> int:
    print(f"pymesh ca {command}: {message}", file=sys.stderr)
    return 1


def ca_main(args: argparse.Namespace) -> int:
    """Run `pymesh ca <init|issue|inspect>` with parsed `args`; the exit status."""
    command: str = args.ca_command
    try:
        if command == "init":
            return _init(args)
        if command == "issue":
            return _issue(args)
        if command == "inspect":
            return _inspect(args)
    except (ValueError, OSError) as exc:
        return _fail(command, str(exc))
    raise AssertionError(command)  # argparse only accepts the commands above


def _init(args: argparse.Namespace) -> int:
    byo = (args.intermediate_cert, args.intermediate_key, args.root_cert)
    if any(byo) and not all(byo):
        return _fail(
            "init",
            "--intermediate-cert, --intermediate-key and --root-cert go together "
            "(bring your own intermediate)",
        )
    ca = CertificateAuthority.init_dir(
        args.dir,
        args.trust_domain,
        intermediate_cert=args.intermediate_cert,
        intermediate_key=args.intermediate_key,
        root_cert=args.root_cert,
    )
    issuing = ca.chain[0]
    roots = len(ca.roots)
    print(f"created a CA for trust domain {ca.trust_domain} in {args.dir}")
    print(
        f"  issuer:  {issuing.subject.rfc4514_string()} "
        f"(until {format_time(issuing.not_valid_after_utc)})"
    )
    print(f"  bundle:  {Path(args.dir) / BUNDLE_FILE} ({roots} root{'s' if roots != 1 else ''})")
    return 0


def _ttl(args: argparse.Namespace) -> float:
    if args.ttl is not None:
        from pymesh.policy import parse_duration

        ttl = parse_duration(args.ttl)
        if ttl is None or ttl <= 0:
            raise ValueError(
                f"--ttl {args.ttl!r}: not a positive duration (expected e.g. 90m, 24h, 1h30m)"
            )
        return ttl
    if args.config is not None:
        from pymesh.policy import Mesh

        return Mesh.load(args.config).spec.certificate_ttl_s
    return DEFAULT_SVID_TTL_S


def _issue(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _fail("issue", f"{out}: not a new or empty directory (refusing to overwrite)")
    try:
        ttl = _ttl(args)
    except ConfigError as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return 1
    ca = CertificateAuthority.load(args.dir)
    chain, key = ca.issue(args.spiffe_id, ttl)
    identity = Identity.from_pem(chain, key, ca.bundle_pem())
    identity.write_dir(out, require_empty=True)
    print(
        f"issued {identity.spiffe_id} (serial {identity.serial:x}, "
        f"valid until {format_time(identity.not_after)})"
    )
    print(f"  {out / CERT_FILE}  {out / KEY_FILE} (mode 0600)  {out / BUNDLE_FILE}")
    return 0


def inspect_certificate(pem: bytes, name: str = "certificate") -> dict[str, Any]:
    """What `pymesh ca inspect --json` prints for a PEM file (first certificate = leaf)."""
    chain = load_certificates(pem, name)
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        uris = []
    problems = svid_problems(leaf)
    return {
        "file": name,
        "identity": uris[0] if len(uris) == 1 else None,
        "uris": uris,
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "serial": f"{leaf.serial_number:x}",
        "not_before": format_time(leaf.not_valid_before_utc),
        "not_after": format_time(leaf.not_valid_after_utc),
        "chain_length": len(chain),
        "valid_svid": not problems,
        "problems": [{"reason": reason, "message": message} for reason, message in problems],
    }


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return _fail("inspect", f"{path}: no such file")
    info = inspect_certificate(pem, str(path))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        identity = info["identity"] or (", ".join(info["uris"]) if info["uris"] else "(none)")
        rows = [
            ("identity", identity),
            ("subject", info["subject"] or "(empty)"),
            ("issuer", info["issuer"]),
            ("serial", info["serial"]),
            ("not before", info["not_before"]),
            ("not after", info["not_after"]),
            ("chain", f"{info['chain_length']} certificate(s)"),
            ("X509-SVID", "valid" if info["valid_svid"] else "NOT valid"),
        ]
        for label, value in rows:
            print(f"{label + ':':<12} {value}")
        for problem in info["problems"]:
            print(f"  - {problem['reason']}: {problem['message']}")
    return 0 if info["valid_svid"] else 1
