"""The one HTTP/1.1 rule set both codecs obey (the pre-scan).

Rule 1: nothing here touches a socket, a loop or a clock; it only looks at bytes.
Rule 2: every verdict is decided *here*, on the raw bytes, before a codec sees them. The codecs
(llhttp via httptools, and h11) then only ever parse input these rules accepted, so both give
the same verdict for the same bytes (DESIGN.md §4 lists where they differ on their own).

What runs where:

- `check_head_lines()` validates a head line by line in stream order: start line, then header
  lines, each checked for limits (414/431) first and syntax (400) second. It runs on the
  complete lines of a partial head (so an endless or hostile head is refused as soon as a limit
  is crossed or a bad line ends) and, as the slow path, on a complete head that failed the fast
  regex. Because the fast path accepts exactly what this function accepts, a verdict never
  depends on how the bytes were split.
- `scan_request_head()` / `scan_response_head()` check a complete head (a fast regex, falling
  back to `check_head_lines()` for the precise error), then apply the framing rules (Content-
  Length, Transfer-Encoding, Host, Connection, ...) and return the message framing.
- `ChunkScanner` validates a chunked body (chunk-size lines, the CRLF after each chunk's data,
  the trailer section) and finds where the message ends.

Every failure raises `RemoteProtocolError` with the request-side code (`bad_request` 400,
`uri_too_long` 414, `headers_too_large` 431, `not_implemented` 501); the response parser
re-labels them as upstream failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from pymesh.errors import RemoteProtocolError

__all__ = [
    "BODY_CHUNKED",
    "BODY_EOF",
    "BODY_LENGTH",
    "BODY_NONE",
    "BODY_SWITCH",
    "DEFAULT_LIMITS",
    "METHODS",
    "ChunkScanner",
    "Limits",
    "RequestFrame",
    "ResponseFrame",
    "bad_request",
    "check_head_lines",
    "is_token",
    "scan_request_head",
    "scan_response_head",
    "skip_empty_lines",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits for one HTTP/1.1 connection (Envoy's defaults, DESIGN.md §2).

    A head is the start line, the header lines and the empty line that ends them, CRLFs
    included. Trailers obey the header limits on their own.
    """

    max_request_line: int = 8 * 1024  # start line incl. CRLF; longer → 414 uri_too_long
    max_header_block: int = 60 * 1024  # whole head incl. CRLFs; larger → 431
    max_headers: int = 100  # header (or trailer) lines; more → 431 headers_too_large
    max_chunk_line: int = 4096  # chunk-size line incl. extensions and CRLF; longer → 400


DEFAULT_LIMITS = Limits()


def bad_request(detail: str) -> RemoteProtocolError:
    """A 400 `bad_request` error: the bytes are not acceptable HTTP/1.1."""
    return RemoteProtocolError(detail, code="bad_request", http_status=400)


def _uri_too_long(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, code="uri_too_long", http_status=414)


def _too_large(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, code="headers_too_large", http_status=431)


def _not_implemented(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, code="not_implemented", http_status=501)


# ---------------------------------------------------------------------------------------------
# Grammar (RFC 9110/9112), restricted to what llhttp *and* h11 both accept.

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"  # field-vchar / obs-text / SP / HTAB; never a CTL or NUL
_HEADER_LINE = _TOKEN + rb":" + _VALUE + rb"\r\n"
_REQUEST_LINE = rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])\r\n"
_STATUS_LINE = rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"

# Fast paths: one C-level match over a whole head. Linear: no alternative can overlap.
_REQUEST_HEAD_RE = re.compile(_REQUEST_LINE + rb"(?:" + _HEADER_LINE + rb")*\r\n")
_RESPONSE_HEAD_RE = re.compile(_STATUS_LINE + rb"(?:" + _HEADER_LINE + rb")*\r\n")
# The headers the rules care about. Only used on a head that already matched the fast regex,
# where every "\n" ends a line and every line is `token ":" value CRLF`.
_REQUEST_SPECIAL_RE = re.compile(
    rb"\n(content-length|transfer-encoding|host|connection|expect|upgrade):([^\r]*)", re.I
)
_RESPONSE_SPECIAL_RE = re.compile(
    rb"\n(content-length|transfer-encoding|connection|upgrade):([^\r]*)", re.I
)

_REQUEST_LINE_RE = re.compile(_REQUEST_LINE)
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
_HEADER_LINE_RE = re.compile(_HEADER_LINE)
_TOKEN_RE = re.compile(_TOKEN)
_EMPTY_LINES_RE = re.compile(rb"(?:\r\n)*")

# Request targets (RFC 9112 §3.2), intersected with what llhttp's URL parser accepts.
_HOST = rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])"
_AUTHORITY_RE = re.compile(_HOST + rb":[0-9]{1,5}")  # CONNECT host:port
_ABSOLUTE_RE = re.compile(
    rb"[Hh][Tt][Tt][Pp][Ss]?://" + _HOST + rb"(?::[0-9]{1,5})?(?:[/?][\x21-\x7e]*)?"
)

# llhttp's HTTP methods (it refuses every other token; h11 would accept any token). A valid
# token outside this set is answered 501 (RFC 9110 §9.1), a non-token 400.
METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH "
    b"COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT "
    b"MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK "
    b"UNLINK SOURCE QUERY".split()
)

# chunk-size [ chunk-ext ] CRLF. At most 16 hex digits (64 bits); extensions without BWS
# (llhttp refuses it), names are tokens, values tokens or quoted strings.
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n"
)

_MAX_CONTENT_LENGTH = 2**63 - 1
_FORBIDDEN_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host"))


def is_token(value: bytes) -> bool:
    """Whether `value` is an RFC 9110 token (a method, a field name)."""
    return _TOKEN_RE.fullmatch(value) is not None


def skip_empty_lines(buf: bytes | bytearray, pos: int) -> int:
    """Skip CRLFs before a start line (RFC 9112 §2.2 says to ignore at least one)."""
    return _EMPTY_LINES_RE.match(buf, pos).end()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Line-by-line validation (partial heads, and the precise error for a bad complete head).


def _check_start_line(line: bytes, request: bool) -> None:
    if not line.endswith(b"\r\n"):
        raise bad_request("bare LF in start line")
    if b"\r" in line[:-2]:
        raise bad_request("bare CR in start line")
    if not request:
        if _STATUS_LINE_RE.fullmatch(line) is None:
            raise bad_request(f"malformed status line {line[:64]!r}")
        return
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        parts = line[:-2].split(b" ")
        if len(parts) != 3:
            raise bad_request("request line is not `method SP target SP version`")
        method, _, version = parts
        if _TOKEN_RE.fullmatch(method) is None:
            raise bad_request(f"invalid method {method[:32]!r}")
        if version[:5] != b"HTTP/" or version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise bad_request(f"unsupported HTTP version {version[:16]!r}")
        raise bad_request("invalid character in request target")
    _check_request_target(m.group(1), m.group(2))


def _check_request_target(method: bytes, target: bytes) -> None:
    if method not in METHODS:
        raise _not_implemented(f"method {method[:32]!r} is not implemented")
    if method == b"CONNECT":
        if _AUTHORITY_RE.fullmatch(target) is None:
            raise bad_request("CONNECT target must be host:port")
    elif target[0] == 0x2F:  # "/": origin-form
        pass
    elif target == b"*":
        if method != b"OPTIONS":
            raise bad_request("asterisk-form target is only for OPTIONS")
    elif _ABSOLUTE_RE.fullmatch(target) is None:
        raise bad_request(f"invalid request target {target[:64]!r}")


def _check_field_line(line: bytes, what: str) -> None:
    if not line.endswith(b"\r\n"):
        raise bad_request(f"bare LF in {what}")
    body = line[:-2]
    if b"\r" in body:
        raise bad_request(f"bare CR in {what}")
    if body[:1] in (b" ", b"\t"):
        raise bad_request(f"obsolete line folding in {what}")
    if _HEADER_LINE_RE.fullmatch(line) is not None:
        return
    colon = body.find(b":")
    if colon < 0:
        raise bad_request(f"{what} without a colon")
    name = body[:colon]
    if not name:
        raise bad_request(f"empty field name in {what}")
    if name[-1:] in (b" ", b"\t"):
        raise bad_request(f"whitespace before colon in {what}")
    if _TOKEN_RE.fullmatch(name) is None:
        raise bad_request(f"invalid field name {name[:64]!r} in {what}")
    if b"\x00" in body:
        raise bad_request(f"NUL in the value of {what}")
    raise bad_request(f"control character in the value of {what}")


def check_head_lines(
    buf: bytes | bytearray,
    start: int,
    pos: int,
    nlines: int,
    limits: Limits,
    request: bool,
    start_line: bool = True,
) -> tuple[int, int, bool]:
    """Validate the complete lines of a head in `buf[pos:]`, in stream order.

    `start` is where the head begins, `pos` where validation resumes and `nlines` how many
    lines were already validated. Returns `(pos, nlines, done)`: the offset after the last
    complete line, the line count, and whether the empty line ending the head was seen.
    Raises at the first line that breaks a rule. An incomplete last line is only checked
    against the limits. `start_line=False` validates a trailer section (no start line).
    """
    what = "header line" if start_line else "trailer line"
    line_limit = limits.max_request_line
    block_limit = limits.max_header_block
    max_fields = limits.max_headers + (1 if start_line else 0)
    end = len(buf)
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        line_end = nl + 1
        line = bytes(buf[pos:line_end])
        if nlines == 0 and start_line:
            if line_end - start > line_limit:
                raise _uri_too_long(f"start line longer than {line_limit} bytes")
            _check_start_line(line, request)
        else:
            if line_end - start > block_limit:
                raise _too_large(f"head larger than {block_limit} bytes")
            if line == b"\r\n":
                return line_end, nlines, True
            if nlines >= max_fields:
                raise _too_large(f"more than {limits.max_headers} fields")
            _check_field_line(line, what)
            if not start_line:
                name = line.partition(b":")[0].lower()
                if name in _FORBIDDEN_TRAILERS:
                    raise bad_request(f"{name.decode()} is not allowed in trailers")
        nlines += 1
        pos = line_end
    if nlines == 0 and start_line and end - start >= line_limit:
        raise _uri_too_long(f"start line longer than {line_limit} bytes")
    if end - start >= block_limit:
        raise _too_large(f"head larger than {block_limit} bytes")
    return pos, nlines, False


def _fast_path(
    regex: re.Pattern[bytes], buf: bytes | bytearray, start: int, end: int, limits: Limits
) -> re.Match[bytes] | None:
    """Match a complete head in one go: None unless every line rule and limit holds."""
    m = regex.fullmatch(buf, start, end)
    if (
        m is None
        or end - start > limits.max_header_block
        or buf.find(b"\n", start, start + limits.max_request_line) < 0
        or buf.count(b"\n", start, end) - 2 > limits.max_headers
    ):
        return None
    return m


def _slow_path(buf: bytes | bytearray, start: int, limits: Limits, request: bool) -> NoReturn:
    """Find the precise error in a complete head the fast path refused."""
    check_head_lines(buf, start, start, 0, limits, request)
    # The fast path and the line rules accept the same language (a test checks it); reaching
    # this would be a bug here, but the bytes are refused either way.
    raise bad_request("malformed head")


# ---------------------------------------------------------------------------------------------
# Framing rules on a complete head.


def _tokens(values: list[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for value in values:
        for tok in value.split(b","):
            out.add(tok.strip(b" \t").lower())
    return out


def _content_length(values: list[bytes]) -> int:
    if len(values) > 1:
        raise bad_request("more than one Content-Length")
    value = values[0]
    if not value or len(value) > 19 or not value.isdigit():
        raise bad_request(f"invalid Content-Length {value[:32]!r}")
    n = int(value)
    if n > _MAX_CONTENT_LENGTH:
        raise bad_request("Content-Length overflow")
    return n


def _chunked(values: list[bytes], has_cl: bool, http10: bool) -> bool:
    if has_cl:
        raise bad_request("both Content-Length and Transfer-Encoding")
    if http10:
        raise bad_request("Transfer-Encoding in an HTTP/1.0 message")
    if len(values) != 1 or values[0].lower() != b"chunked":
        raise _not_implemented("only `Transfer-Encoding: chunked` is supported (exactly)")
    return True


# (version, content_length, chunked, keep_alive, expect_continue, upgrade, pause_after)
RequestFrame = tuple[bytes, "int | None", bool, bool, bool, "bytes | None", bool]


def scan_request_head(
    buf: bytes | bytearray, start: int, end: int, limits: Limits = DEFAULT_LIMITS
) -> RequestFrame:
    """Check the complete request head `buf[start:end]` and return its framing.

    `pause_after` is true for CONNECT and accepted-upgrade requests: what follows the message
    may not be HTTP, so the parser stops until the caller knows.
    """
    m = _fast_path(_REQUEST_HEAD_RE, buf, start, end, limits)
    if m is None:
        _slow_path(buf, start, limits, True)
    method = m.group(1)
    _check_request_target(method, m.group(2))
    http10 = m.group(3) == b"0"
    version = b"1.0" if http10 else b"1.1"

    hosts = 0
    cl: list[bytes] = []
    te: list[bytes] = []
    conn: list[bytes] = []
    expect = False
    upgrade: list[bytes] = []
    for name, raw in _REQUEST_SPECIAL_RE.findall(buf, start, end):
        n = name.lower()
        if n == b"transfer-encoding":  # trailing whitespace kept: llhttp reads it as a coding
            te.append(raw.lstrip(b" \t"))
            continue
        value = raw.strip(b" \t")
        if n == b"host":
            hosts += 1
        elif n == b"content-length":
            cl.append(value)
        elif n == b"connection":
            conn.append(value)
        elif n == b"expect":
            expect = expect or value.lower() == b"100-continue"
        elif value:  # upgrade
            upgrade.append(value)

    if hosts > 1:
        raise bad_request("more than one Host")
    if hosts == 0 and not http10:
        raise bad_request("HTTP/1.1 request without Host")
    length = _content_length(cl) if cl else None
    chunked = _chunked(te, bool(cl), http10) if te else False

    tokens = _tokens(conn) if conn else set()
    keep_alive = (
        (b"keep-alive" in tokens and b"close" not in tokens) if http10 else (b"close" not in tokens)
    )
    offered = b", ".join(upgrade) if upgrade and b"upgrade" in tokens else None
    pause = offered is not None or method == b"CONNECT"
    if pause and (chunked or length):
        raise bad_request("CONNECT or Upgrade request with a body")
    return (version, length, chunked, keep_alive, expect and not http10, offered, pause)


# (version, status, content_length, chunked, body, keep_alive)
# body: 0 none, 1 Content-Length, 2 chunked, 3 until close, 4 none and the connection switches
ResponseFrame = tuple[bytes, int, "int | None", bool, int, bool]
BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF, BODY_SWITCH = 0, 1, 2, 3, 4


def scan_response_head(
    buf: bytes | bytearray,
    start: int,
    end: int,
    method: bytes,
    limits: Limits = DEFAULT_LIMITS,
) -> ResponseFrame:
    """Check the complete response head `buf[start:end]` to a `method` request; its framing."""
    m = _fast_path(_RESPONSE_HEAD_RE, buf, start, end, limits)
    if m is None:
        _slow_path(buf, start, limits, False)
    http10 = m.group(1) == b"0"
    version = b"1.0" if http10 else b"1.1"
    status = int(m.group(2))

    cl: list[bytes] = []
    te: list[bytes] = []
    conn: list[bytes] = []
    upgrade = False
    for name, raw in _RESPONSE_SPECIAL_RE.findall(buf, start, end):
        n = name.lower()
        if n == b"content-length":
            cl.append(raw.strip(b" \t"))
        elif n == b"transfer-encoding":
            te.append(raw.lstrip(b" \t"))
        elif n == b"connection":
            conn.append(raw.strip(b" \t"))
        else:
            upgrade = upgrade or bool(raw.strip(b" \t"))
    # The framing headers must be valid even where they do not frame (HEAD, 204, 304).
    length = _content_length(cl) if cl else None
    chunked = _chunked(te, bool(cl), http10) if te else False
    tokens = _tokens(conn) if conn else set()
    keep_alive = (
        (b"keep-alive" in tokens and b"close" not in tokens) if http10 else (b"close" not in tokens)
    )

    if status == 101 and not (upgrade and b"upgrade" in tokens):
        raise bad_request("101 response without `Connection: upgrade` and `Upgrade`")
    if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
        return (version, status, None, False, BODY_SWITCH, False)
    if status < 200 or status in (204, 304) or method == b"HEAD":
        return (version, status, None, False, BODY_NONE, keep_alive)
    if chunked:
        return (version, status, None, True, BODY_CHUNKED, keep_alive)
    if length is not None:
        return (version, status, length, False, BODY_LENGTH, keep_alive)
    return (version, status, None, False, BODY_EOF, False)


# ---------------------------------------------------------------------------------------------
# Chunked bodies.

_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILERS, _DONE = 0, 1, 2, 3, 4, 5


class ChunkScanner:
    """Validates one chunked body incrementally and finds where it ends.

    `scan(data, pos)` returns the offset up to which `data` holds validated body bytes (chunk
    lines, chunk data, trailer lines). A partial chunk-size or trailer line at the end is left
    unconsumed: the caller keeps it and passes it again, followed by more bytes, next time
    (it is bounded by `max_chunk_line`, resp. `max_header_block` for the trailer section).
    `done` turns true once the trailer section ended. On a violation, `good` is where the
    offending unit starts: the bytes before it are valid and may still be parsed.
    """

    __slots__ = ("_left", "_limits", "_state", "_tbytes", "_tlines", "done", "good")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._state = _SIZE
        self._left = 0
        self._tbytes = 0  # trailer-section bytes validated so far
        self._tlines = 0
        self.done = False
        self.good = 0

    def scan(self, data: bytes | bytearray, pos: int) -> int:
        """Validate `data[pos:]`; return the end of the validated bytes."""
        n = len(data)
        while pos < n:
            self.good = pos
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                if self._left:
                    continue
                if n - pos < 2:
                    self._state = _DATA_CR
                    continue
                self.good = pos
                if data[pos] != 0x0D or data[pos + 1] != 0x0A:
                    raise bad_request("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                limit = self._limits.max_chunk_line
                nl = data.find(b"\n", pos, pos + limit)
                if nl < 0:
                    if n - pos >= limit:
                        raise bad_request(f"chunk-size line longer than {limit} bytes")
                    return pos
                m = _CHUNK_LINE_RE.fullmatch(data, pos, nl + 1)
                if m is None:
                    raise bad_request(f"invalid chunk-size line {bytes(data[pos : nl + 1])[:40]!r}")
                size = int(m.group(1), 16)
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILERS
                pos = nl + 1
            elif state == _DATA_CR:
                if data[pos] != 0x0D:
                    raise bad_request("chunk data not followed by CRLF")
                pos += 1
                self._state = _DATA_LF
            elif state == _DATA_LF:
                if data[pos] != 0x0A:
                    raise bad_request("chunk data not followed by CRLF")
                pos += 1
                self._state = _SIZE
            elif state == _TRAILERS:
                new_pos, self._tlines, done = check_head_lines(
                    data, pos - self._tbytes, pos, self._tlines, self._limits, True, False
                )
                self._tbytes += new_pos - pos
                if done:
                    self._state = _DONE
                    self.done = True
                return new_pos
            else:  # _DONE
                return pos
        self.good = pos
        return pos
