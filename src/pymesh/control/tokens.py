"""Bootstrap tokens: how a sidecar proves which service it is to the control plane.

A token is issued offline (`pymesh control-plane token`) with the state directory's
Ed25519 key, and any control-plane replica holding a copy of that directory verifies it.
It also tells the sidecar how to trust the control plane, so joining needs only the token
and the control plane's URL:

    pmt1.<base64url(JSON payload)>.<base64url(Ed25519 signature over "pmt1." + payload part)>

base64url without padding. One fixed algorithm, no header: nothing in the token chooses how
it is checked. The payload (short keys):

| key | field | meaning |
|---|---|---|
| `svc` | `service` | `namespace/name` of the one service the token is for |
| `td` | `trust_domain` | the mesh's SPIFFE trust domain |
| `caf` | `ca_fingerprint` | `sha256:<hex>` of the DER of the root the CP's chain ends in |
| `cp` | `control_plane_id` | the SPIFFE ID the control plane presents (checked, not its name) |
| `jti` | `token_id` | random; what a revocation names |
| `iat`, `exp` | `issued_at`, `expires_at` | unix seconds |

`verify_token` checks, in this order: the shape and size (at most `MAX_TOKEN_CHARS`), the
signature (before reading a byte of the payload), the payload's fields, the validity window
(`LEEWAY_S` of clock skew tolerated on `issued_at`, none on `expires_at`), the revocation
list, then the service and trust domain when the caller names them. `read_token` parses
without the signature check: the sidecar has no key, and needs only the fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pymesh.errors import PymeshError
from pymesh.tls.spiffe import SpiffeId, check_trust_domain

__all__ = [
    "DEFAULT_NAMESPACE",
    "LEEWAY_S",
    "MAX_TOKEN_CHARS",
    "MAX_TTL_S",
    "TOKEN_PREFIX",
    "BootstrapToken",
    "TokenError",
    "TokenErrorReason",
    "fingerprint",
    "issue_token",
    "normalize_service",
    "read_token",
    "verify_token",
]

TOKEN_PREFIX: Final = "pmt1"
MAX_TOKEN_CHARS: Final = 4096
"""Longer input is refused as malformed before any decoding."""
LEEWAY_S: Final = 60.0
"""Tolerated clock skew: a token issued up to this far in the future is accepted."""
MAX_TTL_S: Final = 365 * 24 * 3600.0
"""The longest validity `issue_token` grants (one year)."""
DEFAULT_NAMESPACE: Final = "default"

TokenErrorReason = Literal[
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "revoked",
    "wrong_service",
    "wrong_trust_domain",
]

_SIGNATURE_BYTES: Final = 64
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label
_FINGERPRINT_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_TOKEN_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SHA256: Final = hashes.SHA256()
_HINT: Final = "issue a new one with `pymesh control-plane token`"


class TokenError(PymeshError):
    """A bootstrap token was refused; `reason` says why, `str(exc)` says it in a sentence.

    The sidecar presenting the token is to blame (or its operator): the control plane
    answers with the message and grants no identity. `token` holds the parsed token when the
    refusal came after the signature check (for logs), else None.
    """

    def __init__(
        self, reason: TokenErrorReason, message: str, *, token: BootstrapToken | None = None
    ) -> None:
        super().__init__(message)
        self.reason: TokenErrorReason = reason
        self.token = token


@dataclass(frozen=True, slots=True)
class BootstrapToken:
    """The fields of a bootstrap token (see the module docstring for their meaning)."""

    service: str  # "namespace/name"
    trust_domain: str
    ca_fingerprint: str  # "sha256:<hex>"
    control_plane_id: str  # spiffe://TD/ns/pymesh-system/sa/control-plane
    token_id: str
    issued_at: float
    expires_at: float

    @property
    def namespace(self) -> str:
        """The namespace part of `service`."""
        return self.service.partition("/")[0]

    @property
    def name(self) -> str:
        """The name part of `service`."""
        return self.service.partition("/")[2]


# -- helpers --------------------------------------------------------------------------------------
def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER (what a token pins)."""
    return "sha256:" + cert.fingerprint(_SHA256).hex()


def normalize_service(service: str) -> str:
    """`NAME` or `NAMESPACE/NAME` as `namespace/name` (`NAME` is in namespace `default`).

    Raises:
        ValueError: either part is not a DNS label (lowercase letters, digits, '-').
    """
    namespace, slash, name = service.rpartition("/")
    if not slash:
        namespace = DEFAULT_NAMESPACE
    for what, part in (("namespace", namespace), ("name", name)):
        if _LABEL_RE.fullmatch(part) is None:
            raise ValueError(
                f"invalid service {service!r}: the {what} {part!r} is not a DNS label "
                "(expected NAME or NAMESPACE/NAME, each lowercase letters, digits and '-', "
                "at most 63 characters)"
            )
    return f"{namespace}/{name}"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    """Strict base64url without padding: only the alphabet, canonical trailing bits."""
    if _B64URL_RE.fullmatch(part) is None:
        raise _malformed(f"its {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"its {what} is not base64url") from None
    if _b64encode(data) != part:  # e.g. a length of 4n+1, or non-zero unused bits
        raise _malformed(f"its {what} is not canonical base64url")
    return data


def _malformed(detail: str) -> TokenError:
    return TokenError(
        "malformed",
        f"the bootstrap token is malformed: {detail} (expected {TOKEN_PREFIX}.<payload>."
        "<signature>, as `pymesh control-plane token` prints it)",
    )


def _when(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f} (unix time)"


def _split(token: str) -> tuple[str, bytes]:
    """(payload part, signature) of a well-shaped token; TokenError("malformed") otherwise."""
    if not isinstance(token, str):
        raise _malformed(f"got {type(token).__name__}, not text")
    if len(token) > MAX_TOKEN_CHARS:
        raise _malformed(f"it is {len(token)} characters long (at most {MAX_TOKEN_CHARS})")
    text = token.strip()  # a token file usually ends with a newline
    if not text:
        raise _malformed("it is empty")
    parts = text.split(".")
    if parts[0] != TOKEN_PREFIX:
        raise _malformed(f"it does not start with {TOKEN_PREFIX}.")
    if len(parts) != 3:
        raise _malformed(f"it has {len(parts)} dot-separated parts, not 3")
    _, payload_part, sig_part = parts
    if _B64URL_RE.fullmatch(payload_part) is None:
        raise _malformed("its payload is not base64url")
    signature = _b64decode(sig_part, "signature")
    if len(signature) != _SIGNATURE_BYTES:
        raise _malformed(f"its signature is {len(signature)} bytes (expected {_SIGNATURE_BYTES})")
    return payload_part, signature


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _decode_payload(payload_part: str) -> BootstrapToken:
    raw = _b64decode(payload_part, "payload")
    try:
        data = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"its payload is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _malformed("its payload is not a JSON object")

    def text(key: str, what: str) -> str:
        value = data.get(key)
        if not isinstance(value, str):
            raise _malformed(f"the {what} ({key!r}) is missing or not a string")
        return value

    def number(key: str, what: str) -> float:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _malformed(f"the {what} ({key!r}) is missing or not a number")
        result = float(value)
        if not math.isfinite(result):
            raise _malformed(f"the {what} ({key!r}) is not finite")
        return result

    # Unknown keys are ignored (they are signed, and a later version may add some).
    service = text("svc", "service")
    trust_domain = text("td", "trust domain")
    ca_fp = text("caf", "CA fingerprint")
    cp_id = text("cp", "control plane ID")
    token_id = text("jti", "token ID")
    issued_at = number("iat", "issue time")
    expires_at = number("exp", "expiry time")
    try:
        _check_fields(service, trust_domain, ca_fp, cp_id, token_id, issued_at, expires_at)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    return BootstrapToken(
        service=service,
        trust_domain=trust_domain,
        ca_fingerprint=ca_fp,
        control_plane_id=cp_id,
        token_id=token_id,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def _check_fields(
    service: str,
    trust_domain: str,
    ca_fingerprint: str,
    control_plane_id: str,
    token_id: str,
    issued_at: float,
    expires_at: float,
) -> None:
    """ValueError naming the first bad field (shared by issuing and parsing)."""
    if normalize_service(service) != service:
        raise ValueError(f"the service {service!r} is not NAMESPACE/NAME")
    check_trust_domain(trust_domain)
    if _FINGERPRINT_RE.fullmatch(ca_fingerprint) is None:
        raise ValueError(
            f"the CA fingerprint {ca_fingerprint!r} is not sha256:<64 lowercase hex digits>"
        )
    cp = SpiffeId.parse(control_plane_id)
    if cp.trust_domain != trust_domain or not cp.path:
        raise ValueError(
            f"the control plane ID {control_plane_id} is not a workload ID in trust domain "
            f"{trust_domain}"
        )
    if _TOKEN_ID_RE.fullmatch(token_id) is None:
        raise ValueError(f"the token ID {token_id!r} is not 8-64 base64url characters")
    if not expires_at > issued_at:
        raise ValueError("it expires before it is issued")


# -- API ------------------------------------------------------------------------------------------
def issue_token(
    key: Ed25519PrivateKey,
    *,
    service: str,
    trust_domain: str,
    ca_fingerprint: str,
    control_plane_id: str,
    ttl_s: float,
    now: float | None = None,
) -> str:
    """Sign a bootstrap token for `service` (`NAME` or `NAMESPACE/NAME`), valid `ttl_s` seconds.

    Raises:
        ValueError: a field is invalid, or `ttl_s` is not in (0, `MAX_TTL_S`].
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"the token key must be Ed25519 (got {type(key).__name__})")
    if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TTL_S):
        raise ValueError(
            f"token ttl must be a positive number of seconds, at most one year (got {ttl_s})"
        )
    issued_at = time.time() if now is None else float(now)
    svc = normalize_service(service)
    token_id = secrets.token_urlsafe(16)
    expires_at = issued_at + ttl_s
    _check_fields(
        svc, trust_domain, ca_fingerprint, control_plane_id, token_id, issued_at, expires_at
    )
    payload = {
        "svc": svc,
        "td": trust_domain,
        "caf": ca_fingerprint,
        "cp": control_plane_id,
        "jti": token_id,
        "iat": issued_at,
        "exp": expires_at,
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    signed = f"{TOKEN_PREFIX}.{_b64encode(body)}"
    signature = key.sign(signed.encode("ascii"))
    return f"{signed}.{_b64encode(signature)}"


def read_token(token: str) -> BootstrapToken:
    """The fields of `token` WITHOUT checking its signature (for the sidecar, which has no
    key: it needs the trust domain, CA fingerprint and control plane ID). Never trust these
    for an authorization decision; the control plane checks the token with `verify_token`.

    Raises:
        TokenError: reason "malformed".
    """
    payload_part, _ = _split(token)
    return _decode_payload(payload_part)


def verify_token(
    token: str,
    public_key: Ed25519PublicKey,
    *,
    now: float | None = None,
    revoked: Container[str] = frozenset(),
    service: str | None = None,
    trust_domain: str | None = None,
) -> BootstrapToken:
    """Check `token` and return its fields.

    Order: shape, signature, fields, validity window (`LEEWAY_S` on `issued_at`), revocation
    (`revoked` holds token IDs), then `service` (`NAME` means `default/NAME`) and
    `trust_domain` when given.

    Raises:
        TokenError: with `reason` one of malformed, bad_signature, expired, not_yet_valid,
            revoked, wrong_service, wrong_trust_domain.
    """
    payload_part, signature = _split(token)
    try:
        public_key.verify(signature, f"{TOKEN_PREFIX}.{payload_part}".encode("ascii"))
    except InvalidSignature:
        raise TokenError(
            "bad_signature",
            "the bootstrap token's signature does not verify: it was not issued with this "
            "control plane's token key (another state directory?), or it was altered",
        ) from None
    tok = _decode_payload(payload_part)
    current = time.time() if now is None else now
    if current >= tok.expires_at:
        raise TokenError(
            "expired",
            f"the bootstrap token for {tok.service} expired at {_when(tok.expires_at)}; {_HINT}",
            token=tok,
        )
    if tok.issued_at - LEEWAY_S > current:
        raise TokenError(
            "not_yet_valid",
            f"the bootstrap token for {tok.service} is issued at {_when(tok.issued_at)}, "
            f"{tok.issued_at - current:.0f} s in the future (more than the {LEEWAY_S:.0f} s "
            "tolerated): check the clocks of the host that issued it and of the control plane",
            token=tok,
        )
    if tok.token_id in revoked:
        raise TokenError(
            "revoked",
            f"the bootstrap token {tok.token_id} for {tok.service} has been revoked; {_HINT}",
            token=tok,
        )
    if service is not None:
        try:
            wanted = normalize_service(service)
        except ValueError:
            wanted = service
        if wanted != tok.service:
            raise TokenError(
                "wrong_service",
                f"the bootstrap token is for service {tok.service}, not {wanted}",
                token=tok,
            )
    if trust_domain is not None and trust_domain != tok.trust_domain:
        raise TokenError(
            "wrong_trust_domain",
            f"the bootstrap token is for trust domain {tok.trust_domain}, not {trust_domain}",
            token=tok,
        )
    return tok
