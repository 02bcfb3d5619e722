"""The h11 codec over long keep-alive conversations: h11's readers run without an
`h11.Connection`, so per-message state (method-dependent framing, the body reader, trailers)
must not leak from one message into the next. Events must equal httptools', in one feed and
byte by byte."""

from __future__ import annotations

import pytest
from tests.fuzz.smuggling_corpus import normalise

from pymesh.proxy.events import EndOfMessage, RequestEvent, RequestHead, ResponseEvent
from pymesh.proxy.http1 import Codec, make_request_parser, make_response_parser

CODECS: tuple[Codec, ...] = ("httptools", "h11")

# (method announced, response bytes): HEAD and 304 carry a Content-Length but no body, 1xx
# precede the final response, chunked bodies end with trailers, and the last one closes.
EXCHANGES: list[tuple[bytes, bytes]] = [
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
    ),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\nETag: x\r\n\r\n"),
    (b"DELETE", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
    (b"GET", b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
]

REQUESTS = (
    b"POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /b HTTP/1.1\r\nHost: s\r\n\r\n"
    b"POST /c HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nx\r\n0\r\nX-T: 1\r\n\r\n"
    b"HEAD /d HTTP/1.1\r\nHost: s\r\n\r\n"
    b"PUT /e HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n"
    b"GET /f HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
    b"GET /ignored HTTP/1.1\r\nHost: s\r\n\r\n"
)


def responses(codec: Codec, step: int) -> list[ResponseEvent]:
    p = make_response_parser(codec)
    for method, _ in EXCHANGES:
        p.expect(method)
    data = b"".join(r for _, r in EXCHANGES)
    events: list[ResponseEvent] = []
    for i in range(0, len(data), step):
        events += p.feed(data[i : i + step])
    events += p.feed_eof()
    return normalise(events)


def requests(codec: Codec, step: int) -> list[RequestEvent]:
    p = make_request_parser(codec)
    events: list[RequestEvent] = []
    for i in range(0, len(REQUESTS), step):
        events += p.feed(REQUESTS[i : i + step])
    events += p.feed_eof()
    return normalise(events)


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_response_conversation_matches_httptools(step: int) -> None:
    fast = responses("httptools", step)
    assert responses("h11", step) == fast
    ends = [e for e in fast if isinstance(e, EndOfMessage)]
    assert len(ends) == len(EXCHANGES)
    assert [e.trailers for e in ends if e.trailers] == [[(b"X-Sum", b"1")]]
    assert b"".join(e for e in fast if isinstance(e, bytes)) == b"helloabchiuntil close"


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_request_conversation_matches_httptools(step: int) -> None:
    fast = requests("httptools", step)
    assert requests("h11", step) == fast
    targets = [e.target for e in fast if isinstance(e, RequestHead)]
    assert targets == [b"/a", b"/b", b"/c", b"/d", b"/e", b"/f"]
    assert b"".join(e for e in fast if isinstance(e, bytes)) == b"abcx"
