"""pymesh.observe: metrics (Prometheus exposition), structured and access logs, the admin endpoint.

* `pymesh.observe.metrics`: `MetricsRegistry` and the Istio-compatible `mesh_metrics`.
* `pymesh.observe.log`: `configure_logging`, `get_logger`, `access_logger`.
* `pymesh.observe.admin`: `start_admin_server` and its request/response types.

See docs/observability.md.
"""

from __future__ import annotations

from pymesh.observe.admin import (
    AdminRequest,
    AdminResponse,
    AdminServer,
    Handler,
    json_response,
    start_admin_server,
    text_response,
)
from pymesh.observe.log import access_logger, configure_logging, get_logger
from pymesh.observe.metrics import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    MeshMetrics,
    MetricsRegistry,
    mesh_metrics,
)

__all__ = [
    "CONTENT_TYPE",
    "AdminRequest",
    "AdminResponse",
    "AdminServer",
    "Counter",
    "Gauge",
    "Handler",
    "Histogram",
    "MeshMetrics",
    "MetricsRegistry",
    "access_logger",
    "configure_logging",
    "get_logger",
    "json_response",
    "mesh_metrics",
    "start_admin_server",
    "text_response",
]
