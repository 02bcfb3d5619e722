"""The control-plane scale harness (`benchmarks/cp_scale.py`) at a few subscribers: a real
control-plane process, real TLS + HTTP/2 streams; behaviour is checked, not timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks.cp_scale import Settings, mesh_yaml, percentile, run_scale, summarize_profile

from pymesh.policy.registry import view_for
from pymesh.policy.snapshot import Mesh


def small(**kw: object) -> Settings:
    base: dict[str, object] = {
        "subscribers": 5,
        "services": 2,
        "changes": 1,
        "concurrency": 3,
        "cp_core": None,
        "bench_core": None,
        "settle_s": 0.1,
        "quiet_s": 0.0,
        "join_timeout_s": 30.0,
        "change_timeout_s": 20.0,
        "retries": 0,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("topology", ["ring", "open"])
def test_generated_mesh_loads_and_views_are_what_the_topology_says(topology: str) -> None:
    mesh = Mesh.from_yaml(mesh_yaml(6, [2] * 6, topology=topology, callers=2, ttl="23h"))
    assert len(mesh.services) == 6
    assert mesh.spec.certificate_ttl_s == 23 * 3600
    view = view_for(mesh, "default/svc-0003")
    names = sorted(name for (_, name) in view.services)
    if topology == "ring":
        # itself, and the services whose TrafficTargets name it as a source (its successors)
        assert names == ["svc-0003", "svc-0004", "svc-0005"]
        assert [r.name for r in view.of_kind("TrafficTarget")] == ["svc-0003-callers"]
    else:
        assert len(names) == 6  # no TrafficTargets: every service may be called
    assert len(mesh.services[("default", "svc-0003")].spec.endpoints) == 2


def test_percentile_and_profile_summary() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    prof = summarize_profile("main;a;b 3\nmain;a 1\nmain;c;b 2\nnot a line\n")
    assert prof["samples"] == 6
    assert prof["own"][0] == {"frame": "b", "samples": 5, "share": round(5 / 6, 4)}
    assert {e["frame"]: e["samples"] for e in prof["inclusive"]}["a"] == 4


async def run_checked(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    result = await run_scale(settings, tmp_path)
    n = settings.subscribers
    join = result["join"]
    assert join["complete"] and join["subscribed"] == n, join
    assert not result["stream_errors"], result["stream_errors"]
    assert result["view_bytes"]["distinct_views"] == settings.services
    (change,) = result["changes"]
    assert change["complete"] and change["received"] == n, change
    # every sidecar got a new view (the Mesh resource changed), of the new version
    assert change["views_changed"] == n
    assert change["version"] > 1
    applied = change["applied_after_write_s"]
    assert applied is not None and applied > 0  # the control plane logged config_applied
    fa, fw = change["from_applied"], change["from_write"]
    # the control plane logs before it sends anything, so every arrival comes after it
    assert 0 < fa["p50_ms"] <= fa["p99_ms"] <= fa["max_ms"]
    assert fw["all_s"] == pytest.approx(fw["max_ms"] / 1000, abs=1e-3)
    assert fw["all_s"] > applied
    assert len(change["latencies_from_write_ms"]) == n
    assert change["cpu"]["cp_cpu_s"] > 0
    mem = result["memory"]
    assert 0 < mem["idle_rss_mb"] <= mem["peak_rss_mb"]
    assert mem["subscribed_rss_mb"] <= mem["peak_rss_mb"]
    assert result["cp_exit_status"] == 0  # stopped with SIGTERM, cleanly
    summary = result["summary"]
    assert summary["all_complete"] and summary["changes"] == 1
    assert summary["median_all_from_write_s"] == fw["all_s"]
    return result


async def test_mtls_sidecars_get_a_change_and_the_control_plane_stops(tmp_path: Path) -> None:
    result = await run_checked(small(), tmp_path)
    assert result["settings"]["auth"] == "mtls"
    events = [line for line in (tmp_path / "cp.stderr").read_text().splitlines() if line]
    assert sum('"sidecar_subscribed"' in e for e in events) >= 5
    assert sum('"certificate_issued"' in e for e in events) == 2  # one CSR per service
    assert not any('"token_refused"' in e for e in events)


async def test_token_sidecars_on_an_open_mesh(tmp_path: Path) -> None:
    result = await run_checked(
        small(auth="token", topology="open", subscribers=3, services=3), tmp_path
    )
    stderr = (tmp_path / "cp.stderr").read_text()
    assert '"certificate_issued"' not in stderr  # streams authenticated by Bearer tokens
    assert result["view_bytes"]["max"] > 0
