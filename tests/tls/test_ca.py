"""The CA (create, init_dir, load, bring-your-own intermediate, CSR signing) and Identity."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pymesh.tls import (
    CertificateAuthority,
    Identity,
    SpiffeId,
    key_pem,
    make_csr,
    new_key,
    validate_svid,
)
from pymesh.tls.identity import chain_problem

TD = "shop.local"
ORDERS = "spiffe://shop.local/ns/default/sa/orders"
OPENSSL = shutil.which("openssl")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_verify(tmp: Path, bundle: bytes, chain: bytes, *extra: str) -> str:
    """`openssl verify -CAfile bundle -untrusted <intermediates> leaf`; returns its output."""
    assert OPENSSL is not None
    parts = certs(chain)
    (tmp / "v-bundle.pem").write_bytes(bundle)
    (tmp / "v-leaf.pem").write_bytes(pem(parts[0]))
    (tmp / "v-untrusted.pem").write_bytes(b"".join(pem(c) for c in parts[1:]))
    cmd = [OPENSSL, "verify", "-x509_strict", *extra, "-CAfile", str(tmp / "v-bundle.pem")]
    cmd += ["-untrusted", str(tmp / "v-untrusted.pem"), str(tmp / "v-leaf.pem")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


# -- create / init_dir / load -------------------------------------------------------------------
def test_create_in_memory(ca: CertificateAuthority) -> None:
    assert ca.trust_domain == TD
    (root,) = certs(ca.bundle_pem())
    (intermediate,) = ca.chain
    assert root.issuer == root.subject
    assert intermediate.issuer == root.subject
    for cert, path_len in ((root, 1), (intermediate, 0)):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop.local"]
    assert intermediate.not_valid_after_utc <= root.not_valid_after_utc
    assert chain_problem(list(ca.chain), list(ca.roots)) is None


@pytest.mark.parametrize("bad", ["", "Shop.local", "shop.local:80", "a/b"])
def test_create_refuses_bad_trust_domains(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid trust domain"):
        CertificateAuthority.create(bad)


def test_init_dir_writes_files_with_safe_modes(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init_dir(d, TD)
    names = sorted(p.name for p in d.iterdir())
    assert names == [
        "bundle.pem",
        "ca.json",
        "intermediate-key.pem",
        "intermediate.pem",
        "root-key.pem",
        "root.pem",
    ]
    assert mode(d) == 0o700
    assert mode(d / "intermediate-key.pem") == 0o600
    assert mode(d / "root-key.pem") == 0o600
    assert mode(d / "bundle.pem") == 0o644
    assert json.loads((d / "ca.json").read_text())["trust_domain"] == TD
    assert (d / "bundle.pem").read_bytes() == ca.bundle_pem()
    assert (d / "root.pem").read_bytes() == ca.bundle_pem()


def test_load_round_trip(tmp_path: Path) -> None:
    made = CertificateAuthority.init_dir(tmp_path / "ca", TD)
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.trust_domain == TD
    assert loaded.bundle_pem() == made.bundle_pem()
    assert loaded.intermediate_pem() == made.intermediate_pem()
    chain, key = loaded.issue(ORDERS, 600)
    identity = Identity.from_pem(chain, key, made.bundle_pem())  # trusted by the original
    assert str(identity.spiffe_id) == ORDERS


def test_init_dir_accepts_an_existing_empty_dir(tmp_path: Path) -> None:
    CertificateAuthority.init_dir(tmp_path, TD)
    assert (tmp_path / "intermediate.pem").exists()


def test_init_dir_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        CertificateAuthority.init_dir(tmp_path, TD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_init_dir_bad_trust_domain_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid trust domain"):
        CertificateAuthority.init_dir(tmp_path / "ca", "BAD")
    assert not (tmp_path / "ca").exists()


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ca\.json: no such file"):
        CertificateAuthority.load(tmp_path)
    CertificateAuthority.init_dir(tmp_path / "ca", TD)
    (tmp_path / "ca" / "intermediate-key.pem").unlink()
    with pytest.raises(ValueError, match=r"intermediate-key\.pem: no such file"):
        CertificateAuthority.load(tmp_path / "ca")


def test_load_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    CertificateAuthority.init_dir(tmp_path / "ca", TD)
    (tmp_path / "ca" / "intermediate-key.pem").write_bytes(key_pem(new_key()))
    with pytest.raises(ValueError, match=r"intermediate-key\.pem does not match"):
        CertificateAuthority.load(tmp_path / "ca")


# -- bring your own intermediate ----------------------------------------------------------------
def _org_ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = True,
    path_length: int | None = None,
) -> x509.Certificate:
    """An organisation's CA certificate, made with cryptography directly."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Org"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer_cert is None else issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def org() -> dict[str, bytes]:
    """Org root → org intermediate → pymesh intermediate (the one handed to pymesh)."""
    root_key, mid_key, mesh_key = new_key(), new_key(), new_key()
    root = _org_ca("Example Root CA", root_key, None)
    mid = _org_ca("Example Issuing CA", mid_key, (root, root_key), path_length=1)
    mesh = _org_ca("pymesh for shop.local", mesh_key, (mid, mid_key), path_length=0)
    other_key = new_key()
    other_root = _org_ca("Unrelated Root", other_key, None)
    return {
        "root": pem(root),
        "mid": pem(mid),
        "mesh": pem(mesh),
        "mesh_key": key_pem(mesh_key),
        "mid_key": key_pem(mid_key),
        "other_root": pem(other_root),
    }


def test_byo_intermediate_issues_leaves_that_chain_to_the_org_root(
    tmp_path: Path, org: dict[str, bytes]
) -> None:
    (tmp_path / "int.pem").write_bytes(org["mesh"] + org["mid"])  # issuing cert first
    (tmp_path / "int-key.pem").write_bytes(org["mesh_key"])
    (tmp_path / "root.pem").write_bytes(org["root"])
    d = tmp_path / "ca"
    ca = CertificateAuthority.init_dir(
        d,
        TD,
        intermediate_cert=tmp_path / "int.pem",
        intermediate_key=str(tmp_path / "int-key.pem"),
        root_cert=tmp_path / "root.pem",
    )
    assert sorted(p.name for p in d.iterdir()) == [
        "bundle.pem",
        "ca.json",
        "intermediate-key.pem",
        "intermediate.pem",
    ]  # no root key: the organisation keeps it
    assert mode(d / "intermediate-key.pem") == 0o600
    assert ca.bundle_pem() == org["root"]
    loaded = CertificateAuthority.load(d)
    chain, key = loaded.issue(ORDERS, 3600)
    assert len(certs(chain)) == 3  # leaf, pymesh intermediate, org intermediate
    identity = Identity.from_pem(chain, key, org["root"])
    assert identity.issuer == "CN=pymesh for shop.local,O=Example Org"
    assert chain_problem(certs(chain), certs(org["root"])) is None
    if OPENSSL is not None:
        out = openssl_verify(tmp_path, org["root"], chain, "-purpose", "sslclient")
        assert out.strip().endswith("OK"), out


def test_byo_accepts_pem_bytes_and_several_roots(org: dict[str, bytes], tmp_path: Path) -> None:
    ca = CertificateAuthority.init_dir(
        tmp_path / "ca",
        TD,
        intermediate_cert=org["mesh"] + org["mid"],
        intermediate_key=org["mesh_key"],
        root_cert=org["other_root"] + org["root"],
    )
    assert len(ca.roots) == 2
    Identity.from_pem(*ca.issue(ORDERS, 60), ca.bundle_pem())


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("mesh", "mesh_key", None), "together"),
        (("mesh", "mid_key", "root"), "does not match"),
        (("mesh", "mesh_key", "other_root"), "does not lead to a root"),
        (("mesh", "mesh_key", "mesh_key"), "no valid PEM certificate"),
        (("mesh_key", "mesh_key", "root"), "no valid PEM certificate"),
        (("mesh", "mesh", "root"), "not a PEM private key"),
    ],
)
def test_byo_refusals(
    tmp_path: Path,
    org: dict[str, bytes],
    names: tuple[str, str, str | None],
    message: str,
) -> None:
    cert, key, root = names
    with pytest.raises(ValueError, match=message):
        CertificateAuthority.init_dir(
            tmp_path / "ca",
            TD,
            intermediate_cert=org[cert],
            intermediate_key=org[key],
            root_cert=None if root is None else org[root],
        )
    assert not (tmp_path / "ca").exists()


def test_byo_refuses_a_leaf_as_intermediate(tmp_path: Path, org: dict[str, bytes]) -> None:
    root_key, key = new_key(), new_key()
    root = _org_ca("R", root_key, None)
    not_ca = _org_ca("not a CA", key, (root, root_key), ca=False)
    with pytest.raises(ValueError, match="not a CA certificate"):
        CertificateAuthority.init_dir(
            tmp_path / "ca",
            TD,
            intermediate_cert=pem(not_ca),
            intermediate_key=key_pem(key),
            root_cert=pem(root),
        )


def test_byo_refuses_a_file_that_does_not_exist(tmp_path: Path, org: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match=r"nope\.pem: no such file"):
        CertificateAuthority.init_dir(
            tmp_path / "ca",
            TD,
            intermediate_cert=tmp_path / "nope.pem",
            intermediate_key=org["mesh_key"],
            root_cert=org["root"],
        )


# -- issuing ------------------------------------------------------------------------------------
def test_sign_csr_sets_its_own_names_and_ignores_the_csr_s(ca: CertificateAuthority) -> None:
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://shop.local/ns/kube-system/sa/admin"),
                    x509.DNSName("evil.example"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    chain = ca.sign_csr(csr, ORDERS, 3600)
    leaf, intermediate = certs(chain)
    assert intermediate == ca.chain[0]
    assert len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(ORDERS)]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert validate_svid(leaf, trust_domains={TD}) == SpiffeId.parse(ORDERS)
    identity = Identity.from_pem(chain, key_pem(key), ca.bundle_pem())
    assert identity.spiffe_id == SpiffeId.parse(ORDERS)


def test_sign_csr_accepts_der_and_spiffe_id_objects(ca: CertificateAuthority) -> None:
    key = new_key()
    csr = x509.load_pem_x509_csr(make_csr(key, ORDERS))
    der = csr.public_bytes(serialization.Encoding.DER)
    chain = ca.sign_csr(der, SpiffeId.parse(ORDERS), 60)
    assert validate_svid(certs(chain)[0]) == SpiffeId.parse(ORDERS)


def test_tampered_csr_is_refused(ca: CertificateAuthority) -> None:
    key = new_key()
    asked = "spiffe://shop.local/ns/default/sa/aaaaaaaa"
    der = x509.load_pem_x509_csr(make_csr(key, asked)).public_bytes(serialization.Encoding.DER)
    assert der.count(b"aaaaaaaa") == 1
    tampered = der.replace(b"aaaaaaaa", b"bbbbbbbb")
    with pytest.raises(ValueError, match="signature does not verify"):
        ca.sign_csr(tampered, ORDERS, 60)


def test_garbage_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="not a certificate signing request"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END", ORDERS, 60)


@pytest.mark.parametrize(
    ("key_factory", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "EC secp384r1"),
        (lambda: rsa.generate_private_key(65537, 1024), "RSA 1024 bits"),
    ],
)
def test_weak_or_unexpected_keys_are_refused(
    ca: CertificateAuthority, key_factory: object, message: str
) -> None:
    assert callable(key_factory)
    key = key_factory()
    with pytest.raises(ValueError, match=message):
        ca.sign_csr(make_csr(key, ORDERS), ORDERS, 60)


def test_rsa_2048_is_accepted(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(65537, 2048)
    chain = ca.sign_csr(make_csr(key, ORDERS), ORDERS, 60)
    Identity.from_pem(chain, key_pem(key), ca.bundle_pem())


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://other.local/ns/default/sa/orders", "not in this CA's trust domain"),
        ("spiffe://shop.local", "has no path"),
        ("spiffe://shop.local/ns//sa/x", "empty segment"),
    ],
)
def test_ids_the_ca_will_not_sign(ca: CertificateAuthority, spiffe_id: str, message: str) -> None:
    csr = make_csr(new_key(), ORDERS)
    with pytest.raises(ValueError, match=message):
        ca.sign_csr(csr, spiffe_id, 60)
    with pytest.raises(ValueError, match=message):
        ca.issue(spiffe_id, 60)


def test_ttl_is_respected_and_capped_by_the_intermediate(ca: CertificateAuthority) -> None:
    before = datetime.now(UTC)
    leaf = certs(ca.issue(ORDERS, 3600)[0])[0]
    lifetime = leaf.not_valid_after_utc - before
    assert timedelta(seconds=3590) < lifetime <= timedelta(seconds=3601)
    assert leaf.not_valid_before_utc < before  # backdated for clock skew
    long = certs(ca.issue(ORDERS, 3 * 365 * 86400)[0])[0]
    assert long.not_valid_after_utc == ca.chain[0].not_valid_after_utc
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            ca.issue(ORDERS, bad)


@needs_openssl
def test_openssl_verifies_issued_leaves(ca: CertificateAuthority, tmp_path: Path) -> None:
    chain, _key = ca.issue(ORDERS, 3600)
    for purpose in ("sslclient", "sslserver"):
        out = openssl_verify(tmp_path, ca.bundle_pem(), chain, "-purpose", purpose)
        assert out.strip().endswith("OK"), out
    other = CertificateAuthority.create(TD)
    out = openssl_verify(tmp_path, other.bundle_pem(), chain)
    assert "verification failed" in out, out


def test_with_roots_keeps_old_and_new_roots(ca: CertificateAuthority) -> None:
    new = CertificateAuthority.create(TD)
    both = ca.with_roots(new.bundle_pem())
    assert len(both.roots) == 2
    assert both.with_roots(new.bundle_pem()).roots == both.roots  # no duplicates
    Identity.from_pem(*new.issue(ORDERS, 60), both.bundle_pem())
    Identity.from_pem(*both.issue(ORDERS, 60), both.bundle_pem())


# -- Identity -----------------------------------------------------------------------------------
def test_identity_fields_and_to_dict(ca: CertificateAuthority) -> None:
    identity = ca.issue_identity(ORDERS, 7200)
    leaf = certs(identity.chain_pem)[0]
    assert identity.serial == leaf.serial_number
    assert identity.issuer == ca.chain[0].subject.rfc4514_string()
    assert identity.not_after == leaf.not_valid_after_utc
    now = identity.not_after - timedelta(seconds=100.5)
    d = identity.to_dict(now=now)
    assert d["identity"] == ORDERS
    assert d["serial"] == f"{leaf.serial_number:x}"
    assert d["issuer"] == identity.issuer
    assert d["not_after"] == identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert d["not_before"].endswith("Z")
    assert d["seconds_left"] == 100
    assert "PRIVATE" not in repr(identity)


def test_identity_renew_at(ca: CertificateAuthority) -> None:
    identity = ca.issue_identity(ORDERS, 3600)
    span = identity.not_after - identity.not_before
    assert identity.renew_at() == identity.not_before + span / 2
    assert identity.renew_at(0.8) == identity.not_before + span * 0.8
    assert identity.renew_at(1.0) == identity.not_after
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            identity.renew_at(bad)


def test_identity_dir_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    identity = ca.issue_identity(ORDERS, 3600)
    d = tmp_path / "orders"
    identity.write_dir(d)
    assert sorted(p.name for p in d.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]
    assert mode(d / "key.pem") == 0o600
    assert mode(d / "cert.pem") == 0o644
    assert Identity.from_dir(d) == identity
    with pytest.raises(FileExistsError, match="not empty"):
        identity.write_dir(d)
    renewed = ca.issue_identity(ORDERS, 3600)
    renewed.write_dir(d, require_empty=False)  # rotation: replace in place
    assert Identity.from_dir(d) == renewed
    assert mode(d / "key.pem") == 0o600
    assert sorted(p.name for p in d.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]


def test_identity_refuses_a_mismatched_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    chain, _key = ca.issue(ORDERS, 60)
    with pytest.raises(ValueError, match="private key does not match the certificate"):
        Identity.from_pem(chain, key_pem(new_key()), ca.bundle_pem())
    ca.issue_identity(ORDERS, 60).write_dir(tmp_path)
    (tmp_path / "key.pem").write_bytes(key_pem(new_key()))
    with pytest.raises(ValueError, match=r"key\.pem does not match the certificate in .*cert\.pem"):
        Identity.from_dir(tmp_path)


def test_identity_errors_name_the_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cert\.pem: no such file"):
        Identity.from_dir(tmp_path)
    ca.issue_identity(ORDERS, 60).write_dir(tmp_path)
    (tmp_path / "bundle.pem").write_bytes(b"not pem")
    with pytest.raises(ValueError, match=r"bundle\.pem: no valid PEM certificate"):
        Identity.from_dir(tmp_path)


def test_identity_refuses_a_foreign_chain(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create(TD)
    chain, key = other.issue(ORDERS, 60)
    with pytest.raises(ValueError, match="does not lead to a root in trust bundle"):
        Identity.from_pem(chain, key, ca.bundle_pem())


def test_identity_refuses_expired_and_invalid_leaves(ca: CertificateAuthority) -> None:
    past = datetime.now(UTC) - timedelta(hours=3)
    chain, key = ca.issue(ORDERS, 3600, not_before=past)
    with pytest.raises(ValueError, match=r"not a valid X509-SVID.*expired"):
        Identity.from_pem(chain, key, ca.bundle_pem())
    assert Identity.from_pem(chain, key, ca.bundle_pem(), now=past + timedelta(minutes=5))


def test_make_csr_and_key_pem() -> None:
    key = new_key()
    assert isinstance(key.curve, ec.SECP256R1)
    csr = x509.load_pem_x509_csr(make_csr(key, ORDERS))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS]
    assert key_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError, match="invalid SPIFFE ID"):
        make_csr(key, "spiffe://shop.local/a b")
