"""Sans-IO HTTP/1.1 codecs: httptools (llhttp) on the hot path, h11 as the pure-Python one.

Rule 1: nothing here touches a socket, a loop or a clock: bytes in, events out.
Rule 2: one rule set (`pymesh.proxy._h1rules`) decides every verdict on the raw bytes before a
codec sees them, and owns message framing. The codec then parses each accepted message and
produces its events. So both codecs accept and refuse exactly the same inputs, with the same
status code, whatever the split of the bytes across `feed()` calls (docs/http1.md).

A parser handles a whole connection: keep-alive and pipelined messages in sequence. `feed()`
returns the events of everything the bytes complete, in order (`RequestHead`/`ResponseHead`,
body chunks as `bytes`, `EndOfMessage`). On illegal input it raises `RemoteProtocolError`;
if the same call had already produced events (earlier pipelined messages, body bytes), those
are returned first and the error is raised by the next call (`feed(b"")` is enough). A parser
that raised stays failed. Nothing but `RemoteProtocolError` escapes `feed()`/`feed_eof()`.

After a message that does not keep the connection alive, further bytes are discarded. After a
CONNECT request, or one offering `Connection: upgrade`, the request parser pauses: later bytes
are held (at most `max_header_block`) until the caller calls `upgraded()` (the upstream
accepted: returns the held bytes, which are the start of the tunnel) or `resume()` (it
declined: parsing continues as HTTP). The response parser switches after a 101 or a 2xx to
CONNECT; `upgraded()` returns the bytes after that response's head.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import h11
import httptools

# h11's readers (the parsing half of `h11.Connection`, without its state machine).
from h11._readers import (
    ChunkedReader,
    ContentLengthReader,
    Http10Reader,
)
from h11._readers import maybe_read_from_IDLE_client as _h11_read_request
from h11._readers import maybe_read_from_SEND_RESPONSE_server as _h11_read_response
from h11._receivebuffer import ReceiveBuffer

from pymesh.errors import LocalProtocolError, RemoteProtocolError
from pymesh.proxy._h1rules import (
    BODY_CHUNKED,
    BODY_EOF,
    BODY_LENGTH,
    BODY_SWITCH,
    DEFAULT_LIMITS,
    ChunkScanner,
    Limits,
    RequestFrame,
    ResponseFrame,
    bad_request,
    check_head_lines,
    is_token,
    scan_request_head,
    scan_response_head,
    skip_empty_lines,
)
from pymesh.proxy.events import (
    EOM,
    EndOfMessage,
    Headers,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
)

__all__ = [
    "LAST_CHUNK",
    "Codec",
    "Limits",
    "RequestParser",
    "ResponseParser",
    "encode_chunk",
    "encode_last_chunk",
    "make_request_parser",
    "make_response_parser",
    "serialize_request_head",
    "serialize_response_head",
]

Codec = Literal["httptools", "h11"]  # `pymesh proxy --http1-codec`

# Parser states.
_IDLE, _BODY, _CHUNKED, _EOF, _PAUSED, _CLOSED, _SWITCHED, _DONE, _FAILED = range(9)


class RequestParser(Protocol):
    """Server side: bytes from a client in, request events out."""

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; events of everything it completes. Raises RemoteProtocolError."""
        ...

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed its side; an error if it did so in the middle of a request."""
        ...

    @property
    def paused(self) -> bool:
        """True after a CONNECT or Upgrade request, until `upgraded()` or `resume()`."""
        ...

    def upgraded(self) -> bytes:
        """The upstream accepted the CONNECT/Upgrade: the bytes held since (tunnel data)."""
        ...

    def resume(self) -> list[RequestEvent]:
        """The upstream declined the Upgrade: parse the held bytes as HTTP again."""
        ...


class ResponseParser(Protocol):
    """Client side: bytes from an upstream in, response events out."""

    def expect(self, method: bytes) -> None:
        """Announce the request a response will answer (HEAD and CONNECT change framing)."""
        ...

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse `data`; 1xx heads come first, each without EndOfMessage."""
        ...

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends a read-until-close body, else an error mid-response."""
        ...

    def upgraded(self) -> bytes:
        """After a 101 or a 2xx to CONNECT: the bytes after that head (tunnel data)."""
        ...


# ---------------------------------------------------------------------------------------------
# Framing shared by both codecs and both directions.


class _Reader:
    """Head detection, limits, body framing and error latching; codecs plug in below."""

    __slots__ = (
        "_buf",
        "_chunks",
        "_error",
        "_hlines",
        "_hscan",
        "_left",
        "_limits",
        "_state",
        "_tail",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._state = _IDLE
        self._buf = bytearray()  # an incomplete head / chunk line / trailer section
        self._hscan = 0  # how far the incomplete head in _buf was validated
        self._hlines = 0  # and how many lines that was
        self._left = 0  # Content-Length bytes still to come
        self._chunks: ChunkScanner | None = None
        self._error: RemoteProtocolError | None = None
        self._tail = bytearray()  # bytes held while paused or after a protocol switch

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._error = exc
        self._state = _FAILED
        self._buf = bytearray()
        self._tail = bytearray()
        return exc

    def _head_end(self, data: bytes | bytearray, pos: int) -> tuple[int, int]:
        """Find a complete head at `data[pos:]` (after skipping empty lines).

        Returns `(start, end)`; `end` is -1 when the head is incomplete, in which case its
        complete lines were validated (raising as soon as a rule or limit is broken) and the
        caller must keep `data[start:]` for the next call.
        """
        if data[pos] == 0x0D:
            pos = skip_empty_lines(data, pos)
            if pos == len(data):
                return pos, -1
        limits = self._limits
        end = data.find(b"\r\n\r\n", pos, pos + limits.max_header_block)
        if end >= 0:
            self._hscan = self._hlines = 0
            return pos, end + 4
        scan, nlines, done = check_head_lines(
            data, pos, pos + self._hscan, self._hlines, limits, self._is_request
        )
        if done:  # pragma: no cover - the terminator search above would have found it
            raise bad_request("malformed head")
        self._hscan = scan - pos
        self._hlines = nlines
        return pos, -1

    _is_request = True

    def _keep(self, data: bytes | bytearray, pos: int) -> None:
        """Keep `data[pos:]` (an incomplete unit) for the next call."""
        if pos == 0 and type(data) is bytearray:
            self._buf = data
        else:
            self._buf = bytearray(data[pos:])

    def _joined(self, data: bytes) -> bytes | bytearray:
        """`data` behind what an earlier call kept."""
        if not self._buf:
            return data
        buf = self._buf
        self._buf = bytearray()
        buf += data
        return buf

    def _hold(self, data: bytes | bytearray, pos: int, paused: bool) -> None:
        """Hold bytes after a pause or a protocol switch, within the head limit."""
        self._tail += data[pos:]
        if len(self._tail) > self._limits.max_header_block:
            if paused:
                raise bad_request("too much data before the upgrade was answered")
            raise LocalProtocolError("parser switched protocols: call upgraded()")

    def _codec(self, data: bytes | bytearray, start: int, end: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def _chunked(self, data: bytes | bytearray, pos: int) -> int:
        """Validate and feed chunked body bytes; where the body ends, or -1 if not yet."""
        sc = self._chunks
        assert sc is not None
        try:
            end = sc.scan(data, pos)
        except RemoteProtocolError:
            if sc.good > pos:
                self._codec(data, pos, sc.good)
            raise
        if end > pos:
            self._codec(data, pos, end)
        if sc.done:
            return end
        self._keep(data, end)
        return -1


# ---------------------------------------------------------------------------------------------
# Requests.


class _RequestReader(_Reader):
    __slots__ = ("_frame", "_out")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._out: list[RequestEvent] = []
        self._frame: RequestFrame = (b"1.1", None, False, True, False, None, False)

    @property
    def paused(self) -> bool:
        return self._state == _PAUSED

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; see the module docstring."""
        if self._state >= _PAUSED:
            return self._feed_other(data)
        out: list[RequestEvent] = []
        self._out = out
        try:
            self._run(self._joined(data) if self._buf else data, out)
        except RemoteProtocolError as exc:
            self._fail(exc)
            if out:
                return out
            raise
        return out

    def _feed_other(self, data: bytes) -> list[RequestEvent]:
        state = self._state
        if state == _PAUSED:
            try:
                self._hold(data, 0, True)
            except RemoteProtocolError as exc:
                raise self._fail(exc) from None
        elif state == _FAILED:
            assert self._error is not None
            raise self._error
        elif state == _SWITCHED and data:
            raise LocalProtocolError("request parser was upgraded: relay the bytes instead")
        return []

    def _run(self, data: bytes | bytearray, out: list[RequestEvent]) -> None:
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _IDLE:
                start, head_end = self._head_end(data, pos)
                if head_end < 0:
                    self._keep(data, start)
                    return
                frame = self._frame = scan_request_head(data, start, head_end, self._limits)
                self._begin()
                length = frame[1]
                if frame[2]:  # chunked
                    self._codec(data, start, head_end)
                    self._chunks = ChunkScanner(self._limits)
                    self._state = _CHUNKED
                    pos = head_end
                elif length:
                    end = head_end + length
                    if end <= n:
                        self._codec(data, start, end)
                        pos = end
                        self._complete(out)
                    else:
                        self._codec(data, start, n)
                        self._left = end - n
                        self._state = _BODY
                        return
                else:
                    self._codec(data, start, head_end)
                    pos = head_end
                    self._complete(out)
            elif state == _BODY:
                take = min(self._left, n - pos)
                self._codec(data, pos, pos + take)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._complete(out)
            elif state == _CHUNKED:
                end = self._chunked(data, pos)
                if end < 0:
                    return
                pos = end
                self._complete(out)
            elif state == _PAUSED:
                self._hold(data, pos, True)
                return
            else:  # _CLOSED: the message said the connection ends after it
                return

    def _complete(self, out: list[RequestEvent]) -> None:
        if not out or type(out[-1]) is not EndOfMessage:
            raise bad_request("the codec and the framing rules disagree on the message end")
        frame = self._frame
        if frame[6]:
            self._state = _PAUSED
        elif frame[3]:
            self._state = _IDLE
        else:
            self._state = _CLOSED

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed; an error if a request was incomplete."""
        state = self._state
        if state == _FAILED:
            assert self._error is not None
            raise self._error
        if state == _IDLE and not self._buf.strip(b"\r\n"):
            self._state = _CLOSED
            return []
        if state in (_IDLE, _BODY, _CHUNKED):
            raise self._fail(bad_request("connection closed in the middle of a request"))
        return []

    def upgraded(self) -> bytes:
        """The upstream accepted the CONNECT/Upgrade; returns the bytes held since."""
        if self._state != _PAUSED:
            raise LocalProtocolError("upgraded() without a paused CONNECT/Upgrade request")
        self._state = _SWITCHED
        tail = bytes(self._tail)
        self._tail = bytearray()
        return tail

    def resume(self) -> list[RequestEvent]:
        """The upstream declined the Upgrade; parse the held bytes as HTTP again."""
        if self._state != _PAUSED:
            raise LocalProtocolError("resume() without a paused CONNECT/Upgrade request")
        self._state = _IDLE
        self._reset()
        tail = bytes(self._tail)
        self._tail = bytearray()
        return self.feed(tail) if tail else []

    # codec hooks
    def _begin(self) -> None:
        """A new message starts (its head was accepted)."""

    def _reset(self) -> None:
        """Forget codec state (after a paused request)."""


class _HttptoolsRequestParser(_RequestReader):
    """Requests parsed by llhttp, strict mode (no lenient flags, ever)."""

    __slots__ = ("_hdrs", "_p", "_url")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._p = httptools.HttpRequestParser(self)
        self._url = b""
        self._hdrs: Headers = []

    def _reset(self) -> None:
        self._p = httptools.HttpRequestParser(self)
        self._url = b""
        self._hdrs = []

    def _codec(self, data: bytes | bytearray, start: int, end: int) -> None:
        try:
            self._p.feed_data(data if start == 0 and end == len(data) else data[start:end])
        except httptools.HttpParserUpgrade:
            if not self._frame[6]:
                raise bad_request("llhttp saw an upgrade the rules did not") from None
        except httptools.HttpParserError as exc:
            raise bad_request(f"invalid HTTP/1.1 request ({exc})") from None

    # llhttp callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdrs.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        f = self._frame
        self._out.append(
            RequestHead(
                self._p.get_method(), self._url, f[0], self._hdrs, f[3], f[2], f[1], f[4], f[5]
            )
        )
        self._url = b""
        self._hdrs = []

    def on_body(self, body: bytes) -> None:
        self._out.append(body)

    def on_message_complete(self) -> None:
        if self._hdrs:
            self._out.append(EndOfMessage(self._hdrs))
            self._hdrs = []
        else:
            self._out.append(EOM)


def _h11_error(exc: h11.ProtocolError) -> RemoteProtocolError:
    return bad_request(f"invalid HTTP/1.1 ({exc})")


_TE_RE = re.compile(rb"\ntransfer-encoding:[ \t]*([^\r]*)", re.I)

# h11's body readers (content-length, chunked, read-until-close) share this shape.
_H11Body = Callable[[ReceiveBuffer], "h11.Data | h11.EndOfMessage | None"]


def _h11_headers(headers: Any, data: bytes | bytearray, start: int, end: int) -> Headers:
    """h11's fields as received: h11 lowercases the Transfer-Encoding value; put it back."""
    items: Headers = list(headers.raw_items())
    for name, _ in items:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            m = _TE_RE.search(data, start, end)
            if m is not None:  # the rules allow one such field, with no trailing whitespace
                raw = bytes(m.group(1))
                return [(n, raw if n.lower() == b"transfer-encoding" else v) for n, v in items]
    return items


def _h11_body(ev: h11.Data | h11.EndOfMessage | None, out: list[Any]) -> bool:
    """Append one h11 body event to `out`; True once the message ended (or more is needed)."""
    if ev is None:
        return True
    if isinstance(ev, h11.EndOfMessage):
        trailers: Headers = list(ev.headers.raw_items())
        out.append(EndOfMessage(trailers) if trailers else EOM)
        return True
    out.append(bytes(ev.data))
    return False


class _H11RequestParser(_RequestReader):
    """Requests parsed by h11 (pure Python): its readers, without its connection state machine.

    The rules own the connection state (keep-alive, pipelining, CONNECT/Upgrade, framing) and
    hand h11 exactly the bytes of one message, so an `h11.Connection` per message would only
    re-derive what the frame already says (and cost half of the parse). h11's own reader
    parses the head into its `Request` event (its grammar, its header validation), then the
    h11 body reader that the frame names (content-length or chunked) produces the body and
    `EndOfMessage` events.
    """

    __slots__ = ("_body", "_rbuf")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._rbuf = ReceiveBuffer()
        self._body: _H11Body | None = None  # None: h11 reads a head next

    def _begin(self) -> None:
        self._body = None
        if self._rbuf:  # pragma: no cover - the rules feed whole messages
            self._rbuf = ReceiveBuffer()

    _reset = _begin

    def _codec(self, data: bytes | bytearray, start: int, end: int) -> None:
        buf = self._rbuf
        buf += data if start == 0 and end == len(data) else data[start:end]
        out = self._out
        try:
            body = self._body
            if body is None:
                ev = _h11_read_request(buf)
                if ev is None:
                    return
                f = self._frame
                out.append(
                    RequestHead(
                        ev.method,
                        ev.target,
                        ev.http_version,
                        _h11_headers(ev.headers, data, start, end),
                        f[3],
                        f[2],
                        f[1],
                        f[4],
                        f[5],
                    )
                )
                body = self._body = ChunkedReader() if f[2] else ContentLengthReader(f[1] or 0)
            while not _h11_body(body(buf), out):
                pass
        except h11.ProtocolError as exc:
            raise _h11_error(exc) from None


# ---------------------------------------------------------------------------------------------
# Responses.


def _upstream(exc: RemoteProtocolError) -> RemoteProtocolError:
    """A response-side violation: the proxy answers 502 `upstream_reset`."""
    err = RemoteProtocolError(
        f"invalid response from upstream: {exc.detail or exc.code}",
        code="upstream_reset",
        http_status=502,
    )
    err.__cause__ = exc
    return err


class _ResponseReader(_Reader):
    __slots__ = ("_frame", "_methods", "_out", "_want_eom")

    _is_request = False

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._out: list[ResponseEvent] = []
        self._methods: deque[bytes] = deque()
        self._frame: ResponseFrame = (b"1.1", 200, None, False, 0, True)
        self._want_eom = True

    def expect(self, method: bytes) -> None:
        """Announce the request the next response answers (call once per request, in order)."""
        if not is_token(method):
            raise LocalProtocolError(f"invalid method {method!r}")
        self._methods.append(method)

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse `data`; see the module docstring."""
        if self._state >= _PAUSED:
            return self._feed_other(data)
        out: list[ResponseEvent] = []
        self._out = out
        try:
            self._run(self._joined(data) if self._buf else data, out)
        except RemoteProtocolError as exc:
            self._fail(_upstream(exc) if exc.http_status != 502 else exc)
            if out:
                return out
            assert self._error is not None
            raise self._error from exc
        return out

    def _feed_other(self, data: bytes) -> list[ResponseEvent]:
        state = self._state
        if state == _SWITCHED:
            self._hold(data, 0, False)
        elif state == _FAILED:
            assert self._error is not None
            raise self._error
        elif state == _DONE and data:
            raise LocalProtocolError("response parser was upgraded: relay the bytes instead")
        return []

    def _run(self, data: bytes | bytearray, out: list[ResponseEvent]) -> None:
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _IDLE:
                if not self._methods:
                    if not data[pos:].strip(b"\r\n"):
                        break
                    raise RemoteProtocolError(
                        "upstream sent data without a request",
                        code="upstream_reset",
                        http_status=502,
                    )
                start, head_end = self._head_end(data, pos)
                if head_end < 0:
                    self._keep(data, start)
                    return
                method = self._methods[0]
                frame = self._frame = scan_response_head(
                    data, start, head_end, method, self._limits
                )
                body = frame[4]
                self._begin(method, frame[1])
                if body in (BODY_LENGTH, BODY_CHUNKED):
                    self._want_eom = True
                    if body == BODY_CHUNKED:
                        self._codec(data, start, head_end)
                        self._chunks = ChunkScanner(self._limits)
                        self._state = _CHUNKED
                        pos = head_end
                        continue
                    end = head_end + (frame[2] or 0)
                    if end <= n:
                        self._codec(data, start, end)
                        pos = end
                        self._complete(out)
                    else:
                        self._codec(data, start, n)
                        self._left = end - n
                        self._state = _BODY
                        return
                elif body == BODY_EOF:
                    self._want_eom = False
                    self._codec(data, start, n)
                    self._methods.popleft()
                    self._state = _EOF
                    return
                else:  # no body: 1xx, 204, 304, HEAD, or a protocol switch
                    self._want_eom = False
                    self._codec(data, start, head_end)
                    pos = head_end
                    self._reset()
                    if body == BODY_SWITCH:
                        out.append(EOM)
                        self._methods.popleft()
                        self._state = _SWITCHED
                        self._tail += data[pos:]  # all of it: the HCM cannot stop the peer
                        break
                    if frame[1] >= 200:
                        out.append(EOM)
                        self._methods.popleft()
                        self._state = _IDLE if frame[5] else _CLOSED
            elif state == _BODY:
                take = min(self._left, n - pos)
                self._codec(data, pos, pos + take)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._complete(out)
            elif state == _CHUNKED:
                end = self._chunked(data, pos)
                if end < 0:
                    return
                pos = end
                self._complete(out)
            elif state == _EOF:
                self._codec(data, pos, n)
                break
            else:  # _CLOSED
                break

    def _complete(self, out: list[ResponseEvent]) -> None:
        if not out or type(out[-1]) is not EndOfMessage:
            raise bad_request("the codec and the framing rules disagree on the message end")
        self._methods.popleft()
        self._state = _IDLE if self._frame[5] else _CLOSED

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends a read-until-close body; mid-response it is an error."""
        state = self._state
        if state == _FAILED:
            assert self._error is not None
            raise self._error
        if state == _EOF:
            self._state = _CLOSED
            return [EOM]
        if state == _IDLE and not self._methods and not self._buf.strip(b"\r\n"):
            self._state = _CLOSED
            return []
        if state in (_IDLE, _BODY, _CHUNKED):
            raise self._fail(
                RemoteProtocolError(
                    "upstream closed the connection before a complete response",
                    code="upstream_reset",
                    http_status=502,
                )
            )
        return []

    def upgraded(self) -> bytes:
        """After a 101 or a 2xx to CONNECT: the bytes that followed that response's head."""
        if self._state != _SWITCHED:
            raise LocalProtocolError("upgraded() without a protocol switch")
        self._state = _DONE
        tail = bytes(self._tail)
        self._tail = bytearray()
        return tail

    # codec hooks
    def _begin(self, method: bytes, status: int) -> None:
        """A new response head was accepted."""

    def _reset(self) -> None:
        """Forget codec state after a response without body (framing the codec may not know)."""


class _HttptoolsResponseParser(_ResponseReader):
    __slots__ = ("_hdrs", "_p", "_reason")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._p = httptools.HttpResponseParser(self)
        self._reason = b""
        self._hdrs: Headers = []

    def _reset(self) -> None:
        self._p = httptools.HttpResponseParser(self)
        self._reason = b""
        self._hdrs = []

    def _codec(self, data: bytes | bytearray, start: int, end: int) -> None:
        try:
            self._p.feed_data(data if start == 0 and end == len(data) else data[start:end])
        except httptools.HttpParserUpgrade:
            if self._frame[4] != BODY_SWITCH:
                raise bad_request("llhttp saw an upgrade the rules did not") from None
        except httptools.HttpParserError as exc:
            raise bad_request(f"invalid HTTP/1.1 response ({exc})") from None

    # llhttp callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdrs.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        f = self._frame
        self._out.append(ResponseHead(f[1], self._reason, f[0], self._hdrs, f[5], f[3], f[2]))
        self._reason = b""
        self._hdrs = []

    def on_body(self, body: bytes) -> None:
        self._out.append(body)

    def on_message_complete(self) -> None:
        if not self._want_eom:
            self._hdrs = []
        elif self._hdrs:
            self._out.append(EndOfMessage(self._hdrs))
            self._hdrs = []
        else:
            self._out.append(EOM)


class _H11ResponseParser(_ResponseReader):
    """Responses parsed by h11 (pure Python): its status-line reader, then the h11 body reader
    the frame names. The rules already framed HEAD, CONNECT, 1xx, 101, 204 and 304 (which
    h11 could only learn from a request sent on an `h11.Connection`), so no connection and no
    synthetic request are needed."""

    __slots__ = ("_body", "_rbuf")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._rbuf = ReceiveBuffer()
        self._body: _H11Body | None = None  # None: h11 reads a head next

    def _begin(self, method: bytes, status: int) -> None:
        self._body = None
        if self._rbuf:  # pragma: no cover - the rules feed whole messages
            self._rbuf = ReceiveBuffer()

    def _reset(self) -> None:
        self._body = None

    def _codec(self, data: bytes | bytearray, start: int, end: int) -> None:
        buf = self._rbuf
        buf += data if start == 0 and end == len(data) else data[start:end]
        out = self._out
        try:
            body = self._body
            if body is None:
                ev = _h11_read_response(buf)
                if ev is None:
                    return
                f = self._frame
                out.append(
                    ResponseHead(
                        ev.status_code,
                        ev.reason,
                        ev.http_version,
                        _h11_headers(ev.headers, data, start, end),
                        f[5],
                        f[3],
                        f[2],
                    )
                )
                kind = f[4]
                if type(ev) is h11.InformationalResponse or kind == BODY_SWITCH:
                    return
                if kind == BODY_LENGTH:
                    body = ContentLengthReader(f[2] or 0)
                elif kind == BODY_CHUNKED:
                    body = ChunkedReader()
                elif kind == BODY_EOF:
                    body = Http10Reader()
                else:  # no body: HEAD, 204, 304; the framing appends the EndOfMessage
                    return
                self._body = body
            while not _h11_body(body(buf), out):
                pass
        except h11.ProtocolError as exc:
            raise _h11_error(exc) from None


# ---------------------------------------------------------------------------------------------
# Factories.


def make_request_parser(
    codec: Codec = "httptools", limits: Limits = DEFAULT_LIMITS
) -> RequestParser:
    """A parser for the requests of one client connection (`--http1-codec`)."""
    if codec == "httptools":
        return _HttptoolsRequestParser(limits)
    if codec == "h11":
        return _H11RequestParser(limits)
    raise ValueError(f"unknown HTTP/1.1 codec {codec!r} (expected httptools or h11)")


def make_response_parser(
    codec: Codec = "httptools", limits: Limits = DEFAULT_LIMITS
) -> ResponseParser:
    """A parser for the responses of one upstream connection; call `expect()` per request."""
    if codec == "httptools":
        return _HttptoolsResponseParser(limits)
    if codec == "h11":
        return _H11ResponseParser(limits)
    raise ValueError(f"unknown HTTP/1.1 codec {codec!r} (expected httptools or h11)")


# ---------------------------------------------------------------------------------------------
# Serialisers (ours, for both codecs).


def _fields(parts: list[bytes], headers: Headers) -> None:
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")


def serialize_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """`method SP target SP HTTP/1.1` + fields. Raises LocalProtocolError on CR/LF injection."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _fields(parts, headers)
    parts.append(b"\r\n")
    out = b"".join(parts)
    lines = len(headers) + 2
    if (
        out.count(b"\n") != lines
        or out.count(b"\r") != lines
        or out.count(b" ") < 2
        or (b" " in method or b" " in target)
    ):
        raise LocalProtocolError("CR, LF or SP inside a request line or header field")
    return out


def serialize_response_head(
    status: int, reason: bytes, headers: Headers, http_version: bytes = b"1.1"
) -> bytes:
    """`HTTP/x.y status reason` + fields. Raises LocalProtocolError on CR/LF injection."""
    parts = [b"HTTP/%s %d %s\r\n" % (http_version, status, reason)]
    _fields(parts, headers)
    parts.append(b"\r\n")
    out = b"".join(parts)
    lines = len(headers) + 2
    if out.count(b"\n") != lines or out.count(b"\r") != lines or not 100 <= status <= 999:
        raise LocalProtocolError("CR or LF inside a status line or header field")
    return out


LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives b"" (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers) -> bytes:
    """The last chunk and the trailer section."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    _fields(parts, trailers)
    parts.append(b"\r\n")
    out = b"".join(parts)
    if out.count(b"\n") != len(trailers) + 2 or out.count(b"\r") != len(trailers) + 2:
        raise LocalProtocolError("CR or LF inside a trailer field")
    return out
