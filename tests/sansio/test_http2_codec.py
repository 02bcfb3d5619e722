"""The sans-IO HTTP/2 codec: server and client codecs talking in memory (round trips, 100
concurrent streams, trailers, flow control and backpressure, rapid reset, header limits,
CONTINUATION floods, graceful GOAWAY both ways), h1<->h2 header translation, gRPC helpers, and
"arbitrary bytes never raise" (hypothesis)."""

from __future__ import annotations

import base64
from typing import TypeVar

import h2.connection
import h2.errors
import pytest
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from pymesh.errors import LocalProtocolError, RemoteProtocolError
from pymesh.proxy.events import Headers, RequestHead, ResponseHead
from pymesh.proxy.http2 import (
    ConnectionTerminated,
    ErrorCodes,
    H2Connection,
    H2Event,
    H2Limits,
    SettingsChanged,
    StreamData,
    StreamEnded,
    StreamHeaders,
    StreamRejected,
    StreamReset,
    StreamTrailers,
    WindowOpened,
    grpc_error_headers,
    grpc_error_trailers,
    grpc_status_for,
    h1_to_h2_request_headers,
    h1_to_h2_response_headers,
    h2_to_h1_request_head,
    h2_to_h1_response_head,
    is_grpc,
    parse_grpc_timeout,
)

E = TypeVar("E")

REQ: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"orders"),
    (b":path", b"/a"),
]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Pair:
    """A client and a server codec joined by an in-memory pipe; events collected per side."""

    def __init__(
        self, server_limits: H2Limits | None = None, client_limits: H2Limits | None = None
    ) -> None:
        self.server = H2Connection("server", server_limits or H2Limits())
        self.client = H2Connection("client", client_limits or H2Limits())
        self.now = 0.0
        self.pump()

    def pump(self) -> tuple[list[H2Event], list[H2Event]]:
        """Move bytes both ways until quiet; returns (server events, client events)."""
        s_events: list[H2Event] = []
        c_events: list[H2Event] = []
        for _ in range(1000):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return s_events, c_events
            if to_server:
                s_events += self.server.receive_data(to_server, self.now)
            if to_client:
                c_events += self.client.receive_data(to_client, self.now)
        raise AssertionError("pump did not settle")


def of(events: list[H2Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def body(events: list[H2Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == sid)


def test_round_trip_request_response() -> None:
    p = Pair()
    sid = p.client.send_headers(None, [*REQ, (b"x-a", b"1")], end_stream=True)
    s_ev, _ = p.pump()
    assert s_ev == [StreamHeaders(sid, [*REQ, (b"x-a", b"1")], True), StreamEnded(sid)]
    p.server.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")])
    assert p.server.send_data(sid, b"hello", end_stream=True) == 5
    _, c_ev = p.pump()
    heads = of(c_ev, StreamHeaders)
    assert heads == [StreamHeaders(sid, [(b":status", b"200"), (b"content-length", b"5")], False)]
    assert body(c_ev, sid) == b"hello"
    assert c_ev[-1] == StreamEnded(sid)
    assert p.client.open_streams == 0 and p.server.open_streams == 0
    assert not p.client.closed and not p.server.closed


def test_settings_exchanged() -> None:
    server = H2Connection("server", H2Limits(max_concurrent_streams=7))
    client = H2Connection("client")
    c_ev = client.receive_data(server.data_to_send(), 0.0)
    changed = of(c_ev, SettingsChanged)
    assert changed and isinstance(changed[0], SettingsChanged)
    assert changed[0].max_concurrent_streams == 7
    assert client.max_concurrent_streams == 7


def test_hundred_concurrent_streams_each_get_their_response() -> None:
    p = Pair()
    sids = [
        p.client.send_headers(None, [*REQ[:3], (b":path", b"/%d" % i)], end_stream=True)
        for i in range(100)
    ]
    assert not p.client.can_open_stream()  # the server's limit (100) is reached
    with pytest.raises(LocalProtocolError):
        p.client.send_headers(None, REQ, end_stream=True)
    s_ev, _ = p.pump()
    paths = {e.stream_id: dict(e.headers)[b":path"] for e in of(s_ev, StreamHeaders)}
    assert len(paths) == 100
    for sid in reversed(sids):  # answer in reverse order: multiplexing, not a queue
        p.server.send_headers(sid, [(b":status", b"200")])
        p.server.send_data(sid, b"resp " + paths[sid], end_stream=True)
    _, c_ev = p.pump()
    for i, sid in enumerate(sids):
        assert body(c_ev, sid) == b"resp /%d" % i
    assert p.client.can_open_stream()


def test_grpc_trailers_pass_through() -> None:
    p = Pair()
    grpc_req = [*REQ, (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    sid = p.client.send_headers(None, grpc_req)
    p.client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    s_ev, _ = p.pump()
    head = of(s_ev, StreamHeaders)[0]
    assert is_grpc(head.headers)
    p.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    p.server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    p.server.send_trailers(sid, grpc_error_trailers(0, ""))
    _, c_ev = p.pump()
    assert of(c_ev, StreamTrailers) == [StreamTrailers(sid, [(b"grpc-status", b"0")])]
    assert c_ev[-1] == StreamEnded(sid)


def test_flow_control_backpressure_until_consumer_acknowledges() -> None:
    # The server's receive windows are tiny; the client can send only that much.
    small = H2Limits(initial_window_size=1000)
    p = Pair(server_limits=small)
    sid = p.client.send_headers(None, [*REQ[:1], (b":method", b"POST"), *REQ[1:]][1:])
    p.pump()
    payload = bytes(range(256)) * 40  # 10,240 bytes
    sent = p.client.send_data(sid, payload)
    assert sent == 1000
    assert p.client.available_send_window(sid) == 0
    assert p.client.send_data(sid, payload[sent:]) == 0  # still blocked
    s_ev, c_ev = p.pump()
    assert body(s_ev, sid) == payload[:1000]
    # Nothing was consumed: the window stays shut however often bytes are pumped.
    assert p.client.send_data(sid, payload[sent:]) == 0
    assert not of(c_ev, WindowOpened)
    received = 1000
    for _ in range(100):
        p.server.acknowledge_received_data(sid, received)  # the consumer took everything
        _, c_ev = p.pump()
        assert of(c_ev, WindowOpened)
        n = p.client.send_data(sid, payload[sent:], end_stream=True)
        assert 0 < n <= 1000
        sent += n
        s_ev, _ = p.pump()
        received = sum(e.flow_controlled_length for e in of(s_ev, StreamData))
        if sent == len(payload):
            assert s_ev[-1] == StreamEnded(sid)
            break
    assert sent == len(payload)


def test_write_buffer_is_bounded() -> None:
    big = H2Limits(initial_window_size=1 << 20, connection_window_size=1 << 20)
    p = Pair(server_limits=big, client_limits=H2Limits(max_pending_write_bytes=50_000))
    sid = p.client.send_headers(None, REQ)
    p.pump()
    # The shell does not flush: the codec stops accepting at the write-buffer bound.
    assert p.client.send_data(sid, b"x" * 200_000) == 50_000
    assert p.client.send_data(sid, b"x" * 200_000) == 0
    p.client.data_to_send()  # flushed
    assert p.client.send_data(sid, b"x" * 200_000) > 0


def test_send_data_splits_into_frames() -> None:
    big = H2Limits(initial_window_size=1 << 20, connection_window_size=1 << 20)
    p = Pair(server_limits=big)
    sid = p.client.send_headers(None, [(b":method", b"POST"), *REQ[1:]])
    p.pump()
    data = b"y" * 100_000
    assert p.client.send_data(sid, data, end_stream=True) == 100_000
    s_ev, _ = p.pump()
    assert body(s_ev, sid) == data
    assert len(of(s_ev, StreamData)) == 7  # 16 KiB frames
    assert s_ev[-1] == StreamEnded(sid)


def test_reset_stream_releases_connection_window() -> None:
    p = Pair(server_limits=H2Limits(initial_window_size=60_000))
    for _ in range(3):  # 3 x 60,000 > the 65,535 connection window: must be given back
        sid = p.client.send_headers(None, [(b":method", b"POST"), *REQ[1:]])
        p.pump()
        assert p.client.send_data(sid, b"z" * 60_000) == 60_000
        s_ev, _ = p.pump()
        assert len(body(s_ev, sid)) == 60_000
        p.server.reset_stream(sid, ErrorCodes.CANCEL)  # never consumed
        _, c_ev = p.pump()
        assert StreamReset(sid, ErrorCodes.CANCEL, True) in c_ev


def test_rapid_reset_is_cut_off_but_polite_client_is_fine() -> None:
    bad = Pair()
    good = Pair()
    terminated: list[H2Event] = []
    for i in range(1000):
        bad.now = good.now = i * 0.001
        if bad.client.closed or terminated:
            break
        sid = bad.client.send_headers(None, REQ, end_stream=True)
        bad.client.reset_stream(sid, ErrorCodes.CANCEL)
        s_ev, _ = bad.pump()
        terminated += of(s_ev, ConnectionTerminated)
        gsid = good.client.send_headers(None, REQ, end_stream=True)
        good.pump()
        good.server.send_headers(gsid, [(b":status", b"204")], end_stream=True)
        good.pump()
    assert terminated == [ConnectionTerminated(ErrorCodes.ENHANCE_YOUR_CALM, 201, False)]
    assert bad.server.closed
    assert i == 101  # the 101st reset within 10 s trips it
    # The client saw GOAWAY(ENHANCE_YOUR_CALM); later bytes are ignored, never raise.
    assert bad.client.closed
    assert bad.server.receive_data(b"\x00" * 100, 1.0) == []
    assert not good.server.closed and not good.client.closed
    assert good.client.can_open_stream()


def test_resets_spread_over_time_are_tolerated() -> None:
    p = Pair(server_limits=H2Limits(rapid_reset_limit=10, rapid_reset_window_s=1.0))
    for i in range(50):
        p.now = i * 0.2  # 5 per second, limit 10 per second
        sid = p.client.send_headers(None, REQ, end_stream=True)
        p.client.reset_stream(sid)
        p.pump()
    assert not p.server.closed


def test_too_many_headers_rejects_only_the_stream() -> None:
    p = Pair()
    many = [*REQ, *((b"x-h%d" % i, b"v") for i in range(120))]
    sid = p.client.send_headers(None, many, end_stream=True)
    s_ev, _ = p.pump()
    rejected = of(s_ev, StreamRejected)
    assert len(rejected) == 1 and isinstance(rejected[0], StreamRejected)
    assert rejected[0].error.http_status == 431 and rejected[0].error.code == "headers_too_large"
    # The server answers on the still-open stream; the connection lives on.
    p.server.send_headers(sid, [(b":status", b"431")], end_stream=True)
    _, c_ev = p.pump()
    assert of(c_ev, StreamHeaders) == [StreamHeaders(sid, [(b":status", b"431")], True)]
    assert not p.server.closed


def test_header_list_too_large_is_refused() -> None:
    p = Pair(server_limits=H2Limits(max_header_list_size=4096, max_header_block_bytes=1 << 20))
    huge = [*REQ, (b"x-big", b"a" * 8000)]
    # h2 does not check the peer's advertised limit on send: the client overshoots it.
    p.client.send_headers(None, huge, end_stream=True)
    s_ev, c_ev = p.pump()
    assert of(s_ev, StreamHeaders) == []
    assert s_ev == [ConnectionTerminated(ErrorCodes.ENHANCE_YOUR_CALM, 0, False)]
    assert [type(e) for e in c_ev] == [ConnectionTerminated]
    assert p.server.closed


def _raw_client_with_block(frames: int, frag: bytes) -> bytes:
    """A raw client preface plus a HEADERS frame followed by `frames` CONTINUATION frames."""
    c = h2.connection.H2Connection()
    c.initiate_connection()
    block = Encoder().encode(REQ)
    out = c.data_to_send()
    hf = HeadersFrame(1)
    hf.data = block
    hf.flags.add("END_STREAM")
    out += hf.serialize()
    for _ in range(frames):
        out += ContinuationFrame(1, data=frag).serialize()
    return out


@pytest.mark.parametrize(("frames", "frag"), [(40, b""), (10, b"\x00" * 10_000)])
def test_continuation_flood_is_cut_off(frames: int, frag: bytes) -> None:
    server = H2Connection("server")
    server.data_to_send()
    events = server.receive_data(_raw_client_with_block(frames, frag), 0.0)
    assert events == [ConnectionTerminated(ErrorCodes.ENHANCE_YOUR_CALM, 0, False)]
    assert b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" in server.data_to_send()  # a GOAWAY frame


def test_graceful_shutdown_lets_in_flight_streams_finish() -> None:
    p = Pair()
    s1 = p.client.send_headers(None, [(b":method", b"POST"), *REQ[1:]])
    p.pump()
    p.server.start_graceful_shutdown()
    _, c_ev = p.pump()
    assert c_ev == [ConnectionTerminated(0, s1, True)]
    assert p.client.draining and not p.client.can_open_stream()
    with pytest.raises(LocalProtocolError):
        p.client.send_headers(None, REQ, end_stream=True)
    # The in-flight stream still completes, both ways.
    assert p.client.send_data(s1, b"body", end_stream=True) == 4
    s_ev, _ = p.pump()
    assert body(s_ev, s1) == b"body" and s_ev[-1] == StreamEnded(s1)
    p.server.send_headers(s1, [(b":status", b"200")])
    p.server.send_data(s1, b"done", end_stream=True)
    _, c_ev = p.pump()
    assert body(c_ev, s1) == b"done" and c_ev[-1] == StreamEnded(s1)
    assert p.server.open_streams == 0 and p.client.open_streams == 0


def test_streams_after_goaway_are_refused() -> None:
    # A raw h2 client that ignores our GOAWAY and opens a stream anyway.
    server = H2Connection("server")
    raw = h2.connection.H2Connection()
    raw.initiate_connection()
    server.receive_data(raw.data_to_send(), 0.0)
    raw.receive_data(server.data_to_send())
    raw.send_headers(1, REQ, end_stream=True)
    assert of(server.receive_data(raw.data_to_send(), 0.0), StreamHeaders)
    server.start_graceful_shutdown()
    raw.receive_data(server.data_to_send())
    raw2 = h2.connection.H2Connection()  # h2 itself would not send after GOAWAY: forge it
    raw2.initiate_connection()
    raw2.data_to_send()
    raw2.send_headers(3, REQ, end_stream=True)
    block = raw2.data_to_send()
    events = server.receive_data(block, 0.0)
    assert not of(events, StreamHeaders)
    assert not server.closed
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    out = server.data_to_send()
    assert b"\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x00\x00\x07" in out  # RST_STREAM(3, REFUSED)


def test_peer_goaway_refuses_our_later_streams() -> None:
    p = Pair()
    s1 = p.client.send_headers(None, REQ, end_stream=True)
    p.pump()
    p.server.start_graceful_shutdown()
    goaway = p.server.data_to_send()
    s3 = p.client.send_headers(None, REQ, end_stream=True)  # crosses the GOAWAY on the wire
    c_ev = p.client.receive_data(goaway, 0.0)
    assert c_ev == [
        StreamReset(s3, ErrorCodes.REFUSED_STREAM, True),
        ConnectionTerminated(0, s1, True),
    ]


def test_error_goaway_from_peer_terminates() -> None:
    p = Pair()
    p.client.send_headers(None, REQ, end_stream=True)
    p.pump()
    p.server.close(ErrorCodes.INTERNAL_ERROR)
    _, c_ev = p.pump()
    assert c_ev == [ConnectionTerminated(ErrorCodes.INTERNAL_ERROR, 1, True)]
    assert p.client.closed and p.server.closed
    assert p.client.send_data(1, b"late") == 4  # discarded, never raises


def test_protocol_error_becomes_goaway_not_exception() -> None:
    server = H2Connection("server")
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert events == [ConnectionTerminated(ErrorCodes.PROTOCOL_ERROR, 0, False)]
    assert server.closed


def test_invalid_request_headers_are_a_connection_error() -> None:
    p = Pair()
    raw = h2.connection.H2Connection(
        h2.config.H2Configuration(validate_outbound_headers=False, normalize_outbound_headers=False)
    )
    raw.initiate_connection()
    raw.receive_data(p.server.data_to_send())
    raw.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b"connection", b"close")])
    server = H2Connection("server")
    events = server.receive_data(raw.data_to_send(), 0.0)
    assert [type(e) for e in events] == [ConnectionTerminated]


def test_h2c_upgrade() -> None:
    client = H2Connection("client", upgrade_settings=b"")
    token = client.upgrade_header
    assert token  # the HTTP2-Settings header value for the Upgrade request
    server = H2Connection("server", upgrade_settings=token.rstrip(b"="))  # token68: no padding
    # Stream 1 is the upgraded HTTP/1.1 request: the server answers on it.
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"upgraded", end_stream=True)
    s_ev = server.receive_data(PREFACE + client.data_to_send(), 0.0)
    assert not of(s_ev, ConnectionTerminated)
    c_ev = client.receive_data(server.data_to_send(), 0.0)
    assert of(c_ev, StreamHeaders) == [StreamHeaders(1, [(b":status", b"200")], False)]
    assert body(c_ev, 1) == b"upgraded" and c_ev[-1] == StreamEnded(1)
    assert client.next_stream_id() == 3
    with pytest.raises(RemoteProtocolError):
        H2Connection("server", upgrade_settings=b"!!!")
    with pytest.raises(RemoteProtocolError):
        H2Connection("server", upgrade_settings=base64.urlsafe_b64encode(b"\x00\x01\x00"))


# --- header translation ------------------------------------------------------------------------


def test_h1_to_h2_request_drops_connection_headers() -> None:
    head = RequestHead(
        b"POST",
        b"/p?q=1",
        b"1.1",
        [
            (b"Host", b"orders:8080"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Hop", b"1"),
            (b"Proxy-Connection", b"x"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"TE", b"gzip"),
            (b"Content-Type", b"text/plain"),
        ],
        chunked=True,
    )
    assert h1_to_h2_request_headers(head, b"https") == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"orders:8080"),
        (b":path", b"/p?q=1"),
        (b"content-type", b"text/plain"),
    ]
    head.headers.append((b"te", b" Trailers"))
    assert h1_to_h2_request_headers(head)[-1] == (b"te", b"trailers")


def test_h1_to_h2_absolute_form_and_connect() -> None:
    head = RequestHead(b"GET", b"http://orders.default:80/x?y", b"1.1", [(b"Host", b"ignored")])
    hdrs = h1_to_h2_request_headers(head)
    assert (b":authority", b"orders.default:80") in hdrs and (b":path", b"/x?y") in hdrs
    head = RequestHead(b"GET", b"http://orders?y", b"1.1", [])
    assert (b":path", b"/?y") in h1_to_h2_request_headers(head)
    conn = RequestHead(b"CONNECT", b"orders:443", b"1.1", [(b"Host", b"orders:443")])
    assert h1_to_h2_request_headers(conn) == [
        (b":method", b"CONNECT"),
        (b":authority", b"orders:443"),
    ]
    with pytest.raises(RemoteProtocolError):
        h1_to_h2_request_headers(RequestHead(b"GET", b"/", b"1.1", []))


def test_h2_to_h1_request_round_trip() -> None:
    h2_headers = [
        *REQ,
        (b"cookie", b"a=1"),
        (b"accept", b"*/*"),
        (b"cookie", b"b=2"),
        (b"content-length", b"3"),
    ]
    head = h2_to_h1_request_head(h2_headers, end_stream=False)
    assert head.method == b"GET" and head.target == b"/a"
    assert head.headers[0] == (b"host", b"orders")
    assert (b"cookie", b"a=1; b=2") in head.headers
    assert head.content_length == 3 and not head.chunked
    back = h1_to_h2_request_headers(head)
    assert back[:4] == REQ
    assert sorted(back[4:]) == sorted(
        [(b"accept", b"*/*"), (b"content-length", b"3"), (b"cookie", b"a=1; b=2")]
    )
    streamed = h2_to_h1_request_head([(b":method", b"POST"), *REQ[1:]], end_stream=False)
    assert streamed.chunked and (b"transfer-encoding", b"chunked") in streamed.headers
    assert not h2_to_h1_request_head(REQ, end_stream=True).chunked


@pytest.mark.parametrize(
    "bad",
    [
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],  # no :scheme
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [*REQ[:1], *REQ],  # :method repeated
        [(b"x", b"1"), *REQ],  # pseudo after regular
        [*REQ[:3], (b":path", b"/"), (b":bogus", b"1")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no authority
        [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
        [*REQ, (b"content-length", b"x1")],
        [*REQ, (b"content-length", b"1"), (b"content-length", b"2")],
    ],
)
def test_h2_to_h1_request_rejects_invalid(bad: Headers) -> None:
    with pytest.raises(RemoteProtocolError):
        h2_to_h1_request_head(bad)


def test_h2_to_h1_request_host_fallback_and_connect() -> None:
    head = h2_to_h1_request_head(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")], True
    )
    assert head.headers == [(b"host", b"h")]
    conn = h2_to_h1_request_head([(b":method", b"CONNECT"), (b":authority", b"a:1")], False)
    assert conn.target == b"a:1"


def test_response_translation_round_trip() -> None:
    resp = ResponseHead(
        200,
        b"OK",
        b"1.1",
        [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"Content-Length", b"2")],
    )
    h2_headers = h1_to_h2_response_headers(resp)
    assert h2_headers == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"2"),
    ]
    back = h2_to_h1_response_head(h2_headers)
    assert (back.status, back.reason, back.content_length, back.chunked) == (200, b"OK", 2, False)
    streamed = h2_to_h1_response_head([(b":status", b"200")], end_stream=False)
    assert streamed.chunked
    assert not h2_to_h1_response_head([(b":status", b"204")], end_stream=False).chunked
    assert not h2_to_h1_response_head([(b":status", b"200")], False, method=b"HEAD").chunked
    assert h2_to_h1_response_head([(b":status", b"599")]).reason == b""
    for bad in (
        [],
        [(b":status", b"20")],
        [(b"x", b"1"), (b":status", b"200")],
        [(b":path", b"/")],
    ):
        with pytest.raises(RemoteProtocolError):
            h2_to_h1_response_head(bad)


# --- gRPC ---------------------------------------------------------------------------------------


def test_grpc_helpers() -> None:
    assert is_grpc([(b"content-type", b"application/grpc")])
    assert is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not is_grpc([(b"content-type", b"application/grpc-web")])
    assert not is_grpc([(b"content-type", b"application/json")])
    assert grpc_error_trailers(14, "no 100% héalthy\n") == [
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no 100%25 h%C3%A9althy%0A"),
    ]
    assert grpc_status_for("no_route") == 12
    assert grpc_status_for("authz_denied") == 7
    assert grpc_status_for("upstream_timeout") == 4
    assert grpc_status_for("no_healthy_upstream") == 14
    assert grpc_status_for("rate_limited") == 14
    assert grpc_status_for("bad_request") == 13
    assert grpc_status_for("something_new") == 2
    hdrs = grpc_error_headers("overflow", "pool full")
    assert hdrs[0] == (b":status", b"200") and (b"grpc-status", b"14") in hdrs
    assert (b"x-pymesh-error", b"overflow") in hdrs


def test_grpc_error_as_trailers_only_response() -> None:
    p = Pair()
    sid = p.client.send_headers(None, [*REQ, (b"content-type", b"application/grpc")], True)
    p.pump()
    p.server.send_headers(sid, grpc_error_headers("no_route", "unknown service"), end_stream=True)
    _, c_ev = p.pump()
    head = of(c_ev, StreamHeaders)[0]
    assert head.end_stream
    assert (b"grpc-status", b"12") in head.headers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100m", 0.1),
        (b"1S", 1.0),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("12345678u", 12.345678),
        ("5n", 5e-9),
        ("", None),
        ("m", None),
        ("123456789S", None),
        ("10x", None),
        ("-1S", None),
        ("1.5S", None),
        (b"\xff1S", None),
        ("\u0661S", None),  # a non-ASCII digit (ARABIC-INDIC ONE)
    ],
)
def test_parse_grpc_timeout(value: str | bytes, seconds: float | None) -> None:
    got = parse_grpc_timeout(value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        H2Limits(max_frame_size=100)
    with pytest.raises(ValueError):
        H2Limits(connection_window_size=10)


# --- robustness ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["server", "client"]))
def test_arbitrary_bytes_never_raise(data: bytes, role: str) -> None:
    conn = H2Connection("server" if role == "server" else "client")
    prefix = PREFACE if role == "server" else b""
    for chunk in (prefix + data[:150], data[150:]):
        events = conn.receive_data(chunk, 0.0)
        assert all(not isinstance(e, BaseException) for e in events)
    conn.data_to_send()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=8))
def test_arbitrary_frames_after_valid_preface_never_raise(frames: list[bytes]) -> None:
    p = Pair()
    sid = p.client.send_headers(None, REQ)
    p.pump()
    for f in frames:
        p.server.receive_data(f, 0.0)
    p.server.data_to_send()
    p.server.send_data(sid, b"x")  # never raises, whatever state the garbage left
    p.server.reset_stream(sid)
    p.server.acknowledge_received_data(sid, 10)


def test_error_codes_are_h2s() -> None:
    assert ErrorCodes is h2.errors.ErrorCodes
