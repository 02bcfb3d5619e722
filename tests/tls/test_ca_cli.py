"""`pymesh ca init | issue | inspect` through `pymesh.cli.main`."""

from __future__ import annotations

import json
import stat
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pymesh.cli import main
from pymesh.tls import CertificateAuthority, Identity, svid_extensions

ORDERS = "spiffe://shop.local/ns/default/sa/orders"


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(d), "--trust-domain", "shop.local"]) == 0
    capsys.readouterr()
    return d


def lifetime_from_now(cert_dir: Path) -> timedelta:
    leaf = x509.load_pem_x509_certificates((cert_dir / "cert.pem").read_bytes())[0]
    return leaf.not_valid_after_utc - datetime.now(UTC)


def close_to(actual: timedelta, expected: timedelta) -> bool:
    return abs(actual - expected) < timedelta(seconds=30)


def test_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(d), "--trust-domain", "shop.local"]) == 0
    out = capsys.readouterr().out
    assert "trust domain shop.local" in out and "bundle.pem (1 root)" in out
    assert stat.S_IMODE((d / "intermediate-key.pem").stat().st_mode) == 0o600
    assert CertificateAuthority.load(d).trust_domain == "shop.local"


def test_init_refuses_a_non_empty_dir(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", "--dir", str(ca_dir), "--trust-domain", "shop.local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pymesh ca init: ") and "not empty" in err


def test_init_refuses_a_bad_trust_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path / "x"), "--trust-domain", "Shop"]) == 1
    assert "invalid trust domain 'Shop'" in capsys.readouterr().err


def test_init_byo_flags_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ca", "init", "--dir", str(tmp_path / "x"), "--trust-domain", "shop.local"]
    assert main([*argv, "--intermediate-cert", "i.pem"]) == 1
    assert "go together" in capsys.readouterr().err


def test_init_byo_from_files(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # adopt the intermediate of an existing CA directory, as if it came from an org root
    d = tmp_path / "byo"
    argv = ["ca", "init", "--dir", str(d), "--trust-domain", "shop.local"]
    argv += ["--intermediate-cert", str(ca_dir / "intermediate.pem")]
    argv += ["--intermediate-key", str(ca_dir / "intermediate-key.pem")]
    argv += ["--root-cert", str(ca_dir / "root.pem")]
    assert main(argv) == 0
    assert not (d / "root-key.pem").exists()
    assert (d / "bundle.pem").read_bytes() == (ca_dir / "root.pem").read_bytes()


def test_issue_defaults_to_24h(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "orders"
    assert (
        main(["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert f"issued {ORDERS}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    identity = Identity.from_dir(out)
    assert str(identity.spiffe_id) == ORDERS
    assert len(x509.load_pem_x509_certificates(identity.chain_pem)) == 2  # leaf + intermediate
    assert close_to(lifetime_from_now(out), timedelta(hours=24))


def test_issue_ttl(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "orders"
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--out", str(out)]
    assert main([*argv, "--ttl", "1h"]) == 0
    assert close_to(lifetime_from_now(out), timedelta(hours=1))


def test_issue_ttl_from_config(ca_dir: Path, tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        textwrap.dedent(
            """\
            apiVersion: pymesh.io/v1alpha1
            kind: Mesh
            metadata: {name: shop}
            spec:
              trustDomain: shop.local
              certificateTTL: 2h
            """
        )
    )
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--config", str(mesh)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert close_to(lifetime_from_now(tmp_path / "a"), timedelta(hours=2))
    assert main([*argv, "--out", str(tmp_path / "b"), "--ttl", "30m"]) == 0  # --ttl wins
    assert close_to(lifetime_from_now(tmp_path / "b"), timedelta(minutes=30))


def test_issue_reports_config_errors(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n"
                    "spec: {certificateTTL: soon}\n")  # fmt: skip
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--config", str(mesh)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "certificateTTL" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ttl", ["soon", "0s", "-1h", ""])
def test_issue_refuses_bad_ttl(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl: str
) -> None:
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS]
    assert main([*argv, "--out", str(tmp_path / "o"), f"--ttl={ttl}"]) == 1
    assert "--ttl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_issue_refuses_a_non_empty_out(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "orders"
    out.mkdir()
    (out / "key.pem").write_bytes(b"precious")
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pymesh ca issue: ") and "not a new or empty directory" in err
    assert (out / "key.pem").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://other.local/ns/default/sa/x", "not in this CA's trust domain"),
        ("spiffe://shop.local/a b", "invalid SPIFFE ID"),
    ],
)
def test_issue_refuses_bad_ids(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spiffe_id: str, message: str
) -> None:
    argv = ["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", spiffe_id]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_issue_refuses_a_missing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ca", "issue", "--dir", str(tmp_path / "nope"), "--spiffe-id", ORDERS]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "ca.json: no such file" in capsys.readouterr().err


def test_inspect_a_good_certificate(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "orders"
    main(["ca", "issue", "--dir", str(ca_dir), "--spiffe-id", ORDERS, "--out", str(out)])
    capsys.readouterr()
    identity = Identity.from_dir(out)
    assert main(["ca", "inspect", str(out / "cert.pem")]) == 0
    text = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["identity"].strip() == ORDERS
    assert lines["issuer"].strip() == identity.issuer
    assert lines["serial"].strip() == f"{identity.serial:x}"
    assert lines["not before"].strip() == identity.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert lines["not after"].strip() == identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert lines["X509-SVID"].strip() == "valid"

    assert main(["ca", "inspect", str(out / "cert.pem"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["identity"] == ORDERS
    assert info["valid_svid"] is True and info["problems"] == []
    assert info["serial"] == f"{identity.serial:x}"
    assert info["chain_length"] == 2
    expected = identity.to_dict()
    for key in ("identity", "serial", "issuer", "not_before", "not_after"):
        assert info[key] == expected[key], key


def test_inspect_a_bad_certificate_lists_every_broken_rule(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority.load(ca_dir)
    exts = [
        e
        for e in svid_extensions(ORDERS)
        if not isinstance(e[0], x509.KeyUsage | x509.SubjectAlternativeName)
    ]
    uris = [x509.UniformResourceIdentifier(u) for u in (ORDERS, "spiffe://shop.local/x")]
    exts.append((x509.SubjectAlternativeName(uris), True))
    chain, _ = ca.issue_custom(extensions=exts)
    path = tmp_path / "bad.pem"
    path.write_bytes(chain)
    assert main(["ca", "inspect", str(path)]) == 1
    text = capsys.readouterr().out
    assert "X509-SVID:   NOT valid" in text
    assert "  - uri_san_count: has 2 URI SANs" in text
    assert "  - key_usage: has no keyUsage extension" in text
    assert main(["ca", "inspect", "--json", str(path)]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["valid_svid"] is False
    assert info["identity"] is None
    assert info["uris"] == [ORDERS, "spiffe://shop.local/x"]
    assert [p["reason"] for p in info["problems"]] == ["uri_san_count", "key_usage"]


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "inspect", str(tmp_path / "missing.pem")]) == 1
    assert "missing.pem: no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    assert main(["ca", "inspect", str(junk)]) == 1
    assert "no valid PEM certificate" in capsys.readouterr().err
