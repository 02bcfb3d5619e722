"""The control plane's state directory: its CA and its token-signing key.

`pymesh control-plane init --state-dir DIR --trust-domain TD` creates it once; every
control-plane replica then runs with a copy of it, so any replica signs certificates with
the same CA and accepts the same bootstrap tokens. Layout (directory mode 0700, keys 0600):

| path | content |
|---|---|
| `state.json` | `{"format": 1, "trust_domain": ..., "created_at": ...}` (written last) |
| `token-key.pem` | the Ed25519 key that signs bootstrap tokens (PKCS#8, unencrypted) |
| `ca/` | the CA, as `pymesh.tls.CertificateAuthority.init_dir` writes it |

`pymesh control-plane token --state-dir DIR --service NAME` prints a token offline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Container
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pymesh.control.tokens import (
    MAX_TTL_S,
    BootstrapToken,
    fingerprint,
    issue_token,
    normalize_service,
    read_token,
    verify_token,
)
from pymesh.tls.ca import (
    BUNDLE_FILE,
    INTERMEDIATE_KEY_FILE,
    ROOT_KEY_FILE,
    CertificateAuthority,
)
from pymesh.tls.identity import (
    Identity,
    format_time,
    key_pem,
    require_empty_dir,
    write_file_atomic,
)
from pymesh.tls.spiffe import SpiffeId, check_trust_domain

__all__ = [
    "CA_DIR",
    "CONTROL_PLANE_NS",
    "CONTROL_PLANE_SA",
    "STATE_FILE",
    "STATE_FORMAT",
    "TOKEN_KEY_FILE",
    "StateDir",
    "init_main",
    "token_main",
]

CONTROL_PLANE_SA: Final = "control-plane"
CONTROL_PLANE_NS: Final = "pymesh-system"
STATE_FILE: Final = "state.json"
STATE_FORMAT: Final = 1
TOKEN_KEY_FILE: Final = "token-key.pem"
CA_DIR: Final = "ca"

_log = structlog.get_logger("pymesh.control")

Warn = Callable[[str], None]


def _log_warning(message: str) -> None:
    _log.warning("state_key_readable", message=message)


def _issuing_root(ca: CertificateAuthority) -> x509.Certificate:
    """The root of `ca`'s bundle that its intermediate chain ends in."""
    for root in ca.roots:
        for cert in ca.chain:
            if cert.issuer != root.subject:
                continue
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return root
    # CertificateAuthority checks on construction that the chain leads to a root.
    raise ValueError("the CA's intermediate does not chain to a root of its bundle")


def _not_state_dir(d: Path) -> str:
    return f"(is {d} a state directory made by `pymesh control-plane init`?)"


class StateDir:
    """A loaded state directory: trust domain, CA and token key. Immutable; thread-safe.

    Build with `init` (new) or `load` (existing).
    """

    __slots__ = (
        "_ca_fingerprint",
        "_control_plane_id",
        "_public_key",
        "ca",
        "path",
        "token_key",
        "trust_domain",
    )

    path: Path
    trust_domain: str
    ca: CertificateAuthority
    token_key: Ed25519PrivateKey

    def __init__(
        self,
        *,
        path: Path,
        trust_domain: str,
        ca: CertificateAuthority,
        token_key: Ed25519PrivateKey,
    ) -> None:
        if ca.trust_domain != trust_domain:
            raise ValueError(
                f"the CA is for trust domain {ca.trust_domain}, the state for {trust_domain}"
            )
        self.path = path
        self.trust_domain = trust_domain
        self.ca = ca
        self.token_key = token_key
        self._public_key = token_key.public_key()
        self._ca_fingerprint = fingerprint(_issuing_root(ca))
        self._control_plane_id = str(
            SpiffeId.for_service(trust_domain, CONTROL_PLANE_NS, CONTROL_PLANE_SA)
        )

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str], trust_domain: str) -> StateDir:
        """Create the state directory `path` (new or empty; mode 0700): CA, token key, state.

        Raises:
            ValueError: bad trust domain.
            FileExistsError: `path` exists and is not an empty directory.
        """
        check_trust_domain(trust_domain)
        d = Path(path)
        existed = d.exists()
        require_empty_dir(d, mode=0o700)
        try:
            os.chmod(d, 0o700)
            ca = CertificateAuthority.init_dir(d / CA_DIR, trust_domain)
            key = Ed25519PrivateKey.generate()
            write_file_atomic(d / TOKEN_KEY_FILE, key_pem(key), 0o600)
            meta = {
                "format": STATE_FORMAT,
                "trust_domain": trust_domain,
                "created_at": format_time(datetime.now(UTC)),
            }
            # Last: a directory without state.json is not (yet) a state directory.
            write_file_atomic(d / STATE_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        except BaseException:
            # Leave the directory as it was (absent or empty), so a retry can succeed.
            if existed:
                for child in d.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            else:
                shutil.rmtree(d, ignore_errors=True)
            raise
        return cls(path=d, trust_domain=trust_domain, ca=ca, token_key=key)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, warn: Warn | None = None) -> StateDir:
        """Read a state directory made by `init` (or a copy of one).

        A private key readable by group or others is reported through `warn` (default: a
        structlog warning `state_key_readable`), not refused.

        Raises:
            ValueError: naming the missing or bad file and what is wrong with it.
        """
        d = Path(path)
        if not d.is_dir():
            raise ValueError(f"{d}: no such directory {_not_state_dir(d)}")
        meta_path = d / STATE_FILE
        try:
            meta = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            raise ValueError(f"{meta_path}: no such file {_not_state_dir(d)}") from None
        except OSError as exc:
            raise ValueError(f"{meta_path}: cannot read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise ValueError(f"{meta_path}: not JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: not a JSON object")
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{meta_path}: unsupported format {meta.get('format')!r} (expected "
                f"{STATE_FORMAT}; written by another pymesh version?)"
            )
        trust_domain = meta.get("trust_domain")
        if not isinstance(trust_domain, str):
            raise ValueError(f"{meta_path}: trust_domain is missing or not a string")
        try:
            check_trust_domain(trust_domain)
        except ValueError as exc:
            raise ValueError(f"{meta_path}: {exc}") from None

        warn = _log_warning if warn is None else warn
        key_path = d / TOKEN_KEY_FILE
        for key_file in (key_path, d / CA_DIR / INTERMEDIATE_KEY_FILE, d / CA_DIR / ROOT_KEY_FILE):
            _check_mode(key_file, warn)
        ca = CertificateAuthority.load(d / CA_DIR)  # ValueError names the CA file
        if ca.trust_domain != trust_domain:
            raise ValueError(
                f"{d / CA_DIR}: the CA is for trust domain {ca.trust_domain}, but {meta_path} "
                f"says {trust_domain}"
            )
        key = _load_token_key(key_path)
        return cls(path=d, trust_domain=trust_domain, ca=ca, token_key=key)

    # -- derived ------------------------------------------------------------------------------
    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this directory's bootstrap tokens."""
        return self._public_key

    @property
    def ca_fingerprint(self) -> str:
        """`sha256:<hex>` of the root the CA's intermediate chains to (what tokens pin)."""
        return self._ca_fingerprint

    @property
    def control_plane_id(self) -> str:
        """`spiffe://<td>/ns/pymesh-system/sa/control-plane`: what the control plane presents."""
        return self._control_plane_id

    # -- tokens and identity -------------------------------------------------------------------
    def issue_token(self, service: str, ttl_s: float, *, now: float | None = None) -> str:
        """A bootstrap token for `service` (`NAME` or `NAMESPACE/NAME`), valid `ttl_s` s.

        `now` (unix seconds, default the current time) is the issue time; tests pass a past
        one to make an expired token.

        Raises:
            ValueError: a bad service, or `ttl_s` not in (0, one year].
        """
        return issue_token(
            self.token_key,
            service=service,
            trust_domain=self.trust_domain,
            ca_fingerprint=self._ca_fingerprint,
            control_plane_id=self._control_plane_id,
            ttl_s=ttl_s,
            now=now,
        )

    def verify_token(
        self,
        token: str,
        *,
        revoked: Container[str] = frozenset(),
        service: str | None = None,
        now: float | None = None,
    ) -> BootstrapToken:
        """`pymesh.control.tokens.verify_token` with this directory's key and trust domain.

        Raises:
            TokenError: why the token is refused.
        """
        return verify_token(
            token,
            self._public_key,
            now=now,
            revoked=revoked,
            service=service,
            trust_domain=self.trust_domain,
        )

    def control_plane_identity(self, ttl_s: float = 24 * 3600) -> Identity:
        """A fresh serving certificate for the control plane (`control_plane_id`)."""
        return self.ca.issue_identity(self._control_plane_id, ttl_s)

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r}, trust_domain={self.trust_domain!r})"


def _check_mode(path: Path, warn: Warn) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # missing files are reported by whoever reads them (root-key.pem is optional)
    if mode & 0o077:
        warn(
            f"{path} is readable by group or others (mode {mode:04o}) but holds a private "
            f"key: chmod 600 {path}"
        )


def _load_token_key(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file {_not_state_dir(path.parent)}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ValueError(f"{path}: the private key is encrypted (expected unencrypted)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(
            f"{path}: a {type(key).__name__.removeprefix('_')} key, not Ed25519 (the token "
            "key must be Ed25519)"
        )
    return key


# -- CLI ------------------------------------------------------------------------------------------
def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"pymesh control-plane {command}: {message}", file=sys.stderr)
    return status


def init_main(args: argparse.Namespace) -> int:
    """`pymesh control-plane init --state-dir DIR --trust-domain TD`; the exit status."""
    try:
        state = StateDir.init(args.init_state_dir, args.trust_domain)
    except (ValueError, OSError) as exc:
        return _fail("init", str(exc))
    d = state.path
    roots = len(state.ca.roots)
    print(f"created control-plane state for trust domain {state.trust_domain} in {d}")
    plural = "" if roots == 1 else "s"
    bundle = d / CA_DIR / BUNDLE_FILE
    print(f"  CA:               {d / CA_DIR} (bundle {bundle}, {roots} root{plural})")
    print(f"  CA fingerprint:   {state.ca_fingerprint}")
    print(f"  token key:        {d / TOKEN_KEY_FILE} (mode 0600)")
    print(f"  control plane ID: {state.control_plane_id}")
    print(
        "copy this directory to every control-plane replica and keep it secret: it holds the "
        "CA's and the token key's private keys"
    )
    return 0


def token_main(args: argparse.Namespace) -> int:
    """`pymesh control-plane token --state-dir DIR --service NAME [--ttl 24h]`.

    Prints only the token on stdout (so `> file` works); a note naming the service, token ID
    and expiry goes to stderr. Exit 2 for a bad --ttl or --service, 1 for a bad state dir.
    """
    from pymesh.policy import parse_duration

    ttl = parse_duration(args.ttl)
    if ttl is None or not 0 < ttl <= MAX_TTL_S:
        return _fail(
            "token",
            f"--ttl {args.ttl!r}: not a positive duration of at most a year (expected e.g. "
            "90m, 24h, 1h30m)",
            2,
        )
    try:
        service = normalize_service(args.service)
    except ValueError as exc:
        return _fail("token", f"--service: {exc}", 2)

    def warn(message: str) -> None:
        print(f"pymesh control-plane token: warning: {message}", file=sys.stderr)

    try:
        state = StateDir.load(args.token_state_dir, warn=warn)
        token = state.issue_token(service, ttl)
    except ValueError as exc:
        return _fail("token", str(exc))
    info = read_token(token)
    until = format_time(datetime.fromtimestamp(info.expires_at, UTC))
    print(token)
    print(
        f"pymesh control-plane token: token {info.token_id} for {info.service} in "
        f"{info.trust_domain}, valid until {until}",
        file=sys.stderr,
    )
    return 0
