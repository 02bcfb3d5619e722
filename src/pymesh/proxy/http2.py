"""Sans-IO HTTP/2 codec over h2, for both sides of the proxy (not yet wired into the sidecar).

Rule 1: nothing here touches a socket, a loop or a clock: bytes in, events out. Time enters only
as the `now` argument of `receive_data` (rapid-reset accounting).
Rule 2: nothing but `pymesh.errors.LocalProtocolError` (the *caller* misused the codec, e.g.
opening a stream on a draining connection) escapes a method. Everything the peer does wrong
becomes an event: a connection error is a `ConnectionTerminated(remote=False)` with the GOAWAY
already queued in `data_to_send()`; a stream-level refusal is `StreamRejected` or `StreamReset`.

Flow control is never hidden: `send_data` accepts at most what the peer's windows (and the
bounded write buffer) allow and returns how much it took, so the shell pauses its producer; the
receive window only reopens when the shell calls `acknowledge_received_data` as its consumer
really consumes bytes. A slow reader therefore slows the writer and no buffer here grows
without bound. See docs/http2.md for the choices (h2 configuration, GOAWAY handling, limits).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PushPromiseFrame

from pymesh.errors import LocalProtocolError, RemoteProtocolError
from pymesh.proxy.events import Headers, RequestHead, ResponseHead

__all__ = [
    "GRPC_STATUS_BY_CODE",
    "ConnectionTerminated",
    "ErrorCodes",
    "H2Connection",
    "H2Event",
    "H2Limits",
    "SettingsChanged",
    "StreamData",
    "StreamEnded",
    "StreamHeaders",
    "StreamRejected",
    "StreamReset",
    "StreamTrailers",
    "WindowOpened",
    "grpc_error_headers",
    "grpc_error_trailers",
    "grpc_status_for",
    "h1_to_h2_request_headers",
    "h1_to_h2_response_headers",
    "h2_to_h1_request_head",
    "h2_to_h1_response_head",
    "is_grpc",
    "parse_grpc_timeout",
]

Role = Literal["server", "client"]
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Limits:
    """Per-connection limits; defaults follow Envoy's where it has one.

    `max_header_list_size` is advertised in SETTINGS and enforced by HPACK while decoding
    (beyond it: GOAWAY ENHANCE_YOUR_CALM, the HPACK state being lost). `max_header_count` is
    checked after decoding and refuses only the stream (`StreamRejected`, 431).
    `max_continuation_frames` / `max_header_block_bytes` bound an encoded header block before
    HPACK sees it (CONTINUATION flood). `rapid_reset_limit` client resets within
    `rapid_reset_window_s` seconds close the connection (CVE-2023-44487).
    `max_pending_write_bytes` bounds the unflushed output: `send_data` accepts nothing more
    while the shell has not taken that much from `data_to_send()`.
    `validate_inbound_headers=False` skips h2's RFC checks of received headers: only for a
    trusted peer (another pymesh sidecar over mTLS), never for an application or a client.
    """

    max_concurrent_streams: int = 100
    max_header_list_size: int = 64 * 1024
    max_header_count: int = 100
    initial_window_size: int = 65_535
    connection_window_size: int = 65_535
    max_frame_size: int = 16_384
    max_continuation_frames: int = 16
    max_header_block_bytes: int = 64 * 1024
    rapid_reset_limit: int = 100
    rapid_reset_window_s: float = 10.0
    max_pending_write_bytes: int = 256 * 1024
    validate_inbound_headers: bool = True

    def __post_init__(self) -> None:
        if not 16_384 <= self.max_frame_size <= 16_777_215:
            raise ValueError("max_frame_size must be within 16384..16777215 (RFC 9113)")
        if not 0 < self.initial_window_size <= 2**31 - 1:
            raise ValueError("initial_window_size must be within 1..2**31-1")
        if not 65_535 <= self.connection_window_size <= 2**31 - 1:
            raise ValueError("connection_window_size must be within 65535..2**31-1")
        if min(self.max_concurrent_streams, self.max_header_list_size, self.max_header_count) < 1:
            raise ValueError("stream and header limits must be positive")
        if self.max_continuation_frames < 1 or self.max_header_block_bytes < 1:
            raise ValueError("header block limits must be positive")
        if self.rapid_reset_limit < 1 or self.rapid_reset_window_s <= 0:
            raise ValueError("rapid reset limit and window must be positive")
        if self.max_pending_write_bytes < 1:
            raise ValueError("max_pending_write_bytes must be positive")


DEFAULT_LIMITS = H2Limits()


# --- events ------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamHeaders:
    """A request or response head (or a 1xx interim response), pseudo-headers first.

    A `StreamEnded` for the stream follows when `end_stream` is set.
    """

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(slots=True)
class StreamData:
    """Body bytes. Hand `flow_controlled_length` to `acknowledge_received_data` once consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool


@dataclass(slots=True)
class StreamTrailers:
    """Trailers (they always end the stream; a `StreamEnded` follows)."""

    stream_id: int
    headers: Headers


@dataclass(slots=True)
class StreamEnded:
    """The peer finished its side of the stream: the one canonical end-of-message signal."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: reset by the peer (`remote`) or by this codec (a peer error on it).

    Unconsumed inbound bytes of the stream were already returned to the connection window.
    """

    stream_id: int
    error_code: int
    remote: bool


@dataclass(slots=True)
class StreamRejected:
    """Server side: the request head breaks a limit (`error.http_status`, e.g. 431). The stream
    stays open for the shell to answer with that status (or a gRPC status), then it is done."""

    stream_id: int
    error: RemoteProtocolError


@dataclass(slots=True)
class ConnectionTerminated:
    """The connection is ending.

    `remote=False`: this codec ended it (peer protocol error, rapid reset, flood); the GOAWAY is
    in `data_to_send()`: flush it, then close. `remote=True`: the peer sent GOAWAY; with
    `error_code == 0` (graceful) streams up to `last_stream_id` finish normally (ours above it
    were reset as REFUSED_STREAM, safe to retry elsewhere) and no new stream may be opened:
    close once `open_streams == 0`. Any other code: the connection is dead, close now.
    """

    error_code: int
    last_stream_id: int
    remote: bool
    additional_data: bytes = b""


@dataclass(slots=True)
class WindowOpened:
    """Send window grew on `stream_id`, or on the connection / every stream when None."""

    stream_id: int | None


@dataclass(slots=True)
class SettingsChanged:
    """The peer's SETTINGS changed (the values now in force)."""

    max_concurrent_streams: int
    initial_window_size: int
    max_frame_size: int
    max_header_list_size: int | None


H2Event = (
    StreamHeaders
    | StreamData
    | StreamTrailers
    | StreamEnded
    | StreamReset
    | StreamRejected
    | ConnectionTerminated
    | WindowOpened
    | SettingsChanged
)


# --- h2 adaptations ----------------------------------------------------------------------------


class _BoundedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with a configurable bound on a header block (frames and bytes).

    h2 4.x alone allows 64 CONTINUATION frames of up to max_frame_size each (1 MiB at 16 KiB
    frames, 1 GiB at the largest) before HPACK even starts; this caps it far lower.
    """

    def __init__(self, server: bool, max_frames: int, max_bytes: int) -> None:
        super().__init__(server=server)
        self._max_frames = max_frames
        self._max_bytes = max_bytes

    def _update_header_buffer(self, f: Any) -> Any:
        held = self._headers_buffer
        if held and isinstance(f, ContinuationFrame):
            if len(held) >= self._max_frames:
                raise h2.exceptions.DenialOfServiceError("too many CONTINUATION frames")
            if sum(len(x.data) for x in held) + len(f.data) > self._max_bytes:
                raise h2.exceptions.DenialOfServiceError("header block too large")
        elif isinstance(f, HeadersFrame | PushPromiseFrame) and len(f.data) > self._max_bytes:
            # One HEADERS frame alone can be too large when max_frame_size > the block limit.
            raise h2.exceptions.DenialOfServiceError("header block too large")
        return super()._update_header_buffer(f)


class _H2(h2.connection.H2Connection):
    """h2's connection, with one change: a graceful GOAWAY (NO_ERROR) received does not move the
    connection to CLOSED, so the streams the peer will still process can finish. (h2 4.x moves
    to CLOSED on any GOAWAY and then refuses every frame of the in-flight streams.)"""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


# --- the codec ---------------------------------------------------------------------------------


class H2Connection:
    """One HTTP/2 connection, server or client side, sans-IO.

    The constructor queues the connection preface (client) / SETTINGS (server): call
    `data_to_send()` and write it. For an h2c Upgrade pass `upgrade_settings` (server: the
    request's `HTTP2-Settings` header value as received, base64url with or without padding —
    RemoteProtocolError if it is invalid, answer 400; client: `b""`, then `upgrade_header` holds
    the value to send); stream 1 is then the upgraded request, half-closed by the client.
    """

    __slots__ = (
        "_closed",
        "_conn",
        "_draining",
        "_goaway_last",
        "_limits",
        "_peer_goaway",
        "_resets",
        "_server",
        "_unacked",
        "upgrade_header",
    )

    def __init__(
        self,
        role: Role,
        limits: H2Limits = DEFAULT_LIMITS,
        *,
        upgrade_settings: bytes | None = None,
    ) -> None:
        server = role == "server"
        self._server = server
        self._limits = limits
        # Inbound validation per the limits (h2 turns a malformed head into a connection error).
        # Inbound normalisation off: its only job is joining split `cookie` crumbs, which the h1
        # translation does itself, and a proxy forwarding h2→h2 should keep them split.
        # Outbound validation off: every head we send comes from a validated inbound one or
        # from the translation helpers below; outbound normalisation (lower-casing, stripping
        # connection headers) stays on as the last safety net for filter-made headers.
        config = h2.config.H2Configuration(
            client_side=not server,
            header_encoding=None,
            validate_inbound_headers=limits.validate_inbound_headers,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=True,
        )
        conn = _H2(config=config)
        conn.incoming_buffer = _BoundedFrameBuffer(
            server, limits.max_continuation_frames, limits.max_header_block_bytes
        )
        values: dict[SettingCodes, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
        }
        if not server:
            values[SettingCodes.ENABLE_PUSH] = 0
        conn.local_settings = h2.settings.Settings(client=not server, initial_values=values)
        # h2 applies these only when the peer ACKs; our limits hold from the first byte.
        conn.decoder.max_header_list_size = limits.max_header_list_size
        conn.max_inbound_frame_size = limits.max_frame_size
        self._conn = conn
        self.upgrade_header: bytes | None = None
        if upgrade_settings is None:
            conn.initiate_connection()
        elif server:
            # RFC 9113 §3.2.1 token68 omits the base64 padding; h2 needs it.
            token = upgrade_settings.strip().rstrip(b"=")
            try:
                if token.translate(None, _B64URL):
                    raise ValueError("not base64url")
                conn.initiate_upgrade_connection(token + b"=" * (-len(token) % 4))
            except (ValueError, h2.exceptions.H2Error, HyperframeError) as exc:
                raise RemoteProtocolError(f"invalid HTTP2-Settings header: {exc}") from exc
        else:
            self.upgrade_header = conn.initiate_upgrade_connection()
        extra = limits.connection_window_size - 65_535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self._closed = False
        self._draining = False
        self._goaway_last = 0
        self._peer_goaway: int | None = None
        self._resets: deque[float] = deque(maxlen=limits.rapid_reset_limit)
        self._unacked: dict[int, int] = {}

    # --- inbound ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[H2Event]:
        """Feed bytes from the peer; returns the events they complete. Never raises."""
        if self._closed:
            return []
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has already queued GOAWAY(exc.error_code).
            return [self._terminated(int(exc.error_code))]
        except h2.exceptions.H2Error:
            return [self._fail(ErrorCodes.PROTOCOL_ERROR)]
        out: list[H2Event] = []
        unacked = self._unacked
        for ev in h2_events:
            t = type(ev)
            if t is h2.events.DataReceived:
                d = cast(h2.events.DataReceived, ev)
                sid = d.stream_id
                unacked[sid] = unacked.get(sid, 0) + d.flow_controlled_length
                out.append(
                    StreamData(sid, d.data, d.flow_controlled_length, d.stream_ended is not None)
                )
            elif t is h2.events.StreamEnded:
                sid = cast(h2.events.StreamEnded, ev).stream_id
                if not (self._draining and sid > self._goaway_last):  # else refused, see _request
                    out.append(StreamEnded(sid))
            elif t is h2.events.RequestReceived:
                self._request(cast(h2.events.RequestReceived, ev), out)
            elif t is h2.events.ResponseReceived or t is h2.events.InformationalResponseReceived:
                r = cast(h2.events.ResponseReceived, ev)
                headers = r.headers
                end = getattr(r, "stream_ended", None) is not None
                if len(headers) > self._limits.max_header_count:
                    self._reset(r.stream_id, ErrorCodes.PROTOCOL_ERROR, out)
                else:
                    out.append(StreamHeaders(r.stream_id, headers, end))
            elif t is h2.events.TrailersReceived:
                tr = cast(h2.events.TrailersReceived, ev)
                out.append(StreamTrailers(tr.stream_id, tr.headers))
            elif t is h2.events.WindowUpdated:
                w = cast(h2.events.WindowUpdated, ev)
                out.append(WindowOpened(w.stream_id or None))
            elif t is h2.events.StreamReset:
                if self._peer_reset(cast(h2.events.StreamReset, ev), now, out):
                    return out  # rapid reset: the connection is closed
            elif t is h2.events.RemoteSettingsChanged:
                self._settings_changed(cast(h2.events.RemoteSettingsChanged, ev), out)
            elif t is h2.events.ConnectionTerminated:
                self._peer_goaway_received(cast(h2.events.ConnectionTerminated, ev), out)
            # Ping, SettingsAcknowledged, PriorityUpdated, UnknownFrameReceived, AltSvc: h2
            # answers what needs answering (PING ACK, SETTINGS ACK); nothing for the shell.
        return out

    def _request(self, ev: h2.events.RequestReceived, out: list[H2Event]) -> None:
        sid = ev.stream_id
        if self._draining and sid > self._goaway_last:
            # Opened after our GOAWAY: never processed, the client may retry it elsewhere.
            self._conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        headers = ev.headers
        end = ev.stream_ended is not None
        if len(headers) > self._limits.max_header_count:
            err = RemoteProtocolError(
                f"more than {self._limits.max_header_count} header fields",
                code="headers_too_large",
                http_status=431,
            )
            out.append(StreamRejected(sid, err))
        else:
            out.append(StreamHeaders(sid, headers, end))

    def _peer_reset(self, ev: h2.events.StreamReset, now: float, out: list[H2Event]) -> bool:
        """Report a reset; True if it closed the connection (rapid reset)."""
        sid = ev.stream_id
        self._release(sid)
        out.append(StreamReset(sid, int(ev.error_code or 0), ev.remote_reset))
        if not (self._server and ev.remote_reset):
            return False
        # Rapid reset (CVE-2023-44487): a client-opened stream reset by the client before we
        # finished it (h2 reports no reset for streams already closed). Sliding window over the
        # last `rapid_reset_limit` reset times.
        resets = self._resets
        if len(resets) == resets.maxlen and now - resets[0] < self._limits.rapid_reset_window_s:
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets"))
            return True
        resets.append(now)
        return False

    def _settings_changed(self, ev: h2.events.RemoteSettingsChanged, out: list[H2Event]) -> None:
        rs = self._conn.remote_settings
        out.append(
            SettingsChanged(
                max_concurrent_streams=rs.max_concurrent_streams,
                initial_window_size=rs.initial_window_size,
                max_frame_size=rs.max_frame_size,
                max_header_list_size=rs.max_header_list_size,
            )
        )
        if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
            out.append(WindowOpened(None))

    def _peer_goaway_received(self, ev: h2.events.ConnectionTerminated, out: list[H2Event]) -> None:
        code = int(ev.error_code or 0)
        last = ev.last_stream_id or 0
        self._peer_goaway = last
        if code != 0:
            self._closed = True
        else:
            # Our streams above `last` will never be processed: reset them (retry-safe).
            for sid in [s for s in self._conn.streams if s > last and self._ours(s)]:
                self._reset(sid, ErrorCodes.REFUSED_STREAM, out, remote=True)
        out.append(ConnectionTerminated(code, last, True, ev.additional_data or b""))

    def _ours(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self._server else 1)

    def _terminated(self, error_code: int) -> ConnectionTerminated:
        self._closed = True
        self._unacked.clear()
        return ConnectionTerminated(error_code, self._conn.highest_inbound_stream_id, False)

    def _fail(self, error_code: int, debug: bytes = b"") -> ConnectionTerminated:
        """Close with GOAWAY(error_code) now; in-flight streams are abandoned."""
        try:
            self._conn.close_connection(error_code, additional_data=debug or None)
        except h2.exceptions.ProtocolError:  # already closed by h2 itself
            pass
        return self._terminated(error_code)

    def _release(self, stream_id: int) -> None:
        """Give the connection window back for bytes the shell will now never consume."""
        n = self._unacked.pop(stream_id, 0)
        if n:
            self._conn.acknowledge_received_data(n, stream_id)

    def _reset(
        self, stream_id: int, error_code: int, out: list[H2Event], *, remote: bool = False
    ) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.H2Error:
            pass
        self._release(stream_id)
        out.append(StreamReset(stream_id, error_code, remote))

    # --- outbound --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in one batch (b"" if nothing)."""
        return self._conn.data_to_send()

    def next_stream_id(self) -> int:
        """Client side: the id the next `send_headers(None, ...)` will use."""
        return self._conn.get_next_available_stream_id()

    def send_headers(
        self, stream_id: int | None, headers: Headers, end_stream: bool = False
    ) -> int:
        """Send a head. `stream_id=None` (client) opens a new stream; returns its id.

        Raises LocalProtocolError if the stream cannot carry headers now (closed, draining,
        the peer's stream limit reached, or illegal headers).
        """
        if self._closed:
            raise LocalProtocolError("HTTP/2 connection is closed")
        conn = self._conn
        if stream_id is None:
            if not self.can_open_stream():
                raise LocalProtocolError("cannot open a new HTTP/2 stream now")
            stream_id = conn.get_next_available_stream_id()
        try:
            conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.H2Error as exc:
            raise LocalProtocolError(f"cannot send headers on stream {stream_id}: {exc}") from exc
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send as much of `data` as the windows and the write buffer allow; returns the count.

        `end_stream` applies only if all of `data` was accepted. Fewer bytes accepted than given
        means: pause the producer until `WindowOpened` (or the write buffer drained), then send
        the rest. On a stream that can no longer send (reset, closed) the data is discarded and
        `len(data)` returned: the `StreamReset` event is what stops the producer.
        """
        conn = self._conn
        stream = conn.streams.get(stream_id)
        if self._closed or stream is None or stream.closed:
            return len(data)
        room = self._limits.max_pending_write_bytes - len(conn._data_to_send)
        n = min(len(data), conn.local_flow_control_window(stream_id), room)
        n = max(n, 0)
        frame = conn.max_outbound_frame_size
        fin = end_stream and n == len(data)
        try:
            if n <= frame:
                if n or fin:
                    conn.send_data(stream_id, data if n == len(data) else data[:n], end_stream=fin)
            else:
                view = memoryview(data)
                for pos in range(0, n, frame):
                    end = min(pos + frame, n)
                    conn.send_data(stream_id, bytes(view[pos:end]), end_stream=fin and end == n)
        except h2.exceptions.H2Error as exc:
            raise LocalProtocolError(f"cannot send data on stream {stream_id}: {exc}") from exc
        return n

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream with an empty DATA frame (no-op on a closed stream)."""
        stream = self._conn.streams.get(stream_id)
        if self._closed or stream is None or stream.closed:
            return
        try:
            self._conn.end_stream(stream_id)
        except h2.exceptions.H2Error as exc:
            raise LocalProtocolError(f"cannot end stream {stream_id}: {exc}") from exc

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Send trailers, ending the stream (no-op on a stream that can no longer send)."""
        stream = self._conn.streams.get(stream_id)
        if self._closed or stream is None or stream.closed:
            return
        try:
            self._conn.send_headers(stream_id, headers, end_stream=True)
        except h2.exceptions.H2Error as exc:
            raise LocalProtocolError(f"cannot send trailers on stream {stream_id}: {exc}") from exc

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Reset a stream (no-op if it is already closed); releases its unconsumed bytes."""
        if self._closed:
            return
        stream = self._conn.streams.get(stream_id)
        if stream is not None and not stream.closed:
            try:
                self._conn.reset_stream(stream_id, error_code)
            except h2.exceptions.H2Error:
                pass
        self._release(stream_id)

    def acknowledge_received_data(self, stream_id: int, n: int) -> None:
        """The consumer has taken `n` flow-controlled bytes of the stream: reopen the windows.

        Acknowledging more than was received (or on a released stream) is clamped.
        """
        have = self._unacked.get(stream_id, 0)
        n = min(n, have)
        if n <= 0 or self._closed:
            return
        if n == have:
            del self._unacked[stream_id]
        else:
            self._unacked[stream_id] = have - n
        self._conn.acknowledge_received_data(n, stream_id)

    def ping(self, opaque: bytes = b"pymesh\x00\x00") -> None:
        """Send a PING (liveness check of an idle pooled connection)."""
        if not self._closed:
            self._conn.ping(opaque)

    def close(self, error_code: int = ErrorCodes.NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY now and stop: in-flight streams are abandoned. Flush, then close the socket."""
        if not self._closed:
            self._fail(error_code, debug)

    def start_graceful_shutdown(self) -> None:
        """GOAWAY(NO_ERROR, last stream id): streams up to it finish, later ones are refused.

        The shell closes once `open_streams == 0` (after its drain timeout at the latest).
        """
        if self._closed or self._draining:
            return
        self._draining = True
        last = self._conn.highest_inbound_stream_id if self._server else 0
        self._goaway_last = last
        # Written directly: h2's close_connection() would move to CLOSED and refuse the frames
        # of the streams we promise to finish.
        frame = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0)
        self._conn._data_to_send += frame.serialize()

    # --- state -----------------------------------------------------------------------------

    def available_send_window(self, stream_id: int) -> int:
        """How many body bytes `send_data` would take now (0 for a closed stream)."""
        conn = self._conn
        stream = conn.streams.get(stream_id)
        if self._closed or stream is None or stream.closed:
            return 0
        room = self._limits.max_pending_write_bytes - len(conn._data_to_send)
        return max(0, min(conn.local_flow_control_window(stream_id), room))

    def is_open(self, stream_id: int) -> bool:
        """True while the stream exists and is not closed."""
        stream = self._conn.streams.get(stream_id)
        return not self._closed and stream is not None and not stream.closed

    @property
    def open_streams(self) -> int:
        """Streams currently open (both directions)."""
        conn = self._conn
        return conn.open_inbound_streams + conn.open_outbound_streams

    @property
    def closed(self) -> bool:
        """True once the connection is dead (GOAWAY with an error either way, or `close()`)."""
        return self._closed

    @property
    def draining(self) -> bool:
        """True after either side sent a graceful GOAWAY."""
        return self._draining or self._peer_goaway is not None

    def can_open_stream(self) -> bool:
        """Client side, for pooling: may a new stream be opened on this connection now?"""
        if self._server or self._closed or self.draining:
            return False
        conn = self._conn
        if conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams:
            return False
        return conn.highest_outbound_stream_id < 2**31 - 3

    @property
    def max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (the pool's per-connection cap)."""
        return self._conn.remote_settings.max_concurrent_streams


# --- header translation ------------------------------------------------------------------------

_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host")
)


def _h1_fields_for_h2(headers: Headers) -> Headers:
    """Lower-cased fields without connection-specific ones (RFC 9113 §8.2.2)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    out: Headers = []
    for name, value in headers:
        low = name.lower()
        if low in _HOP or low in named:
            continue
        if low == b"te":
            if value.strip().lower() != b"trailers":
                continue
            value = b"trailers"
        out.append((low, value))
    return out


def _authority_and_path(head: RequestHead) -> tuple[bytes | None, bytes]:
    target = head.target
    if head.method == b"CONNECT":
        return target, b""
    if target[:1] == b"/" or target == b"*":
        host = None
        for name, value in head.headers:
            if name.lower() == b"host":
                host = value
                break
        return host, target
    # absolute-form: scheme://authority/path?query (the proxy form).
    sep = target.find(b"://")
    if sep < 0:
        raise RemoteProtocolError("request target is neither origin- nor absolute-form")
    rest = target[sep + 3 :]
    slash = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    path = rest[slash:] or b"/"
    if path[:1] == b"?":
        path = b"/" + path
    return rest[:slash], path


def h1_to_h2_request_headers(head: RequestHead, scheme: bytes = b"http") -> Headers:
    """An HTTP/1.1 request head as an HTTP/2 header list: pseudo-headers first, `:authority`
    from Host (or the absolute-form target), connection-specific fields dropped, `te` kept only
    as `trailers`, names lower-cased. Raises RemoteProtocolError without an authority."""
    authority, path = _authority_and_path(head)
    if not authority:
        raise RemoteProtocolError("request without Host")
    if head.method == b"CONNECT":
        out: Headers = [(b":method", b"CONNECT"), (b":authority", authority)]
    else:
        out = [
            (b":method", head.method),
            (b":scheme", scheme),
            (b":authority", authority),
            (b":path", path),
        ]
    out += _h1_fields_for_h2(head.headers)
    return out


def h1_to_h2_response_headers(head: ResponseHead) -> Headers:
    """An HTTP/1.1 response head as an HTTP/2 header list (`:status` first)."""
    return [(b":status", b"%d" % head.status), *_h1_fields_for_h2(head.headers)]


_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))


def _content_length(value: bytes) -> int:
    if not value.isdigit() or len(value) > 18:
        raise RemoteProtocolError("invalid content-length")
    return int(value)


def _h1_fields(
    regular: Headers, end_stream: bool, bodyless: bool
) -> tuple[Headers, int | None, bool]:
    """Join cookie crumbs (RFC 9113 §8.2.3), check content-length, choose the h1 framing."""
    out: Headers = []
    cookies: list[bytes] = []
    length: int | None = None
    for name, value in regular:
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"content-length":
            n = _content_length(value)
            if length is not None and n != length:
                raise RemoteProtocolError("conflicting content-length")
            if length is not None:
                continue
            length = n
        out.append((name, value))
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    chunked = False
    if length is None and not end_stream and not bodyless:
        chunked = True
        out.append((b"transfer-encoding", b"chunked"))
    return out, length, chunked


def h2_to_h1_request_head(headers: Headers, end_stream: bool = False) -> RequestHead:
    """An HTTP/2 request header list as an HTTP/1.1 `RequestHead`.

    `:authority` becomes `Host` (replacing any Host field), cookie crumbs are joined, and a
    body without content-length is framed chunked (`chunked=True` plus the header). Raises
    RemoteProtocolError on a missing, repeated, unknown or misplaced pseudo-header.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    host: bytes | None = None
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                raise RemoteProtocolError(f"invalid pseudo-header {name!r}")
            pseudo[name] = value
        elif name == b"host":
            host = value
        else:
            regular.append((name, value))
    method = pseudo.get(b":method")
    if not method:
        raise RemoteProtocolError("request without :method")
    authority = pseudo.get(b":authority") or host
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo or not authority:
            raise RemoteProtocolError("CONNECT needs :authority and no :scheme or :path")
        target = authority
    else:
        target = pseudo.get(b":path", b"")
        if not target or b":scheme" not in pseudo:
            raise RemoteProtocolError("request without :scheme or :path")
    if not authority:
        raise RemoteProtocolError("request without :authority or host")
    fields, length, chunked = _h1_fields(regular, end_stream, False)
    fields.insert(0, (b"host", authority))
    return RequestHead(
        method=method,
        target=target,
        http_version=b"1.1",
        headers=fields,
        keep_alive=True,
        chunked=chunked,
        content_length=length,
        expect_continue=any(n == b"expect" and v.lower() == b"100-continue" for n, v in fields),
    )


def h2_to_h1_response_head(
    headers: Headers, end_stream: bool = False, method: bytes = b"GET"
) -> ResponseHead:
    """An HTTP/2 response header list as an HTTP/1.1 `ResponseHead` (reason from the status).

    Raises RemoteProtocolError without exactly one valid `:status` first.
    """
    status: int | None = None
    regular: Headers = []
    for name, value in headers:
        if name[:1] == b":":
            if regular or name != b":status" or status is not None:
                raise RemoteProtocolError(f"invalid pseudo-header {name!r}")
            if len(value) != 3 or not value.isdigit():
                raise RemoteProtocolError("invalid :status")
            status = int(value)
        else:
            regular.append((name, value))
    if status is None or status < 100:
        raise RemoteProtocolError("response without :status")
    bodyless = status < 200 or status in (204, 304) or method == b"HEAD"
    fields, length, chunked = _h1_fields(regular, end_stream, bodyless)
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return ResponseHead(
        status=status,
        reason=reason,
        http_version=b"1.1",
        headers=fields,
        keep_alive=True,
        chunked=chunked,
        content_length=length if not bodyless else None,
    )


# --- gRPC --------------------------------------------------------------------------------------

# Proxy error code (DESIGN.md §2) -> gRPC status. Starts from gRPC's HTTP mapping (as Envoy:
# 400 INTERNAL, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE) and is
# more precise where pymesh knows the cause: a proxy deadline is DEADLINE_EXCEEDED, an oversized
# head RESOURCE_EXHAUSTED (what gRPC itself says for oversized metadata). rate_limited stays
# UNAVAILABLE (Envoy's default; clients retry it with backoff).
GRPC_STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 13,  # INTERNAL
    "uri_too_long": 13,
    "headers_too_large": 8,  # RESOURCE_EXHAUSTED
    "not_implemented": 12,  # UNIMPLEMENTED
    "authz_denied": 7,  # PERMISSION_DENIED
    "no_route": 12,  # UNIMPLEMENTED
    "rate_limited": 14,  # UNAVAILABLE
    "request_timeout": 4,  # DEADLINE_EXCEEDED
    "upstream_connect_failed": 14,
    "upstream_reset": 14,
    "no_healthy_upstream": 14,
    "overflow": 14,
    "circuit_open": 14,
    "upstream_timeout": 4,
    "internal_error": 13,
}


def grpc_status_for(code: str) -> int:
    """The gRPC status for a pymesh error code (UNKNOWN, 2, for an unknown code)."""
    return GRPC_STATUS_BY_CODE.get(code, 2)


def is_grpc(headers: Headers) -> bool:
    """True for a gRPC request or response (content-type application/grpc[+proto|...])."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == b"application/grpc" and value[16:17] in (b"", b"+", b";")
    return False


def _grpc_message(message: str) -> bytes:
    """Percent-encode per the gRPC spec (everything outside 0x20..0x7E, and '%')."""
    out = bytearray()
    for b in message.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def grpc_error_trailers(grpc_status: int, message: str) -> Headers:
    """`grpc-status` and (percent-encoded) `grpc-message` trailers."""
    out: Headers = [(b"grpc-status", b"%d" % grpc_status)]
    if message:
        out.append((b"grpc-message", _grpc_message(message)))
    return out


def grpc_error_headers(
    code: str, message: str, content_type: bytes = b"application/grpc"
) -> Headers:
    """A proxy-made gRPC error as a Trailers-Only response: send with `end_stream=True`.

    HTTP status 200 (gRPC errors travel in grpc-status), the pymesh cause in `x-pymesh-error`.
    """
    return [
        (b":status", b"200"),
        (b"content-type", content_type),
        *grpc_error_trailers(grpc_status_for(code), message),
        (b"x-pymesh-error", code.encode("ascii")),
    ]


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str | bytes) -> float | None:
    """`grpc-timeout` (1-8 digits + H/M/S/m/u/n) in seconds; None if malformed."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isascii() or not digits.isdigit():
        return None
    scale = _GRPC_UNITS.get(unit)
    if scale is None:
        return None
    return int(digits) * scale
