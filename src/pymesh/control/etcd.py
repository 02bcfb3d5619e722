"""An etcd v3 store over etcd's `/v3/` JSON gateway (HTTP/1.1 with h11, on asyncio).

Why the gateway: PyPI's `etcd3` breaks with protobuf >= 4, and the gateway needs nothing but
HTTP/1.1 and JSON (DESIGN.md §4). etcd 3.4 serves it at `/v3/` (3.3 used `/v3beta/`); keys
and values travel base64-encoded, int64s as JSON strings.

Layout under the prefix (default `/pymesh/`):

```
/pymesh/config                              the whole applied config (YAML text)
/pymesh/endpoints/<ns>/<name>/<host:port>   {"registered_at": unix time}, under the endpoint's lease
/pymesh/revoked/<token_id>                  {"expires_at": unix time}, under a lease of that TTL
```

Facts measured on etcd 3.4.23 that shape this module:

- **Lease TTLs are whole seconds with a floor**: etcd grants
  `max(asked, ceil(1.5 * election-timeout))` — 2 s with the default 1000 ms election
  timeout. `EndpointLease.ttl_s` reports what was granted; expiry itself lags by up to about
  0.5 s (etcd checks leases twice a second).
- **Streams are one-shot on the request side**: the gateway answers a streaming call only
  after the request body is complete, so a watch (or keepalive) takes exactly one request
  object. Watch results then arrive as JSON objects each ending in `\\n`, read incrementally
  with bounded lines. Progress requests cannot be sent on an open watch, so a watch that has
  been silent for `watch_idle_probe_s` is checked with a unary request to the same member;
  if that fails the watch is re-established (from the last revision seen) elsewhere.
- **Revisions are etcd's global revision**: monotonic across every key, with gaps. A watch
  resumes from the last revision seen; if that history is gone (compacted) or is not this
  etcd's (its revision is behind the last seen, or its `cluster_id` changed: a fresh data dir,
  a restored snapshot), every subscriber is told to re-read.

Every request has a connect timeout and a total timeout, every response a size bound, at most
`max_connections` requests run at once, and failures move on to the next endpoint (in the order
given) before giving up with `StoreError`. A request that timed out may still have been applied
before it is tried elsewhere; every call this store makes is safe to repeat (a repeated put
costs a revision, a repeated lease grant an unused lease that expires).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
import socket
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import h11
import structlog

from pymesh.control.store import (
    Broadcaster,
    EndpointLease,
    EventKind,
    LeaseExpired,
    StoredConfig,
    StoreError,
    Subscription,
    check_address,
    check_service,
    check_token_id,
    check_ttl,
)
from pymesh.runtime import spawn

__all__ = [
    "EtcdClient",
    "EtcdError",
    "EtcdStore",
    "KeyValue",
    "RangeResult",
    "WatchEvent",
    "WatchResponse",
    "prefix_end",
]

_log = structlog.get_logger("pymesh.control.etcd")

MAX_HEADER_BYTES = 16 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a range over every endpoint of a large mesh
MAX_WATCH_LINE_BYTES = 8 * 1024 * 1024  # one watch response (etcd's request limit is 1.5 MiB)
READ_CHUNK = 64 * 1024
MAX_IDLE_PER_ENDPOINT = 4

GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14

Json = dict[str, Any]
Endpoint = tuple[str, int]


class EtcdError(StoreError):
    """etcd answered with an error (`grpc_code` as in gRPC's status codes, `status` HTTP)."""

    def __init__(self, message: str, *, status: int, grpc_code: int) -> None:
        super().__init__(message)
        self.status = status
        self.grpc_code = grpc_code


class _Unreachable(Exception):
    """This endpoint did not answer (connect, reset, EOF, timeout): try the next one."""


class _Stale(_Unreachable):
    """A pooled keep-alive connection had died before we used it: retry on a fresh one."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd returns it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range's keys and the store revision it was read at."""

    revision: int
    kvs: tuple[KeyValue, ...]
    count: int
    cluster_id: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put or a delete (lease expiry and revocation delete too)."""

    type: str  # "PUT" | "DELETE"
    key: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One message of a watch stream."""

    cluster_id: int
    header_revision: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    events: tuple[WatchEvent, ...]


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that selects every key starting with `prefix`."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"  # every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _obj(value: object, what: str) -> Json:
    if not isinstance(value, dict):
        raise StoreError(f"etcd: malformed {what} (expected a JSON object)")
    return value


def _int(obj: Json, key: str) -> int:
    value = obj.get(key, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreError(f"etcd: malformed {key!r} {value!r} (expected an integer)") from None


def _bytes(obj: Json, key: str) -> bytes:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise StoreError(f"etcd: malformed {key!r} (expected base64 text)")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise StoreError(f"etcd: malformed {key!r} (expected base64 text)") from None


def _kv(obj: Json) -> KeyValue:
    return KeyValue(
        key=_bytes(obj, "key"),
        value=_bytes(obj, "value"),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        lease=_int(obj, "lease"),
    )


def _watch_response(obj: Json) -> WatchResponse:
    if "error" in obj:
        err = _obj(obj["error"], "watch error")
        raise EtcdError(
            f"etcd watch: {err.get('message', err)}", status=200, grpc_code=_int(err, "code")
        )
    res = _obj(obj.get("result"), "watch result")
    events = []
    for raw in res.get("events") or ():
        ev = _obj(raw, "watch event")
        kv = _obj(ev.get("kv"), "watch event kv")
        events.append(
            WatchEvent(
                type=str(ev.get("type", "PUT")),
                key=_bytes(kv, "key"),
                mod_revision=_int(kv, "mod_revision"),
            )
        )
    header = _obj(res.get("header", {}), "header")
    return WatchResponse(
        cluster_id=_int(header, "cluster_id"),
        header_revision=_int(header, "revision"),
        created=res.get("created") is True,
        canceled=res.get("canceled") is True,
        compact_revision=_int(res, "compact_revision"),
        cancel_reason=str(res.get("cancel_reason", "")),
        events=tuple(events),
    )


def _endpoint_text(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Conn:
    """One HTTP/1.1 connection to an etcd member (h11 over asyncio streams)."""

    __slots__ = ("endpoint", "h11", "reader", "reused", "writer")

    def __init__(
        self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reused = False

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout_s: float) -> _Conn:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(*endpoint, limit=READ_CHUNK)
        except TimeoutError:
            raise _Unreachable(f"connect timed out after {timeout_s:g}s") from None
        except OSError as exc:
            raise _Unreachable(f"connect failed: {exc.strerror or exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return cls(endpoint, reader, writer)

    async def send(self, path: str, body: bytes) -> None:
        head = h11.Request(
            method="POST",
            target=path,
            headers=[
                ("Host", _endpoint_text(self.endpoint)),
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        out = self.h11.send(head) or b""
        out += self.h11.send(h11.Data(data=body)) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        await self.writer.drain()

    async def next_event(self) -> object:
        """The next h11 event (reading as needed): an `h11.Event` or `h11.PAUSED`."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_CHUNK)
            self.h11.receive_data(data)

    async def response(self) -> h11.Response:
        event = await self.next_event()
        if isinstance(event, h11.InformationalResponse):
            return await self.response()
        if not isinstance(event, h11.Response):
            raise _Unreachable(f"connection closed before a response ({type(event).__name__})")
        return event

    async def body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise StoreError(f"etcd response larger than {limit} bytes")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise _Unreachable(f"connection closed mid-response ({type(event).__name__})")

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.reused = True
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class EtcdClient:
    """The few etcd v3 calls pymesh needs, over the JSON gateway, with endpoint failover."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self._slots = asyncio.Semaphore(max_connections)  # unary calls in flight
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._current = 0  # the endpoint that answered last
        self._idle: dict[Endpoint, list[_Conn]] = {}
        self._closed = False

    async def close(self) -> None:
        """Close the idle connections (in-flight calls finish or fail on their own)."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- unary calls ------------------------------------------------------------------------

    async def call(self, path: str, payload: Json, *, max_bytes: int = MAX_RESPONSE_BYTES) -> Json:
        """POST `payload` to `path` on the first endpoint that answers; the decoded reply.

        Raises `EtcdError` if etcd answered with an error, `StoreError` if none answered.
        """
        if self._closed:
            raise StoreError("etcd client is closed")
        body = json.dumps(payload).encode()
        failures: list[str] = []
        count = len(self.endpoints)
        async with self._slots:
            for i in range(count):
                index = (self._current + i) % count
                endpoint = self.endpoints[index]
                try:
                    status, data = await self._call_endpoint(endpoint, path, body, max_bytes)
                    reply = self._decode(path, status, data)
                except _Unreachable as exc:
                    failures.append(f"{_endpoint_text(endpoint)}: {exc}")
                    continue
                self._current = index
                return reply
        raise StoreError(f"etcd unreachable for {path} ({'; '.join(failures)})")

    async def _call_endpoint(
        self, endpoint: Endpoint, path: str, body: bytes, max_bytes: int
    ) -> tuple[int, bytes]:
        idle = self._idle.get(endpoint)
        if idle:
            try:
                return await self._exchange(idle.pop(), path, body, max_bytes)
            except _Stale:
                self._drop_idle(endpoint)  # its siblings are likely dead too
        conn = await _Conn.open(endpoint, self.connect_timeout_s)
        return await self._exchange(conn, path, body, max_bytes)

    async def _exchange(
        self, conn: _Conn, path: str, body: bytes, max_bytes: int
    ) -> tuple[int, bytes]:
        started = False
        try:
            async with asyncio.timeout(self.request_timeout_s):
                await conn.send(path, body)
                response = await conn.response()
                started = True
                data = await conn.body(max_bytes)
        except TimeoutError:
            conn.close()
            raise _Unreachable(f"no answer within {self.request_timeout_s:g}s") from None
        except (OSError, h11.ProtocolError, _Unreachable) as exc:
            conn.close()
            reason = str(exc) or type(exc).__name__
            if conn.reused and not started:
                raise _Stale(reason) from None
            raise _Unreachable(reason) from None
        except BaseException:
            conn.close()
            raise
        if conn.reusable() and not self._closed:
            pool = self._idle.setdefault(conn.endpoint, [])
            if len(pool) < MAX_IDLE_PER_ENDPOINT:
                pool.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return response.status_code, data

    def _drop_idle(self, endpoint: Endpoint) -> None:
        for conn in self._idle.pop(endpoint, []):
            conn.close()

    @staticmethod
    def _decode(path: str, status: int, data: bytes) -> Json:
        try:
            reply = json.loads(data) if data else {}
        except ValueError:
            if status >= 500:
                raise _Unreachable(f"HTTP {status} with a non-JSON body") from None
            raise StoreError(f"etcd {path}: HTTP {status} with a non-JSON body") from None
        obj = _obj(reply, f"{path} reply")
        if status == 200 and "error" not in obj:
            return obj
        code = _int(obj, "code") if "code" in obj else 0
        message = str(obj.get("message") or obj.get("error") or f"HTTP {status}")
        if code == GRPC_UNAVAILABLE or status in (502, 503):
            raise _Unreachable(f"unavailable: {message}")  # e.g. "no leader": try another member
        raise EtcdError(f"etcd {path}: {message}", status=status, grpc_code=code)

    # -- KV ---------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set `key`; the revision of the write."""
        payload: Json = {"key": _b64(key), "value": _b64(value)}
        if lease:
            payload["lease"] = str(lease)
        reply = await self.call("/v3/kv/put", payload)
        return _int(_obj(reply.get("header"), "header"), "revision")

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        """Read `key` (or `[key, range_end)`)."""
        payload: Json = {"key": _b64(key)}
        if range_end:
            payload["range_end"] = _b64(range_end)
        if keys_only:
            payload["keys_only"] = True
        if count_only:
            payload["count_only"] = True
        reply = await self.call("/v3/kv/range", payload)
        kvs = tuple(_kv(_obj(raw, "kv")) for raw in reply.get("kvs") or ())
        header = _obj(reply.get("header"), "header")
        return RangeResult(
            revision=_int(header, "revision"),
            kvs=kvs,
            count=_int(reply, "count"),
            cluster_id=_int(header, "cluster_id"),
        )

    async def delete_range(self, key: bytes, range_end: bytes = b"") -> int:
        """Delete `key` (or `[key, range_end)`); how many keys went."""
        payload: Json = {"key": _b64(key)}
        if range_end:
            payload["range_end"] = _b64(range_end)
        reply = await self.call("/v3/kv/deleterange", payload)
        return _int(reply, "deleted")

    # -- leases -----------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds; may exceed `ttl_s`, see module doc)."""
        reply = await self.call("/v3/lease/grant", {"TTL": ttl_s})
        if reply.get("error"):
            raise StoreError(f"etcd lease grant: {reply['error']}")
        return _int(reply, "ID"), _int(reply, "TTL")

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; its TTL, or 0 if it no longer exists."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        if "error" in reply:
            raise StoreError(f"etcd lease keepalive: {reply['error']}")
        return _int(_obj(reply.get("result", {}), "keepalive result"), "TTL")

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease (deleting its keys); False if it did not exist."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if exc.grpc_code == GRPC_NOT_FOUND:
                return False
            raise
        return True

    # -- watch ------------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int,
        idle_probe_s: float = 10.0,
    ) -> AsyncGenerator[WatchResponse, None]:
        """Stream watch responses for `[key, range_end)` from `start_revision` on.

        Ends only by raising: `StoreError` when the stream breaks (the caller re-establishes
        it from the last revision it saw), `EtcdError` when etcd refuses it.
        """
        conn = await self._open_watch(key, range_end, start_revision)
        try:
            buffer = bytearray()
            while True:
                try:
                    async with asyncio.timeout(idle_probe_s):
                        event = await conn.next_event()
                except TimeoutError:
                    await self._probe(conn.endpoint, key)
                    continue
                if isinstance(event, h11.Data):
                    scan_from = len(buffer)  # earlier bytes hold no newline: scan only new ones
                    buffer += event.data
                    while (cut := buffer.find(b"\n", scan_from)) >= 0:
                        line = bytes(buffer[:cut])
                        del buffer[: cut + 1]
                        scan_from = 0
                        if line.strip():
                            yield _watch_response(_obj(_json(line), "watch message"))
                    if len(buffer) > MAX_WATCH_LINE_BYTES:
                        raise StoreError(f"etcd watch message over {MAX_WATCH_LINE_BYTES} bytes")
                else:
                    raise StoreError(f"etcd watch stream ended ({type(event).__name__})")
        except (OSError, h11.ProtocolError) as exc:
            raise StoreError(f"etcd watch stream broke: {exc or type(exc).__name__}") from None
        finally:
            conn.close()

    async def _open_watch(self, key: bytes, range_end: bytes, start_revision: int) -> _Conn:
        request: Json = {"key": _b64(key), "range_end": _b64(range_end)}
        if start_revision > 0:
            request["start_revision"] = str(start_revision)
        body = json.dumps({"create_request": request}).encode()
        failures: list[str] = []
        count = len(self.endpoints)
        for i in range(count):
            index = (self._current + i) % count
            endpoint = self.endpoints[index]
            conn: _Conn | None = None
            try:
                conn = await _Conn.open(endpoint, self.connect_timeout_s)
                async with asyncio.timeout(self.request_timeout_s):
                    await conn.send("/v3/watch", body)
                    response = await conn.response()
                    if response.status_code != 200:
                        data = await conn.body(MAX_HEADER_BYTES)
                        self._decode("/v3/watch", response.status_code, data)
                        raise StoreError(f"etcd /v3/watch: HTTP {response.status_code}")
            except (TimeoutError, OSError, h11.ProtocolError, _Unreachable) as exc:
                if conn is not None:
                    conn.close()
                failures.append(f"{_endpoint_text(endpoint)}: {exc or type(exc).__name__}")
                continue
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._current = index
            return conn
        raise StoreError(f"etcd unreachable for /v3/watch ({'; '.join(failures)})")

    async def _probe(self, endpoint: Endpoint, key: bytes) -> None:
        """A cheap unary read on `endpoint` itself; raises StoreError if it does not answer."""
        body = json.dumps({"key": _b64(key), "count_only": True}).encode()
        try:
            async with self._slots:
                status, data = await self._call_endpoint(endpoint, "/v3/kv/range", body, READ_CHUNK)
            self._decode("/v3/kv/range", status, data)
        except _Unreachable as exc:
            raise StoreError(f"etcd watch member {_endpoint_text(endpoint)}: {exc}") from None


def _json(line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError:
        raise StoreError("etcd watch: malformed JSON message") from None


# -- the store ---------------------------------------------------------------------------------


class _EtcdLease:
    """An endpoint's etcd lease."""

    __slots__ = ("_client", "_lease_id", "_name", "_ttl_s")

    def __init__(self, client: EtcdClient, lease_id: int, ttl_s: int, name: str) -> None:
        self._client = client
        self._lease_id = lease_id
        self._ttl_s = ttl_s
        self._name = name

    @property
    def ttl_s(self) -> float:
        return float(self._ttl_s)

    @property
    def lease_id(self) -> int:
        """etcd's id of this lease."""
        return self._lease_id

    async def keepalive(self) -> None:
        if await self._client.lease_keepalive(self._lease_id) <= 0:
            raise LeaseExpired(f"lease for {self._name} expired or was released")

    async def release(self) -> None:
        await self._client.lease_revoke(self._lease_id)


class EtcdStore:
    """A `Store` in etcd, shared by every control-plane replica pointed at the same cluster."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        prefix: str = "/pymesh/",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 5.0,
        watch_idle_probe_s: float = 10.0,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ) -> None:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"etcd prefix must start and end with '/', got {prefix!r}")
        self._client = EtcdClient(
            endpoints, connect_timeout_s=connect_timeout_s, request_timeout_s=request_timeout_s
        )
        self._prefix = prefix.encode()
        self._config_key = self._prefix + b"config"
        self._endpoints_prefix = self._prefix + b"endpoints/"
        self._revoked_prefix = self._prefix + b"revoked/"
        self._watch_idle_probe_s = watch_idle_probe_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._hub = Broadcaster()
        self._revision = 0  # every change up to this one has been published
        self._cluster_id = 0  # the etcd cluster those revisions belong to
        self._watch_task: asyncio.Task[None] | None = None
        self._watching = False
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def client(self) -> EtcdClient:
        """The underlying client."""
        return self._client

    @property
    def watching(self) -> bool:
        """True while the watch stream is established (False during an etcd outage)."""
        return self._watching

    async def start(self) -> None:
        """Read the current revision (failing fast if etcd is unreachable) and start watching."""
        if self._closed:
            raise StoreError("store is closed")
        if self._watch_task is not None:
            return
        result = await self._client.range(self._prefix, prefix_end(self._prefix), count_only=True)
        self._revision = result.revision
        self._cluster_id = result.cluster_id
        self._watch_task = spawn(self._watch_loop(), name="pymesh.etcd.watch")

    async def close(self) -> None:
        """Stop the watch, end every subscription and close connections; leases stay."""
        if self._closed:
            return
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._hub.close()
        await self._client.close()

    # -- config -----------------------------------------------------------------------------

    async def get_config(self) -> StoredConfig | None:
        """The stored config and its etcd mod revision, or None."""
        self._check_open()
        result = await self._client.range(self._config_key)
        if not result.kvs:
            return None
        kv = result.kvs[0]
        try:
            text = kv.value.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError("etcd: the stored config is not UTF-8 text") from None
        return StoredConfig(text, kv.mod_revision)

    async def put_config(self, text: str) -> int:
        """Store the config; its revision is etcd's revision of this write."""
        self._check_open()
        return await self._client.put(self._config_key, text.encode("utf-8"))

    # -- endpoints ----------------------------------------------------------------------------

    async def register_endpoint(self, service: str, address: str, ttl_s: float) -> EndpointLease:
        """Put the endpoint key under a new lease of at least `ttl_s` (whole seconds)."""
        self._check_open()
        check_service(service)
        check_address(address)
        check_ttl(ttl_s)
        lease_id, granted = await self._client.lease_grant(max(1, math.ceil(ttl_s)))
        key = self._endpoints_prefix + f"{service}/{address}".encode()
        value = json.dumps({"registered_at": time.time()}).encode()
        try:
            await self._client.put(key, value, lease=lease_id)
        except BaseException:
            with contextlib.suppress(StoreError):
                await self._client.lease_revoke(lease_id)
            raise
        return _EtcdLease(self._client, lease_id, granted, f"{service} {address}")

    async def endpoints(self) -> dict[str, tuple[str, ...]]:
        """Live endpoints (etcd deletes a key when its lease expires)."""
        self._check_open()
        result = await self._client.range(
            self._endpoints_prefix, prefix_end(self._endpoints_prefix), keys_only=True
        )
        out: dict[str, list[str]] = {}
        for kv in result.kvs:
            rest = kv.key[len(self._endpoints_prefix) :].decode("utf-8", "replace")
            parts = rest.split("/")
            if len(parts) != 3 or not all(parts):
                continue  # not ours: ignore rather than fail every reader
            out.setdefault(f"{parts[0]}/{parts[1]}", []).append(parts[2])
        return {s: tuple(sorted(a)) for s, a in sorted(out.items())}

    # -- revocations --------------------------------------------------------------------------

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        """Put the token under a lease that outlives `expires_at` (rounded up to seconds)."""
        self._check_open()
        check_token_id(token_id)
        remaining = expires_at - time.time()
        if remaining <= 0:
            return  # already expired: nothing to remember
        lease_id, _ = await self._client.lease_grant(max(1, math.ceil(remaining)))
        value = json.dumps({"expires_at": expires_at}).encode()
        try:
            await self._client.put(self._revoked_prefix + token_id.encode(), value, lease=lease_id)
        except BaseException:
            with contextlib.suppress(StoreError):
                await self._client.lease_revoke(lease_id)
            raise

    async def revoked(self) -> frozenset[str]:
        """Revoked token ids whose lease has not expired."""
        self._check_open()
        result = await self._client.range(
            self._revoked_prefix, prefix_end(self._revoked_prefix), keys_only=True
        )
        cut = len(self._revoked_prefix)
        return frozenset(kv.key[cut:].decode("utf-8", "replace") for kv in result.kvs)

    # -- watch --------------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        """Coalesced notifications of every change under the prefix, from any replica."""
        return self._hub.subscribe()

    def _kind(self, key: bytes) -> EventKind | None:
        if key == self._config_key:
            return "config"
        if key.startswith(self._endpoints_prefix):
            return "endpoints"
        if key.startswith(self._revoked_prefix):
            return "revocations"
        return None

    async def _watch_loop(self) -> None:
        low, high = self._backoff
        delay = low
        end = prefix_end(self._prefix)
        while not self._closed:
            try:
                stream = self._client.watch(
                    self._prefix,
                    end,
                    start_revision=self._revision + 1,
                    idle_probe_s=self._watch_idle_probe_s,
                )
                async with contextlib.aclosing(stream):
                    async for message in stream:
                        if message.created:
                            if (
                                message.cluster_id != self._cluster_id
                                or message.header_revision < self._revision
                            ):
                                self._on_new_history(message)
                                break
                            if delay > low:
                                _log.info("etcd_watch_resumed", revision=self._revision)
                            self._watching = True
                            delay = low
                        elif message.canceled:
                            self._on_canceled(message)
                            break
                        else:
                            self._on_message(message)
            except StoreError as exc:
                if self._watching or delay == low:
                    _log.warning("etcd_watch_lost", error=str(exc), retry_in_s=delay)
            except Exception as exc:  # a bug or a surprise from etcd: log it, keep watching
                _log.error("etcd_watch_failed", error=repr(exc), exc_info=exc)
            self._watching = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter
            delay = min(delay * 2, high)

    def _on_message(self, message: WatchResponse) -> None:
        kinds: set[EventKind] = set()
        for event in message.events:
            kind = self._kind(event.key)
            if kind is not None:
                kinds.add(kind)
            self._revision = max(self._revision, event.mod_revision)
        if not message.events:  # a progress notification: everything up to here was sent
            self._revision = max(self._revision, message.header_revision)
        if kinds:
            self._hub.publish(*sorted(kinds))

    def _on_new_history(self, message: WatchResponse) -> None:
        # A different cluster (a fresh data dir, a restored snapshot) or one behind what we
        # saw: our revisions mean nothing there, and a start revision in its future would hide
        # every change until it caught up. Start over from its present; everyone re-reads.
        _log.warning(
            "etcd_history_changed",
            cluster_id=message.cluster_id,
            seen_revision=self._revision,
            revision=message.header_revision,
        )
        self._cluster_id = message.cluster_id
        self._revision = message.header_revision
        self._hub.publish("config", "endpoints", "revocations")

    def _on_canceled(self, message: WatchResponse) -> None:
        if message.compact_revision > 0:
            # History before compact_revision is gone: resume there and tell everyone to
            # re-read, since some changes can no longer be replayed.
            _log.warning("etcd_watch_compacted", compact_revision=message.compact_revision)
            self._revision = message.compact_revision - 1
            self._hub.publish("config", "endpoints", "revocations")
        else:
            _log.warning("etcd_watch_canceled", reason=message.cancel_reason)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
