"""The mesh certificate authority: a root, an intermediate issuer, and SVID signing.

Shape (ECDSA P-256 throughout, SHA-256 signatures):

    root (self-signed, 10 years, cA, pathLen 1, URI SAN spiffe://<td>)
     └─ intermediate (1 year, cA, pathLen 0, URI SAN spiffe://<td>)   signs every leaf
         └─ leaf X509-SVID (default 24 h): empty subject, one critical URI SAN (the SPIFFE
            ID), cA false, keyUsage digitalSignature (critical), EKU serverAuth + clientAuth

A workload presents leaf + intermediate; peers trust the bundle (the roots). The CA sets
every name and extension itself and ignores what a CSR asks for, so a workload can only ever
get the identity the caller of `sign_csr` decided. Leaves never outlive the intermediate.

Three ways to get one:

- `CertificateAuthority.create(td)`: in memory only (what `pymesh up` uses);
- `CertificateAuthority.init_dir(path, td)`: the same, written to a new or empty directory
  (`pymesh ca init`), optionally adopting an intermediate signed by an organisation's root
  instead of creating a root (bring your own intermediate);
- `CertificateAuthority.load(path)`: read such a directory back.

Directory layout (keys mode 0600, directory 0700):

| file | content |
|---|---|
| `ca.json` | `{"trust_domain": ..., "format": 1}` |
| `bundle.pem` | the trust bundle: every root (several during a root rotation) |
| `intermediate.pem` | the issuing certificate, then any further intermediates up to a root |
| `intermediate-key.pem` | its private key |
| `root.pem`, `root-key.pem` | only when pymesh created the root |

A CA object is immutable after construction and safe to share between threads; signing
is pure CPU work (about a quarter of a millisecond), so call it from a thread if a loop must
sign many CSRs at once.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pymesh.tls.identity import (
    Identity,
    chain_problem,
    key_pem,
    load_certificates,
    new_key,
    require_empty_dir,
    signing_hash,
    write_file_atomic,
)
from pymesh.tls.spiffe import SpiffeId, check_trust_domain

__all__ = [
    "BUNDLE_FILE",
    "CA_FILE",
    "DEFAULT_SVID_TTL_S",
    "INTERMEDIATE_CERT_FILE",
    "INTERMEDIATE_KEY_FILE",
    "INTERMEDIATE_TTL_S",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "ROOT_TTL_S",
    "CertificateAuthority",
    "svid_extensions",
]

DEFAULT_SVID_TTL_S: Final = 24 * 3600.0
ROOT_TTL_S: Final = 10 * 365 * 24 * 3600.0
INTERMEDIATE_TTL_S: Final = 365 * 24 * 3600.0
BACKDATE_S: Final = 60.0  # tolerate a peer whose clock is a little behind

CA_FILE: Final = "ca.json"
BUNDLE_FILE: Final = "bundle.pem"
INTERMEDIATE_CERT_FILE: Final = "intermediate.pem"
INTERMEDIATE_KEY_FILE: Final = "intermediate-key.pem"
ROOT_CERT_FILE: Final = "root.pem"
ROOT_KEY_FILE: Final = "root-key.pem"

MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192

_PEM: Final = serialization.Encoding.PEM
_SHA256: Final = hashes.SHA256()

PemSource = bytes | str | os.PathLike[str]
"""PEM given inline (bytes) or as a file path (str or path-like)."""


def svid_extensions(spiffe_id: str | SpiffeId) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions of a leaf X509-SVID for `spiffe_id`, as `(value, critical)` pairs.

    (Key identifiers are added at signing time.) Tests start from this list and break one
    rule to build bad leaves with `CertificateAuthority.issue_custom`.
    """
    sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        ),
        # The subject is empty, so the SAN must be critical (RFC 5280 §4.1.2.6).
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))]), True),
    ]


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_name(trust_domain: str, role: str) -> x509.Name:
    # A random suffix keeps successive roots/intermediates apart in logs and `inspect`
    # (chain building also matches key identifiers, so equal names would still work).
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pymesh {role} CA {secrets.token_hex(4)}"),
        ]
    )


def _make_ca_cert(
    *,
    trust_domain: str,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    path_length: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    issuer_public = key.public_key() if issuer is None else issuer.public_key()
    assert isinstance(issuer_public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
    )
    return builder.sign(issuer_key, signing_hash(issuer_key))


def _read_pem(source: PemSource, what: str) -> tuple[bytes, str]:
    """(content, name for errors) of a PEM source."""
    if isinstance(source, bytes):
        return source, what
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc


def _load_issuer_key(pem: bytes, what: str) -> CertificateIssuerPrivateKeyTypes:
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ValueError(f"{what}: the private key is encrypted (expected unencrypted)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{what}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{what}: unsupported key type {type(key).__name__} (expected EC or RSA)")
    return key


def _check_leaf_key(key: CertificatePublicKeyTypes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        got = f"EC {key.curve.name}"
    elif isinstance(key, rsa.RSAPublicKey):
        if MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            return
        got = f"RSA {key.key_size} bits"
    else:
        got = type(key).__name__
    raise ValueError(
        f"unsupported workload key {got} (expected EC P-256, or RSA {MIN_RSA_BITS}-"
        f"{MAX_RSA_BITS} bits)"
    )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertificateAuthority:
    """A trust domain's issuer: signs X509-SVIDs with its intermediate, publishes its roots.

    Construct with `create`, `init_dir` or `load` (the constructor takes already-checked
    material). Immutable; thread-safe.
    """

    __slots__ = ("_bundle_pem", "_chain", "_chain_pem", "_key", "_roots", "trust_domain")

    trust_domain: str

    def __init__(
        self,
        *,
        trust_domain: str,
        key: CertificateIssuerPrivateKeyTypes,
        chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
    ) -> None:
        self.trust_domain = trust_domain
        self._key = key
        self._chain = tuple(chain)  # issuing certificate first
        self._roots = tuple(roots)
        self._chain_pem = b"".join(c.public_bytes(_PEM) for c in self._chain)
        self._bundle_pem = b"".join(c.public_bytes(_PEM) for c in self._roots)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, trust_domain: str) -> CertificateAuthority:
        """A new in-memory CA: a fresh root and intermediate (ECDSA P-256)."""
        ca, _root_key = cls._create(trust_domain)
        return ca

    @classmethod
    def _create(cls, trust_domain: str) -> tuple[CertificateAuthority, ec.EllipticCurvePrivateKey]:
        check_trust_domain(trust_domain)
        now = datetime.now(UTC)
        not_before = now - timedelta(seconds=BACKDATE_S)
        root_key = new_key()
        root = _make_ca_cert(
            trust_domain=trust_domain,
            subject=_ca_name(trust_domain, "root"),
            key=root_key,
            issuer=None,
            issuer_key=root_key,
            path_length=1,
            not_before=not_before,
            not_after=now + timedelta(seconds=ROOT_TTL_S),
        )
        key = new_key()
        intermediate = _make_ca_cert(
            trust_domain=trust_domain,
            subject=_ca_name(trust_domain, "intermediate"),
            key=key,
            issuer=root,
            issuer_key=root_key,
            path_length=0,
            not_before=not_before,
            not_after=now + timedelta(seconds=INTERMEDIATE_TTL_S),
        )
        ca = cls(trust_domain=trust_domain, key=key, chain=[intermediate], roots=[root])
        return ca, root_key

    @classmethod
    def init_dir(
        cls,
        path: str | os.PathLike[str],
        trust_domain: str,
        *,
        intermediate_cert: PemSource | None = None,
        intermediate_key: PemSource | None = None,
        root_cert: PemSource | None = None,
    ) -> CertificateAuthority:
        """Create a CA and write it to `path` (a new or empty directory); keys mode 0600.

        Without the keyword arguments a root and an intermediate are created. With all three
        (PEM bytes or file paths) the CA adopts an intermediate signed by your own root(s):
        `intermediate_cert` (the issuing certificate first, then any further intermediates),
        its `intermediate_key` (unencrypted), and `root_cert` (one or more roots; they
        become the trust bundle). No root key is ever needed or stored then.

        Raises:
            ValueError: bad trust domain or bring-your-own material (says what and why).
            FileExistsError: `path` exists and is not an empty directory.
        """
        given = [intermediate_cert is not None, intermediate_key is not None, root_cert is not None]
        root_key: ec.EllipticCurvePrivateKey | None = None
        if any(given):
            if not all(given):
                raise ValueError(
                    "a bring-your-own intermediate needs the intermediate certificate, its key "
                    "and the root certificate(s) together"
                )
            assert intermediate_cert is not None and intermediate_key is not None
            assert root_cert is not None
            ca = cls._adopt(trust_domain, intermediate_cert, intermediate_key, root_cert)
        else:
            ca, root_key = cls._create(trust_domain)
        d = require_empty_dir(path, mode=0o700)
        meta = {"trust_domain": ca.trust_domain, "format": 1}
        write_file_atomic(d / CA_FILE, (json.dumps(meta, indent=2) + "\n").encode(), 0o644)
        write_file_atomic(d / BUNDLE_FILE, ca._bundle_pem, 0o644)
        write_file_atomic(d / INTERMEDIATE_CERT_FILE, ca._chain_pem, 0o644)
        write_file_atomic(d / INTERMEDIATE_KEY_FILE, key_pem(ca._key), 0o600)
        if root_key is not None:
            write_file_atomic(d / ROOT_CERT_FILE, ca._roots[0].public_bytes(_PEM), 0o644)
            write_file_atomic(d / ROOT_KEY_FILE, key_pem(root_key), 0o600)
        return ca

    @classmethod
    def _adopt(
        cls,
        trust_domain: str,
        cert_source: PemSource,
        key_source: PemSource,
        roots_source: PemSource,
    ) -> CertificateAuthority:
        check_trust_domain(trust_domain)
        cert_pem, cert_name = _read_pem(cert_source, "intermediate certificate")
        key_pem_, key_name = _read_pem(key_source, "intermediate key")
        roots_pem, roots_name = _read_pem(roots_source, "root certificate")
        return cls._checked(
            trust_domain,
            load_certificates(cert_pem, cert_name),
            _load_issuer_key(key_pem_, key_name),
            load_certificates(roots_pem, roots_name),
            (cert_name, key_name, roots_name),
        )

    @classmethod
    def _checked(
        cls,
        trust_domain: str,
        chain: list[x509.Certificate],
        key: CertificateIssuerPrivateKeyTypes,
        roots: list[x509.Certificate],
        names: tuple[str, str, str],
    ) -> CertificateAuthority:
        cert_name, key_name, roots_name = names
        issuing = chain[0]
        if _spki(key.public_key()) != _spki(issuing.public_key()):
            raise ValueError(f"{key_name} does not match the certificate in {cert_name}")
        try:
            bc = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise ValueError(f"{cert_name}: not a CA certificate (basicConstraints cA is not TRUE)")
        try:
            ku = issuing.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is not None and not ku.key_cert_sign:
            raise ValueError(f"{cert_name}: keyUsage does not allow keyCertSign")
        now = datetime.now(UTC)
        if issuing.not_valid_after_utc <= now:
            raise ValueError(
                f"{cert_name}: expired at {issuing.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
            )
        try:
            san = issuing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        for uri in uris:
            if uri.startswith("spiffe://"):
                try:
                    td = SpiffeId.parse(uri).trust_domain
                except ValueError:
                    continue
                if td != trust_domain:
                    raise ValueError(
                        f"{cert_name}: its SPIFFE ID {uri} is not in trust domain {trust_domain}"
                    )
        broken = chain_problem(chain, roots)
        if broken is not None:
            raise ValueError(f"{cert_name} does not lead to a root in {roots_name}: {broken}")
        return cls(trust_domain=trust_domain, key=key, chain=chain, roots=roots)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """Read a CA directory written by `init_dir`; ValueError naming the file at fault."""
        d = Path(path)
        meta_path = d / CA_FILE
        try:
            meta = json.loads(meta_path.read_bytes())
            trust_domain = meta["trust_domain"]
            if not isinstance(trust_domain, str):
                raise TypeError("trust_domain is not a string")
        except FileNotFoundError:
            raise ValueError(
                f"{meta_path}: no such file (is {d} a CA directory made by `pymesh ca init`?)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_path}: unreadable CA metadata ({exc})") from exc
        return cls._adopt(
            trust_domain,
            d / INTERMEDIATE_CERT_FILE,
            d / INTERMEDIATE_KEY_FILE,
            d / BUNDLE_FILE,
        )

    # -- issuing ------------------------------------------------------------------------------
    def _leaf_id(self, spiffe_id: str | SpiffeId) -> SpiffeId:
        sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        if sid.trust_domain != self.trust_domain:
            raise ValueError(f"{sid} is not in this CA's trust domain {self.trust_domain}")
        if not sid.path:
            raise ValueError(f"{sid} has no path (a workload identity needs one)")
        return sid

    def _window(self, ttl_s: float, not_before: datetime | None) -> tuple[datetime, datetime]:
        if not (ttl_s > 0 and ttl_s < ROOT_TTL_S):
            raise ValueError(
                f"ttl must be a positive number of seconds, under 10 years (got {ttl_s})"
            )
        now = datetime.now(UTC)
        if not_before is None:
            start, end = now - timedelta(seconds=BACKDATE_S), now + timedelta(seconds=ttl_s)
        else:
            start = not_before
            end = not_before + timedelta(seconds=ttl_s)
        limit = self._chain[0].not_valid_after_utc  # a leaf never outlives its issuer
        end = min(end, limit)
        if end <= start:
            raise ValueError(f"the intermediate expires at {limit:%Y-%m-%dT%H:%M:%SZ}")
        return start, end

    def _sign(
        self,
        public_key: CertificatePublicKeyTypes,
        extensions: Sequence[tuple[x509.ExtensionType, bool]],
        not_before: datetime,
        not_after: datetime,
        subject: x509.Name | None = None,
    ) -> bytes:
        issuing = self._chain[0]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]) if subject is None else subject)
            .issuer_name(issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        seen = set()
        for value, critical in extensions:
            builder = builder.add_extension(value, critical=critical)
            seen.add(value.oid)
        if x509.SubjectKeyIdentifier.oid not in seen:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
            )
        if x509.AuthorityKeyIdentifier.oid not in seen:
            issuer_public = issuing.public_key()
            assert isinstance(issuer_public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
            )
        leaf = builder.sign(self._key, signing_hash(self._key))
        return leaf.public_bytes(_PEM) + self._chain_pem

    def sign_csr(self, csr_pem: bytes, spiffe_id: str | SpiffeId, ttl_s: float) -> bytes:
        """Sign a workload's CSR as an X509-SVID for `spiffe_id`, valid for `ttl_s` seconds.

        The CSR's signature must verify (proof the requester holds the key) and its key must
        be EC P-256 or RSA 2048-8192 bits. Everything else in the CSR (subject, SANs,
        extensions) is ignored: the CA sets the names from `spiffe_id`, which must be in this
        CA's trust domain. The lifetime is cut to the intermediate's.

        Returns:
            The leaf PEM followed by the intermediate(s) PEM: the chain the workload presents.

        Raises:
            ValueError: the CSR is malformed or tampered with, or the key or ID is refused.
        """
        try:
            if csr_pem.lstrip().startswith(b"-----"):
                csr = x509.load_pem_x509_csr(csr_pem)
            else:
                csr = x509.load_der_x509_csr(csr_pem)
        except ValueError as exc:
            raise ValueError(f"not a certificate signing request ({exc})") from exc
        try:
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"unsupported certificate signing request ({exc})") from exc
        if not valid:
            raise ValueError(
                "the certificate signing request's signature does not verify (tampered with, "
                "or not signed by the key it carries)"
            )
        _check_leaf_key(public_key)
        sid = self._leaf_id(spiffe_id)
        not_before, not_after = self._window(ttl_s, None)
        return self._sign(public_key, svid_extensions(sid), not_before, not_after)

    def issue(
        self, spiffe_id: str | SpiffeId, ttl_s: float, *, not_before: datetime | None = None
    ) -> tuple[bytes, bytes]:
        """Generate a key and an X509-SVID for `spiffe_id`: `(chain_pem, key_pem)`.

        For `pymesh ca issue` and tests (a sidecar uses `make_csr` + `sign_csr`, so its key
        never leaves it). `not_before` (default: now, backdated a minute) lets tests make
        certificates that are expired or not yet valid; the leaf then ends at
        `not_before + ttl_s`.
        """
        sid = self._leaf_id(spiffe_id)
        start, end = self._window(ttl_s, not_before)
        key = new_key()
        chain = self._sign(key.public_key(), svid_extensions(sid), start, end)
        return chain, key_pem(key)

    def issue_identity(self, spiffe_id: str | SpiffeId, ttl_s: float) -> Identity:
        """`issue` wrapped as a checked `Identity` with this CA's bundle (in-process use)."""
        chain, key = self.issue(spiffe_id, ttl_s)
        return Identity.from_pem(chain, key, self._bundle_pem)

    def issue_custom(
        self,
        *,
        extensions: Sequence[tuple[x509.ExtensionType, bool]],
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        subject: x509.Name | None = None,
    ) -> tuple[bytes, bytes]:
        """FOR TESTS: sign a leaf with exactly `extensions`, checking no rule at all.

        Builds deliberately broken SVIDs (two URI SANs, a CA leaf, no key usage, ...) that
        chain to this CA like good ones. Start from `svid_extensions(id)` and change one
        entry. Key identifiers are added unless given. Validity defaults to now-1m..now+1h.

        Returns:
            `(chain_pem, key_pem)`, like `issue`.
        """
        now = datetime.now(UTC)
        start = now - timedelta(seconds=BACKDATE_S) if not_before is None else not_before
        end = now + timedelta(hours=1) if not_after is None else not_after
        key = new_key()
        chain = self._sign(key.public_key(), extensions, start, end, subject)
        return chain, key_pem(key)

    # -- trust --------------------------------------------------------------------------------
    def bundle_pem(self) -> bytes:
        """The trust bundle: every root this CA's workloads trust (one or more PEM certs)."""
        return self._bundle_pem

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The root certificates of the bundle."""
        return self._roots

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The issuing certificate first, then any further intermediates (not the roots)."""
        return self._chain

    def intermediate_pem(self) -> bytes:
        """The intermediate chain as PEM (what follows the leaf in a workload's cert.pem)."""
        return self._chain_pem

    def with_roots(self, extra_roots_pem: bytes) -> CertificateAuthority:
        """A copy whose bundle also trusts `extra_roots_pem` (root rotation with overlap)."""
        extra = load_certificates(extra_roots_pem, "extra roots")
        known = {c.fingerprint(_SHA256) for c in self._roots}
        roots = list(self._roots) + [c for c in extra if c.fingerprint(_SHA256) not in known]
        return CertificateAuthority(
            trust_domain=self.trust_domain, key=self._key, chain=self._chain, roots=roots
        )

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority({self.trust_domain!r}, "
            f"issuer={self._chain[0].subject.rfc4514_string()!r}, roots={len(self._roots)})"
        )
