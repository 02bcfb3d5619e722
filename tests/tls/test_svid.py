"""X509-SVID leaf validation: every broken rule is caught, with its reason; good leaves pass."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pymesh.errors import PeerVerificationError
from pymesh.tls import (
    CertificateAuthority,
    SpiffeId,
    SvidError,
    svid_extensions,
    svid_problems,
    validate_svid,
)

ID = "spiffe://shop.local/ns/default/sa/orders"
Ext = list[tuple[x509.ExtensionType, bool]]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("shop.local")


def leaf(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain_pem)[0]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def replace(
    exts: Ext, ext_type: type[x509.ExtensionType], new: tuple[x509.ExtensionType, bool] | None
) -> Ext:
    out = [e for e in exts if not isinstance(e[0], ext_type)]
    if new is not None:
        out.append(new)
    return out


def uri_san(
    *uris: str, dns: tuple[str, ...] = (), critical: bool = True
) -> tuple[x509.ExtensionType, bool]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    return x509.SubjectAlternativeName(names), critical


def test_good_leaf_is_accepted(ca: CertificateAuthority) -> None:
    chain, _key = ca.issue(ID, 3600)
    cert = leaf(chain)
    assert svid_problems(cert) == []
    assert svid_problems(cert, trust_domains={"shop.local"}) == []
    assert validate_svid(cert) == SpiffeId.parse(ID)
    assert validate_svid(der(cert), trust_domains=("shop.local", "other")) == SpiffeId.parse(ID)


def test_issued_leaf_has_the_svid_shape(ca: CertificateAuthority) -> None:
    cert = leaf(ca.issue(ID, 3600)[0])
    exts = cert.extensions
    assert len(cert.subject) == 0
    san = exts.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ID]
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


BAD: dict[str, tuple[Callable[[Ext], Ext], str]] = {
    "two URI SANs": (
        lambda e: replace(e, x509.SubjectAlternativeName, uri_san(ID, "spiffe://shop.local/x")),
        "uri_san_count",
    ),
    "no SAN at all": (lambda e: replace(e, x509.SubjectAlternativeName, None), "uri_san_count"),
    "DNS-only SAN": (
        lambda e: replace(
            e,
            x509.SubjectAlternativeName,
            (x509.SubjectAlternativeName([x509.DNSName("orders")]), True),
        ),
        "uri_san_count",
    ),
    "CA:TRUE leaf": (
        lambda e: replace(
            e, x509.BasicConstraints, (x509.BasicConstraints(ca=True, path_length=None), True)
        ),
        "ca_leaf",
    ),
    "no key usage": (lambda e: replace(e, x509.KeyUsage, None), "key_usage"),
    "non-critical key usage": (
        lambda e: replace(e, x509.KeyUsage, (key_usage(digital_signature=True), False)),
        "key_usage_not_critical",
    ),
    "no digitalSignature": (
        lambda e: replace(e, x509.KeyUsage, (key_usage(key_encipherment=True), True)),
        "key_usage",
    ),
    "keyCertSign set": (
        lambda e: replace(
            e, x509.KeyUsage, (key_usage(digital_signature=True, key_cert_sign=True), True)
        ),
        "key_cert_sign",
    ),
    "cRLSign set": (
        lambda e: replace(
            e, x509.KeyUsage, (key_usage(digital_signature=True, crl_sign=True), True)
        ),
        "crl_sign",
    ),
    "malformed SPIFFE ID": (
        lambda e: replace(e, x509.SubjectAlternativeName, uri_san("spiffe://Shop.local/x")),
        "spiffe_id",
    ),
    "not a spiffe URI": (
        lambda e: replace(e, x509.SubjectAlternativeName, uri_san("https://shop.local/x")),
        "spiffe_id",
    ),
    "ID without a path": (
        lambda e: replace(e, x509.SubjectAlternativeName, uri_san("spiffe://shop.local")),
        "spiffe_id",
    ),
    "EKU without clientAuth": (
        lambda e: replace(
            e,
            x509.ExtendedKeyUsage,
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ),
        "extended_key_usage",
    ),
    "empty subject, SAN not critical": (
        lambda e: replace(e, x509.SubjectAlternativeName, uri_san(ID, critical=False)),
        "san_not_critical",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_leaf_is_rejected_with_its_reason(ca: CertificateAuthority, case: str) -> None:
    change, reason = BAD[case]
    chain, _key = ca.issue_custom(extensions=change(svid_extensions(ID)))
    cert = leaf(chain)
    problems = svid_problems(cert)
    assert [r for r, _ in problems] == [reason]
    for given in (cert, der(cert)):
        with pytest.raises(SvidError) as info:
            validate_svid(given)
        assert info.value.reason == reason
        assert info.value.message == problems[0][1]
        assert isinstance(info.value, PeerVerificationError)


@pytest.mark.parametrize(
    ("change", "label"),
    [
        (
            lambda e: replace(e, x509.SubjectAlternativeName, uri_san(ID, dns=("orders.default",))),
            "extra DNS SAN",
        ),
        (lambda e: replace(e, x509.ExtendedKeyUsage, None), "no EKU (a SHOULD)"),
        (
            lambda e: replace(e, x509.BasicConstraints, None),
            "no basicConstraints (cA defaults to false)",
        ),
        (
            lambda e: replace(
                e, x509.KeyUsage, (key_usage(digital_signature=True, key_agreement=True), True)
            ),
            "keyAgreement too",
        ),
    ],
)
def test_allowed_variations_pass(
    ca: CertificateAuthority, change: Callable[[Ext], Ext], label: str
) -> None:
    cert = leaf(ca.issue_custom(extensions=change(svid_extensions(ID)))[0])
    assert svid_problems(cert) == [], label


def test_non_critical_san_is_fine_with_a_subject(ca: CertificateAuthority) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop")])
    exts = replace(svid_extensions(ID), x509.SubjectAlternativeName, uri_san(ID, critical=False))
    cert = leaf(ca.issue_custom(extensions=exts, subject=subject)[0])
    assert svid_problems(cert) == []


def test_wrong_trust_domain(ca: CertificateAuthority) -> None:
    foreign = "spiffe://other.local/ns/default/sa/orders"
    cert = leaf(ca.issue_custom(extensions=svid_extensions(foreign))[0])
    assert svid_problems(cert) == []  # no restriction given
    problems = svid_problems(cert, trust_domains={"shop.local"})
    assert [r for r, _ in problems] == ["trust_domain"]
    assert "other.local" in problems[0][1] and "shop.local" in problems[0][1]
    with pytest.raises(SvidError) as info:
        validate_svid(der(cert), trust_domains={"shop.local"})
    assert info.value.reason == "trust_domain"
    assert validate_svid(der(cert), trust_domains={"other.local"}).trust_domain == "other.local"


def test_expired_and_not_yet_valid(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    expired = leaf(ca.issue(ID, 3600, not_before=now - timedelta(hours=2))[0])
    future = leaf(ca.issue(ID, 3600, not_before=now + timedelta(hours=1))[0])
    assert [r for r, _ in svid_problems(expired)] == ["expired"]
    assert [r for r, _ in svid_problems(future)] == ["not_yet_valid"]
    for cert, reason in ((expired, "expired"), (future, "not_yet_valid")):
        with pytest.raises(SvidError) as info:
            validate_svid(der(cert))
        assert info.value.reason == reason
    # `now` moves the check in time: the future cert is fine in two hours
    assert validate_svid(der(future), now=now + timedelta(hours=1, minutes=30)) == SpiffeId.parse(
        ID
    )


def test_cached_verdict_still_checks_time_and_trust_domain(ca: CertificateAuthority) -> None:
    data = der(leaf(ca.issue(ID, 3600)[0]))
    assert validate_svid(data) == SpiffeId.parse(ID)
    assert validate_svid(bytes(data)) == SpiffeId.parse(ID)  # a hit, from another object
    with pytest.raises(SvidError, match="expired"):
        validate_svid(bytes(data), now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(SvidError) as info:
        validate_svid(bytes(data), trust_domains=set())
    assert info.value.reason == "trust_domain"


def test_every_problem_is_listed(ca: CertificateAuthority) -> None:
    exts: Ext = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (key_usage(key_cert_sign=True, crl_sign=True), False),
        uri_san(ID, "spiffe://shop.local/other"),
    ]
    past = datetime.now(UTC) - timedelta(days=3)
    cert = leaf(
        ca.issue_custom(extensions=exts, not_before=past, not_after=past + timedelta(days=1))[0]
    )
    reasons = [r for r, _ in svid_problems(cert)]
    assert reasons == [
        "uri_san_count",
        "ca_leaf",
        "key_usage_not_critical",
        "key_usage",
        "key_cert_sign",
        "crl_sign",
        "expired",
    ]
    with pytest.raises(SvidError) as info:
        validate_svid(der(cert))
    assert info.value.reason == "uri_san_count"
    assert [r for r, _ in info.value.problems] == reasons


def test_self_signed_cert_built_by_hand() -> None:
    """A certificate from outside any pymesh CA: the rules only look at the leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("orders")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert [r for r, _ in svid_problems(cert)] == ["uri_san_count", "key_usage"]


def test_garbage_der_is_malformed() -> None:
    with pytest.raises(SvidError) as info:
        validate_svid(b"\x30\x03\x02\x01\x01")
    assert info.value.reason == "malformed"
    with pytest.raises(SvidError):
        validate_svid(b"")


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, pos, pos + length


def _encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def test_duplicate_extensions_are_malformed(ca: CertificateAuthority) -> None:
    """DER surgery: repeat the first extension (the signature no longer matters here)."""
    data = der(leaf(ca.issue(ID, 3600)[0]))
    _, cert_start, cert_end = _tlv(data, 0)
    _, tbs_start, tbs_end = _tlv(data, cert_start)
    fields, pos = [], tbs_start
    while pos < tbs_end:
        tag, start, end = _tlv(data, pos)
        fields.append((tag, data[pos:end], data[start:end]))
        pos = end
    tag, _, explicit = fields[-1]
    assert tag == 0xA3  # [3] EXPLICIT Extensions
    _, seq_start, seq_end = _tlv(explicit, 0)
    _, _, first_end = _tlv(explicit, seq_start)
    first = explicit[seq_start:first_end]
    doubled = _encode(0xA3, _encode(0x30, explicit[seq_start:seq_end] + first))
    tbs = _encode(0x30, b"".join(f[1] for f in fields[:-1]) + doubled)
    forged = _encode(0x30, tbs + data[tbs_end:cert_end])
    with pytest.raises(SvidError) as info:
        validate_svid(forged)
    assert info.value.reason == "malformed"
    assert "Duplicate" in info.value.message
