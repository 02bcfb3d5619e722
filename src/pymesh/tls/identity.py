"""A workload's identity: its X509-SVID chain, private key and trust bundle.

The sidecar makes its own key (`new_key`) and asks for a certificate with a CSR
(`make_csr`); the private key never leaves the process that made it. The signed chain, the
key and the bundle become an immutable `Identity`, checked on construction (the key matches
the leaf, the leaf is a valid X509-SVID, the chain leads to a root in the bundle).

On disk an identity is a directory of three PEM files, as `pymesh ca issue` writes them and
`pymesh proxy --identity-dir` reads them:

- `cert.pem`: the leaf, then the intermediates (the chain the workload presents);
- `key.pem`: the private key, PKCS#8, unencrypted, mode 0600;
- `bundle.pem`: the trust bundle, one or more root certificates (several during a root
  rotation).

Files are replaced atomically (a temporary file in the same directory, then `rename`), so a
reloading sidecar never reads half a file. During a rewrite the files change one at a time
(`bundle.pem`, then `key.pem`, then `cert.pem`); a reader that finds a key that does not
match the certificate gets a `ValueError` and should retry shortly.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from pymesh.tls.spiffe import SpiffeId
from pymesh.tls.svid import svid_problems

__all__ = [
    "BUNDLE_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "Identity",
    "chain_problem",
    "format_time",
    "key_pem",
    "load_certificates",
    "make_csr",
    "new_key",
    "require_empty_dir",
    "signing_hash",
    "write_file_atomic",
]

CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
BUNDLE_FILE: Final = "bundle.pem"


# -- keys and CSRs ------------------------------------------------------------------------------
def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key (the mesh's key type: fastest handshakes)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKeyTypes) -> bytes:
    """`key` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_key_to_pem = key_pem  # `Identity.from_pem` has a parameter that shadows the name


def signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    """The hash to sign with: SHA-256, or None for Ed25519/Ed448 (which hash internally)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def make_csr(key: CertificateIssuerPrivateKeyTypes, spiffe_id: str | SpiffeId) -> bytes:
    """A PEM certificate signing request for `spiffe_id` (as its one URI SAN), signed by `key`.

    The CA decides the certificate's names itself; the SAN here documents what is asked for.
    """
    sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))]),
            critical=True,
        )
        .sign(key, signing_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- PEM and chain helpers ----------------------------------------------------------------------
def load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in `pem` (at least one); ValueError naming `what` otherwise."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{what}: no valid PEM certificate ({exc})") from exc


def _load_key(pem: bytes, what: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:  # encrypted, or a password where none is needed
        raise ValueError(f"{what}: the private key is encrypted (expected unencrypted)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{what}: not a PEM private key ({exc})") from exc


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def chain_problem(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> str | None:
    """Why `chain` (first = leaf or issuing cert) does not lead to one of `roots`, or None.

    Checks names and signatures only (not validity windows or extensions; OpenSSL does that
    at handshake time). Certificates after the first may come in any order.
    """
    current = chain[0]
    rest = list(chain[1:])
    for _ in range(len(chain) + 1):
        for root in roots:
            if root.subject == current.issuer and _signed_by(current, root):
                return None
        nxt = next(
            (c for c in rest if c.subject == current.issuer and _signed_by(current, c)), None
        )
        if nxt is None:
            return (
                f"{_describe(current)} was issued by {current.issuer.rfc4514_string()!r}, "
                "which signed neither a certificate in the chain nor a root in the bundle"
            )
        rest.remove(nxt)
        current = nxt
    return "the chain loops"  # pragma: no cover - each step consumes one certificate


def format_time(when: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, to the second: `2026-01-27T10:00:00Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- files --------------------------------------------------------------------------------------
def require_empty_dir(path: str | os.PathLike[str], *, mode: int = 0o755) -> Path:
    """Create `path` (and parents) or check it is an empty directory; return it.

    Raises:
        FileExistsError: it exists and is not empty (or is not a directory).
    """
    d = Path(path)
    if d.exists():
        if not d.is_dir():
            raise FileExistsError(f"{d}: exists and is not a directory")
        if any(d.iterdir()):
            raise FileExistsError(
                f"{d}: directory is not empty (expected a new or empty directory)"
            )
    else:
        d.mkdir(parents=True, mode=mode)
    return d


def write_file_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically (temp file in the same dir, fsync, rename).

    The temporary file is created with mode 0600 and only then given `mode`, so a key is
    never readable by others, even briefly.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- Identity -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Identity:
    """A workload's SVID, key and trust bundle, validated; immutable and loop-agnostic.

    Built by `from_pem`/`from_dir` (never with invalid material). `serial`, `not_before`,
    `not_after` and `issuer` describe the leaf. Feed it to `pymesh.tls.server_context` and
    `client_context`.
    """

    spiffe_id: SpiffeId
    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    serial: int
    not_before: datetime
    not_after: datetime
    issuer: str

    @classmethod
    def from_pem(
        cls,
        chain_pem: bytes,
        key_pem: bytes,
        bundle_pem: bytes,
        *,
        now: datetime | None = None,
        names: tuple[str, str, str] = ("certificate chain", "private key", "trust bundle"),
    ) -> Identity:
        """Check and wrap PEM material.

        Checks: the key matches the leaf (the first certificate of `chain_pem`), the leaf is
        a valid X509-SVID at `now` (default: now), and the chain leads to a root of
        `bundle_pem` (one or more certificates). `names` label the three inputs in errors.

        Raises:
            ValueError: naming the input and what is wrong with it.
        """
        chain_name, key_name, bundle_name = names
        chain = load_certificates(chain_pem, chain_name)
        key = _load_key(key_pem, key_name)
        roots = load_certificates(bundle_pem, bundle_name)
        leaf = chain[0]
        if _spki(key.public_key()) != _spki(leaf.public_key()):
            raise ValueError(
                f"{key_name} does not match the certificate in {chain_name} "
                "(the key belongs to a different certificate)"
            )
        problems = svid_problems(leaf, now=now)
        if problems:
            listed = "; ".join(f"{reason}: {message}" for reason, message in problems)
            raise ValueError(f"{chain_name}: the leaf is not a valid X509-SVID ({listed})")
        broken = chain_problem(chain, roots)
        if broken is not None:
            raise ValueError(f"{chain_name} does not lead to a root in {bundle_name}: {broken}")
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uri = san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]
        return cls(
            spiffe_id=SpiffeId.parse(uri),
            chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            key_pem=_key_to_pem(key),
            bundle_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issuer=leaf.issuer.rfc4514_string(),
        )

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], *, now: datetime | None = None) -> Identity:
        """Load `cert.pem`, `key.pem` and `bundle.pem` from `path`; errors name the file."""
        d = Path(path)
        files = (d / CERT_FILE, d / KEY_FILE, d / BUNDLE_FILE)
        data: list[bytes] = []
        for f in files:
            try:
                data.append(f.read_bytes())
            except FileNotFoundError:
                raise ValueError(f"{f}: no such file") from None
            except OSError as exc:
                raise ValueError(f"{f}: cannot read ({exc.strerror or exc})") from exc
        names = (str(files[0]), str(files[1]), str(files[2]))
        return cls.from_pem(data[0], data[1], data[2], now=now, names=names)

    def write_dir(self, path: str | os.PathLike[str], *, require_empty: bool = True) -> None:
        """Write `cert.pem`, `key.pem` (mode 0600) and `bundle.pem` into `path`, atomically.

        Args:
            require_empty: refuse (FileExistsError) a directory that is not new or empty;
                False replaces existing files (a rotation).
        """
        if require_empty:
            d = require_empty_dir(path)
        else:
            d = Path(path)
            d.mkdir(parents=True, exist_ok=True)
        write_file_atomic(d / BUNDLE_FILE, self.bundle_pem, 0o644)
        write_file_atomic(d / KEY_FILE, self.key_pem, 0o600)
        write_file_atomic(d / CERT_FILE, self.chain_pem, 0o644)
        _fsync_dir(d)

    def renew_at(self, fraction: float = 0.5) -> datetime:
        """When to renew: `fraction` (0 < f <= 1) of the way from not_before to not_after."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1] (got {fraction})")
        return self.not_before + (self.not_after - self.not_before) * fraction

    def seconds_left(self, now: datetime | None = None) -> float:
        """Seconds until not_after (negative once expired)."""
        current = datetime.now(UTC) if now is None else now
        return (self.not_after - current) / timedelta(seconds=1)

    def to_dict(self, *, now: datetime | None = None) -> dict[str, Any]:
        """For the admin `/certs` endpoint: identity, serial (hex), issuer, validity, time left.

        `seconds_left` is a whole number of seconds (negative once expired).
        """
        return {
            "identity": str(self.spiffe_id),
            "trust_domain": self.spiffe_id.trust_domain,
            "serial": f"{self.serial:x}",
            "issuer": self.issuer,
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
            "seconds_left": math.floor(self.seconds_left(now)),
        }

    def __repr__(self) -> str:  # never print the key
        return (
            f"Identity({self.spiffe_id}, serial={self.serial:x}, "
            f"not_after={format_time(self.not_after)})"
        )
