"""The benchmark harness's pure parts: wrk parsing, medians and ratios, the result schema,
the README table, row selection and the generated peer configs. No load is generated here."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level package of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import machine, peers, report, run  # noqa: E402
from benchmarks.h2loadparse import (  # noqa: E402
    H2loadParseError,
    parse_h2load,
    percentiles_from_log,
)
from benchmarks.wrkparse import (  # noqa: E402
    WrkParseError,
    fixed_rate_lua,
    parse_time_us,
    parse_wrk,
)

WRK_US = """\
Running 10s test @ http://127.0.0.1:18081/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   493.04us   78.65us   3.38ms   91.01%
    Req/Sec    96.54k     3.42k  101.03k    80.00%
  Latency Distribution
     50%  490.00us
     75%  511.00us
     90%  540.00us
     99%  780.00us
  960612 requests in 10.00s, 217.00MB read
Requests/sec:  96058.13
Transfer/sec:     21.70MB
"""

WRK_MIXED_WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.30ms    4.02ms    1.02s    88.10%
    Req/Sec     2.35k   702.47     2.90k    81.82%
  Latency Distribution
     50%   20.51ms
     75%   22.00ms
     90%   25.12ms
     99%    1.50s
  7062 requests in 3.10s, 1.60MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:   2278.06
Transfer/sec:    528.66KB
"""


# --------------------------------------------------------------------------- wrk parsing


def test_parse_wrk_microseconds() -> None:
    r = parse_wrk(WRK_US)
    assert r.requests == 960612
    assert r.duration_s == pytest.approx(10.0)
    assert r.rps == pytest.approx(96058.13)
    assert r.latency_avg_us == pytest.approx(493.04)
    assert r.latency_max_us == pytest.approx(3380.0)
    assert r.percentiles_us == pytest.approx({"50": 490.0, "75": 511.0, "90": 540.0, "99": 780.0})
    assert (r.p50_us, r.p99_us) == (490.0, 780.0)
    assert r.errors == 0


def test_parse_wrk_units_and_errors() -> None:
    r = parse_wrk(WRK_MIXED_WITH_ERRORS)
    assert r.p50_us == pytest.approx(20510.0)
    assert r.p99_us == pytest.approx(1.5e6)
    assert r.latency_max_us == pytest.approx(1.02e6)
    assert r.duration_s == pytest.approx(3.1)
    assert (r.errors_connect, r.errors_read, r.errors_write, r.errors_timeout) == (1, 2, 3, 4)
    assert r.non_2xx_3xx == 17
    assert r.errors == 27


@pytest.mark.parametrize(
    ("value", "unit", "us"),
    [("490.00", "us", 490.0), ("1.25", "ms", 1250.0), ("2", "s", 2e6), ("1.5", "m", 90e6)],
)
def test_parse_time_units(value: str, unit: str, us: float) -> None:
    assert parse_time_us(value, unit) == pytest.approx(us)


def test_parse_time_unknown_unit() -> None:
    with pytest.raises(WrkParseError, match="unit"):
        parse_time_us("1", "ns")


def test_parse_wrk_without_latency_flag_is_an_error() -> None:
    text = WRK_US.replace("Latency Distribution", "").replace("     99%  780.00us\n", "")
    with pytest.raises(WrkParseError, match="99%"):
        parse_wrk(text)


def test_parse_wrk_of_a_failed_run_names_what_is_missing() -> None:
    with pytest.raises(WrkParseError, match="requests in"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_fixed_rate_lua() -> None:
    script = fixed_rate_lua(1000)
    assert "1000.0 / 1000.0" in script
    assert "function delay()" in script
    with pytest.raises(ValueError, match="rate"):
        fixed_rate_lua(0)


# --------------------------------------------------------------------------- medians, ratios


def _measurement(rps: float, p50: float, p99: float, cpu: float | None, errors: int = 0) -> Any:
    return {
        "requests": int(rps * 10),
        "duration_s": 10.0,
        "rps": rps,
        "latency_avg_us": p50,
        "latency_max_us": p99 * 2,
        "percentiles_us": {"50": p50, "75": p50, "90": p99, "99": p99},
        "errors": errors,
        "proxy_cpu_s": None if cpu is None else cpu * rps * 10 / 1e6,
        "cpu_us_per_req": cpu,
    }


def _run(rps: float, p99: float, cpu_sat: float | None, cpu_fixed: float | None) -> Any:
    return {
        "saturation": _measurement(rps, p99 / 2, p99, cpu_sat),
        "fixed_rate": _measurement(1000.0, 100.0, 300.0, cpu_fixed),
    }


def _row(name: str, group: str, runs: list[Any], *, baseline: bool = False) -> Any:
    return {
        "name": name,
        "label": name.replace("-", " "),
        "group": group,
        "baseline": baseline,
        "status": "ok",
        "note": "",
        "runs": runs,
        "median": None,
        "ratios": None,
    }


def _doc(rows: list[Any]) -> Any:
    report.summarize_rows(rows)
    return {
        "schema": report.SCHEMA,
        "commit": "0123456789abcdef-dirty",
        "date": "2026-01-01T00:00:00Z",
        "python": "3.11.7",
        "loop": {"default": "uvloop", "uvloop": "0.23.0"},
        "machine": {"nproc": 2},
        "pinning": {"load_core": 0, "backend_core": 0, "proxy_core": 1},
        "settings": {"runs": 3, "duration_s": 10.0, "rate": 1000.0, "connections": 50},
        "tools": {"haproxy": "HAProxy version 2.6.12", "nginx": "nginx/1.22.1", "wrk": "wrk 4.1"},
        "notes": ["a note"],
        "rows": rows,
    }


def _sample_doc() -> Any:
    return _doc(
        [
            _row("direct", "direct", [_run(200e3, 300, None, None)] * 3),
            _row(
                "haproxy-l4",
                "l4",
                [_run(100e3, 1000, 8, 30), _run(90e3, 1200, 9, 31), _run(110e3, 800, 7, 29)],
                baseline=True,
            ),
            _row(
                "pymesh-l4-uvloop",
                "l4",
                [_run(95e3, 1100, 9, 33), _run(99e3, 1300, 10, 34), _run(80e3, 1500, 8, 35)],
            ),
            _row("haproxy-l7", "l7", [_run(80e3, 1000, 10, 40)] * 3, baseline=True),
            _row("pymesh-l7-httptools", "l7", [_run(40e3, 2000, 30, 90)] * 3),
            _row("pymesh-l7-h11", "l7", [_run(8e3, 9000, 300, 450)] * 3),
        ]
    )


def test_median_of_runs() -> None:
    runs = [_run(100e3, 1000, 8, 30), _run(90e3, 1200, 9, 31), _run(110e3, 800, 7, 29)]
    med = report.median_of_runs(runs)
    assert med["rps"] == 100e3
    assert med["p99_us"] == 1000
    assert med["p50_us"] == 500
    assert med["cpu_us_per_req_sat"] == 8
    assert med["cpu_us_per_req_fixed"] == 30
    assert med["fixed_rps"] == 1000
    assert med["errors"] == 0


def test_median_without_cpu_is_none() -> None:
    med = report.median_of_runs([_run(1e3, 100, None, None)])
    assert med["cpu_us_per_req_sat"] is None
    assert med["cpu_us_per_req_fixed"] is None


def test_ratios_pair_each_row_with_its_groups_haproxy() -> None:
    rows = {row["name"]: row for row in _sample_doc()["rows"]}
    l4 = rows["pymesh-l4-uvloop"]["ratios"]
    assert l4["baseline"] == "haproxy-l4"
    assert l4["rps"] == pytest.approx(95e3 / 100e3)
    assert l4["cpu_fixed"] == pytest.approx(34 / 30)
    assert l4["cpu_sat"] == pytest.approx(9 / 8)
    assert l4["p99"] == pytest.approx(1300 / 1000)
    h11 = rows["pymesh-l7-h11"]["ratios"]
    assert h11["baseline"] == "haproxy-l7"
    assert h11["rps"] == pytest.approx(0.1)
    assert rows["haproxy-l7"]["ratios"]["rps"] == 1.0
    assert rows["direct"]["ratios"] is None


def test_no_ratios_without_an_ok_baseline() -> None:
    rows = [
        _row("haproxy-l4", "l4", [], baseline=True),
        _row("pymesh-l4-uvloop", "l4", [_run(95e3, 1100, 9, 33)]),
    ]
    rows[0]["status"] = "failed"
    rows[0]["note"] = "did not start"
    report.summarize_rows(rows)
    assert rows[0]["median"] is None
    assert rows[1]["median"] is not None
    assert rows[1]["ratios"] is None


def test_an_ok_row_without_runs_becomes_failed() -> None:
    rows = [_row("haproxy-l4", "l4", [], baseline=True)]
    report.summarize_rows(rows)
    assert rows[0]["status"] == "failed"
    assert rows[0]["note"] == "no run completed"


# --------------------------------------------------------------------------- schema


def test_sample_document_conforms_and_round_trips_json() -> None:
    doc = _sample_doc()
    assert report.validate_result(doc) == []
    assert report.validate_result(json.loads(json.dumps(doc))) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("commit"), "$: missing 'commit'"),
        (lambda d: d.__setitem__("schema", "other/1"), "$.schema"),
        (lambda d: d["rows"][1].__setitem__("status", "great"), "$.rows[1].status"),
        (lambda d: d["rows"][1].__setitem__("median", None), "$.rows[1].median"),
        (lambda d: d["rows"][2]["runs"][0]["fixed_rate"].pop("rps"), "fixed_rate: missing 'rps'"),
        (
            lambda d: d["rows"][2]["runs"][0]["saturation"].__setitem__("cpu_us_per_req", "x"),
            "cpu_us_per_req: expected number or null",
        ),
        (lambda d: d["rows"][3].__setitem__("name", "haproxy-l4"), "duplicate 'haproxy-l4'"),
        (lambda d: d["rows"][2]["ratios"].pop("p99"), "ratios: missing 'p99'"),
        (lambda d: d["rows"][0].__setitem__("baseline", "no"), "baseline: expected boolean"),
    ],
)
def test_schema_violations_are_reported(mutate: Any, message: str) -> None:
    doc = copy.deepcopy(_sample_doc())
    mutate(doc)
    problems = report.validate_result(doc)
    assert any(message in p for p in problems), problems


def test_schema_rejects_non_objects() -> None:
    assert report.validate_result([]) == ["$: expected object, got list"]


# --------------------------------------------------------------------------- rendering


def test_results_table() -> None:
    doc = _sample_doc()
    doc["rows"].append(
        {
            **_row("pymesh-l4-asyncio", "l4", []),
            "status": "skipped",
            "note": "the sidecar is not built yet",
            "median": None,
        }
    )
    table = report.render_results_table(doc).splitlines()
    assert table[0].startswith("| row | req/s | p50 | p99 | CPU µs/req @ fixed rate")
    assert len(table) == 2 + len(doc["rows"])
    l4 = next(line for line in table if line.startswith("| pymesh l4 uvloop |"))
    cells = [c.strip() for c in l4.split("|")[1:-1]]
    x = "\u00d7"
    assert cells == [
        "pymesh l4 uvloop",
        "95,000",
        "650 µs",
        "1.30 ms",
        "34.0",
        "9.0",
        f"0.95{x}",
        f"1.13{x}",
        f"1.30{x}",
    ]
    assert "| haproxy l4 (baseline) |" in report.render_results_table(doc)
    assert any("skipped: the sidecar is not built yet" in line for line in table)


def test_results_table_flags_errors() -> None:
    rows = [_row("haproxy-l4", "l4", [_run(1e3, 100, 8, 30)], baseline=True)]
    rows[0]["runs"][0]["saturation"]["errors"] = 12
    table = report.render_results_table(_doc(rows))
    assert "12 errors" in table


def test_goals_table_compares_figures_to_goals() -> None:
    goals = report.render_goals(_sample_doc())
    lines = {line.split("|")[1].strip(): line for line in goals.splitlines()[2:]}
    # 0.95x req/s (met), 1.13x CPU (met), 1.30x p99 (> 1.25: not met)
    l4 = lines["L4 TCP relay, keep-alive"]
    assert "**not met**" in l4
    assert "0.95\u00d7 req/s" in l4
    assert "1.30\u00d7 p99 ✗" in l4
    # 0.5x req/s < 0.75 → not met
    assert "**not met**" in lines["L7 HTTP/1.1, routing, no filters"]
    assert "**not met**" in lines["L7 HTTP/1.1 with the h11 codec"]  # 0.10x < 0.12
    # 90 µs met, h11 450 µs not
    cpu = lines["sidecar CPU at 1,000 req/s"]
    assert "90.0 µs/req" in cpu
    assert "450.0 µs/req (h11) ✗" in cpu
    assert "not measured in this run" in lines["L4, a new connection per request"]
    assert "not measured by this harness yet" in lines["control plane"]


def test_goal_met() -> None:
    doc = _doc(
        [
            _row("haproxy-l7", "l7", [_run(80e3, 1000, 10, 40)], baseline=True),
            _row("pymesh-l7-httptools", "l7", [_run(70e3, 1000, 12, 50)]),
        ]
    )
    line = next(g for g in report.render_goals(doc).splitlines() if "routing, no filters" in g)
    assert "**met**: 0.88\u00d7 req/s, 1.25\u00d7 CPU" in line


@pytest.mark.parametrize(
    ("us", "text"), [(None, "—"), (412.4, "412 µs"), (1234.0, "1.23 ms"), (2.5e6, "2.50 s")]
)
def test_fmt_latency(us: float | None, text: str) -> None:
    assert report.fmt_latency(us) == text


def test_summarize_note_keeps_first_and_last_line() -> None:
    note = "p exited with status 1; log tail:\nTraceback\n  File x\nImportError: no http1"
    assert (
        report.summarize_note(note) == "p exited with status 1; log tail: … ImportError: no http1"
    )


def test_replace_between_markers() -> None:
    text = f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\noutro\n"
    out = report.replace_between_markers(text, "new | table\n")
    assert out == f"intro\n{report.README_BEGIN}\nnew | table\n{report.README_END}\noutro\n"
    assert report.replace_between_markers(out, "new | table") == out
    with pytest.raises(ValueError, match="markers"):
        report.replace_between_markers("no markers here", "x")


def test_readme_block_is_generated_from_the_newest_committed_result() -> None:
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert report.README_BEGIN in readme
    assert report.README_END in readme
    newest = run.newest_result()
    if newest is None:
        pytest.skip("no result JSON in benchmarks/results yet")
    doc = run.load_result(newest)  # validates the schema
    block = report.render_report(doc, f"benchmarks/results/{newest.name}")
    assert report.replace_between_markers(readme, block) == readme, (
        "benchmarks/README.md is stale: run `python -m benchmarks.run --report-only`"
    )


# --------------------------------------------------------------------------- rows, files


def test_default_rows() -> None:
    rows, notes = run.select_rows(None)
    assert [r.name for r in rows] == [
        "direct",
        "haproxy-l4",
        "haproxy-l7",
        "pymesh-l4-uvloop",
        "pymesh-l4-asyncio",
        "pymesh-l7-httptools",
        "pymesh-l7-h11",
        "haproxy-h2",
        "pymesh-h2",
        "haproxy-l7-tls",
        "pymesh-l7-mtls",
        "pair-haproxy",
        "pair-pymesh-mtls",
    ]
    assert notes == []
    assert {r.group for r in rows if r.baseline} == {"l4", "l7", "h2", "l7-tls", "pair"}
    assert {r.name for r in rows if r.load == "h2load"} == {"haproxy-h2", "pymesh-h2"}


def test_selecting_a_row_adds_its_baseline() -> None:
    rows, notes = run.select_rows("pymesh-l7-h11")
    assert [r.name for r in rows] == ["haproxy-l7", "pymesh-l7-h11"]
    assert notes == ["added baseline row haproxy-l7 (for pymesh-l7-h11's ratios)"]


def test_selecting_all_and_unknown_rows() -> None:
    rows, _ = run.select_rows("all")
    assert len(rows) == len(run.ROWS)
    with pytest.raises(ValueError, match="unknown row"):
        run.select_rows("direct,nope")


def test_every_row_group_has_one_baseline() -> None:
    names = [r.name for r in run.ROWS]
    assert len(names) == len(set(names))
    for group in {r.group for r in run.ROWS} - {"direct"}:
        assert sum(1 for r in run.ROWS if r.group == group and r.baseline) == 1, group


def test_result_path_and_newest(tmp_path: Path) -> None:
    doc = {"date": "2026-01-02T03:04:05Z", "commit": "abcdef0123-dirty"}
    path = run.result_path(doc, tmp_path)
    assert path.name == "20260102T030405Z-abcdef0.json"
    assert run.newest_result(tmp_path) is None
    (tmp_path / "20250101T000000Z-1111111.json").write_text("{}")
    path.write_text("{}")
    assert run.newest_result(tmp_path) == path


def test_load_result_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": report.SCHEMA}))
    with pytest.raises(ValueError, match="missing 'commit'"):
        run.load_result(bad)


# --------------------------------------------------------------------------- peer configs


def test_nginx_config() -> None:
    cfg = peers.nginx_config(port=18081, tmp=Path("/tmp/x"))
    for directive in (
        "daemon off;",
        "master_process off;",
        "worker_processes 1;",
        "access_log off;",
        "listen 127.0.0.1:18081",
        "keepalive_requests 1000000000;",
    ):
        assert directive in cfg
    assert len(peers.BODY) == 100
    assert f'return 200 "{"x" * 99}\\n";' in cfg
    with pytest.raises(ValueError, match="quotes"):
        peers.nginx_config(port=1, tmp=Path("/tmp"), body='a"b')


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_haproxy_config(mode: str) -> None:
    cfg = peers.haproxy_config(mode=mode, port=18082, backend_port=18081)
    assert "nbthread 1" in cfg
    assert f"mode {mode}" in cfg
    assert "bind 127.0.0.1:18082" in cfg
    assert "server nginx 127.0.0.1:18081" in cfg
    assert ("http-reuse" in cfg) == (mode == "http")


def test_haproxy_config_rejects_other_modes() -> None:
    with pytest.raises(ValueError, match="mode"):
        peers.haproxy_config(mode="udp", port=1, backend_port=2)


@pytest.mark.parametrize("protocol", ["tcp", "http"])
def test_pymesh_config(protocol: str) -> None:
    mesh, service = yaml.safe_load_all(peers.pymesh_config(protocol=protocol, backend_port=18081))
    assert mesh == {
        "apiVersion": "pymesh.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "bench"},
        "spec": {"trustDomain": "bench.local", "mtls": "DISABLE"},
    }
    assert service["kind"] == "Service"
    assert service["metadata"] == {"name": "backend"}
    assert service["spec"]["ports"] == [{"name": "web", "port": 8080, "protocol": protocol}]
    assert service["spec"]["endpoints"] == [{"address": "127.0.0.1", "port": 18081}]


def test_pymesh_argv() -> None:
    argv = peers.pymesh_argv(
        python="py",
        config=Path("c.yaml"),
        inbound=1,
        outbound=2,
        admin=3,
        app=4,
        codec="h11",
        loop="asyncio",
    )
    assert argv[:4] == ["py", "-m", "pymesh", "proxy"]
    joined = " ".join(argv)
    for part in (
        "--config c.yaml",
        "--service backend",
        "--inbound 127.0.0.1:1",
        "--outbound 127.0.0.1:2",
        "--admin 127.0.0.1:3",
        "--app 127.0.0.1:4",
        "--no-access-log",
        "--http1-codec h11",
        "--loop asyncio",
    ):
        assert part in joined
    plain = peers.pymesh_argv(
        python="py", config=Path("c.yaml"), inbound=1, outbound=2, admin=3, app=4
    )
    assert "--http1-codec" not in plain
    assert "--loop" not in plain


def test_pymesh_argv_is_accepted_by_the_cli_parser() -> None:
    from pymesh.cli import build_parser

    argv = peers.pymesh_argv(
        python="py",
        config=Path("c.yaml"),
        inbound=1,
        outbound=2,
        admin=3,
        app=4,
        codec="h11",
        loop="asyncio",
    )
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.service, args.http1_codec, args.loop) == (
        "proxy",
        "backend",
        "h11",
        "asyncio",
    )
    assert args.no_access_log is True


def test_process_cpu_seconds_tracks_this_process() -> None:
    pid = os.getpid()
    before, own_before = peers.process_cpu_seconds(pid), time.process_time()
    deadline = time.process_time() + 0.05
    n = 0
    while time.process_time() < deadline and n < 10**8:
        n += 1
    used = peers.process_cpu_seconds(pid) - before
    own = time.process_time() - own_before
    assert own >= 0.05
    assert used == pytest.approx(own, rel=0.2, abs=0.01)


# --------------------------------------------------------------------------- interference

PROC_STAT = """\
cpu  300 0 100 5000 10 0 5 0 0 0
cpu0 200 0 50 2000 5 0 5 0 0 0
cpu1 100 0 50 3000 5 0 0 7 0 0
intr 12345
"""


def test_parse_proc_stat() -> None:
    ticks = machine.parse_proc_stat(PROC_STAT)
    assert ticks == {
        0: machine.CoreTicks(busy=255, total=2260),
        1: machine.CoreTicks(busy=157, total=3162),
    }


def test_busy_share_between_readings() -> None:
    before = {0: machine.CoreTicks(100, 1000), 1: machine.CoreTicks(0, 1000)}
    after = {0: machine.CoreTicks(150, 1100), 1: machine.CoreTicks(0, 1100)}
    assert machine.busy_fraction(before, after, 0) == pytest.approx(0.5)
    assert machine.busy_fraction(before, after, 1) == 0.0
    assert machine.busy_fraction(before, after, 2) is None
    assert machine.busy_seconds(before, after, 2) is None


def test_interference_notes() -> None:
    doc = _sample_doc()
    rows = {row["name"]: row for row in doc["rows"]}
    for run_ in rows["pymesh-l4-uvloop"]["runs"]:
        run_["saturation"]["interference"] = {"proxy_core_foreign": 0.02}
    noisy = copy.deepcopy(rows["haproxy-l4"]["runs"][0])
    noisy["fixed_rate"]["interference"] = {"proxy_core_foreign": 0.3, "load_core_foreign": 0.01}
    rows["haproxy-l4"]["runs"] = [noisy]
    assert report.interference_notes(doc["rows"]) == [
        "haproxy-l4: other programs took up to 30% of the proxy core (median 30%) during its runs"
    ]


def test_interference_of_counts_the_proxy_core_only_with_a_proxy() -> None:
    m = {"interference": {"load_core_foreign": 0.1, "proxy_core_foreign": 0.4}}
    assert report.interference_of(m) == 0.4
    assert report.interference_of(m, proxy=False) == 0.1
    assert report.interference_of({}) == 0.0
    direct = _row("direct", "direct", [_run(1e3, 100, None, None)])
    direct["runs"][0]["saturation"]["interference"] = {"proxy_core_foreign": 0.9}
    assert report.interference_notes([direct]) == []


# --------------------------------------------------------------------------- h2load (HTTP/2)

# captured from h2load (nghttp2 1.52.0) runs of this harness's peers: haproxy `proto h2` and
# the pymesh outbound listener (-H ':authority: backend:8080'), both in front of nginx
H2LOAD_HAPROXY = """\
starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 3s of \
main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.00s, 110059.33 req/s, 18.26MB/s
requests: 330178 total, 330278 started, 330178 done, 330178 succeeded, 0 failed, 0 errored, \
0 timeout
status codes: 330178 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 54.79MB (57451272) total, 17.63MB (18489968) headers (space savings 39.78%), 31.49MB \
(33017800) data
                     min         max         mean         sd        +/- sd
time for request:      229us      9.70ms       862us       627us    96.18%
time for connect:       51us       306us       164us       111us    60.00%
time to 1st byte:     3.29ms      3.49ms      3.38ms        64us    70.00%
req/s           :   10943.94    11054.10    11003.72       32.92    70.00%
""".replace("\\\n", "")

H2LOAD_PYMESH = """\
finished in 3.00s, 6373.33 req/s, 1001.31KB/s
requests: 19120 total, 19220 started, 19120 done, 19120 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 19120 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.93MB (3076031) total, 632.02KB (647191) headers (space savings 75.99%), 1.82MB \
(1912000) data
                     min         max         mean         sd        +/- sd
time for request:    10.33ms     42.61ms     15.60ms      1.72ms    92.11%
time for connect:       44us       119us        84us        24us    60.00%
time to 1st byte:    10.55ms     42.73ms     23.06ms     10.63ms    70.00%
req/s           :     633.17      641.14      637.15        2.67    70.00%
""".replace("\\\n", "")

# one request to the outbound listener with an :authority no Service has (404)
H2LOAD_404 = """\
finished in 1.26ms, 790.51 req/s, 169.06KB/s
requests: 1 total, 1 started, 1 done, 0 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 219B (219) total, 83B (83) headers (space savings 37.59%), 49B (49) data
                     min         max         mean         sd        +/- sd
time for request:     1.00ms      1.00ms      1.00ms         0us   100.00%
"""

# nothing listening (h2load still exits 0)
H2LOAD_REFUSED = """\
starting benchmark...
spawning thread #0: 1 total client(s). 1 total requests

finished in 172us, 0.00 req/s, 0B/s
requests: 1 total, 0 started, 0 done, 0 succeeded, 1 failed, 1 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
"""

# the first lines of a --log-file of the haproxy run (start µs, status, µs to end of response)
H2LOAD_LOG = """\
1795644614725168\t200\t985
1795644614725216\t200\t1267
1795644614725216\t200\t1270
"""


def test_parse_h2load_haproxy() -> None:
    r = parse_h2load(H2LOAD_HAPROXY, {"50": 700.0, "99": 1650.0})
    assert r.requests == 330178
    assert r.requests_total == 330178
    assert r.duration_s == pytest.approx(3.0)
    assert r.rps == pytest.approx(110059.33)
    assert r.latency_min_us == pytest.approx(229.0)
    assert r.latency_max_us == pytest.approx(9700.0)
    assert r.latency_avg_us == pytest.approx(862.0)
    assert r.latency_sd_us == pytest.approx(627.0)
    assert (r.status_2xx, r.status_4xx, r.status_5xx) == (330178, 0, 0)
    assert r.data_bytes == 33017800
    assert r.errors == 0
    assert (r.p50_us, r.p99_us) == (700.0, 1650.0)


def test_parse_h2load_milliseconds() -> None:
    r = parse_h2load(H2LOAD_PYMESH)
    assert r.requests == 19120
    assert r.rps == pytest.approx(6373.33)
    assert r.latency_min_us == pytest.approx(10330.0)
    assert r.latency_avg_us == pytest.approx(15600.0)
    assert r.latency_sd_us == pytest.approx(1720.0)
    assert r.data_bytes == 1912000
    assert r.percentiles_us == {}


def test_parse_h2load_counts_failures() -> None:
    not_found = parse_h2load(H2LOAD_404)
    assert (not_found.succeeded, not_found.failed, not_found.status_4xx) == (0, 1, 1)
    assert not_found.errors == 1
    assert not_found.duration_s == pytest.approx(0.00126)
    refused = parse_h2load(H2LOAD_REFUSED)
    assert (refused.requests, refused.errored, refused.data_bytes) == (0, 1, 0)
    assert refused.errors == 1
    assert refused.duration_s == pytest.approx(172e-6)


def test_parse_h2load_of_a_failed_run_names_what_is_missing() -> None:
    with pytest.raises(H2loadParseError, match="finished in"):
        parse_h2load("h2load: unrecognized option '--nope'\n")


def test_percentiles_from_log() -> None:
    assert percentiles_from_log(H2LOAD_LOG.splitlines()) == {
        "50": 1267.0,
        "75": 1270.0,
        "90": 1270.0,
        "99": 1270.0,
    }
    # nearest rank over 1..100 µs; failed streams (-1) are left out
    lines = [f"1\t200\t{us}" for us in range(100, 0, -1)] + ["2\t-1\t999999", ""]
    assert percentiles_from_log(lines, (50, 99, 100)) == {"50": 50.0, "99": 99.0, "100": 100.0}


def test_percentiles_from_log_rejects_empty_and_malformed_logs() -> None:
    with pytest.raises(H2loadParseError, match="no completed request"):
        percentiles_from_log(["1\t-1\t5", ""])
    with pytest.raises(H2loadParseError, match="line 2"):
        percentiles_from_log(["1\t200\t5", "garbage"])


def test_h2load_argv() -> None:
    settings = run.Settings()
    argv = run.h2load_argv(
        18084,
        settings=settings,
        duration_s=10.0,
        connections=10,
        headers=(":authority: backend:8080",),
        log=Path("/tmp/x.log"),
    )
    assert argv[:3] == ["taskset", "-c", "0"]
    assert argv[3].endswith("h2load")
    assert argv[4:] == [
        "-t1",
        "-c10",
        "-m10",
        "-D10000ms",
        "-H",
        ":authority: backend:8080",
        "--log-file=/tmp/x.log",
        "http://127.0.0.1:18084/",
    ]
    fixed = run.h2load_argv(1, settings=settings, duration_s=2.5, connections=10, rate=1000.0)
    assert "-D2500ms" in fixed
    assert "--rps=100" in fixed
    check = run.h2load_argv(1, settings=settings, duration_s=None, connections=1)
    assert "-n1" in check
    assert not any(a.startswith("-D") for a in check)


def test_haproxy_config_h2c() -> None:
    cfg = peers.haproxy_config(mode="http", port=18082, backend_port=18081, h2c=True)
    assert "bind 127.0.0.1:18082 proto h2\n" in cfg
    assert "mode http" in cfg
    assert "server nginx 127.0.0.1:18081\n" in cfg  # HTTP/1.1 to nginx
    assert "proto h2" not in peers.haproxy_config(mode="http", port=1, backend_port=2)
    with pytest.raises(ValueError, match="h2c"):
        peers.haproxy_config(mode="tcp", port=1, backend_port=2, h2c=True)


def test_h2_rows() -> None:
    rows, notes = run.select_rows("pymesh-h2")
    assert [r.name for r in rows] == ["haproxy-h2", "pymesh-h2"]
    assert notes == ["added baseline row haproxy-h2 (for pymesh-h2's ratios)"]
    haproxy, pymesh = rows
    assert haproxy.peer == run.Haproxy("http", h2c=True)
    assert pymesh.peer == run.Pymesh("http", codec="httptools", listener="outbound")
    assert pymesh.headers == (":authority: backend:8080",)
    assert "h2load" in run.missing_tools(rows) or Path(run._tool("h2load")).exists()


def _h2_doc() -> Any:
    doc = _doc(
        [
            _row("haproxy-h2", "h2", [_run(110e3, 1600, 8, 40)] * 3, baseline=True),
            _row("pymesh-h2", "h2", [_run(33e3, 7000, 30, 90)] * 3),
        ]
    )
    for row in doc["rows"]:
        row["load"] = "h2load"
    doc["settings"].update({"h2_connections": 10, "h2_streams": 10})
    return doc


def test_h2_goal_and_description() -> None:
    doc = _h2_doc()
    assert report.validate_result(doc) == []
    goals = report.render_goals(doc)
    line = next(g for g in goals.splitlines() if "L7 HTTP/2" in g)
    assert "**met**: 0.30\u00d7 req/s, 4.38\u00d7 p99" in line
    text = report.render_report(doc, "x.json")
    assert "`h2load -c10 -m10 -D10.0s` (10 streams per connection)" in text
    assert "--log-file" in text
    # a document without h2load rows reads as before
    assert "h2load" not in report.render_report(_sample_doc(), "x.json").split("Goals")[0]


# --------------------------------------------------------------------------- TLS rows, pairs


def test_tls_rows_and_their_baselines() -> None:
    rows, notes = run.select_rows("pymesh-l7-mtls")
    assert [r.name for r in rows] == ["haproxy-l7-tls", "pymesh-l7-mtls"]
    assert notes == ["added baseline row haproxy-l7-tls (for pymesh-l7-mtls's ratios)"]
    haproxy, pymesh = rows
    assert haproxy.peer == run.TlsClient(run.Haproxy("http", tls=True, acl_log=True))
    assert pymesh.peer == run.TlsClient(
        run.Pymesh("http", codec="httptools", mtls=True, allow=("client",), access_log=True)
    )
    l4, _ = run.select_rows("pymesh-l4-mtls")
    assert [r.name for r in l4] == ["haproxy-l4-tls", "pymesh-l4-mtls"]
    assert all(isinstance(r.peer, run.TlsClient) and r.peer.alpn is None for r in l4)
    assert {r.name for r in run.ROWS if not r.default} >= {
        "haproxy-l7-tls-bare",
        "pymesh-l7-mtls-bare",
        "haproxy-l4-tls",
        "pymesh-l4-mtls",
    }


def test_selecting_a_pair_adds_its_baseline_and_reference() -> None:
    rows, notes = run.select_rows("pair-pymesh-mtls")
    assert [r.name for r in rows] == ["direct", "pair-haproxy", "pair-pymesh-mtls"]
    assert notes == [
        "added baseline row pair-haproxy (for pair-pymesh-mtls's ratios)",
        "added reference row direct (for pair-haproxy's added latency)",
    ]
    assert all(r.headers == ("Host: api",) for r in rows[1:])
    assert rows[2].peer == run.PymeshPair(codec="httptools")


def test_selecting_groups() -> None:
    rows, notes = run.select_rows("pair, l4-tls")
    assert [r.name for r in rows] == [
        "direct",
        "pair-haproxy",
        "pair-pymesh-mtls",
        "haproxy-l4-tls",
        "pymesh-l4-mtls",
    ]
    assert notes == ["added reference row direct (for pair-haproxy's added latency)"]
    with pytest.raises(ValueError, match=r"groups: .*l7-tls-bare"):
        run.select_rows("tls")


def test_every_reference_is_a_row_and_every_row_doc_is_json() -> None:
    names = {r.name for r in run.ROWS}
    for row in run.ROWS:
        assert row.reference is None or row.reference in names
        doc = json.loads(json.dumps(run._row_doc(row)))
        assert doc["name"] == row.name
    mtls = next(r for r in run.ROWS if r.name == "pymesh-l7-mtls")
    peer = run._row_doc(mtls)["peer"]
    assert peer["kind"] == "tlsclient"
    assert peer["alpn"] == "http/1.1"
    assert peer["inner"]["kind"] == "pymesh"
    assert peer["inner"]["allow"] == ["client"]
    assert peer["inner"]["mtls"] is True


def test_tls_rows_need_haproxy() -> None:
    rows, _ = run.select_rows("pair-pymesh-mtls,pymesh-l7-mtls")
    assert "haproxy" in {t for r in rows for t in r.peer.tools()}


def test_haproxy_config_tls_acl_and_log() -> None:
    tls = peers.HaproxyTls(Path("/p/backend.pem"), Path("/p/bundle.pem"))
    cfg = peers.haproxy_config(
        mode="http", port=18082, backend_port=18081, bind_tls=tls, acl_log=True
    )
    assert (
        "    bind 127.0.0.1:18082 ssl crt /p/backend.pem ca-file /p/bundle.pem "
        "verify required ssl-min-ver TLSv1.3\n" in cfg
    )
    assert "    log stdout format raw local0\n" in cfg
    assert "    log global\n    option httplog\n" in cfg
    assert "    acl bench_paths path_beg /\n    http-request deny unless bench_paths\n" in cfg
    assert "    server nginx 127.0.0.1:18081\n" in cfg  # plaintext to nginx
    plain = peers.haproxy_config(mode="http", port=1, backend_port=2, bind_tls=tls)
    assert "httplog" not in plain
    assert "acl" not in plain
    assert "ssl crt /p/backend.pem" in plain


def test_haproxy_config_tls_client() -> None:
    tls = peers.HaproxyTls(Path("/p/client.pem"), Path("/p/bundle.pem"), alpn="http/1.1")
    cfg = peers.haproxy_config(
        mode="tcp", port=18090, backend_port=18082, server_tls=tls, server_name="proxy"
    )
    assert "    bind 127.0.0.1:18090\n" in cfg
    assert (
        "    server proxy 127.0.0.1:18082 ssl crt /p/client.pem ca-file /p/bundle.pem "
        "verify required ssl-min-ver TLSv1.3 alpn http/1.1\n" in cfg
    )
    assert "mode tcp" in cfg


def test_haproxy_config_rejects_bad_combinations() -> None:
    tls = peers.HaproxyTls(Path("/a"), Path("/b"))
    with pytest.raises(ValueError, match="acl_log"):
        peers.haproxy_config(mode="tcp", port=1, backend_port=2, acl_log=True)
    with pytest.raises(ValueError, match="h2c"):
        peers.haproxy_config(mode="http", port=1, backend_port=2, h2c=True, bind_tls=tls)


def test_haproxy_accepts_the_tls_configs(tmp_path: Path) -> None:
    """haproxy's own config check (`haproxy -c`) on every TLS config the harness writes,
    with real certificates from the pymesh CA."""
    try:
        haproxy = run._tool("haproxy")
    except run.BenchError:
        pytest.skip("haproxy is not installed")
    if run._haproxy_ssl_missing() is not None:
        pytest.skip("haproxy without OpenSSL")
    import subprocess

    pki = _pki(tmp_path)
    server, client = pki.identity("backend"), pki.identity("client")
    configs = {
        "l7-tls": peers.haproxy_config(
            mode="http",
            port=1,
            backend_port=2,
            bind_tls=peers.HaproxyTls(server.haproxy_pem, server.bundle),
            acl_log=True,
        ),
        "l4-tls": peers.haproxy_config(
            mode="tcp",
            port=1,
            backend_port=2,
            bind_tls=peers.HaproxyTls(server.haproxy_pem, server.bundle),
        ),
        "client": peers.haproxy_config(
            mode="tcp",
            port=1,
            backend_port=2,
            server_tls=peers.HaproxyTls(client.haproxy_pem, client.bundle, "http/1.1"),
            server_name="proxy",
        ),
        "pair-a": peers.haproxy_config(
            mode="http",
            port=1,
            backend_port=2,
            server_tls=peers.HaproxyTls(client.haproxy_pem, client.bundle),
            server_name="b",
        ),
    }
    for name, text in configs.items():
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(text)
        done = subprocess.run(
            [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=20
        )
        assert done.returncode == 0, (name, done.stdout + done.stderr)


def _pki(tmp_path: Path) -> Any:
    from benchmarks.pki import Pki

    return Pki(tmp_path / "pki", python=sys.executable, env={"PYTHONPATH": str(ROOT / "src")})


def test_pki_issues_identities_with_the_pymesh_cli(tmp_path: Path) -> None:
    from benchmarks.pki import spiffe_id
    from cryptography import x509

    pki = _pki(tmp_path)
    ident = pki.identity("client")
    assert pki.identity("client") is ident  # issued once
    assert ident.dir == tmp_path / "pki" / "id-client"
    for f in (ident.cert, ident.key, ident.bundle):
        assert f.is_file()
    combined = ident.haproxy_pem.read_bytes()
    assert combined.count(b"-----BEGIN CERTIFICATE-----") == 2  # leaf + intermediate
    assert combined.count(b"-----BEGIN PRIVATE KEY-----") == 1
    assert ident.haproxy_pem.stat().st_mode & 0o777 == 0o600
    leaf = x509.load_pem_x509_certificate(ident.cert.read_bytes())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u.value) for u in uris] == [spiffe_id("client")]
    assert spiffe_id("client") == "spiffe://bench.local/ns/default/sa/client"
    # one CA for every identity
    assert pki.identity("backend").bundle.read_bytes() == ident.bundle.read_bytes()


def test_pki_reports_cli_failures(tmp_path: Path) -> None:
    from benchmarks.pki import Pki, PkiError

    pki = Pki(tmp_path, python=sys.executable, env={"PYTHONPATH": str(ROOT / "src")})
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "junk").write_text("x")  # `ca init` refuses a non-empty directory
    with pytest.raises(PkiError, match="ca init"):
        pki.identity("client")


def _load_mesh(tmp_path: Path, text: str) -> Any:
    from pymesh.policy.snapshot import Mesh

    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return Mesh.load(path)


def test_pymesh_config_strict_with_a_traffic_target(tmp_path: Path) -> None:
    from pymesh.policy.authz import decide

    text = peers.pymesh_config(
        protocol="http", backend_port=18081, mtls="STRICT", allow=("client",)
    )
    docs = list(yaml.safe_load_all(text))
    assert docs[0]["spec"] == {"trustDomain": "bench.local", "mtls": "STRICT"}
    assert [d["kind"] for d in docs] == ["Mesh", "Service", "HTTPRouteGroup", "TrafficTarget"]
    mesh = _load_mesh(tmp_path, text)  # pymesh's own loader accepts it
    client = "spiffe://bench.local/ns/default/sa/client"
    allowed = decide(mesh, client, "backend", port=8080, method="GET", path="/")
    assert allowed.allowed, allowed.reason
    other = decide(
        mesh, "spiffe://bench.local/ns/default/sa/web", "backend", port=8080, method="GET"
    )
    assert not other.allowed
    # tcp: a TCPRoute on the service port
    tcp = peers.pymesh_config(protocol="tcp", backend_port=1, mtls="STRICT", allow=("client",))
    assert decide(_load_mesh(tmp_path, tcp), client, "backend", port=8080).allowed
    # no allow-list: authorization checks nothing
    bare = _load_mesh(tmp_path, peers.pymesh_config(protocol="http", backend_port=1, mtls="STRICT"))
    assert decide(bare, None, "backend", port=8080, method="GET").allowed
    with pytest.raises(ValueError, match="mtls"):
        peers.pymesh_config(protocol="http", backend_port=1, mtls="strict")


def test_pymesh_pair_config(tmp_path: Path) -> None:
    from pymesh.policy.authz import decide

    text = peers.pymesh_pair_config(server_inbound=18086)
    mesh = _load_mesh(tmp_path, text)
    services = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d["kind"] == "Service"
    }
    assert services["api"]["spec"]["endpoints"] == [{"address": "127.0.0.1", "port": 18086}]
    assert "endpoints" not in services["web"]["spec"]
    assert next(yaml.safe_load_all(text))["spec"]["mtls"] == "STRICT"
    web = "spiffe://bench.local/ns/default/sa/web"
    assert decide(mesh, web, "api", port=8080, method="GET", path="/").allowed
    assert not decide(mesh, None, "api", port=8080, method="GET", path="/").allowed


def test_pymesh_argv_for_mtls_sidecars() -> None:
    from pymesh.cli import build_parser

    argv = peers.pymesh_argv(
        python="py",
        config=Path("c.yaml"),
        inbound=1,
        outbound=2,
        admin=3,
        app=4,
        service="api",
        identity_dir=Path("/p/id-api"),
        access_log=True,
    )
    assert "--no-access-log" not in argv
    args = build_parser().parse_args(argv[3:])
    assert (args.service, args.identity_dir, args.no_access_log) == ("api", "/p/id-api", False)


def test_parse_header() -> None:
    assert peers.parse_header("Host: api") == ("Host", "api")
    assert peers.parse_header("Connection:close") == ("Connection", "close")
    for bad in ("no colon", ": value", " Host: x", ":authority: backend:8080"):
        with pytest.raises(ValueError, match="header"):
            peers.parse_header(bad)


def test_http_get_sends_extra_headers() -> None:
    import http.server
    import threading

    seen: list[list[str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get_all("Host") or [])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = server.server_address[1]
        reply = peers.http_get(port, "/", timeout=5.0, headers=("Host: api",))
        default = peers.http_get(port, "/", timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)
    assert (reply.status, reply.body) == (200, b"ok")
    assert default.status == 200
    assert seen == [["api"], [f"127.0.0.1:{port}"]]


def test_process_names_and_logs(tmp_path: Path) -> None:
    with peers.Processes(tmp_path) as procs:
        a = procs.start("pair/a", ["sleep", "30"], core=None)
        b = procs.start("pair/b", ["sleep", "30"], core=None)
        other = procs.start("pairx", ["sleep", "30"], core=None)
        assert a.log == tmp_path / "pair-a.log"
        procs.stop_named("pair")
        assert not a.alive()
        assert not b.alive()
        assert other.alive()
    assert not other.alive()


def test_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    proc = peers.Proc("x", None, log)  # type: ignore[arg-type]  # tail() needs only the log
    assert proc.tail(2) == "line 99998\nline 99999"
    assert proc.tail(1, max_bytes=5) == "9999"


def test_output_dir_keeps_partial_runs_apart() -> None:
    assert run.is_full_run(None, quick=False, runs=3)
    assert not run.is_full_run("pair", quick=False, runs=3)
    assert not run.is_full_run(None, quick=True, runs=3)
    assert not run.is_full_run(None, quick=False, runs=1)
    assert run.output_dir(None, full=True) == run.RESULTS_DIR
    assert run.output_dir(None, full=False) == run.RESULTS_DIR / "partial"
    assert run.output_dir(Path("/x"), full=False) == Path("/x")


def _pair_run(p50: float, p99: float, cpu: dict[str, float] | None) -> Any:
    r = _run(30e3, 3000, 20, sum(cpu.values()) if cpu else None)
    r["fixed_rate"]["percentiles_us"].update({"50": p50, "99": p99})
    if cpu is not None:
        requests = r["fixed_rate"]["requests"]
        r["fixed_rate"]["proxy_cpu_s_by_process"] = {k: v * requests / 1e6 for k, v in cpu.items()}
    return r


def _pair_doc() -> Any:
    direct = _row("direct", "direct", [_pair_run(40, 100, None)] * 3)
    haproxy = _row(
        "pair-haproxy",
        "pair",
        [_pair_run(240, 560, {"pair-haproxy/a": 48, "pair-haproxy/b": 47})] * 3,
        baseline=True,
    )
    pymesh = _row(
        "pair-pymesh-mtls",
        "pair",
        [
            _pair_run(640, 1800, {"pair-pymesh-mtls/web": 60, "pair-pymesh-mtls/api": 80}),
            _pair_run(600, 1700, {"pair-pymesh-mtls/web": 70, "pair-pymesh-mtls/api": 90}),
            _pair_run(700, 1900, {"pair-pymesh-mtls/web": 50, "pair-pymesh-mtls/api": 120}),
        ],
    )
    for row in (haproxy, pymesh):
        row["reference"] = "direct"
        row["peer"] = {"kind": "pymeshpair"}
    return _doc([direct, haproxy, pymesh])


def test_added_latency_and_per_process_cpu() -> None:
    doc = _pair_doc()
    assert report.validate_result(doc) == []
    rows = {row["name"]: row for row in doc["rows"]}
    pymesh = rows["pair-pymesh-mtls"]
    assert pymesh["added"] == {"reference": "direct", "p50_us": 600.0, "p99_us": 1700.0}
    assert pymesh["per_process"]["pair-pymesh-mtls/web"]["cpu_us_per_req_fixed"] == (
        pytest.approx(60.0)
    )
    assert pymesh["per_process"]["pair-pymesh-mtls/api"]["cpu_us_per_req_fixed"] == (
        pytest.approx(90.0)
    )
    assert pymesh["ratios"]["fixed_p50"] == pytest.approx(640 / 240)
    assert pymesh["ratios"]["fixed_p99"] == pytest.approx(1800 / 560)
    assert rows["pair-haproxy"]["added"]["p50_us"] == 200.0
    assert "added" not in rows["direct"]
    # a reference that did not run: no added latency
    rows["direct"]["status"] = "failed"
    assert report.added_latency(pymesh, rows["direct"]) is None
    assert report.added_latency(pymesh, None) is None


def test_pairs_table_and_goals() -> None:
    doc = _pair_doc()
    table = report.render_pairs_table(doc)
    assert table is not None
    lines = table.splitlines()
    assert lines[2].startswith("| direct (reference) | 40 µs | 100 µs | — | — |")
    # the sum's median (of 140, 160, 170) is not the sum of the per-process medians
    assert "| +600 µs | +1.70 ms | 160.0 | web 60.0 + api 90.0 |" in lines[4]
    assert report.render_pairs_table(_sample_doc()) is None
    goals = report.render_goals(doc)
    pair = next(g for g in goals.splitlines() if "sidecar pair with mTLS" in g)
    assert "+600 µs p50, +1.70 ms p99" in pair
    assert "2.67\u00d7 haproxy pair's p50 ✗" in pair
    cpu = next(g for g in goals.splitlines() if "sidecar CPU" in g)
    assert "90.0 µs/req (busier sidecar of the pair)" in cpu
    text = report.render_report(doc, "x.json")
    assert "Sidecar pairs at the fixed rate (1,000 req/s)" in text
    assert "Sidecar pairs: wrk → A" in text
    assert "TLS rows:" not in text  # no TLS client row in this document


def test_added_schema_violations() -> None:
    doc = copy.deepcopy(_pair_doc())
    doc["rows"][2]["added"] = {"reference": "direct"}
    doc["rows"][1]["per_process"] = {"a": 1}
    problems = report.validate_result(doc)
    assert any("added: missing 'p50_us'" in p for p in problems), problems
    assert any("per_process: expected object of objects" in p for p in problems), problems


def test_tls_goals() -> None:
    doc = _doc(
        [
            _row("haproxy-l7-tls", "l7-tls", [_run(40e3, 2000, 15, 70)] * 3, baseline=True),
            _row("pymesh-l7-mtls", "l7-tls", [_run(20e3, 4000, 50, 200)] * 3),
            _row("haproxy-l4-tls", "l4-tls", [_run(45e3, 2000, 11, 67)] * 3, baseline=True),
            _row("pymesh-l4-mtls", "l4-tls", [_run(44e3, 2000, 14, 80)] * 3),
        ]
    )
    doc["rows"][1]["peer"] = {"kind": "tlsclient", "inner": {"kind": "pymesh"}}
    goals = {line.split("|")[1].strip(): line for line in report.render_goals(doc).splitlines()}
    assert "**met**: 0.50\u00d7 req/s" in goals["L7 HTTP/1.1, mTLS + authz + metrics + access log"]
    assert "**met** (partly measured): 0.98\u00d7 req/s (L4)" in goals["TLS keep-alive"]
    assert "TLS rows: wrk cannot present a client certificate" in report.render_report(doc, "x")


@pytest.mark.parametrize(("us", "text"), [(412.0, "+412 µs"), (-3.0, "-3 µs"), (None, "—")])
def test_fmt_added(us: float | None, text: str) -> None:
    assert report.fmt_added(us) == text
