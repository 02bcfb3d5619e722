"""`pymesh explain`: ALLOW/DENY first, then the rule and the TrafficTargets; exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymesh.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"
CONFIG = [
    "--config",
    str(FIXTURES / "authz" / "mesh.yaml"),
    "--config",
    str(FIXTURES / "smi" / "01-traffic-access-v1alpha3-l7-example.yaml"),
]
PROMETHEUS = "spiffe://smi.example/ns/default/sa/prometheus"


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_allow(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = explain(
        capsys, *CONFIG, "--from", "prometheus", "--to", "api-service", "GET", "/metrics"
    )
    assert status == 0
    assert err == ""
    assert lines[0] == f"ALLOW GET /metrics from {PROMETHEUS} to default/api-service:8080"
    assert lines[1] == (
        "rule: TrafficTarget/default/api-service-metrics "
        "HTTPRouteGroup/default/api-service-routes:metrics TCPRoute/default/api-service-port:8080"
    )
    assert "  HTTPRouteGroup/default/api-service-routes match 'metrics': matches" in lines
    assert lines[-1] == "mode: enforce"


def test_deny_names_the_traffictarget_and_the_failing_condition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines, _ = explain(
        capsys, *CONFIG, "--from", "default/prometheus", "--to", "api-service", "GET", "/api/x"
    )
    assert status == 0
    assert lines[0] == f"DENY GET /api/x from {PROMETHEUS} to default/api-service:8080"
    assert lines[1].startswith(f"reason: no TrafficTarget allows source {PROMETHEUS}")
    assert "TrafficTarget/default/api-service-metrics: source listed" in lines
    assert (
        "  HTTPRouteGroup/default/api-service-routes match 'metrics': path '/api/x' does not "
        "match pathRegex '/metrics' (from its start)"
    ) in lines
    assert any(
        line.startswith("TrafficTarget/default/api-service-api: source not listed")
        for line in lines
    )
    assert lines[-1] == "mode: enforce: denied (403 authz_denied)"


def test_spiffe_and_unauthenticated_sources(capsys: pytest.CaptureFixture[str]) -> None:
    web = "spiffe://smi.example/ns/default/sa/website-service"
    status, lines, _ = explain(capsys, *CONFIG, "--from", web, "--to", "api-service", "put", "/api")
    assert status == 0
    assert lines[0] == f"ALLOW PUT /api from {web} to default/api-service:8080"
    status, lines, _ = explain(capsys, *CONFIG, "--from", "-", "--to", "api-service", "GET", "/api")
    assert status == 0
    assert lines[0].startswith("DENY GET /api from unauthenticated (plaintext) peer")
    assert lines[1].startswith("reason: unauthenticated source (plaintext)")


def test_port_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    # TCP: the first port; HTTP: the first http/http2/grpc (or undeclared) port
    _, lines, _ = explain(capsys, *CONFIG, "--from", "prometheus", "--to", "ledger")
    assert lines[0] == f"ALLOW TCP connection from {PROMETHEUS} to default/ledger:5432"
    assert lines[1] == (
        "reason: no TrafficTarget names default/ledger (ServiceAccount default/ledger): "
        "allow-list not active"
    )
    _, lines, _ = explain(capsys, *CONFIG, "--from", "prometheus", "--to", "ledger", "GET")
    assert lines[0] == f"ALLOW GET / from {PROMETHEUS} to default/ledger:8000"
    status, lines, _ = explain(
        capsys, *CONFIG, "--from", "website-service", "--to", "api-service", "--port", "9090",
        "GET", "/api",
    )  # fmt: skip
    assert status == 0
    assert lines[0].startswith("DENY GET /api from") and lines[0].endswith(":9090")
    assert "allows it only on port 8080" in lines[1]


def test_headers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        """
kind: Mesh
metadata: {name: h}
spec: {trustDomain: h.local}
---
kind: Service
metadata: {name: api}
spec: {serviceAccount: api, ports: [{port: 80, protocol: http}]}
---
kind: Service
metadata: {name: web}
spec: {serviceAccount: web}
---
kind: HTTPRouteGroup
metadata: {name: g}
spec:
  matches: [{name: beta, headers: {x-beta: "yes|true"}}]
---
kind: TrafficTarget
metadata: {name: tt}
spec:
  destination: {kind: ServiceAccount, name: api}
  sources: [{kind: ServiceAccount, name: web}]
  rules: [{kind: HTTPRouteGroup, name: g}]
"""
    )
    config = ["--config", str(tmp_path / "mesh.yaml"), "--from", "web", "--to", "api"]
    _, lines, _ = explain(capsys, *config, "--header", "X-Beta=true", "GET", "/")
    assert lines[0].startswith("ALLOW GET / from spiffe://h.local/ns/default/sa/web")
    _, lines, _ = explain(capsys, *config, "--header", "X-Beta=truex", "GET", "/")
    assert lines[0].startswith("DENY")
    assert "  HTTPRouteGroup/default/g match 'beta': header x-beta value 'truex' does not " in (
        "\n".join(lines)
    )
    status, _, err = explain(capsys, *config, "--header", "nope", "GET", "/")
    assert status == 2
    assert "--header 'nope': expected NAME=VALUE" in err


def test_audit_mode_and_tcp_ports(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        """
kind: Mesh
metadata: {name: a}
spec: {trustDomain: a.local, authorization: audit}
---
kind: Service
metadata: {name: db}
spec: {serviceAccount: db, ports: [{port: 5432, protocol: tcp}]}
---
kind: Service
metadata: {name: bare}
spec: {serviceAccount: bare}
---
kind: TCPRoute
metadata: {name: other}
spec: {matches: {ports: [6000]}}
---
kind: TrafficTarget
metadata: {name: tt}
spec:
  destination: {kind: ServiceAccount, name: db}
  sources: [{kind: ServiceAccount, name: api}]
  rules: [{kind: TCPRoute, name: other}]
"""
    )
    config = ["--config", str(tmp_path / "mesh.yaml")]
    src = "spiffe://a.local/ns/default/sa/api"
    status, lines, _ = explain(capsys, *config, "--from", src, "--to", "db")
    assert status == 0
    assert lines[0] == f"DENY TCP connection from {src} to default/db:5432"
    assert lines[-1] == (
        "mode: audit (audit mode: would be denied, not enforced; logged as audit_deny)"
    )
    _, lines, _ = explain(capsys, *config, "--from", src, "--to", "db", "GET", "/")
    assert lines[1].startswith("note: port 5432 is a tcp port")
    assert "a TCP connection on port 5432 does not match" in lines[2]
    status, _, err = explain(capsys, *config, "--from", src, "--to", "bare")
    assert status == 2
    assert "--port is required: Service default/bare declares no ports" in err
    status, lines, _ = explain(capsys, *config, "--from", src, "--to", "bare", "--port", "1")
    assert (status, lines[0]) == (0, f"ALLOW TCP connection from {src} to default/bare:1")


def test_bad_config_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: '80'}]}\n")
    status, lines, err = explain(capsys, "--config", str(bad), "--from", "x", "--to", "x")
    assert status == 1
    assert lines == []
    assert f"{bad}:3: Service/default/x: spec.ports[0].port: got string" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--from", "nobody"), ("--to", "nowhere"), ("--to", "other/api-service")],
)
def test_unknown_service_exits_2(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    args = {"--from": "prometheus", "--to": "api-service", flag: value}
    status, lines, err = explain(
        capsys, *CONFIG, "--from", args["--from"], "--to", args["--to"], "GET", "/"
    )
    assert status == 2
    assert lines == []
    assert err.startswith(f"pymesh explain: {flag} {value}: no Service '{value}' in the config")
    assert "default/api-service" in err  # the names that exist


def test_path_without_method_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = explain(
        capsys, *CONFIG, "--from", "prometheus", "--to", "api-service", "/metrics"
    )
    assert status == 2
    assert "give METHOD before PATH (e.g. GET /metrics)" in err
