"""Built-in observers: Istio-compatible metrics and the structlog JSON access log.

Observers run once per finished request or L4 connection (Envoy's access-log model: the
numbers are only known when the stream ends). They must be cheap: metrics cache the bound
series per label set, so a request costs one dict lookup and a few adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from pymesh.observe.log import HTTP_ACCESS_EVENT, TCP_ACCESS_EVENT, access_logger
from pymesh.observe.metrics import CounterChild, HistogramChild, MeshMetrics
from pymesh.proxy.messages import Request
from pymesh.proxy.tcp import Connection

__all__ = ["AccessLog", "MetricsObserver", "Peer"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The fixed half of the metric labels: who this sidecar is and which side reports."""

    reporter: str  # "source" (outbound) or "destination" (inbound)
    workload: str
    namespace: str
    principal: str = "unknown"


_Bound = tuple[CounterChild, HistogramChild, HistogramChild, HistogramChild]


@final
class MetricsObserver:
    """Fills `istio_requests_total`, the duration and size histograms and `istio_tcp_*`."""

    __slots__ = ("_cache", "m", "peer")

    def __init__(self, metrics: MeshMetrics, peer: Peer) -> None:
        self.m = metrics
        self.peer = peer
        self._cache: dict[tuple[str, ...], _Bound] = {}

    def _labels(
        self,
        dest_service: str,
        dest_workload: str,
        dest_ns: str,
        source_principal: str,
    ) -> tuple[str, str, str, str, str, str, str, str]:
        p = self.peer
        if p.reporter == "source":
            return (
                p.reporter,
                p.workload,
                p.namespace,
                p.principal,
                dest_service,
                dest_workload,
                dest_ns,
                "unknown",
            )
        return (
            p.reporter,
            "unknown",
            "unknown",
            source_principal,
            dest_service,
            p.workload,
            p.namespace,
            p.principal,
        )

    def on_request(self, request: Request, status: int, duration_s: float) -> None:
        """Count one finished HTTP request."""
        ctx = request.context
        key = (
            ctx.destination_service,
            ctx.destination_workload,
            ctx.destination_namespace,
            ctx.source_principal,
            str(status),
            ctx.response_flags,
            ctx.grpc_status,
            ctx.connection_security_policy,
        )
        bound = self._cache.get(key)
        if bound is None:
            labels = (
                *self._labels(key[0], key[1], key[2], key[3]),
                "grpc" if key[6] != "-" else "http",
                key[4],
                key[6],
                key[5],
                key[7],
            )
            m = self.m
            bound = (
                m.requests_total.child(labels),
                m.request_duration_ms.child(labels),
                m.request_bytes.child(labels),
                m.response_bytes.child(labels),
            )
            if len(self._cache) < 4096:
                self._cache[key] = bound
        bound[0].inc()
        bound[1].observe(duration_s * 1000.0)
        bound[2].observe(ctx.bytes_received)
        bound[3].observe(ctx.bytes_sent)

    def on_connection(self, conn: Connection, exc: BaseException | None) -> None:
        """Count one finished L4 connection (opened and closed are counted together)."""
        labels = (
            *self._labels(
                conn.destination_service, conn.destination_service, "unknown", conn.source_principal
            ),
            conn.close_reason,
            conn.connection_security_policy,
        )
        m = self.m
        m.tcp_opened.inc(labels)
        m.tcp_closed.inc(labels)
        m.tcp_received_bytes.inc(labels, conn.stats.received)
        m.tcp_sent_bytes.inc(labels, conn.stats.sent)


@final
class AccessLog:
    """One JSON line per request or connection on the `pymesh.access` logger."""

    __slots__ = ("direction", "log")

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.log = access_logger()

    def on_request(self, request: Request, status: int, duration_s: float) -> None:
        """Log one finished HTTP request."""
        ctx = request.context
        ua = request.header(b"user-agent")
        self.log.info(
            HTTP_ACCESS_EVENT,
            direction=self.direction,
            method=request.method.decode("latin-1"),
            authority=request.authority.decode("latin-1"),
            path=request.target.decode("latin-1"),
            protocol="HTTP/" + request.http_version.decode("latin-1"),
            response_code=status,
            response_flags=ctx.response_flags,
            grpc_status="" if ctx.grpc_status == "-" else ctx.grpc_status,
            bytes_received=ctx.bytes_received,
            bytes_sent=ctx.bytes_sent,
            duration_ms=round(duration_s * 1000.0, 3),
            upstream_host=ctx.upstream_addr,
            destination_service=ctx.destination_service,
            source_principal=ctx.source_principal,
            downstream_remote_address=ctx.downstream_addr,
            connection_security_policy=ctx.connection_security_policy,
            authz=ctx.authz,
            request_id=ctx.request_id,
            user_agent=ua.decode("latin-1") if ua else "",
        )

    def on_connection(self, conn: Connection, exc: BaseException | None) -> None:
        """Log one finished L4 connection."""
        import time

        self.log.info(
            TCP_ACCESS_EVENT,
            direction=self.direction,
            response_flags=conn.close_reason,
            bytes_received=conn.stats.received,
            bytes_sent=conn.stats.sent,
            duration_ms=round((time.monotonic() - conn.start) * 1000.0, 3),
            upstream_host=conn.upstream_addr,
            destination_service=conn.destination_service,
            source_principal=conn.source_principal,
            downstream_remote_address=conn.downstream_addr,
            connection_security_policy=conn.connection_security_policy,
            error=repr(exc) if exc else "",
        )
