"""pymesh.observe.metrics: registry rules, hot-path updates, cardinality cap, and the text
exposition as parsed by prometheus_client (the reference parser)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from pymesh.observe.metrics import (
    BYTES_BUCKETS,
    CONTENT_TYPE,
    DURATION_BUCKETS_MS,
    REQUEST_LABELS,
    TCP_LABELS,
    MetricsRegistry,
    mesh_metrics,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(registry: MetricsRegistry) -> tuple[dict[str, tuple[str, str]], Samples]:
    """Parse the exposition: ({family: (type, help)}, {(sample, sorted labels): value})."""
    text = registry.render().decode("utf-8")
    families: dict[str, tuple[str, str]] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return families, samples


def lbl(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_counter_round_trip() -> None:
    r = MetricsRegistry()
    c = r.counter("demo_requests_total", "Requests.", ("route", "code"))
    c.inc(("a", "200"))
    c.inc(("a", "200"), 2.5)
    c.inc(("b", "503"))
    families, samples = parse(r)
    assert families["demo_requests"] == ("counter", "Requests.")
    assert samples[("demo_requests_total", lbl(route="a", code="200"))] == 3.5
    assert samples[("demo_requests_total", lbl(route="b", code="503"))] == 1.0
    assert c.value(("a", "200")) == 3.5
    assert c.value(("never", "seen")) == 0.0


def test_render_text_format_details() -> None:
    r = MetricsRegistry()
    r.counter("x_total", "Help with \\ and\nnewline.", ()).inc(())
    r.gauge("g", "A gauge.", ("k",)).set(("v",), 0.25)
    text = r.render().decode()
    assert "# HELP x_total Help with \\\\ and\\nnewline.\n" in text
    assert "# TYPE x_total counter\nx_total 1\n" in text
    assert '# TYPE g gauge\ng{k="v"} 0.25\n' in text
    assert text.endswith("\n")
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_label_value_escaping_round_trips() -> None:
    r = MetricsRegistry()
    c = r.counter("odd_total", "Odd labels.", ("v",))
    odd = 'a"b\\c\nd'
    c.inc((odd,), 7)
    c.inc(("ünïcödé ✓",))
    text = r.render().decode()
    assert 'odd_total{v="a\\"b\\\\c\\nd"} 7\n' in text
    _, samples = parse(r)
    assert samples[("odd_total", lbl(v=odd))] == 7
    assert samples[("odd_total", lbl(v="ünïcödé ✓"))] == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(st.characters(codec="utf-8"), max_size=20),
        min_size=1,
        max_size=8,
        unique=True,
    )
)
def test_any_label_value_round_trips(values: list[str]) -> None:
    r = MetricsRegistry()
    c = r.counter("p_total", "Property.", ("v",))
    for i, v in enumerate(values):
        c.inc((v,), i + 1)
    _, samples = parse(r)
    assert {k[1][0][1]: val for k, val in samples.items() if k[0] == "p_total"} == {
        v: i + 1 for i, v in enumerate(values)
    }


def test_lone_surrogate_does_not_break_the_scrape() -> None:
    r = MetricsRegistry()
    r.counter("s_total", "S.", ("v",)).inc(("bad\udcff",))
    r.counter("t_total", "T.", ()).inc(())
    _, samples = parse(r)
    assert samples[("t_total", ())] == 1


def test_histogram_cumulative_buckets_sum_count() -> None:
    r = MetricsRegistry()
    h = r.histogram("lat_ms", "Latency.", ("route",), (1, 5, 10))
    for v in (0.5, 1, 1.0001, 5, 7, 10, 11, 1000):
        h.observe(("a",), v)
    _, samples = parse(r)
    bucket = {dict(k[1])["le"]: v for k, v in samples.items() if k[0] == "lat_ms_bucket"}
    # le is upper-inclusive: 1 counts in le=1, 10 in le=10.
    assert bucket == {"1": 2, "5": 4, "10": 6, "+Inf": 8}
    assert samples[("lat_ms_count", lbl(route="a"))] == 8
    assert samples[("lat_ms_sum", lbl(route="a"))] == pytest.approx(1035.5001)
    cumulative, total, count = h.snapshot(("a",))
    assert list(cumulative) == [2, 4, 6, 8]
    assert total == pytest.approx(1035.5001)
    assert count == 8
    text = r.render().decode()
    assert 'lat_ms_bucket{route="a",le="1"} 2\n' in text
    assert 'lat_ms_bucket{route="a",le="+Inf"} 8\n' in text


def test_histogram_without_labels() -> None:
    r = MetricsRegistry()
    h = r.histogram("size", "Size.", (), (0.5,))
    h.observe((), 0.1)
    text = r.render().decode()
    assert 'size_bucket{le="0.5"} 1\nsize_bucket{le="+Inf"} 1\nsize_sum 0.1\nsize_count 1\n' in text


def test_gauge_set_inc_dec_remove_and_special_values() -> None:
    r = MetricsRegistry()
    g = r.gauge("active", "Active.", ("l",))
    g.inc(("a",))
    g.inc(("a",), 4)
    g.dec(("a",), 2)
    g.set(("b",), -1.5)
    g.set(("inf",), math.inf)
    g.set(("nan",), math.nan)
    _, samples = parse(r)
    assert samples[("active", lbl(l="a"))] == 3
    assert samples[("active", lbl(l="b"))] == -1.5
    assert samples[("active", lbl(l="inf"))] == math.inf
    assert math.isnan(samples[("active", lbl(l="nan"))])
    g.remove(("b",))
    g.remove(("never",))
    _, samples = parse(r)
    assert ("active", lbl(l="b")) not in samples


def test_children_share_the_series() -> None:
    r = MetricsRegistry()
    c = r.counter("c_total", "C.", ("k",))
    g = r.gauge("g", "G.", ("k",))
    h = r.histogram("h", "H.", ("k",), (1.0,))
    cc, gc, hc = c.child(("x",)), g.child(("x",)), h.child(("x",))
    cc.inc()
    c.inc(("x",), 2)
    gc.set(5)
    gc.inc()
    gc.dec(3)
    hc.observe(0.5)
    h.observe(("x",), 2)
    assert cc.value == c.value(("x",)) == 3
    assert gc.value == g.value(("x",)) == 3
    assert h.snapshot(("x",)) == ((1, 2), 2.5, 2)


def test_counter_refuses_to_go_down() -> None:
    c = MetricsRegistry().counter("c_total", "C.", ())
    with pytest.raises(ValueError, match="only go up"):
        c.inc((), -1)
    with pytest.raises(ValueError, match="only go up"):
        c.child(()).inc(-1)


def test_label_values_validated_on_first_sight() -> None:
    c = MetricsRegistry().counter("c_total", "C.", ("a", "b"))
    with pytest.raises(ValueError, match="expected 2 label values"):
        c.inc(("only-one",))
    with pytest.raises(TypeError, match="must be str"):
        c.inc(("a", 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        c.inc(["a", "b"])  # type: ignore[arg-type]
    assert c.series_count() == 0


def test_register_same_name_identical_returns_existing() -> None:
    r = MetricsRegistry()
    c1 = r.counter("c_total", "C.", ("a",))
    assert r.counter("c_total", "C.", ("a",)) is c1
    h1 = r.histogram("h", "H.", ("a",), (1, 2))
    assert r.histogram("h", "H.", ("a",), (1.0, 2.0)) is h1
    assert r.get("h") is h1
    assert r.get("nope") is None
    with pytest.raises(ValueError, match="already registered"):
        r.counter("c_total", "Other help.", ("a",))
    with pytest.raises(ValueError, match="already registered"):
        r.counter("c_total", "C.", ("b",))
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("c_total", "C.", ("a",))
    with pytest.raises(ValueError, match="already registered"):
        r.histogram("h", "H.", ("a",), (1, 3))


@pytest.mark.parametrize(
    ("kind", "name", "labels", "message"),
    [
        ("counter", "no_suffix", (), "must end in _total"),
        ("counter", "bad-name_total", (), "invalid metric name"),
        ("gauge", "9lives", (), "invalid metric name"),
        ("gauge", "g", ("bad-label",), "invalid label name"),
        ("gauge", "g", ("__reserved",), "invalid label name"),
        ("gauge", "g", ("a", "a"), "duplicate label names"),
        ("histogram", "h", ("le",), "'le' is reserved"),
    ],
)
def test_invalid_definitions(kind: str, name: str, labels: tuple[str, ...], message: str) -> None:
    r = MetricsRegistry()
    with pytest.raises(ValueError, match=message):
        if kind == "counter":
            r.counter(name, "x", labels)
        elif kind == "gauge":
            r.gauge(name, "x", labels)
        else:
            r.histogram(name, "x", labels, (1.0,))


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf), (math.nan,)])
def test_invalid_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        MetricsRegistry().histogram("h", "H.", (), buckets)


def test_histogram_family_names_do_not_collide() -> None:
    r = MetricsRegistry()
    r.histogram("req", "R.", (), (1.0,))
    with pytest.raises(ValueError, match="collides"):
        r.gauge("req_count", "x", ())
    r2 = MetricsRegistry()
    r2.gauge("lat_sum", "x", ())
    with pytest.raises(ValueError, match="collides"):
        r2.histogram("lat", "L.", (), (1.0,))


def test_cardinality_cap_diverts_to_overflow_series() -> None:
    r = MetricsRegistry(max_series=3)
    c = r.counter("c_total", "C.", ("a", "b"))
    h = r.histogram("h", "H.", ("a",), (1.0,))
    for i in range(3):
        c.inc((str(i), "x"))
    # Beyond the cap: new label sets go to one overflow series, and each diverted update counts.
    c.inc(("3", "x"))
    c.inc(("4", "x"), 5)
    c.child(("5", "x")).inc()
    c.inc(("0", "x"))  # an admitted series keeps working
    assert c.series_count() == 4  # 3 admitted + the overflow series
    for i in range(5):
        h.observe((str(i),), 0.5)
    _, samples = parse(r)
    assert samples[("c_total", lbl(a="overflow", b="overflow"))] == 7
    assert samples[("c_total", lbl(a="0", b="x"))] == 2
    assert ("c_total", lbl(a="3", b="x")) not in samples
    assert samples[("pymesh_metrics_dropped_series_total", lbl(metric="c_total"))] == 3
    assert samples[("pymesh_metrics_dropped_series_total", lbl(metric="h"))] == 2
    assert samples[("h_count", lbl(a="overflow"))] == 2


def test_default_cap_is_ten_thousand() -> None:
    r = MetricsRegistry()
    g = r.gauge("g", "G.", ("k",))
    for i in range(10_001):
        g.set((str(i),), 1)
    assert g.series_count() == 10_001  # 10,000 + overflow
    assert g.value(("overflow",)) == 1
    assert g.value(("10000",)) == 0
    dropped = r.get("pymesh_metrics_dropped_series_total")
    assert dropped is not None and dropped.kind == "counter"
    with pytest.raises(ValueError, match="max_series"):
        MetricsRegistry(max_series=0)
    with pytest.raises(ValueError, match="max_series"):
        r.counter("z_total", "Z.", (), max_series=0)


def test_gauge_callback_is_computed_at_scrape_time() -> None:
    r = MetricsRegistry(max_series=2)
    pools = {"orders": 3.0}

    def sample() -> Iterable[tuple[tuple[str, ...], float]]:
        return [((name,), size) for name, size in pools.items()]

    cb = r.gauge_callback("pool_size", "Pool size.", ("cluster",), sample)
    assert r.gauge_callback("pool_size", "Pool size.", ("cluster",), sample) is cb
    with pytest.raises(ValueError, match="already registered"):
        r.gauge_callback("pool_size", "Pool size.", ("cluster",), lambda: ())
    families, samples = parse(r)
    assert families["pool_size"][0] == "gauge"
    assert samples[("pool_size", lbl(cluster="orders"))] == 3
    pools.update(web=1.0, extra=9.0)  # 3 > max_series: rendering stops at the cap
    _, samples = parse(r)
    assert sum(1 for k in samples if k[0] == "pool_size") == 2
    r.unregister("pool_size")
    assert "pool_size" not in r.render().decode()
    with pytest.raises(ValueError, match="cannot be unregistered"):
        r.unregister("pymesh_metrics_dropped_series_total")


def test_failing_gauge_callback_is_logged_and_skipped() -> None:
    r = MetricsRegistry()

    def broken() -> Iterable[tuple[tuple[str, ...], float]]:
        yield ("a",), 1.0
        raise RuntimeError("boom")

    r.gauge_callback("broken", "Broken.", ("k",), broken)
    r.counter("ok_total", "OK.", ()).inc(())
    with capture_logs() as logs:
        families, samples = parse(r)
    assert ("broken", lbl(k="a")) not in samples  # no partial output
    assert samples[("ok_total", ())] == 1
    assert "broken" in families
    assert [e["event"] for e in logs] == ["metrics_callback_failed"]
    assert logs[0]["metric"] == "broken"


def test_mesh_metrics_names_labels_buckets() -> None:
    r = MetricsRegistry()
    m = mesh_metrics(r)
    assert mesh_metrics(r) == m  # idempotent: the same objects
    assert REQUEST_LABELS == (
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "destination_service",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    )
    assert TCP_LABELS == (
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "destination_service",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "response_flags",
        "connection_security_policy",
    )
    expect = {
        "requests_total": ("istio_requests_total", "counter", REQUEST_LABELS),
        "request_duration_ms": (
            "istio_request_duration_milliseconds",
            "histogram",
            REQUEST_LABELS,
        ),
        "request_bytes": ("istio_request_bytes", "histogram", REQUEST_LABELS),
        "response_bytes": ("istio_response_bytes", "histogram", REQUEST_LABELS),
        "tcp_sent_bytes": ("istio_tcp_sent_bytes_total", "counter", TCP_LABELS),
        "tcp_received_bytes": ("istio_tcp_received_bytes_total", "counter", TCP_LABELS),
        "tcp_opened": ("istio_tcp_connections_opened_total", "counter", TCP_LABELS),
        "tcp_closed": ("istio_tcp_connections_closed_total", "counter", TCP_LABELS),
        "config_version_info": ("pymesh_config_version_info", "gauge", ("version",)),
        "downstream_connections_active": (
            "pymesh_downstream_connections_active",
            "gauge",
            ("listener",),
        ),
        "http_protocol_errors": (
            "pymesh_http_protocol_errors_total",
            "counter",
            ("listener", "code"),
        ),
    }
    for attr, (name, kind, labels) in expect.items():
        metric = getattr(m, attr)
        assert (metric.name, metric.kind, metric.labelnames) == (name, kind, labels), attr
    istio_ms: tuple[float, ...] = (
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
        300000, 600000, 1800000, 3600000,
    )  # fmt: skip
    assert m.request_duration_ms.buckets == istio_ms
    assert m.request_duration_ms.buckets == DURATION_BUCKETS_MS
    assert m.request_bytes.buckets == m.response_bytes.buckets == BYTES_BUCKETS
    istio_bytes: tuple[float, ...] = (1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
    assert istio_bytes == BYTES_BUCKETS
    with pytest.raises(AttributeError):
        m.requests_total = m.tcp_opened  # type: ignore[misc]


def test_mesh_metrics_exposition_parses() -> None:
    r = MetricsRegistry()
    m = mesh_metrics(r)
    lv = (
        "destination",
        "web",
        "default",
        "spiffe://shop.local/ns/default/sa/web",
        "orders.default.svc.cluster.local",
        "orders",
        "default",
        "spiffe://shop.local/ns/default/sa/orders",
        "http",
        "200",
        "-",
        "-",
        "mutual_tls",
    )
    tcp = lv[:8] + lv[11:]
    m.requests_total.inc(lv)
    m.request_duration_ms.observe(lv, 12.5)
    m.request_bytes.observe(lv, 350)
    m.response_bytes.observe(lv, 2_000_000_000)
    m.tcp_opened.inc(tcp)
    m.tcp_sent_bytes.inc(tcp, 1024)
    m.config_version_info.set(("42",), 1)
    m.downstream_connections_active.inc(("inbound",))
    m.http_protocol_errors.inc(("inbound", "bad_request"))
    families, samples = parse(r)
    assert families["istio_requests"][0] == "counter"
    assert families["istio_request_duration_milliseconds"][0] == "histogram"
    labels = tuple(sorted(zip(REQUEST_LABELS, lv, strict=True)))
    tcp_labels = tuple(sorted(zip(TCP_LABELS, tcp, strict=True)))
    assert samples[("istio_requests_total", labels)] == 1
    le25 = tuple(sorted((*labels, ("le", "25"))))
    le10 = tuple(sorted((*labels, ("le", "10"))))
    assert samples[("istio_request_duration_milliseconds_bucket", le25)] == 1
    assert samples[("istio_request_duration_milliseconds_bucket", le10)] == 0
    inf = tuple(sorted((*labels, ("le", "+Inf"))))
    top = tuple(sorted((*labels, ("le", "1000000000"))))
    assert samples[("istio_response_bytes_bucket", top)] == 0
    assert samples[("istio_response_bytes_bucket", inf)] == 1
    assert samples[("istio_tcp_sent_bytes_total", tcp_labels)] == 1024
    assert samples[("istio_tcp_connections_opened_total", tcp_labels)] == 1
    assert samples[("pymesh_config_version_info", lbl(version="42"))] == 1
    assert samples[("pymesh_downstream_connections_active", lbl(listener="inbound"))] == 1
    key = ("pymesh_http_protocol_errors_total", lbl(listener="inbound", code="bad_request"))
    assert samples[key] == 1
