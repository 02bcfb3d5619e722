"""The sans-IO HTTP/1.1 codecs, both of them: round trips, keep-alive, pipelining, chunked
bodies with trailers, 100-continue, upgrades, HEAD and 1xx responses, read-until-close, limits,
serialisers, and split-point invariance (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz.smuggling_corpus import CORPUS, VALID, normalise, parse

from pymesh.errors import LocalProtocolError, RemoteProtocolError
from pymesh.proxy.events import (
    EndOfMessage,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
)
from pymesh.proxy.http1 import (
    LAST_CHUNK,
    Codec,
    Limits,
    RequestParser,
    encode_chunk,
    encode_last_chunk,
    make_request_parser,
    make_response_parser,
    serialize_request_head,
    serialize_response_head,
)

CODECS: tuple[Codec, ...] = ("httptools", "h11")
codecs = pytest.mark.parametrize("codec", CODECS)

GET = b"GET /a?b=c HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\r\n"


def heads(events: list[RequestEvent]) -> list[RequestHead]:
    return [e for e in events if isinstance(e, RequestHead)]


def paused(parser: RequestParser) -> bool:
    return parser.paused  # a call, so mypy does not keep a narrowed `parser.paused`


def body(events: list[RequestEvent] | list[ResponseEvent]) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


def parse_responses(
    codec: Codec, methods: list[bytes], data: bytes, eof: bool = True
) -> list[ResponseEvent]:
    p = make_response_parser(codec)
    for m in methods:
        p.expect(m)
    events = p.feed(data)
    if eof:
        events += p.feed_eof()
    return normalise(events)


# --- requests ---------------------------------------------------------------------------------


@codecs
def test_get_fields_and_round_trip(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(GET)
    assert events == [
        RequestHead(b"GET", b"/a?b=c", b"1.1", [(b"Host", b"svc"), (b"Accept", b"*/*")]),
        EndOfMessage(),
    ]
    head = events[0]
    assert isinstance(head, RequestHead)
    wire = serialize_request_head(head.method, head.target, head.headers)
    assert wire == GET
    assert make_request_parser(codec).feed(wire) == events


@codecs
def test_field_values_are_trimmed_and_names_keep_case(codec: Codec) -> None:
    data = b"GET / HTTP/1.1\r\nHOST:svc\r\nx-A: \t a  b \t\r\nX-Empty:\r\nX-Obs: \xe9t\xe9\r\n\r\n"
    (head,) = heads(make_request_parser(codec).feed(data))
    assert head.headers == [
        (b"HOST", b"svc"),
        (b"x-A", b"a  b"),
        (b"X-Empty", b""),
        (b"X-Obs", b"\xe9t\xe9"),
    ]


@codecs
def test_content_length_body(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n\r\nhello")
    (head,) = heads(events)
    assert head.content_length == 11 and not head.chunked
    assert events[-1] == b"hello"
    events = p.feed(b" world")
    assert events == [b" world", EndOfMessage()]


@codecs
def test_chunked_with_extensions_and_trailers(codec: Codec) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1;q="a b"\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Sum: 42\r\nX-B:  two \r\n\r\n'
    )
    events = make_request_parser(codec).feed(data)
    (head,) = heads(events)
    assert head.chunked and head.content_length is None
    assert body(events) == b"hello, world!!!"
    assert events[-1] == EndOfMessage([(b"X-Sum", b"42"), (b"X-B", b"two")])


@codecs
def test_keep_alive_flags(codec: Codec) -> None:
    cases = [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n", False),
    ]
    for data, keep_alive in cases:
        (head,) = heads(make_request_parser(codec).feed(data))
        assert head.keep_alive is keep_alive, data


@codecs
def test_keep_alive_sequence_in_separate_feeds(codec: Codec) -> None:
    p = make_request_parser(codec)
    for i in range(5):
        events = p.feed(b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i)
        assert [h.target for h in heads(events)] == [b"/%d" % i]
        assert events[-1] == EndOfMessage()
    assert p.feed_eof() == []


@codecs
def test_pipelining_returns_every_complete_request_in_order(codec: Codec) -> None:
    data = VALID["pipelined"] + b"GET /partial HTTP/1.1\r\nHo"
    p = make_request_parser(codec)
    events = p.feed(data)
    assert [h.method for h in heads(events)] == [b"GET", b"POST", b"GET"]
    assert body(events) == b"abc"
    assert sum(isinstance(e, EndOfMessage) for e in events) == 3
    events = p.feed(b"st: svc\r\n\r\n")
    assert [h.target for h in heads(events)] == [b"/partial"]


@codecs
def test_bytes_after_connection_close_are_discarded(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /admin HTTP/1.1\r\n"
    )
    assert len(heads(events)) == 1
    assert p.feed(b"garbage that would be an error\r\n\r\n") == []
    assert p.feed_eof() == []


@codecs
def test_expect_continue_flag(codec: Codec) -> None:
    data = b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
    p = make_request_parser(codec)
    (head,) = heads(p.feed(data))
    assert head.expect_continue
    assert p.feed(b"x") == [b"x", EndOfMessage()]
    old = b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
    (head,) = heads(make_request_parser(codec).feed(old))
    assert not head.expect_continue


@codecs
def test_leading_empty_lines_are_ignored(codec: Codec) -> None:
    p = make_request_parser(codec)
    assert p.feed(b"\r\n\r") == []
    assert len(heads(p.feed(b"\n" + GET + b"\r\n"))) == 1
    assert p.feed_eof() == []


@codecs
def test_upgrade_pauses_until_upgraded(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(VALID["upgrade"] + b"\x81\x05hello")
    (head,) = heads(events)
    assert head.upgrade == b"websocket"
    assert events[-1] == EndOfMessage()
    assert paused(p)
    assert p.feed(b"\x81\x01!") == []
    assert p.upgraded() == b"\x81\x05hello\x81\x01!"
    assert not paused(p)
    with pytest.raises(LocalProtocolError):
        p.feed(b"more")


@codecs
def test_upgrade_declined_resumes_http(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(VALID["upgrade"] + b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert len(heads(events)) == 1 and paused(p)
    events = p.resume()
    assert [h.target for h in heads(events)] == [b"/next"]
    assert not paused(p)
    assert len(heads(p.feed(GET))) == 1


@codecs
def test_upgrade_needs_the_connection_token(codec: Codec) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" + GET
    p = make_request_parser(codec)
    events = p.feed(data)
    assert [h.upgrade for h in heads(events)] == [None, None]
    assert not paused(p)


@codecs
def test_connect_pauses_and_hands_over_tunnel_bytes(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(VALID["connect"] + b"\x16\x03\x01")
    (head,) = heads(events)
    assert head.method == b"CONNECT" and head.target == b"svc:443"
    assert paused(p)
    assert p.feed_eof() == []
    assert p.upgraded() == b"\x16\x03\x01"


@codecs
def test_paused_bytes_are_bounded(codec: Codec) -> None:
    p = make_request_parser(codec, Limits(max_header_block=1024))
    p.feed(VALID["connect"])
    p.feed(b"x" * 1024)
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"x")
    assert err.value.http_status == 400


@codecs
def test_misuse_of_upgraded_and_resume_is_local(codec: Codec) -> None:
    p = make_request_parser(codec)
    with pytest.raises(LocalProtocolError):
        p.upgraded()
    with pytest.raises(LocalProtocolError):
        p.resume()


@codecs
def test_feed_eof(codec: Codec) -> None:
    assert make_request_parser(codec).feed_eof() == []
    for partial in (
        b"GET / HTTP/1.1\r\nHost",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nx",
    ):
        p = make_request_parser(codec)
        p.feed(partial)
        with pytest.raises(RemoteProtocolError) as err:
            p.feed_eof()
        assert err.value.http_status == 400 and err.value.code == "bad_request"


@codecs
def test_error_after_events_is_raised_by_the_next_call(codec: Codec) -> None:
    p = make_request_parser(codec)
    events = p.feed(
        GET + b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
    )
    assert len(heads(events)) == 1
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"")
    assert err.value.http_status == 400
    with pytest.raises(RemoteProtocolError):  # and it stays failed
        p.feed(GET)
    with pytest.raises(RemoteProtocolError):
        p.feed_eof()


@codecs
@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "headers_too_large"),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "bad_request"),
    ],
)
def test_error_codes(codec: Codec, data: bytes, status: int, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        make_request_parser(codec).feed(data)
    assert (err.value.http_status, err.value.code) == (status, code)


@codecs
def test_limits_are_enforced_incrementally(codec: Codec) -> None:
    limits = Limits(max_request_line=64, max_header_block=256, max_headers=4, max_chunk_line=16)
    # A request line of exactly 64 bytes (CRLF included) is fine; 64 bytes without LF is not.
    line = b"GET /" + b"a" * (64 - 16) + b" HTTP/1.1\r\n"
    assert len(line) == 64
    assert heads(make_request_parser(codec, limits).feed(line + b"Host: a\r\n\r\n"))
    p = make_request_parser(codec, limits)
    p.feed(b"GET /" + b"a" * 58)
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"a")  # 64 bytes and still no LF
    assert err.value.http_status == 414
    # Header block: refused as soon as 256 bytes arrived without the end of the head.
    p = make_request_parser(codec, limits)
    p.feed(b"GET / HTTP/1.1\r\nX: " + b"b" * 200)
    p.feed(b"b" * 36)  # 255 bytes
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"b")
    assert err.value.http_status == 431
    # Field count: the fifth field line is refused when it ends.
    p = make_request_parser(codec, limits)
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4")
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"\r\n")
    assert err.value.http_status == 431
    # Chunk-size line: 16 bytes with extensions is the limit.
    p = make_request_parser(codec, limits)
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert p.feed(b"1;aaaaaaaaaaaa\r\nx\r\n") == [b"x"]  # exactly 16 bytes
    p.feed(b"1;aaaaaaaaaaa")
    p.feed(b"aa")  # 15 bytes, no LF yet
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(b"a")
    assert err.value.http_status == 400


@codecs
def test_header_limit_counts_the_whole_head(codec: Codec) -> None:
    limits = Limits(max_header_block=100)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 60 + b"\r\n\r\n"
    head = head[:-4] + b"y" * (100 - len(head)) + b"\r\n\r\n"
    assert len(head) == 100
    assert heads(make_request_parser(codec, limits).feed(head))
    with pytest.raises(RemoteProtocolError) as err:
        make_request_parser(codec, limits).feed(head[:-4] + b"y\r\n\r\n")
    assert err.value.http_status == 431


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match=r"unknown HTTP/1\.1 codec"):
        make_request_parser("picohttp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown HTTP/1\.1 codec"):
        make_response_parser("picohttp")  # type: ignore[arg-type]


# --- responses --------------------------------------------------------------------------------

OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@codecs
def test_response_content_length_and_keep_alive(codec: Codec) -> None:
    events = parse_responses(codec, [b"GET", b"GET"], OK5 + OK5, eof=False)
    assert events == [
        ResponseHead(200, b"OK", b"1.1", [(b"Content-Length", b"5")], True, False, 5),
        b"hello",
        EndOfMessage(),
        ResponseHead(200, b"OK", b"1.1", [(b"Content-Length", b"5")], True, False, 5),
        b"hello",
        EndOfMessage(),
    ]


@codecs
def test_response_chunked_with_trailers(codec: Codec) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
    )
    events = parse_responses(codec, [b"POST"], data)
    head = events[0]
    assert isinstance(head, ResponseHead) and head.chunked
    assert body(events) == b"abc"
    assert events[-1] == EndOfMessage([(b"grpc-status", b"0")])


@codecs
@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the end",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
    ],
)
def test_response_read_until_close(codec: Codec, data: bytes) -> None:
    p = make_response_parser(codec)
    p.expect(b"GET")
    events = p.feed(data)
    head = events[0]
    assert isinstance(head, ResponseHead) and not head.keep_alive
    assert not any(isinstance(e, EndOfMessage) for e in events)
    events += p.feed(b" of it")
    assert p.feed_eof() == [EndOfMessage()]
    assert body(events) == b"until the end of it"


@codecs
@pytest.mark.parametrize(
    ("method", "head"),
    [
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
)
def test_responses_without_body(codec: Codec, method: bytes, head: bytes) -> None:
    events = parse_responses(codec, [method, b"GET"], head + OK5)
    assert [type(e) for e in events] == [
        ResponseHead,
        EndOfMessage,
        ResponseHead,
        bytes,
        EndOfMessage,
    ]
    assert events[3] == b"hello"


@codecs
def test_interim_responses_come_first(codec: Codec) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK5
    )
    events = parse_responses(codec, [b"POST"], data)
    statuses = [e.status for e in events if isinstance(e, ResponseHead)]
    assert statuses == [100, 103, 200]
    assert [type(e) for e in events] == [
        ResponseHead,
        ResponseHead,
        ResponseHead,
        bytes,
        EndOfMessage,
    ]


@codecs
def test_switching_protocols(codec: Codec) -> None:
    p = make_response_parser(codec)
    p.expect(b"GET")
    head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events = p.feed(head + b"\x81\x00")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert p.upgraded() == b"\x81\x00"
    with pytest.raises(LocalProtocolError):
        p.feed(b"x")


@codecs
def test_connect_2xx_switches_but_4xx_does_not(codec: Codec) -> None:
    p = make_response_parser(codec)
    p.expect(b"CONNECT")
    events = p.feed(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nno")
    assert body(events) == b"no"
    p.expect(b"CONNECT")
    events = p.feed(b"HTTP/1.1 200 Connection established\r\nContent-Length: 99\r\n\r\n\x16\x03")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert p.upgraded() == b"\x16\x03"


@codecs
def test_response_errors_are_upstream_failures(codec: Codec) -> None:
    bad = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 600 Nope\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    ]
    for data in bad:
        p = make_response_parser(codec)
        p.expect(b"GET")
        with pytest.raises(RemoteProtocolError) as err:
            p.feed(data)
            p.feed_eof()
        assert (err.value.http_status, err.value.code) == (502, "upstream_reset"), data


@codecs
def test_unsolicited_response_and_early_close(codec: Codec) -> None:
    p = make_response_parser(codec)
    assert p.feed(b"\r\n") == []  # stray empty lines are tolerated
    with pytest.raises(RemoteProtocolError) as err:
        p.feed(OK5)
    assert err.value.http_status == 502
    p = make_response_parser(codec)
    p.expect(b"GET")
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    with pytest.raises(RemoteProtocolError):
        p.feed_eof()
    p = make_response_parser(codec)
    p.expect(b"GET")
    with pytest.raises(RemoteProtocolError):  # closed before any response
        p.feed_eof()
    assert make_response_parser(codec).feed_eof() == []
    with pytest.raises(LocalProtocolError):
        make_response_parser(codec).expect(b"GE T")


# --- serialisers ------------------------------------------------------------------------------


def test_serialize_response_head() -> None:
    wire = serialize_response_head(404, b"Not Found", [(b"Content-Length", b"0")])
    assert wire == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert serialize_response_head(200, b"OK", [], b"1.0") == b"HTTP/1.0 200 OK\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-A", b"a\r\nInjected: 1")],
        [(b"X-A", b"a\nb")],
        [(b"X-A\r\n", b"a")],
        [(b"X-A", b"a\rb")],
    ],
)
def test_serialisers_refuse_injection(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/", headers)
    with pytest.raises(LocalProtocolError):
        serialize_response_head(200, b"OK", headers)
    with pytest.raises(LocalProtocolError):
        encode_last_chunk(headers)


def test_serialisers_refuse_bad_start_lines() -> None:
    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/a b", [])
    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/\r\nX: y", [])
    with pytest.raises(LocalProtocolError):
        serialize_response_head(200, b"OK\r\nX: y", [])


def test_chunk_encoding() -> None:
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"hello, world!!!") == b"f\r\nhello, world!!!\r\n"
    assert encode_last_chunk([]) == LAST_CHUNK == b"0\r\n\r\n"
    assert encode_last_chunk([(b"X-Sum", b"1")]) == b"0\r\nX-Sum: 1\r\n\r\n"


@codecs
def test_chunked_round_trip(codec: Codec) -> None:
    pieces = [b"a", b"", b"bc" * 300, b"\r\n0\r\n\r\n"]
    trailers = [(b"X-Sum", b"9")]
    head = serialize_request_head(
        b"POST", b"/up", [(b"Host", b"svc"), (b"Transfer-Encoding", b"chunked")]
    )
    wire = head + b"".join(encode_chunk(p) for p in pieces) + encode_last_chunk(trailers)
    events = make_request_parser(codec).feed(wire)
    assert body(events) == b"".join(pieces)
    assert events[-1] == EndOfMessage(trailers)


# --- split-point invariance -------------------------------------------------------------------

SAMPLES = list(VALID.values()) + [raw for raw, _ in CORPUS.values() if len(raw) < 2048]
RESPONSES = [
    (
        b"GET",
        OK5 + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: 1\r\n\r\n",
    ),
    (b"HEAD", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
    (b"GET", b"HTTP/1.0 200 OK\r\n\r\nread until close"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
]

_HYPOTHESIS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_HYPOTHESIS
@given(
    data=st.sampled_from(SAMPLES),
    cuts=st.lists(st.integers(min_value=1, max_value=2048), max_size=8),
    codec=st.sampled_from(CODECS),
)
def test_request_verdicts_do_not_depend_on_splits(
    data: bytes, cuts: list[int], codec: Codec
) -> None:
    assert parse(codec, data, cuts) == parse(codec, data)


@_HYPOTHESIS
@given(
    sample=st.sampled_from(RESPONSES),
    cuts=st.lists(st.integers(min_value=1, max_value=256), max_size=8),
    codec=st.sampled_from(CODECS),
)
def test_response_events_do_not_depend_on_splits(
    sample: tuple[bytes, bytes], cuts: list[int], codec: Codec
) -> None:
    method, data = sample

    def run(pieces: list[bytes]) -> tuple[list[ResponseEvent], int | None]:
        p = make_response_parser(codec)
        p.expect(method)
        p.expect(method)
        events: list[ResponseEvent] = []
        try:
            for piece in pieces:
                events += p.feed(piece)
            events += p.feed_eof()
        except RemoteProtocolError as exc:
            return normalise(events), exc.http_status
        return normalise(events), None

    marks = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]
    assert run(pieces) == run([data])


@codecs
def test_byte_by_byte_equals_all_at_once(codec: Codec) -> None:
    for data in SAMPLES:
        assert parse(codec, data, range(1, len(data))) == parse(codec, data), data
