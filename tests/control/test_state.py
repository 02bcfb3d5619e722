"""The control plane's state directory: init, load, replicas, its identity, and the CLI."""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from structlog.testing import capture_logs

from pymesh.cli import main
from pymesh.control.state import CONTROL_PLANE_NS, CONTROL_PLANE_SA, StateDir
from pymesh.control.tokens import TokenError, fingerprint, issue_token, read_token
from pymesh.tls import CertificateAuthority
from pymesh.tls.identity import key_pem, new_key

TD = "shop.local"
CP_ID = f"spiffe://{TD}/ns/{CONTROL_PLANE_NS}/sa/{CONTROL_PLANE_SA}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cp") / "state"
    StateDir.init(d, TD)
    return d


@pytest.fixture
def copy(state_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the module's state directory (safe to break)."""
    d = tmp_path / "copy"
    shutil.copytree(state_dir, d)
    return d


# -- init and load --------------------------------------------------------------------------------
def test_init_writes_the_layout_with_private_modes(state_dir: Path) -> None:
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "token-key.pem") == 0o600
    assert mode(state_dir / "ca") == 0o700
    assert mode(state_dir / "ca" / "intermediate-key.pem") == 0o600
    assert mode(state_dir / "ca" / "root-key.pem") == 0o600
    meta = json.loads((state_dir / "state.json").read_text())
    assert meta["format"] == 1 and meta["trust_domain"] == TD
    assert meta["created_at"].endswith("Z")
    assert b"BEGIN PRIVATE KEY" in (state_dir / "token-key.pem").read_bytes()  # PKCS#8


def test_init_then_load_round_trip(tmp_path: Path) -> None:
    made = StateDir.init(tmp_path / "s", TD)
    loaded = StateDir.load(tmp_path / "s")
    assert loaded.trust_domain == made.trust_domain == TD
    assert loaded.ca_fingerprint == made.ca_fingerprint
    assert loaded.control_plane_id == made.control_plane_id == CP_ID
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert loaded.public_key.public_bytes(*raw) == made.public_key.public_bytes(*raw)
    tok = loaded.verify_token(made.issue_token("orders", 600), service="orders")
    assert tok.service == "default/orders" and tok.trust_domain == TD
    assert tok.ca_fingerprint == made.ca_fingerprint and tok.control_plane_id == CP_ID


def test_init_into_an_existing_empty_dir_makes_it_private(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    StateDir.init(d, TD)
    assert mode(d) == 0o700


def test_init_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        StateDir.init(tmp_path, TD)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_init_refuses_a_bad_trust_domain_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid trust domain 'Shop'"):
        StateDir.init(tmp_path / "s", "Shop")
    assert not (tmp_path / "s").exists()


def test_two_copies_verify_each_others_tokens(state_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(state_dir, tmp_path / "a")
    shutil.copytree(state_dir, tmp_path / "b")
    a, b = StateDir.load(tmp_path / "a"), StateDir.load(tmp_path / "b")
    assert mode(tmp_path / "a" / "token-key.pem") == 0o600  # copytree keeps the modes
    assert b.verify_token(a.issue_token("orders", 600)).service == "default/orders"
    assert a.verify_token(b.issue_token("shop/web", 600), service="shop/web").name == "web"
    assert a.ca_fingerprint == b.ca_fingerprint


def test_another_state_dir_is_not_trusted(state_dir: Path, tmp_path: Path) -> None:
    other = StateDir.init(tmp_path / "other", TD)
    with pytest.raises(TokenError) as info:
        StateDir.load(state_dir).verify_token(other.issue_token("orders", 600))
    assert info.value.reason == "bad_signature"
    assert other.ca_fingerprint != StateDir.load(state_dir).ca_fingerprint


def test_verify_token_checks_service_time_revocation_and_trust_domain(state_dir: Path) -> None:
    state = StateDir.load(state_dir)
    token = state.issue_token("orders", 600)
    info = read_token(token)

    def reason(tok: str, **kw: object) -> str:
        with pytest.raises(TokenError) as err:
            state.verify_token(tok, **kw)  # type: ignore[arg-type]
        return err.value.reason

    assert reason(token, service="payments") == "wrong_service"
    assert reason(token, revoked={info.token_id}) == "revoked"
    assert reason(token, now=info.expires_at) == "expired"
    assert reason(state.issue_token("orders", 60, now=time.time() - 600)) == "expired"
    # signed with this directory's key for another trust domain: refused all the same
    other_td = issue_token(
        state.token_key,
        service="orders",
        trust_domain="other.local",
        ca_fingerprint=state.ca_fingerprint,
        control_plane_id="spiffe://other.local/ns/pymesh-system/sa/control-plane",
        ttl_s=600,
    )
    assert reason(other_td) == "wrong_trust_domain"


def test_control_plane_identity_is_an_svid_chaining_to_the_pinned_root(state_dir: Path) -> None:
    state = StateDir.load(state_dir)
    identity = state.control_plane_identity(ttl_s=3600)
    assert str(identity.spiffe_id) == CP_ID == state.control_plane_id
    assert identity.bundle_pem == state.ca.bundle_pem()
    leaf, *intermediates = x509.load_pem_x509_certificates(identity.chain_pem)
    roots = x509.load_pem_x509_certificates(identity.bundle_pem)
    verified = (
        PolicyBuilder().store(Store(roots)).build_client_verifier().verify(leaf, intermediates)
    )
    assert [str(s.value) for s in verified.subjects or []] == [CP_ID]
    assert fingerprint(verified.chain[-1]) == state.ca_fingerprint
    left = identity.not_after.timestamp() - time.time()
    assert 3500 < left <= 3600


def test_ca_fingerprint_is_the_root_the_intermediate_chains_to(copy: Path) -> None:
    # a root rotation in progress: the bundle holds a new root first, then the issuing one
    issuing_root = StateDir.load(copy).ca.roots[0]
    new_root = CertificateAuthority.create(TD).roots[0]
    bundle = copy / "ca" / "bundle.pem"
    bundle.write_bytes(new_root.public_bytes(serialization.Encoding.PEM) + bundle.read_bytes())
    state = StateDir.load(copy)
    assert len(state.ca.roots) == 2
    assert state.ca_fingerprint == fingerprint(issuing_root) != fingerprint(new_root)
    assert read_token(state.issue_token("orders", 60)).ca_fingerprint == fingerprint(issuing_root)


# -- load errors ----------------------------------------------------------------------------------
def test_load_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such directory.*pymesh control-plane init"):
        StateDir.load(tmp_path / "nope")


@pytest.mark.parametrize(
    ("missing", "match"),
    [
        ("state.json", r"state\.json: no such file"),
        ("token-key.pem", r"token-key\.pem: no such file"),
        ("ca/intermediate-key.pem", r"intermediate-key\.pem: no such file"),
        ("ca/ca.json", r"ca\.json: no such file"),
    ],
)
def test_load_names_the_missing_file(copy: Path, missing: str, match: str) -> None:
    (copy / missing).unlink()
    with pytest.raises(ValueError, match=match):
        StateDir.load(copy)


def test_load_works_without_the_root_key(copy: Path) -> None:
    (copy / "ca" / "root-key.pem").unlink()  # may be kept offline: serving never needs it
    assert StateDir.load(copy).verify_token(StateDir.load(copy).issue_token("x", 60))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{", r"state\.json: not JSON"),
        (b"[]", r"state\.json: not a JSON object"),
        (b'{"format": 2, "trust_domain": "shop.local"}', "unsupported format 2"),
        (b'{"format": 1}', "trust_domain is missing"),
        (b'{"format": 1, "trust_domain": "Shop"}', "invalid trust domain"),
        (b'{"format": 1, "trust_domain": "other.local"}', "CA is for trust domain shop.local"),
    ],
)
def test_load_refuses_a_bad_state_file(copy: Path, content: bytes, match: str) -> None:
    (copy / "state.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        StateDir.load(copy)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"garbage", "not a PEM private key"),
        (key_pem(new_key()), "not Ed25519"),
    ],
)
def test_load_refuses_a_bad_token_key(copy: Path, content: bytes, match: str) -> None:
    (copy / "token-key.pem").write_bytes(content)
    with pytest.raises(ValueError, match=rf"token-key\.pem: .*{match}"):
        StateDir.load(copy)


def test_load_warns_about_readable_keys(copy: Path) -> None:
    with capture_logs() as logs:
        StateDir.load(copy)
    assert logs == []
    (copy / "token-key.pem").chmod(0o644)
    (copy / "ca" / "intermediate-key.pem").chmod(0o640)
    with capture_logs() as logs:
        StateDir.load(copy)
    assert [e["event"] for e in logs] == ["state_key_readable"] * 2
    assert logs[0]["log_level"] == "warning"
    assert "token-key.pem is readable by group or others (mode 0644)" in logs[0]["message"]
    seen: list[str] = []
    StateDir.load(copy, warn=seen.append)
    assert len(seen) == 2 and "chmod 600" in seen[1]


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "state"
    argv = ["control-plane", "init", "--state-dir", str(d), "--trust-domain", TD]
    assert main(argv) == 0
    out = capsys.readouterr().out
    state = StateDir.load(d)
    assert f"trust domain {TD} in {d}" in out
    assert state.ca_fingerprint in out and str(d / "token-key.pem") in out and CP_ID in out
    assert mode(d / "token-key.pem") == 0o600
    # again: the directory is not empty any more
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pymesh control-plane init: ") and "not empty" in err


def test_cli_init_refuses_a_bad_trust_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["control-plane", "init", "--state-dir", str(tmp_path / "s"), "--trust-domain", "A"]
    assert main(argv) == 1
    assert "invalid trust domain 'A'" in capsys.readouterr().err


def test_cli_token_prints_only_the_token(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["control-plane", "token", "--state-dir", str(state_dir), "--service", "orders"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert cap.out.count("\n") == 1 and cap.out.startswith("pmt1.")
    tok = StateDir.load(state_dir).verify_token(cap.out, service="default/orders")
    assert tok.expires_at - tok.issued_at == 24 * 3600
    assert tok.token_id in cap.err and "default/orders" in cap.err

    assert main([*argv[:-1], "shop/web", "--ttl", "1h30m"]) == 0
    tok = StateDir.load(state_dir).verify_token(capsys.readouterr().out, service="shop/web")
    assert tok.expires_at - tok.issued_at == 5400


@pytest.mark.parametrize(
    ("extra", "status", "match"),
    [
        (["--ttl", "soon"], 2, "--ttl 'soon': not a positive duration"),
        (["--ttl", "0s"], 2, "not a positive duration"),
        (["--ttl", "9000h"], 2, "at most a year"),
        (["--service", "Orders"], 2, "--service: invalid service 'Orders'"),
    ],
)
def test_cli_token_usage_errors(
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    status: int,
    match: str,
) -> None:
    argv = ["control-plane", "token", "--state-dir", str(state_dir), "--service", "orders"]
    assert main([*argv, *extra]) == status
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith("pymesh control-plane token: ") and match in cap.err


def test_cli_token_names_a_bad_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["control-plane", "token", "--state-dir", str(tmp_path), "--service", "orders"]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and "state.json: no such file" in cap.err


def test_cli_token_warning_stays_off_stdout(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "token-key.pem").chmod(0o644)
    argv = ["control-plane", "token", "--state-dir", str(copy), "--service", "orders"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert StateDir.load(copy, warn=lambda _: None).verify_token(cap.out).name == "orders"
    assert "warning: " in cap.err and "token-key.pem" in cap.err
