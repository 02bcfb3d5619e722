"""SMI TrafficTarget enforcement on the inbound side: one HTTP filter, one connection filter.

Both ask the compiled policy (`pymesh.policy.authz.InboundAuthz`, built once per config
version) about the client's verified identity — its SPIFFE ID under mTLS, nobody on a
plaintext connection — and the service port. A denial is a 403 `authz_denied` for HTTP (gRPC:
PERMISSION_DENIED in trailers, rendered by the HTTP/2 manager) and a close for TCP. In `audit`
mode nothing is denied; what would have been is logged and counted as `audit_deny`.

Every decision is recorded: denials (and audit denials) get their own `authz` log line with
the source, the destination and the reason; allowed requests carry the rule that allowed them
in the access-log line (`authz`), and every decision is counted in
`pymesh_authz_decisions_total{decision,protocol}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import structlog

from pymesh.errors import Unauthorized
from pymesh.observe.metrics import MeshMetrics
from pymesh.policy.authz import Decision, InboundAuthz, normalize_path
from pymesh.proxy.chain import ConnectionHandler, HttpService
from pymesh.proxy.messages import Request, Response
from pymesh.proxy.tcp import Connection

__all__ = ["AuthzFilter", "AuthzNetworkFilter"]

_log = structlog.get_logger("pymesh.authz")


def _source(principal: str, policy: str) -> str | None:
    return principal if policy == "mutual_tls" else None


def _record(
    authz: InboundAuthz,
    metrics: MeshMetrics | None,
    decision: Decision,
    protocol: str,
    source: str | None,
    what: Callable[[], str],
) -> bool:
    """Log and count one decision; True when the traffic may pass."""
    if decision.allowed:
        if metrics is not None:
            metrics.authz_decisions.inc(("allow", protocol))
        return True
    audit = authz.mode == "audit"
    verdict = "audit_deny" if audit else "deny"
    if metrics is not None:
        metrics.authz_decisions.inc((verdict, protocol))
    _log.warning(
        "authz",
        decision=verdict,
        source_principal=source or "unauthenticated",
        destination=authz.destination,
        request=what(),
        reason=decision.reason,
    )
    return audit


@final
class AuthzFilter:
    """HTTP filter: enforce the destination's TrafficTargets for one service port."""

    __slots__ = ("authz", "metrics", "port", "protocol")

    def __init__(
        self, authz: InboundAuthz, port: int, metrics: MeshMetrics | None, protocol: str = "http"
    ) -> None:
        self.authz = authz
        self.port = port
        self.metrics = metrics
        self.protocol = protocol

    def fast_check(self, request: Request) -> bool:
        """The synchronous half for the fast path: True (and counted) if allowed; False
        leaves the request to `__call__`, which decides again and records the denial."""
        request.target = normalize_path(request.target)
        ctx = request.context
        source = _source(ctx.source_principal, ctx.connection_security_policy)
        d = self.authz.check_http(
            source, self.port, request.method, request.target, request.headers
        )
        if not d.allowed:
            return False
        ctx.authz = d.rule or d.reason
        if self.metrics is not None:
            self.metrics.authz_decisions.inc(("allow", self.protocol))
        return True

    async def __call__(self, request: Request, call_next: HttpService) -> Response:
        ctx = request.context
        if ctx.authz:
            # `fast_check` allowed (and counted) this request, then the fast path found no
            # idle connection and handed it to the task path: decided already.
            return await call_next(request)
        # The policy and the application see the same path (`/api/../admin` is `/admin`).
        request.target = normalize_path(request.target)
        source = _source(ctx.source_principal, ctx.connection_security_policy)
        d = self.authz.check_http(
            source, self.port, request.method, request.target, request.headers
        )
        ctx.authz = d.rule or d.reason

        def what() -> str:
            return f"{request.method.decode('latin-1')} {request.target.decode('latin-1')}"

        if not _record(self.authz, self.metrics, d, self.protocol, source, what):
            # The caller learns only that it was denied: the reason (which TrafficTarget,
            # which routes) describes the policy, so it goes to the log, not to the client.
            raise Unauthorized("access denied by the destination's TrafficTarget policy")
        return await call_next(request)


@final
class AuthzNetworkFilter:
    """Connection filter: enforce the destination's TrafficTargets on an L4 connection."""

    __slots__ = ("authz", "default_port", "metrics")

    def __init__(
        self, authz: InboundAuthz, default_port: int | None, metrics: MeshMetrics | None
    ) -> None:
        self.authz = authz
        self.default_port = default_port
        self.metrics = metrics

    async def __call__(self, conn: Connection, call_next: ConnectionHandler) -> None:
        source = _source(conn.source_principal, conn.connection_security_policy)
        port = conn.port if conn.port is not None else self.default_port
        d = self.authz.check_tcp(source, port or 0)
        if not _record(self.authz, self.metrics, d, "tcp", source, lambda: f"tcp port {port}"):
            conn.close_reason = "authz_denied"
            return
        await call_next(conn)
