"""X509-SVID leaf validation: the SPIFFE rules Python's `ssl` does not check.

OpenSSL verifies the chain up to the trust bundle (and the validity window) during the
handshake. It happily accepts leaves that break the X509-SVID spec (X509-SVID.md §2-§5):
several URI SANs, a CA certificate used as a leaf, a missing or non-critical key usage, a
URI that is not a SPIFFE ID. So pymesh checks every peer's leaf itself, right after the
handshake, with `validate_svid`; a failure closes the connection (and is logged with its
`reason`).

Rules checked (each failure is a `(reason, message)` pair):

| reason | rule |
|---|---|
| `malformed` | the certificate or its extensions cannot be parsed |
| `uri_san_count` | exactly one URI SAN (the SPIFFE ID); DNS and other SANs are allowed |
| `spiffe_id` | that URI is a valid SPIFFE ID with a non-root path |
| `trust_domain` | the ID is in one of the accepted trust domains (when given) |
| `san_not_critical` | with an empty subject, the SAN extension is critical (RFC 5280 §4.1.2.6) |
| `ca_leaf` | basicConstraints cA is false (or the extension is absent) |
| `key_usage` | keyUsage is present and sets digitalSignature |
| `key_usage_not_critical` | keyUsage is critical |
| `key_cert_sign` / `crl_sign` | keyUsage does not set keyCertSign / cRLSign |
| `extended_key_usage` | if extendedKeyUsage is present, it has serverAuth and clientAuth |
| `not_yet_valid` / `expired` | now is inside [notBefore, notAfter] |

Cost: `validate_svid` runs once per accepted mTLS connection. Results of the time-independent
checks are memoised per DER encoding in a small bounded cache (peers reuse one certificate
for hours), so a repeat costs a dict lookup plus the time and trust-domain checks.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from pymesh.errors import PeerVerificationError
from pymesh.tls.spiffe import SpiffeId

__all__ = ["SvidError", "svid_problems", "validate_svid"]

_CACHE_MAX: Final = 512

_SAN: Final = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_BC: Final = ExtensionOID.BASIC_CONSTRAINTS
_KU: Final = ExtensionOID.KEY_USAGE
_EKU: Final = ExtensionOID.EXTENDED_KEY_USAGE


class SvidError(PeerVerificationError):
    """The peer's leaf certificate is not a valid X509-SVID (the peer is to blame).

    `reason` is a short snake_case code (see the module table) for logs and metrics;
    `message` says what is wrong in words; `problems` lists every problem found.
    The connection is closed.
    """

    def __init__(
        self, reason: str, message: str, problems: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.problems = problems or ((reason, message),)


class _Static:
    """The time-independent verdict on one certificate (cached per DER encoding)."""

    __slots__ = ("not_after", "not_before", "problems", "spiffe_id")

    def __init__(
        self,
        spiffe_id: SpiffeId | None,
        problems: list[tuple[str, str]],
        not_before: datetime,
        not_after: datetime,
    ) -> None:
        self.spiffe_id = spiffe_id
        self.problems = problems
        self.not_before = not_before
        self.not_after = not_after


_cache: dict[bytes, _Static] = {}


def _static_checks(cert: x509.Certificate) -> _Static:
    problems: list[tuple[str, str]] = []
    spiffe_id: SpiffeId | None = None
    try:
        not_before = cert.not_valid_before_utc
        not_after = cert.not_valid_after_utc
        exts = {ext.oid: ext for ext in cert.extensions}
        subject_empty = len(cert.subject) == 0
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        epoch = datetime.fromtimestamp(0, UTC)
        return _Static(None, [("malformed", f"cannot parse the certificate: {exc}")], epoch, epoch)

    san = exts.get(_SAN)
    uris: list[str] = []
    if san is not None:
        assert isinstance(san.value, x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        what = "no URI SAN" if not uris else f"{len(uris)} URI SANs ({', '.join(uris)})"
        problems.append(("uri_san_count", f"has {what} (expected exactly one, the SPIFFE ID)"))
    else:
        try:
            spiffe_id = SpiffeId.parse(uris[0])
        except ValueError as exc:
            problems.append(("spiffe_id", str(exc)))
        else:
            if not spiffe_id.path:
                problems.append(("spiffe_id", f"{spiffe_id} has no path (a leaf SVID needs one)"))
                spiffe_id = None
    if san is not None and not san.critical and subject_empty:
        problems.append(
            ("san_not_critical", "the subject is empty, so the SAN extension must be critical")
        )

    bc = exts.get(_BC)
    if bc is not None:
        assert isinstance(bc.value, x509.BasicConstraints)
        if bc.value.ca:
            problems.append(("ca_leaf", "basicConstraints has cA=TRUE (a leaf must not be a CA)"))

    ku = exts.get(_KU)
    if ku is None:
        problems.append(("key_usage", "has no keyUsage extension (expected digitalSignature)"))
    else:
        assert isinstance(ku.value, x509.KeyUsage)
        if not ku.critical:
            problems.append(("key_usage_not_critical", "the keyUsage extension is not critical"))
        if not ku.value.digital_signature:
            problems.append(("key_usage", "keyUsage does not set digitalSignature"))
        if ku.value.key_cert_sign:
            problems.append(("key_cert_sign", "keyUsage sets keyCertSign (a leaf must not)"))
        if ku.value.crl_sign:
            problems.append(("crl_sign", "keyUsage sets cRLSign (a leaf must not)"))

    eku = exts.get(_EKU)
    if eku is not None:
        assert isinstance(eku.value, x509.ExtendedKeyUsage)
        usages = set(eku.value)
        missing = [
            name
            for oid, name in (
                (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
            )
            if oid not in usages
        ]
        if missing:
            problems.append(
                ("extended_key_usage", f"extendedKeyUsage lacks {' and '.join(missing)}")
            )
    return _Static(spiffe_id, problems, not_before, not_after)


def _dynamic_checks(
    static: _Static,
    trust_domains: Collection[str] | None,
    now: datetime | None,
) -> list[tuple[str, str]]:
    problems = list(static.problems)
    if static.problems and static.problems[0][0] == "malformed":
        return problems
    sid = static.spiffe_id
    if trust_domains is not None and sid is not None and sid.trust_domain not in trust_domains:
        accepted = ", ".join(sorted(trust_domains)) or "none"
        problems.append(("trust_domain", f"{sid} is not in an accepted trust domain ({accepted})"))
    now = datetime.now(UTC) if now is None else now
    if now < static.not_before:
        problems.append(
            ("not_yet_valid", f"not valid before {static.not_before:%Y-%m-%dT%H:%M:%SZ}")
        )
    elif now > static.not_after:
        problems.append(("expired", f"expired at {static.not_after:%Y-%m-%dT%H:%M:%SZ}"))
    return problems


def _static_for(der: bytes | None, cert: x509.Certificate | None) -> _Static:
    if der is None:
        assert cert is not None
        return _static_checks(cert)
    static = _cache.get(der)
    if static is None:
        if cert is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                epoch = datetime.fromtimestamp(0, UTC)
                bad = [("malformed", f"cannot parse the certificate: {exc}")]
                return _Static(None, bad, epoch, epoch)
        static = _static_checks(cert)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()  # bounded; refilled by the peers actually connecting
        _cache[der] = static
    return static


def svid_problems(
    cert: x509.Certificate,
    *,
    trust_domains: Collection[str] | None = None,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Every way `cert` breaks the X509-SVID leaf rules, as `(reason, message)`; [] if none.

    Args:
        cert: the leaf certificate.
        trust_domains: accepted trust domains; None accepts any.
        now: the time to check validity at (aware, UTC); default: now.
    """
    return _dynamic_checks(_static_checks(cert), trust_domains, now)


def validate_svid(
    leaf: x509.Certificate | bytes,
    *,
    trust_domains: Collection[str] | None = None,
    now: datetime | None = None,
) -> SpiffeId:
    """The SPIFFE ID of a valid X509-SVID leaf (DER bytes or a parsed certificate).

    Raises:
        SvidError: with the first problem's `reason` (all of them in `.problems`).
    """
    static = _static_for(leaf, None) if isinstance(leaf, bytes) else _static_for(None, leaf)
    sid = static.spiffe_id
    if (  # fast path: a cached, clean certificate
        not static.problems
        and sid is not None
        and (trust_domains is None or sid.trust_domain in trust_domains)
        and static.not_before <= (datetime.now(UTC) if now is None else now) <= static.not_after
    ):
        return sid
    problems = _dynamic_checks(static, trust_domains, now)
    assert problems  # the fast path returned otherwise
    reason, message = problems[0]
    raise SvidError(reason, message, tuple(problems))
