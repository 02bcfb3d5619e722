"""`pymesh demo`: the bundled shop under traffic, and the pieces of its live table
(Prometheus text parsing, histogram quantiles, per-service aggregation, redraw)."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pymesh.control.demo import (
    Dashboard,
    LoadClient,
    ServiceStats,
    aggregate,
    bundled_config,
    histogram_quantile,
    parse_prometheus,
)
from pymesh.control.up import ServiceRuntime
from pymesh.observe.metrics import REQUEST_LABELS, MetricsRegistry, mesh_metrics

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"(?P<name>\S+) +(?P<requests>\d+) +(?P<rps>[\d.]+) +(?P<errors>\d+) ")
MTLS = re.compile(r"^(?P<name>\S+) +\d+ .* (?P<mtls>\d+)%$", re.M)


def _final_table(out: str) -> dict[str, int]:
    """Requests per service in the last table printed."""
    lines = out.splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("SERVICE "))
    rows: dict[str, int] = {}
    for line in lines[header + 1 :]:
        m = ROW.match(line)
        if m is None:
            break
        rows[m["name"]] = int(m["requests"])
    return rows


def test_demo_runs_traffic_through_every_service_and_exits_0() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pymesh", "demo", "--duration", "4", "--rate", "40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = _final_table(proc.stdout)
    assert set(rows) >= {"web", "orders", "inventory"}, proc.stdout
    assert all(rows[s] > 0 for s in ("web", "orders", "inventory")), proc.stdout
    # Between sidecars everything is mutual TLS; only the demo client's calls to web (the
    # PERMISSIVE front door) arrive in plaintext.
    mtls = {m["name"]: int(m["mtls"]) for m in MTLS.finditer(proc.stdout)}
    assert mtls["orders"] == 100 and mtls["inventory"] == 100 and mtls["web"] == 0, proc.stdout
    m = re.search(r"^client -> web: (\d+) sent, (\d+) ok, ", proc.stdout, re.M)
    assert m and int(m[2]) > 0, proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: no cursor movement


@pytest.mark.parametrize("args", [["--rate", "0"], ["--duration", "-1"], ["--rate", "nan"]])
def test_demo_rejects_bad_numbers(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pymesh", "demo", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 2
    assert "positive" in proc.stderr


def test_bundled_config_is_the_shop() -> None:
    assert bundled_config() == ROOT / "examples" / "shop" / "mesh.yaml"


# --- metrics pieces ------------------------------------------------------------------------------


def _labels(
    service: str, code: str, reporter: str = "destination", flags: str = "-"
) -> tuple[str, ...]:
    values = dict.fromkeys(REQUEST_LABELS, "unknown")
    values.update(
        reporter=reporter, destination_service=service, response_code=code, response_flags=flags
    )
    return tuple(values[n] for n in REQUEST_LABELS)


def test_parse_and_aggregate_read_the_sidecars_own_exposition() -> None:
    registry = MetricsRegistry()
    m = mesh_metrics(registry)
    web, orders = "web.default.svc.cluster.local", "orders.default.svc.cluster.local"
    for code, n, ms in (("200", 90, 3.0), ("503", 6, 0.7), ("404", 4, 30.0)):
        m.requests_total.inc(_labels(web, code), n)
        for _ in range(n):
            m.request_duration_ms.observe(_labels(web, code), ms)
    m.requests_total.inc(_labels(orders, "502", flags="upstream_reset"), 2)
    m.requests_total.inc(_labels(orders, "200"), 8)
    m.requests_total.inc(_labels(orders, "200", reporter="source"), 50)  # not counted

    stats = aggregate(parse_prometheus(registry.render().decode()))
    assert set(stats) == {web, orders}
    assert (stats[web].requests, stats[web].errors) == (100, 6)
    assert (stats[orders].requests, stats[orders].errors) == (10, 2)
    assert stats[web].buckets[math.inf] == 100
    assert stats[web].buckets[1.0] == 6 and stats[web].buckets[5.0] == 96
    p50 = stats[web].quantile(0.5)
    assert p50 is not None and 1.0 < p50 <= 5.0
    p99 = stats[web].quantile(0.99)
    assert p99 is not None and 25.0 < p99 <= 50.0
    assert stats[orders].quantile(0.5) is None  # no durations observed


def test_parse_prometheus_label_escapes_and_junk() -> None:
    text = (
        "# HELP x y\n# TYPE x counter\n"
        'x{a="q\\"uote",b="back\\\\slash",c="new\\nline",d="}{,"} 3\n'
        "plain 1.5e3\n"
        "not a sample line\n"
        "\n"
        'inf{le="+Inf"} +Inf\n'
        "ts 2 1700000000000\n"
    )
    assert list(parse_prometheus(text)) == [
        ("x", {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": "}{,"}, 3.0),
        ("plain", {}, 1500.0),
        ("inf", {"le": "+Inf"}, math.inf),
        ("ts", {}, 2.0),
    ]


def test_histogram_quantile_like_prometheus() -> None:
    buckets = {1.0: 0.0, 5.0: 10.0, 10.0: 20.0, math.inf: 20.0}
    assert histogram_quantile(0.5, buckets) == 5.0
    assert histogram_quantile(0.75, buckets) == 7.5
    assert histogram_quantile(0.25, buckets) == 3.0
    assert histogram_quantile(0.5, {0.5: 4.0, math.inf: 4.0}) == 0.25  # lower bound is 0
    assert histogram_quantile(0.99, {10.0: 1.0, math.inf: 10.0}) == 10.0  # in +Inf
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None


def test_dashboard_rows_in_mesh_order_and_redraw_in_place() -> None:
    def svc(name: str, ns: str = "default") -> ServiceRuntime:
        return ServiceRuntime(
            name=name, namespace=ns, meshed=True, app=None, apps=(), admin=("127.0.0.1", 1)
        )

    out = io.StringIO()
    client = LoadClient(("127.0.0.1", 1), "web", rate=10)
    board = Dashboard(
        [svc("web"), svc("pay", "billing")], client, target="web", duration=20, out=out, tty=True
    )
    stats = {
        "pay.billing.svc.cluster.local": ServiceStats(requests=4, errors=1),
        "web.default.svc.cluster.local": ServiceStats(
            requests=10, buckets={5.0: 10.0, math.inf: 10.0}
        ),
        "elsewhere": ServiceStats(requests=1),
    }
    lines = board.render(stats, elapsed=2.0, now=2.0)
    assert [line.split()[0] for line in lines[2:-1]] == ["web", "billing/pay", "elsewhere"]
    assert ROW.match(lines[3]) and " 25.0%" in lines[3]
    board.show(lines)
    board.show(lines)
    assert out.getvalue().count(f"\x1b[{len(lines)}F\x1b[J") == 1
