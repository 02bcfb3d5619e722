"""In-process metrics registry and Prometheus text exposition (format 0.0.4).

The proxy updates metrics on every request, so the update path is a dict lookup keyed by
the label-values tuple plus an add into a mutable cell: no string formatting, no locks, no
allocation beyond the first time a label set is seen. All formatting happens at scrape time
in `MetricsRegistry.render`.

Invariants:

* Loop affinity: a registry and its metrics belong to one thread (the sidecar's event loop
  thread). There are no locks; update and render from that thread only.
* Label values are a ``tuple[str, ...]`` in the order of the metric's ``labelnames``. They
  are validated (length and type) only the first time a label set is seen.
* Cardinality is bounded: at most ``max_series`` label sets per metric (default 10,000).
  An update for a label set beyond the cap goes to one overflow series whose label values
  are all ``"overflow"``, and ``pymesh_metrics_dropped_series_total{metric=NAME}`` counts
  each such diverted update (a ``child`` made for such a label set counts once, when made).
  Label sets admitted before the cap keep working normally.
* Counter names end in ``_total`` and are exposed exactly as named (the ``# TYPE`` line
  names the ``*_total`` family, as prometheus_client does for the 0.0.4 text format).

`mesh_metrics` registers the Istio-compatible series of DESIGN.md §3 (names and labels are
a contract: Istio dashboards query them) plus pymesh's own.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Final, TypeAlias, TypeVar, final

from pymesh.observe.log import get_logger

__all__ = [
    "BYTES_BUCKETS",
    "CONTENT_TYPE",
    "DEFAULT_MAX_SERIES",
    "DURATION_BUCKETS_MS",
    "REQUEST_LABELS",
    "TCP_LABELS",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeCallback",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "LabelValues",
    "MeshMetrics",
    "Metric",
    "MetricsRegistry",
    "mesh_metrics",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of `MetricsRegistry.render` output."""

DEFAULT_MAX_SERIES: Final = 10_000
"""Default cap on label sets per metric."""

OVERFLOW: Final = "overflow"
"""The label value of every label of the overflow series."""

DROPPED_SERIES_METRIC: Final = "pymesh_metrics_dropped_series_total"

LabelValues: TypeAlias = tuple[str, ...]
"""Label values of one series, in the order of the metric's ``labelnames``."""
SampleSource: TypeAlias = Callable[[], Iterable[tuple[LabelValues, float]]]
"""What a `GaugeCallback` calls at scrape time."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


# --- Istio-compatible series (DESIGN.md §3) -------------------------------------------------

REQUEST_LABELS: Final[tuple[str, ...]] = (
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
"""Label names of the ``istio_request*`` series, in order."""

TCP_LABELS: Final[tuple[str, ...]] = tuple(
    n
    for n in REQUEST_LABELS
    if n not in ("request_protocol", "response_code", "grpc_response_status")
)
"""Label names of the ``istio_tcp_*`` series, in order."""

DURATION_BUCKETS_MS: Final[tuple[float, ...]] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
"""Istio's default ``istio_request_duration_milliseconds`` buckets."""

BYTES_BUCKETS: Final[tuple[float, ...]] = tuple(float(10**i) for i in range(10))
"""Istio's ``istio_request_bytes``/``istio_response_bytes`` buckets (1 B to 1 GB)."""


# --- formatting helpers (scrape time only) --------------------------------------------------


def _fmt_value(v: float) -> str:
    """Format a sample value or bucket bound the way Prometheus reads it."""
    if v != v:  # NaN
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _escape_label(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _label_str(names: tuple[str, ...], values: LabelValues) -> str:
    """``a="x",b="y"`` (no braces); empty for no labels."""
    return ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))


def _braced(labels: str) -> str:
    return "{" + labels + "}" if labels else ""


# --- metrics --------------------------------------------------------------------------------


class _Metric:
    """State shared by every metric kind: identity, series table and the cardinality cap."""

    __slots__ = (
        "_max_series",
        "_on_overflow",
        "_overflow_key",
        "_series",
        "help",
        "labelnames",
        "name",
    )

    kind: str = ""

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        max_series: int,
        on_overflow: Callable[[str], None] | None,
    ) -> None:
        if max_series < 1:
            raise ValueError(f"{name}: max_series must be >= 1")
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self._max_series = max_series
        self._on_overflow = on_overflow
        self._overflow_key: LabelValues = (OVERFLOW,) * len(labelnames)
        self._series: dict[LabelValues, list[float]] = {}

    def _identity(self) -> tuple[object, ...]:
        return (self.kind, self.help, self.labelnames)

    def _new_cell(self) -> list[float]:
        return [0.0]

    def _cell(self, labelvalues: LabelValues) -> list[float]:
        """Slow path: the first update of a label set (validate, admit or divert)."""
        series = self._series
        cell = series.get(labelvalues)
        if cell is not None:
            return cell
        if type(labelvalues) is not tuple or len(labelvalues) != len(self.labelnames):
            raise ValueError(
                f"{self.name}: expected {len(self.labelnames)} label values "
                f"{self.labelnames}, got {labelvalues!r}"
            )
        for v in labelvalues:
            if not isinstance(v, str):
                raise TypeError(f"{self.name}: label values must be str, got {labelvalues!r}")
        if len(series) >= self._max_series:
            if self._on_overflow is not None:
                self._on_overflow(self.name)
            cell = series.get(self._overflow_key)
            if cell is None:
                # The overflow series is admitted beyond the cap: at most one extra series.
                cell = series[self._overflow_key] = self._new_cell()
            return cell
        cell = series[labelvalues] = self._new_cell()
        return cell

    def series_count(self) -> int:
        """Number of label sets currently held (the overflow series included)."""
        return len(self._series)

    def _render(self, out: list[str]) -> None:
        """Append the sample lines (single-value cells: counters and gauges)."""
        name, names = self.name, self.labelnames
        for lv, cell in list(self._series.items()):
            out.append(f"{name}{_braced(_label_str(names, lv))} {_fmt_value(cell[0])}\n")


@final
class CounterChild:
    """A counter pre-bound to one label set; `inc` is a list add. Made by `Counter.child`."""

    __slots__ = ("_cell",)

    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("counters only go up")
        self._cell[0] += amount

    @property
    def value(self) -> float:
        """The current value."""
        return self._cell[0]


@final
class Counter(_Metric):
    """A monotonically increasing counter. Made by `MetricsRegistry.counter`."""

    __slots__ = ()
    kind = "counter"

    def inc(self, labelvalues: LabelValues, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the series ``labelvalues``."""
        if amount < 0:
            raise ValueError("counters only go up")
        try:
            self._series[labelvalues][0] += amount
        except KeyError:
            self._cell(labelvalues)[0] += amount

    def child(self, labelvalues: LabelValues) -> CounterChild:
        """Return an object bound to ``labelvalues`` for callers that cache it (per route)."""
        return CounterChild(self._cell(labelvalues))

    def value(self, labelvalues: LabelValues) -> float:
        """The current value of a series (0 if never updated). For tests and admin views."""
        cell = self._series.get(labelvalues)
        return 0.0 if cell is None else cell[0]


@final
class GaugeChild:
    """A gauge pre-bound to one label set. Made by `Gauge.child`."""

    __slots__ = ("_cell",)

    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def set(self, value: float) -> None:
        """Set the value."""
        self._cell[0] = value

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self._cell[0] += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        self._cell[0] -= amount

    @property
    def value(self) -> float:
        """The current value."""
        return self._cell[0]


@final
class Gauge(_Metric):
    """A value that goes up and down. Made by `MetricsRegistry.gauge`."""

    __slots__ = ()
    kind = "gauge"

    def set(self, labelvalues: LabelValues, value: float) -> None:
        """Set the series ``labelvalues`` to ``value``."""
        try:
            self._series[labelvalues][0] = value
        except KeyError:
            self._cell(labelvalues)[0] = value

    def inc(self, labelvalues: LabelValues, amount: float = 1.0) -> None:
        """Add ``amount`` to the series ``labelvalues``."""
        try:
            self._series[labelvalues][0] += amount
        except KeyError:
            self._cell(labelvalues)[0] += amount

    def dec(self, labelvalues: LabelValues, amount: float = 1.0) -> None:
        """Subtract ``amount`` from the series ``labelvalues``."""
        try:
            self._series[labelvalues][0] -= amount
        except KeyError:
            self._cell(labelvalues)[0] -= amount

    def remove(self, labelvalues: LabelValues) -> None:
        """Drop one series (e.g. the old ``version`` of an info gauge)."""
        self._series.pop(labelvalues, None)

    def clear(self) -> None:
        """Drop every series (a gauge that describes one thing, replaced whole)."""
        self._series.clear()

    def child(self, labelvalues: LabelValues) -> GaugeChild:
        """Return an object bound to ``labelvalues``."""
        return GaugeChild(self._cell(labelvalues))

    def value(self, labelvalues: LabelValues) -> float:
        """The current value of a series (0 if never set)."""
        cell = self._series.get(labelvalues)
        return 0.0 if cell is None else cell[0]


@final
class HistogramChild:
    """A histogram pre-bound to one label set. Made by `Histogram.child`."""

    __slots__ = ("_bounds", "_cell")

    def __init__(self, bounds: tuple[float, ...], cell: list[float]) -> None:
        self._bounds = bounds
        self._cell = cell

    def observe(self, value: float) -> None:
        """Record one observation."""
        cell = self._cell
        cell[bisect_left(self._bounds, value)] += 1
        cell[-1] += value


@final
class Histogram(_Metric):
    """Cumulative-bucket histogram. Made by `MetricsRegistry.histogram`.

    A series is one list: per-bucket (non-cumulative) counts for each bound and ``+Inf``,
    then the sum. Buckets are upper-inclusive (``le``), so `bisect_left` finds the bucket.
    """

    __slots__ = ("buckets",)
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        max_series: int,
        on_overflow: Callable[[str], None] | None,
    ) -> None:
        super().__init__(name, help, labelnames, max_series, on_overflow)
        self.buckets = buckets

    def _identity(self) -> tuple[object, ...]:
        return (self.kind, self.help, self.labelnames, self.buckets)

    def _new_cell(self) -> list[float]:
        # Integer counts (exact, and formatted without a float round trip), float sum.
        cell: list[float] = [0] * (len(self.buckets) + 1)
        cell.append(0.0)
        return cell

    def observe(self, labelvalues: LabelValues, value: float) -> None:
        """Record ``value`` (a number, not NaN) in the series ``labelvalues``."""
        try:
            cell = self._series[labelvalues]
        except KeyError:
            cell = self._cell(labelvalues)
        cell[bisect_left(self.buckets, value)] += 1
        cell[-1] += value

    def child(self, labelvalues: LabelValues) -> HistogramChild:
        """Return an object bound to ``labelvalues``."""
        return HistogramChild(self.buckets, self._cell(labelvalues))

    def snapshot(self, labelvalues: LabelValues) -> tuple[tuple[float, ...], float, float]:
        """(cumulative bucket counts incl. +Inf, sum, count) of a series. For tests."""
        cell = self._series.get(labelvalues) or self._new_cell()
        cumulative: list[float] = []
        acc: float = 0
        for c in cell[:-1]:
            acc += c
            cumulative.append(acc)
        return tuple(cumulative), cell[-1], acc

    def _render(self, out: list[str]) -> None:
        name, names = self.name, self.labelnames
        les = [f'le="{_fmt_value(b)}"' for b in self.buckets]
        les.append('le="+Inf"')
        for lv, cell in list(self._series.items()):
            labels = _label_str(names, lv)
            prefix = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
            acc: float = 0
            for le, c in zip(les, cell, strict=False):
                acc += c
                out.append(f"{prefix}{le}}} {acc}\n")
            braced = _braced(labels)
            out.append(f"{name}_sum{braced} {_fmt_value(cell[-1])}\n")
            out.append(f"{name}_count{braced} {acc}\n")


@final
class GaugeCallback(_Metric):
    """A gauge whose samples are computed at scrape time. Made by
    `MetricsRegistry.gauge_callback`. A callback that raises is logged and yields nothing
    for that scrape; at most ``max_series`` samples are rendered."""

    __slots__ = ("fn",)
    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        fn: SampleSource,
        max_series: int,
    ) -> None:
        super().__init__(name, help, labelnames, max_series, None)
        self.fn = fn

    def _identity(self) -> tuple[object, ...]:
        return ("callback", self.help, self.labelnames, self.fn)

    def _render(self, out: list[str]) -> None:
        name, names = self.name, self.labelnames
        lines: list[str] = []
        try:
            for i, (lv, value) in enumerate(self.fn()):
                if i >= self._max_series:
                    break
                lines.append(f"{name}{_braced(_label_str(names, lv))} {_fmt_value(value)}\n")
        except Exception:
            get_logger("pymesh.metrics").exception("metrics_callback_failed", metric=name)
            return
        out.extend(lines)


Metric: TypeAlias = Counter | Gauge | Histogram | GaugeCallback
"""Any registered metric."""
_M = TypeVar("_M", Counter, Gauge, Histogram, GaugeCallback)


# --- registry -------------------------------------------------------------------------------


@final
class MetricsRegistry:
    """Owns every metric of one process (usually one per sidecar) and renders them.

    Constructed by the sidecar (or a test); lives on the event-loop thread. Registering a name
    again returns the existing metric when the definition is identical, else `ValueError`.
    """

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self.max_series = max_series
        self._metrics: dict[str, Metric] = {}
        self._dropped = self.counter(
            DROPPED_SERIES_METRIC,
            "Updates diverted to the overflow series because a metric hit its series cap.",
            ("metric",),
        )

    def _note_overflow(self, metric_name: str) -> None:
        self._dropped.inc((metric_name,))

    def _register(self, metric: _M) -> _M:
        name = metric.name
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in metric.labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        if len(set(metric.labelnames)) != len(metric.labelnames):
            raise ValueError(f"{name}: duplicate label names {metric.labelnames}")
        existing = self._metrics.get(name)
        if existing is not None:
            if type(existing) is type(metric) and existing._identity() == metric._identity():
                return existing  # narrowed to _M by the type() check
            raise ValueError(f"metric {name!r} is already registered with another definition")
        # A histogram's _bucket/_sum/_count (or a counter family) must not collide either.
        for other in self._metrics.values():
            if _family_names(other) & _family_names(metric):
                raise ValueError(f"metric {name!r} collides with {other.name!r}")
        self._metrics[name] = metric
        return metric

    def counter(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...] = (),
        *,
        max_series: int | None = None,
    ) -> Counter:
        """Register (or fetch) a counter. ``name`` must end in ``_total``."""
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in _total")
        return self._register(
            Counter(
                name,
                help,
                tuple(labelnames),
                self.max_series if max_series is None else max_series,
                None if name == DROPPED_SERIES_METRIC else self._note_overflow,
            )
        )

    def gauge(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...] = (),
        *,
        max_series: int | None = None,
    ) -> Gauge:
        """Register (or fetch) a gauge."""
        cap = self.max_series if max_series is None else max_series
        return self._register(Gauge(name, help, tuple(labelnames), cap, self._note_overflow))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        *,
        max_series: int | None = None,
    ) -> Histogram:
        """Register (or fetch) a histogram with the given finite, increasing bucket bounds
        (``+Inf`` is implicit)."""
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite and non-empty")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved in histograms")
        return self._register(
            Histogram(
                name,
                help,
                tuple(labelnames),
                bounds,
                self.max_series if max_series is None else max_series,
                self._note_overflow,
            )
        )

    def gauge_callback(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        fn: SampleSource,
    ) -> GaugeCallback:
        """Register a gauge whose ``(labelvalues, value)`` samples ``fn`` yields at scrape
        time. Registering the same name with the same ``fn`` returns the existing one."""
        return self._register(GaugeCallback(name, help, tuple(labelnames), fn, self.max_series))

    def unregister(self, name: str) -> None:
        """Remove a metric (e.g. a callback bound to an object that is going away)."""
        if name == DROPPED_SERIES_METRIC:
            raise ValueError(f"{name} cannot be unregistered")
        self._metrics.pop(name, None)

    def get(self, name: str) -> Metric | None:
        """The metric registered under ``name``, if any."""
        return self._metrics.get(name)

    def render(self) -> bytes:
        """The whole registry in Prometheus text format 0.0.4 (see `CONTENT_TYPE`)."""
        out: list[str] = []
        for metric in list(self._metrics.values()):
            out.append(f"# HELP {metric.name} {_escape_help(metric.help)}\n")
            out.append(f"# TYPE {metric.name} {metric.kind}\n")
            metric._render(out)
        # "replace": a lone surrogate in a label value must not break every scrape.
        return "".join(out).encode("utf-8", "replace")


def _family_names(metric: _Metric) -> set[str]:
    if isinstance(metric, Histogram):
        n = metric.name
        return {n, f"{n}_bucket", f"{n}_sum", f"{n}_count"}
    return {metric.name}


# --- the standard mesh series ---------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class MeshMetrics:
    """The metrics a sidecar updates, registered by `mesh_metrics`. Attribute names are
    pymesh's; the exposed names and labels are Istio's (DESIGN.md §3)."""

    requests_total: Counter
    """``istio_requests_total`` (`REQUEST_LABELS`)."""
    request_duration_ms: Histogram
    """``istio_request_duration_milliseconds`` (`REQUEST_LABELS`, `DURATION_BUCKETS_MS`)."""
    request_bytes: Histogram
    """``istio_request_bytes`` (`REQUEST_LABELS`, `BYTES_BUCKETS`)."""
    response_bytes: Histogram
    """``istio_response_bytes`` (`REQUEST_LABELS`, `BYTES_BUCKETS`)."""
    tcp_sent_bytes: Counter
    """``istio_tcp_sent_bytes_total`` (`TCP_LABELS`)."""
    tcp_received_bytes: Counter
    """``istio_tcp_received_bytes_total`` (`TCP_LABELS`)."""
    tcp_opened: Counter
    """``istio_tcp_connections_opened_total`` (`TCP_LABELS`)."""
    tcp_closed: Counter
    """``istio_tcp_connections_closed_total`` (`TCP_LABELS`)."""
    config_version_info: Gauge
    """``pymesh_config_version_info{version}``: 1 for the config version in force."""
    downstream_connections_active: Gauge
    """``pymesh_downstream_connections_active{listener}``."""
    http_protocol_errors: Counter
    """``pymesh_http_protocol_errors_total{listener,code}``: malformed requests rejected."""
    tls_refused: Counter
    """``pymesh_tls_refused_total{listener,reason}``: connections refused by mTLS (no or bad
    client certificate, SVID rules, plaintext to a STRICT port, wrong server identity)."""
    authz_decisions: Counter
    """``pymesh_authz_decisions_total{decision,protocol}``: allow | deny | audit_deny."""
    cert_expiry: Gauge
    """``pymesh_certificate_expiry_timestamp_seconds{identity,serial}``: the not-after of the
    certificate in use (one series, replaced on rotation)."""
    cert_rotations: Counter
    """``pymesh_certificate_rotations_total``: identities loaded since start."""


def mesh_metrics(registry: MetricsRegistry) -> MeshMetrics:
    """Register the standard series in ``registry`` (idempotent) and return them."""
    r = registry
    return MeshMetrics(
        requests_total=r.counter(
            "istio_requests_total",
            "Requests handled, by source, destination and outcome.",
            REQUEST_LABELS,
        ),
        request_duration_ms=r.histogram(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds.",
            REQUEST_LABELS,
            DURATION_BUCKETS_MS,
        ),
        request_bytes=r.histogram(
            "istio_request_bytes",
            "Request size (headers and body) in bytes.",
            REQUEST_LABELS,
            BYTES_BUCKETS,
        ),
        response_bytes=r.histogram(
            "istio_response_bytes",
            "Response size (headers and body) in bytes.",
            REQUEST_LABELS,
            BYTES_BUCKETS,
        ),
        tcp_sent_bytes=r.counter(
            "istio_tcp_sent_bytes_total",
            "Bytes sent to the downstream on TCP connections.",
            TCP_LABELS,
        ),
        tcp_received_bytes=r.counter(
            "istio_tcp_received_bytes_total",
            "Bytes received from the downstream on TCP connections.",
            TCP_LABELS,
        ),
        tcp_opened=r.counter(
            "istio_tcp_connections_opened_total", "TCP connections opened.", TCP_LABELS
        ),
        tcp_closed=r.counter(
            "istio_tcp_connections_closed_total", "TCP connections closed.", TCP_LABELS
        ),
        config_version_info=r.gauge(
            "pymesh_config_version_info", "1 for the config version in force.", ("version",)
        ),
        downstream_connections_active=r.gauge(
            "pymesh_downstream_connections_active",
            "Open downstream connections per listener.",
            ("listener",),
        ),
        http_protocol_errors=r.counter(
            "pymesh_http_protocol_errors_total",
            "Malformed requests rejected, by listener and error code.",
            ("listener", "code"),
        ),
        tls_refused=r.counter(
            "pymesh_tls_refused_total",
            "Connections refused by mTLS, by listener and reason.",
            ("listener", "reason"),
        ),
        authz_decisions=r.counter(
            "pymesh_authz_decisions_total",
            "Authorization decisions on the inbound side (allow, deny, audit_deny).",
            ("decision", "protocol"),
        ),
        cert_expiry=r.gauge(
            "pymesh_certificate_expiry_timestamp_seconds",
            "Not-after (Unix time) of the workload certificate in use.",
            ("identity", "serial"),
        ),
        cert_rotations=r.counter(
            "pymesh_certificate_rotations_total",
            "Workload certificates loaded since start (first load included).",
            (),
        ),
    )
