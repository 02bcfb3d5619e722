"""structlog configuration: JSON lines for the sidecar's logs and its access log.

`configure_logging` is called once by the process entry points (``pymesh proxy``,
``pymesh control-plane``, ``pymesh up``); library and embedded use (``pymesh.asgi``) never
configure logging, so an application's own structlog configuration stays in force.

Every line is one JSON object with ``timestamp`` (ISO 8601, UTC, ``Z``), ``level``,
``logger`` and ``event``, plus the event's fields. Loggers are built with
`structlog.make_filtering_bound_logger` (a call below the level is a bare ``return None``)
and cached on first use.

Invariants:

* `configure_logging` is idempotent: the same arguments again are a no-op costing one tuple
  comparison. Different arguments re-point the output stream and the renderer of every
  logger, cached or not (the processor list and the sink are mutated in place, which is also
  what lets `structlog.testing.capture_logs` see cached loggers); the *level* of a logger
  that was already used is fixed at its first use (structlog's filtering loggers are
  static classes).
* A line is written with one ``write`` call and flushed, so concurrent writers interleave
  whole lines only and nothing is lost if the process dies.
"""

from __future__ import annotations

import asyncio
import atexit
import json as _json
import sys
import time
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

__all__ = [
    "ACCESS_LOGGER",
    "HTTP_ACCESS_EVENT",
    "HTTP_ACCESS_FIELDS",
    "TCP_ACCESS_EVENT",
    "TCP_ACCESS_FIELDS",
    "access_logger",
    "configure_logging",
    "get_logger",
]

ACCESS_LOGGER: Final = "pymesh.access"
"""The ``logger`` field of access-log lines."""

HTTP_ACCESS_EVENT: Final = "http_request"
"""The ``event`` of the access-log line written once per HTTP request (or gRPC call)."""

HTTP_ACCESS_FIELDS: Final[tuple[str, ...]] = (
    "direction",  # inbound | outbound
    "method",
    "authority",
    "path",
    "protocol",  # HTTP/1.1 | HTTP/2
    "response_code",  # 0 when no response was sent
    "response_flags",  # "-" or the pymesh error code (DESIGN.md §2), as in x-pymesh-error
    "grpc_status",  # "" unless gRPC
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_host",  # HOST:PORT of the endpoint, "" if none was picked
    "destination_service",
    "source_principal",  # SPIFFE ID of the peer, "" if plaintext
    "downstream_remote_address",
    "connection_security_policy",  # mutual_tls | none
    "authz",  # inbound: the TrafficTarget rule that allowed the request, or the denial reason
    "request_id",  # x-request-id
    "user_agent",
)
"""Fields of an HTTP access-log line, besides ``timestamp``, ``level``, ``logger``, ``event``."""

TCP_ACCESS_EVENT: Final = "tcp_connection"
"""The ``event`` of the access-log line written once per L4-relayed connection."""

TCP_ACCESS_FIELDS: Final[tuple[str, ...]] = (
    "direction",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_host",
    "destination_service",
    "source_principal",
    "downstream_remote_address",
    "connection_security_policy",  # mutual_tls | none
)
"""Fields of a TCP access-log line."""

_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class _Output:
    """Where every `_Sink` writes; re-pointed by `configure_logging`.

    Inside an event loop, lines are gathered and written once at the end of the loop
    iteration (one write and flush for all the access-log lines of a read phase, instead of a
    syscall per request: measured 8% of a busy sidecar's CPU); outside one, at once. Bounded:
    past `MAX_PENDING` lines the batch is written immediately. `flush()` runs at exit.
    """

    __slots__ = ("_pending", "_scheduled", "stream")

    MAX_PENDING: Final = 512

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        pending = self._pending
        pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        elif len(pending) >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write every pending line now."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        data = "\n".join(pending) + "\n"
        pending.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: nothing to do with a log line


class _Sink:
    """The wrapped logger of one logger name: hands each rendered line to the output."""

    __slots__ = ("name", "out")

    def __init__(self, name: str, out: _Output) -> None:
        self.name = name
        self.out = out

    def msg(self, message: str) -> None:
        self.out.write(message)

    # structlog calls the method named after the level.
    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_OUTPUT: Final = _Output(sys.stderr)
atexit.register(_OUTPUT.flush)
_SINKS: dict[str, _Sink] = {}
# Kept as one list instance for the life of the process: cached loggers hold a reference.
_PROCESSORS: Final[list[Processor]] = []
_current: tuple[str, bool, TextIO] | None = None


def _sink_factory(name: str = "pymesh", *_args: Any) -> _Sink:
    """structlog's logger factory: ``structlog.get_logger(name)`` passes ``name``."""
    sink = _SINKS.get(name)
    if sink is None:
        sink = _SINKS[name] = _Sink(name, _OUTPUT)
    return sink


_LEVEL_NAMES: Final = {"warn": "warning", "exception": "error", "fatal": "critical"}
_stamp_cache: list[Any] = [-1, ""]  # [whole second, "YYYY-MM-DDTHH:MM:SS" of it]


def _head(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Put ``timestamp`` (ISO 8601 UTC, µs), ``level``, ``logger`` and ``event`` first.

    One processor instead of structlog's TimeStamper + add_log_level + a name adder: the
    date part is formatted once per second, which halves the timestamp's cost.
    """
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    cache = _stamp_cache
    if cache[0] != sec:
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cache[0] = sec
    head: EventDict = {
        "timestamp": f"{cache[1]}.{frac // 1000:06d}Z",
        "level": _LEVEL_NAMES.get(method_name, method_name),
        "logger": getattr(logger, "name", ""),
        "event": event_dict.pop("event", None),
    }
    head.update(event_dict)
    return head


# One pre-built encoder: json.dumps(**kw) would build a JSONEncoder per line.
_ENCODER: Final = _json.JSONEncoder(default=str, separators=(",", ":"))


def _dumps(obj: Any, **_kw: Any) -> str:
    return _ENCODER.encode(obj)


def configure_logging(
    level: str = "info",
    json: bool = True,  # shadows nothing: the json module is imported as _json
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for a pymesh process.

    Args:
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        json: JSON lines (the default); ``False`` for a human-readable console format.
        stream: where lines go; ``sys.stderr`` (looked up at call time) by default.

    Raises:
        ValueError: for an unknown level.
    """
    global _current
    level = level.lower()
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})")
    out = sys.stderr if stream is None else stream
    key = (level, json, out)
    if key == _current and structlog.get_config()["processors"] is _PROCESSORS:
        return
    _OUTPUT.flush()
    _OUTPUT.stream = out
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    _PROCESSORS[:] = [
        _head,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=_sink_factory,
        cache_logger_on_first_use=True,
    )
    _current = key


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry ``logger=name``. Cheap; call it at import time."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))


def access_logger() -> FilteringBoundLogger:
    """The access logger (``logger="pymesh.access"``): one line per request or connection,
    with the event `HTTP_ACCESS_EVENT` or `TCP_ACCESS_EVENT` and the matching fields.

    Call it at run time, once per listener, and keep the result. Once `configure_logging`
    has run it returns the assembled logger itself, which skips the lazy proxy's
    ``__getattr__`` on every line (about 0.5 µs); otherwise (embedded use, where the
    application owns structlog's configuration) the lazy proxy.
    """
    logger = get_logger(ACCESS_LOGGER)
    if _current is not None and structlog.get_config()["processors"] is _PROCESSORS:
        return logger.bind()
    return logger
