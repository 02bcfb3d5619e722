"""Bootstrap tokens: issue, verify (signature first, times, revocation, service), read."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymesh.control.tokens import (
    LEEWAY_S,
    MAX_TOKEN_CHARS,
    TOKEN_PREFIX,
    BootstrapToken,
    TokenError,
    fingerprint,
    issue_token,
    normalize_service,
    read_token,
    verify_token,
)
from pymesh.errors import PymeshError
from pymesh.tls import CertificateAuthority

TD = "shop.local"
FP = "sha256:" + "ab" * 32
CP_ID = "spiffe://shop.local/ns/pymesh-system/sa/control-plane"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 24 * 3600.0
KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def issue(service: str = "orders", *, ttl_s: float = DAY, now: float = NOW, **kw: Any) -> str:
    fields: dict[str, Any] = {"trust_domain": TD, "ca_fingerprint": FP, "control_plane_id": CP_ID}
    fields.update(kw)
    key = fields.pop("key", KEY)
    return issue_token(key, service=service, ttl_s=ttl_s, now=now, **fields)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def signed(payload: bytes, key: Ed25519PrivateKey = KEY) -> str:
    """A token over arbitrary payload bytes, correctly signed (to test the field checks)."""
    head = f"{TOKEN_PREFIX}.{b64(payload)}"
    return f"{head}.{b64(key.sign(head.encode()))}"


def good_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "svc": "default/orders",
        "td": TD,
        "caf": FP,
        "cp": CP_ID,
        "jti": "abcdefghijklmnop",
        "iat": NOW,
        "exp": NOW + DAY,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def refused(token: str, reason: str, **kw: Any) -> TokenError:
    kw.setdefault("now", NOW + 10)
    with pytest.raises(TokenError) as info:
        verify_token(token, PUB, **kw)
    assert info.value.reason == reason, str(info.value)
    return info.value


# -- round trip and format ------------------------------------------------------------------------
def test_round_trip() -> None:
    token = issue("orders", ttl_s=3600)
    tok = verify_token(token, PUB, now=NOW + 10, service="orders", trust_domain=TD)
    assert tok == BootstrapToken(
        service="default/orders",
        trust_domain=TD,
        ca_fingerprint=FP,
        control_plane_id=CP_ID,
        token_id=tok.token_id,
        issued_at=NOW,
        expires_at=NOW + 3600,
    )
    assert (tok.namespace, tok.name) == ("default", "orders")
    assert len(tok.token_id) >= 16
    assert issue("orders") != issue("orders")  # a fresh random ID each time


def test_format_is_prefix_payload_signature() -> None:
    token = issue("shop/orders")
    prefix, payload, signature = token.split(".")
    assert prefix == "pmt1"
    assert "=" not in token and len(token) < 600
    data = json.loads(unb64(payload))
    assert data["svc"] == "shop/orders" and data["td"] == TD and data["cp"] == CP_ID
    assert len(unb64(signature)) == 64
    PUB.verify(unb64(signature), f"pmt1.{payload}".encode())  # raises if not over that text


def test_surrounding_whitespace_is_ignored() -> None:
    assert verify_token(issue() + "\n", PUB, now=NOW).service == "default/orders"


def test_read_token_needs_no_key() -> None:
    token = issue("shop/payments")
    tok = read_token(token)
    assert (tok.service, tok.trust_domain, tok.ca_fingerprint) == ("shop/payments", TD, FP)
    assert tok.control_plane_id == CP_ID and tok.expires_at == NOW + DAY
    # read_token does not check the signature (that is verify_token's job)
    forged = signed(
        json.dumps(good_payload(svc="shop/admin")).encode(), Ed25519PrivateKey.generate()
    )
    assert read_token(forged).service == "shop/admin"
    refused(forged, "bad_signature")


# -- forgery --------------------------------------------------------------------------------------
def test_tampered_payload_is_a_bad_signature() -> None:
    prefix, payload, signature = issue("orders").split(".")
    data = json.loads(unb64(payload))
    data["svc"] = "default/payments"
    err = refused(f"{prefix}.{b64(json.dumps(data).encode())}.{signature}", "bad_signature")
    assert "signature does not verify" in str(err)
    assert err.token is None  # nothing from an unverified payload is exposed


def test_tampered_signature_is_a_bad_signature() -> None:
    token = issue()
    i = token.rindex(".") + 10
    flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    refused(flipped, "bad_signature")


def test_another_key_is_a_bad_signature() -> None:
    refused(issue(key=Ed25519PrivateKey.generate()), "bad_signature")


def test_the_signature_is_checked_before_the_times() -> None:
    # expired AND forged: the answer is the forgery, not the expiry
    forged_old = issue(key=Ed25519PrivateKey.generate(), now=NOW - 10 * DAY)
    refused(forged_old, "bad_signature")
    refused(issue(key=Ed25519PrivateKey.generate()), "bad_signature", revoked=_Everything())


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_one_character_change_is_refused(data: st.DataObject) -> None:
    token = issue()
    i = data.draw(st.integers(0, len(token) - 1), label="index")
    ch = data.draw(st.characters(codec="ascii").filter(lambda c: c != token[i]), label="char")
    changed = token[:i] + ch + token[i + 1 :]
    with pytest.raises(TokenError) as info:
        verify_token(changed, PUB, now=NOW)
    assert info.value.reason in ("malformed", "bad_signature")


# -- times, revocation, service -------------------------------------------------------------------
def test_expired() -> None:
    token = issue(ttl_s=3600)
    assert verify_token(token, PUB, now=NOW + 3599).service == "default/orders"
    err = refused(token, "expired", now=NOW + 3600)
    assert "expired at 2026-01-01T01:00:00Z" in str(err) and "pymesh control-plane token" in str(
        err
    )
    assert err.token is not None and err.token.service == "default/orders"


def test_not_yet_valid_beyond_the_leeway() -> None:
    token = issue()
    assert verify_token(token, PUB, now=NOW - LEEWAY_S + 1).service == "default/orders"
    err = refused(token, "not_yet_valid", now=NOW - LEEWAY_S - 1)
    assert "clocks" in str(err)


def test_revoked() -> None:
    token = issue()
    tok = read_token(token)
    assert verify_token(token, PUB, now=NOW, revoked={"someone-else-1"}) == tok
    err = refused(token, "revoked", revoked=frozenset({tok.token_id}))
    assert tok.token_id in str(err) and "revoked" in str(err)


def test_wrong_service() -> None:
    token = issue("orders")
    for same in ("orders", "default/orders"):
        assert verify_token(token, PUB, now=NOW, service=same).service == "default/orders"
    err = refused(token, "wrong_service", service="payments")
    assert str(err) == "the bootstrap token is for service default/orders, not default/payments"
    refused(token, "wrong_service", service="shop/orders")
    refused(token, "wrong_service", service="Not A Name")


def test_wrong_trust_domain() -> None:
    err = refused(issue(), "wrong_trust_domain", trust_domain="other.local")
    assert "shop.local, not other.local" in str(err)


def test_error_is_a_pymesh_error() -> None:
    assert issubclass(TokenError, PymeshError)


# -- malformed ------------------------------------------------------------------------------------
def _sig() -> str:
    return issue().rsplit(".", 1)[1]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "   ",
        "pmt1",
        "pmt1..",
        "hello world",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # a JWT with alg none
        "pmt2.e30." + "A" * 86,
        "pmt1.e30.AAAA.AAAA",
        "pmt1.e30",
        "pmt1.e3+.AAAA",
        "pmt1.e30=.AAAA",
        "pmt1.ünïcode.AAAA",
        "pmt1.e30.AAAA",  # a 3-byte signature
        "pmt1.e30.AAAAB",  # not valid base64 length
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    refused(token, "malformed")
    with pytest.raises(TokenError) as info:
        read_token(token)
    assert info.value.reason == "malformed"
    assert str(info.value).startswith("the bootstrap token is malformed: ")


def test_non_canonical_signature_encoding_is_malformed() -> None:
    token = issue()
    last = token[-1]
    # the last base64 character of a 64-byte signature carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert unb64(token[:-1].rsplit(".", 1)[1] + twin) == unb64(token.rsplit(".", 1)[1])
    refused(token[:-1] + twin, "malformed")


def test_oversized_is_malformed_before_decoding() -> None:
    huge = f"pmt1.{'A' * MAX_TOKEN_CHARS}.{_sig()}"
    err = refused(huge, "malformed")
    assert str(MAX_TOKEN_CHARS) in str(err)
    with pytest.raises(TokenError):
        read_token(huge)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (json.dumps(good_payload(svc=None)).encode(), "'svc'"),
        (json.dumps(good_payload(svc="Orders")).encode(), "DNS label"),
        (json.dumps(good_payload(svc="orders")).encode(), "NAMESPACE/NAME"),
        (json.dumps(good_payload(td="Shop")).encode(), "trust domain"),
        (json.dumps(good_payload(caf="md5:00")).encode(), "fingerprint"),
        (json.dumps(good_payload(cp="spiffe://other.local/x")).encode(), "control plane ID"),
        (json.dumps(good_payload(cp="https://cp")).encode(), "scheme"),
        (json.dumps(good_payload(jti="x")).encode(), "token ID"),
        (json.dumps(good_payload(iat=True)).encode(), "'iat'"),
        (json.dumps(good_payload(exp="tomorrow")).encode(), "'exp'"),
        (json.dumps(good_payload(exp=NOW - 1)).encode(), "expires before"),
        (b'{"exp": NaN}', "not JSON"),
        (json.dumps(good_payload(exp=12.5)).replace("12.5", "1e999").encode(), "not finite"),
        (json.dumps(good_payload()).encode()[:-1] + b', "svc": "default/admin"}', "duplicate"),
    ],
)
def test_signed_but_bad_payload_is_malformed(payload: bytes, why: str) -> None:
    err = refused(signed(payload), "malformed")
    assert why in str(err)


def test_a_signed_payload_with_unknown_keys_is_accepted() -> None:
    token = signed(json.dumps(good_payload(future="field")).encode())
    assert verify_token(token, PUB, now=NOW).service == "default/orders"


# -- issuing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan"), 366 * DAY])
def test_issue_refuses_a_bad_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issue(ttl_s=ttl)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"service": "Orders"}, "DNS label"),
        ({"service": "a/b/c"}, "namespace 'a/b'"),
        ({"trust_domain": "Shop"}, "invalid trust domain"),
        ({"ca_fingerprint": "ab" * 32}, "fingerprint"),
        ({"control_plane_id": "spiffe://other.local/ns/x/sa/y"}, "trust domain shop.local"),
    ],
)
def test_issue_refuses_bad_fields(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        issue(**kw)


def test_issue_needs_an_ed25519_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(TypeError, match="Ed25519"):
        issue(key=ec.generate_private_key(ec.SECP256R1()))


def test_normalize_service() -> None:
    assert normalize_service("orders") == "default/orders"
    assert normalize_service("shop/orders") == "shop/orders"
    for bad in ("", "/orders", "shop/", "Orders", "a_b", "x" * 64, "a/b/c"):
        with pytest.raises(ValueError, match="invalid service"):
            normalize_service(bad)


def test_fingerprint_is_sha256_of_der() -> None:
    root = CertificateAuthority.create(TD).roots[0]
    der = root.public_bytes(serialization.Encoding.DER)
    assert fingerprint(root) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert isinstance(root, x509.Certificate)
