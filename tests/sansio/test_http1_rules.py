"""The shared HTTP/1.1 rule set (`pymesh.proxy._h1rules`).

Two kinds of tests: the verdict table and framing decisions, and oracle checks that whatever
the rules accept, strict llhttp (and h11) accept too, so the codecs never have a say of their
own (DESIGN.md §4)."""

from __future__ import annotations

import random

import h11
import httptools
import pytest
from tests.fuzz.smuggling_corpus import mutations, response_mutations

from pymesh.errors import RemoteProtocolError
from pymesh.proxy import _h1rules as rules
from pymesh.proxy._h1rules import (
    BODY_CHUNKED,
    BODY_EOF,
    BODY_LENGTH,
    BODY_NONE,
    BODY_SWITCH,
    METHODS,
    ChunkScanner,
    Limits,
    check_head_lines,
    scan_request_head,
    scan_response_head,
)


def verdict(head: bytes) -> int | None:
    try:
        scan_request_head(head, 0, len(head))
    except RemoteProtocolError as exc:
        return exc.http_status
    return None


def llhttp_accepts(data: bytes) -> bool:
    """Strict llhttp (no lenient flags) parses `data` without error."""

    class Sink:
        def on_message_complete(self) -> None:
            pass

    try:
        httptools.HttpRequestParser(Sink()).feed_data(data)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError:
        return False
    return True


def h11_accepts(data: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.EndOfMessage:
                return True
    except h11.RemoteProtocolError:
        return False


# --- the verdict table (docs/http1.md) --------------------------------------------------------

H = b"GET / HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (H + b"\r\n", None),
        (H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
        (H + b"Content-Length: 5,5\r\n\r\n", 400),
        (H + b"Content-Length: +5\r\n\r\n", 400),
        (H + b"Content-Length: 9223372036854775807\r\n\r\n", None),
        (H + b"Content-Length: 9223372036854775808\r\n\r\n", 400),
        (H + b"X: a\r\n b\r\n\r\n", 400),
        (H + b"X: a\nY: b\r\n\r\n", 400),
        (H + b"X: a\rY: b\r\n\r\n", 400),
        (H + b"X: a\x00\r\n\r\n", 400),
        (H + b"X: a\x1f\r\n\r\n", 400),
        (H + b"X: a\tb\r\n\r\n", None),
        (H + b"X : a\r\n\r\n", 400),
        (H + b": a\r\n\r\n", 400),
        (H + b"X@: a\r\n\r\n", 400),
        (H + b"Transfer-Encoding: chunked\r\n\r\n", None),
        (H + b"Transfer-Encoding: Chunked\r\n\r\n", None),
        (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (H + b"Transfer-Encoding: identity\r\n\r\n", 501),
        (H + b"Transfer-Encoding: chunked \r\n\r\n", 501),
        (H + b"Host: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\n\r\n", None),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        (b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n", 400),
        (b"CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET http://a:8080/p?q HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET https://[::1]/ HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /" + b"a" * 8300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (H + b"X: " + b"a" * 62000 + b"\r\n\r\n", 431),
        (H + b"X: a\r\n" * 100 + b"\r\n", 431),
        (H + b"X: a\r\n" * 99 + b"\r\n", None),
    ],
)
def test_request_head_verdicts(head: bytes, status: int | None) -> None:
    assert verdict(head) == status


def test_request_framing() -> None:
    frame = scan_request_head(H + b"Content-Length: 007\r\nExpect: 100-continue\r\n\r\n", 0, 80)
    assert frame == (b"1.1", 7, False, True, True, None, False)
    data = H + b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert scan_request_head(data, 0, len(data)) == (
        b"1.1",
        None,
        False,
        True,
        False,
        b"websocket",
        True,
    )
    data = H + b"Upgrade: websocket\r\n\r\n"
    assert scan_request_head(data, 0, len(data))[5:] == (None, False)
    data = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
    assert scan_request_head(data, 0, len(data))[6] is True


@pytest.mark.parametrize(
    ("method", "head", "body", "keep_alive"),
    [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", BODY_LENGTH, True),
        (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", BODY_CHUNKED, True),
        (b"GET", b"HTTP/1.1 200 OK\r\n\r\n", BODY_EOF, False),
        (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", BODY_LENGTH, False),
        (
            b"GET",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
            BODY_LENGTH,
            True,
        ),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", BODY_NONE, True),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n", BODY_NONE, True),
        (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n", BODY_NONE, True),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", BODY_NONE, True),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", BODY_NONE, False),
        (b"CONNECT", b"HTTP/1.1 200 OK\r\n\r\n", BODY_SWITCH, False),
        (b"CONNECT", b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n", BODY_LENGTH, True),
        (
            b"GET",
            b"HTTP/1.1 101 Go\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n",
            BODY_SWITCH,
            False,
        ),
    ],
)
def test_response_framing(method: bytes, head: bytes, body: int, keep_alive: bool) -> None:
    frame = scan_response_head(head, 0, len(head), method)
    assert (frame[4], frame[5]) == (body, keep_alive)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Go\r\nUpgrade: ws\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    ],
)
def test_bad_response_heads(head: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        scan_response_head(head, 0, len(head), b"GET")


def test_limits_defaults_are_envoys() -> None:
    assert Limits() == Limits(8192, 61440, 100, 4096)
    with pytest.raises(AttributeError):
        Limits().max_headers = 5  # type: ignore[misc]


# --- fast path == line rules ------------------------------------------------------------------


def _heads(samples: list[bytes]) -> list[bytes]:
    out = []
    for data in samples:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            out.append(data[: end + 4].lstrip(b"\r\n") or b"\r\n\r\n")
    return out


def test_fast_regex_and_line_rules_accept_the_same_heads() -> None:
    """scan_*_head's one-regex fast path must accept exactly what the line-by-line rules (used
    for partial heads) accept; otherwise a verdict could depend on how bytes were split."""
    limits = Limits()
    requests = _heads(list(mutations(seed=77, n=6000)))
    responses = _heads([data for _, data in response_mutations(seed=78, n=3000)])
    checked = 0
    for request, heads in ((True, requests), (False, responses)):
        regex = rules._REQUEST_HEAD_RE if request else rules._RESPONSE_HEAD_RE
        for head in heads:
            fast = rules._fast_path(regex, head, 0, len(head), limits) is not None
            if fast and request:
                line = head[: head.find(b"\r\n")]
                method, target, _ = line.split(b" ")
                try:
                    rules._check_request_target(method, target)
                except RemoteProtocolError:
                    fast = False
            try:
                _, _, done = check_head_lines(head, 0, 0, 0, limits, request)
                slow = done
            except RemoteProtocolError:
                slow = False
            assert fast == slow, head
            checked += 1
    assert checked > 6000


# --- the rules never accept what strict llhttp or h11 refuse -----------------------------------

_TARGET_CHARS = b"/?#:@[]%.-_~!$&'()*+,;=aZ09\"<>\\^`{|}\x7f\x80 "


def test_accepted_targets_are_accepted_by_llhttp_and_h11() -> None:
    rng = random.Random(3)
    prefixes = [b"/", b"*", b"http://", b"HTTPS://", b"http://[", b"svc:", b""]
    accepted = 0
    for _ in range(20_000):
        target = rng.choice(prefixes) + bytes(
            rng.choice(_TARGET_CHARS) for _ in range(rng.randint(0, 12))
        )
        for method in (b"GET", b"OPTIONS", b"CONNECT"):
            data = method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
            if verdict(data) is None:
                accepted += 1
                assert llhttp_accepts(data), data
                assert h11_accepts(data), data
    assert accepted > 2000


def test_accepted_chunk_lines_are_accepted_by_llhttp_and_h11() -> None:
    rng = random.Random(4)
    alphabet = b'0123456789abcdefABCDEFxX;= \t"\\,@a\x80\x01-'
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    accepted = 0
    for _ in range(20_000):
        line = b"3" + bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) + b"\r\n"
        if rules._CHUNK_LINE_RE.fullmatch(line) is None:
            continue
        size = int(rules._CHUNK_LINE_RE.fullmatch(line).group(1), 16)  # type: ignore[union-attr]
        if size > 64:
            continue
        data = head + line + b"x" * size + b"\r\n0\r\n\r\n"
        accepted += 1
        assert llhttp_accepts(data), line
        assert h11_accepts(data), line
    assert accepted > 500


def test_methods_are_exactly_llhttps_http_methods() -> None:
    for method in METHODS:
        target = b"a:1" if method == b"CONNECT" else b"/"
        assert llhttp_accepts(method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"), method
    for method in (b"PLAY", b"PRI", b"BREW", b"get", b"FOO"):
        assert not llhttp_accepts(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n"), method


_CONNECTION_VALUES = [
    b"close",
    b"Close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade, close",
    b"keep-alive,upgrade",
    b" upgrade ",
    b"\tclose\t",
    b"close x",
    b"x close",
    b"upgradex",
    b"up grade",
    b",close,",
    b"te, close",
    b"",
]


def test_upgrade_and_close_detection_match_llhttp() -> None:
    """If the rules and llhttp disagreed on `upgrade` or `close`, llhttp would skip a body or
    refuse the next pipelined request on its own."""
    rng = random.Random(6)
    for _ in range(600):
        fields = b""
        for _ in range(rng.randint(0, 2)):
            fields += b"Connection: " + rng.choice(_CONNECTION_VALUES) + b"\r\n"
        if rng.random() < 0.7:
            fields += b"Upgrade: " + rng.choice([b"websocket", b"", b" h2c"]) + b"\r\n"
        data = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
        frame = scan_request_head(data, 0, len(data))

        upgraded: list[bool] = []

        class Sink:
            def on_message_complete(self) -> None:
                pass

        parser = httptools.HttpRequestParser(Sink())
        try:
            parser.feed_data(data + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            upgraded.append(False)
            closed = False
        except httptools.HttpParserUpgrade:
            upgraded.append(True)
            closed = False
        except httptools.HttpParserError as exc:
            upgraded.append(False)
            closed = "Connection: close" in str(exc)
        assert frame[6] == upgraded[0], fields
        if not frame[6]:
            assert frame[3] == (not closed), fields


# --- chunk scanner ------------------------------------------------------------------------------


def done(sc: ChunkScanner) -> bool:
    return sc.done  # a call, so mypy does not keep a narrowed `sc.done`


def test_chunk_scanner_leaves_partial_lines_and_marks_good_bytes() -> None:
    sc = ChunkScanner(Limits())
    assert sc.scan(b"5\r\nhello\r\n1", 0) == 10  # "1" is a partial chunk-size line
    assert not done(sc)
    assert sc.scan(b"1\r\nx\r\n0\r\nX-T", 0) == 9  # a partial trailer line is left too
    assert sc.scan(b"X-T: 1\r\n\r\nGET", 0) == 10
    assert done(sc)
    sc = ChunkScanner(Limits())
    with pytest.raises(RemoteProtocolError):
        sc.scan(b"2\r\nab\r\n3\r\nabcX", 0)
    assert sc.good == 13  # everything before the byte that should have been CR is valid
