"""Protocol detection for ports whose protocol is not declared (sans-IO).

`detect(data)` looks at the first bytes a client sent and says what they are: a TLS
ClientHello (with its SNI and ALPN), the HTTP/2 prior-knowledge preface, an HTTP/1 request
line, or opaque TCP. It never does I/O: the listener feeds it everything read so far and keeps
those bytes, then hands them on to whatever handles the connection, so nothing is lost.

Rule 1: `None` means "need more bytes", and it is only ever returned while the bytes seen so
far could still become more than one answer. A decision never changes when more bytes are
appended (every prefix of an input gives `None` or that input's answer).

Rule 2: bounded. Nothing beyond the first `MAX_PEEK` bytes is ever looked at; with that many
bytes in hand there is always an answer. Work is linear in the bytes looked at.

Rule 3: silence is TCP. A server-first protocol (MySQL, SMTP, ...) sends nothing until the
server speaks, so the listener waits at most `DETECT_TIMEOUT_S` and then calls
`detect_final(data)`, which never returns `None`.

The rules, with their reasons, are in docs/detection.md.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DETECT_TIMEOUT_S",
    "H2_PREFACE",
    "MAX_PEEK",
    "Detection",
    "Protocol",
    "detect",
    "detect_final",
]

DETECT_TIMEOUT_S: Final = 0.2
"""How long a listener waits for a decision before `detect_final` (server-first protocols)."""

MAX_PEEK: Final = 16384
"""Detection never looks beyond this many bytes; with this many it always decides."""

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4)."""


class Protocol(enum.StrEnum):
    """What a connection speaks, as far as its first bytes tell."""

    TLS = "tls"
    HTTP2 = "http2"  # prior knowledge (h2c); h2 over TLS is TLS with "h2" in its ALPN
    HTTP1 = "http1"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class Detection:
    """A decision: the protocol and, for TLS, the ClientHello's SNI (lower case) and ALPN."""

    protocol: Protocol
    sni: str | None = None
    alpn: tuple[str, ...] = ()


_TLS: Final = Detection(Protocol.TLS)  # TLS, nothing (trustworthy) to route on
_HTTP2: Final = Detection(Protocol.HTTP2)
_HTTP1: Final = Detection(Protocol.HTTP1)
_TCP: Final = Detection(Protocol.TCP)


class _Not:
    """Sentinel type: "not this protocol" (distinct from `None`, need more bytes)."""


_NOT: Final = _Not()

# --- HTTP/1 -----------------------------------------------------------------------------
# A request line starts with a method token (RFC 9110 §9.1, any token, at most
# _MAX_METHOD characters), one SP, and the start of a request-target (RFC 9112 §3.2):
#   origin-form "/", asterisk-form "* ", absolute-form "scheme://" (scheme at most
#   _MAX_SCHEME characters), or, for CONNECT only, an authority (host name, IP or "[").
# "scheme://" rather than "scheme:" keeps text protocols such as `set key:1 ...` out.
_MAX_METHOD: Final = 24
_MAX_SCHEME: Final = 16
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_SCHEME = rb"[A-Za-z][A-Za-z0-9+.-]{0,%d}" % (_MAX_SCHEME - 1)
_H1_YES: Final = re.compile(
    rb"CONNECT [A-Za-z0-9_\[]|%s{1,%d} (?:/|\* |%s://)" % (_TCHAR, _MAX_METHOD, _SCHEME)
)
# Every proper prefix of a _H1_YES match (the set is prefix-closed, so "no" is final).
_H1_MAYBE: Final = re.compile(rb"%s{1,%d}(?: (?:\*|%s(?::/?)?)?)?" % (_TCHAR, _MAX_METHOD, _SCHEME))


def _http1(data: bytes | bytearray) -> Detection | _Not | None:
    if _H1_YES.match(data):
        return _HTTP1
    if _H1_MAYBE.fullmatch(data):
        return None
    return _NOT


# --- TLS --------------------------------------------------------------------------------
# A TLS record: content type (20 change_cipher_spec, 21 alert, 22 handshake, 23
# application_data), version 3.0-3.4, a 2-byte length of 1..2^14 (RFC 8446 §5.1).
_TLS_TYPES: Final = frozenset((20, 21, 22, 23))
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_MAX_RECORD: Final = 1 << 14
# Real clients send a ClientHello in one record (two at most); many tiny records would only
# make each re-detection of a trickled buffer slower. More than this → TLS without SNI.
_MAX_HELLO_RECORDS: Final = 32
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_HOST_NAME: Final = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


def _tls(data: bytes | bytearray) -> Detection | _Not | None:
    n = len(data)
    if n < 2:
        return None
    if data[1] != 3:
        return _NOT
    if n < 3:
        return None
    if data[2] > 4:
        return _NOT
    # A TLS record header, beyond reasonable doubt: from here on the answer is TLS.
    if data[0] != _HANDSHAKE:
        return _TLS
    return _client_hello(data)


def _client_hello(data: bytes | bytearray) -> Detection | None:
    """Reassemble the first handshake message from handshake records and read it."""
    n = len(data)
    hs = bytearray()  # handshake bytes so far, at most n
    need = -1  # the whole message's length (4-byte header included), once known
    pos = 0
    for _ in range(_MAX_HELLO_RECORDS):
        if pos + 5 > n:
            return None
        if (
            data[pos] != _HANDSHAKE
            or data[pos + 1] != 3
            or data[pos + 2] > 4
            or not 0 < (rlen := int.from_bytes(data[pos + 3 : pos + 5])) <= _MAX_RECORD
        ):
            return _TLS
        body = data[pos + 5 : pos + 5 + rlen]
        hs += body
        if need < 0 and hs:
            if hs[0] != _CLIENT_HELLO:
                return _TLS
            if len(hs) >= 4:
                need = 4 + int.from_bytes(hs[1:4])
                if need + 5 > MAX_PEEK:  # cannot be complete within the bound
                    return _TLS
        if 0 <= need <= len(hs):
            return _parse_client_hello(bytes(hs[4:need]))
        if len(body) < rlen:
            return None
        pos += 5 + rlen
    return _TLS


class _Malformed(Exception):
    """A ClientHello that does not parse (internal: becomes TLS without SNI)."""


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.buf):
            raise _Malformed
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2))

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def done(self) -> bool:
        return self.pos == len(self.buf)


def _parse_client_hello(body: bytes) -> Detection:
    """SNI and ALPN of a complete ClientHello body; anything malformed → TLS, no SNI."""
    try:
        return _parse_client_hello_or_raise(body)
    except _Malformed:
        return _TLS


def _parse_client_hello_or_raise(body: bytes) -> Detection:
    r = _Reader(body)
    if r.u8() != 3:  # legacy_version major
        raise _Malformed
    r.take(1 + 32)  # legacy_version minor, random
    if len(r.vec8()) > 32:  # legacy_session_id
        raise _Malformed
    suites = r.vec16()
    if not suites or len(suites) % 2:
        raise _Malformed
    if not r.vec8():  # legacy_compression_methods
        raise _Malformed
    if r.done():  # no extensions at all (SSL 3.0 style)
        return _TLS
    exts = _Reader(r.vec16())
    if not r.done():
        raise _Malformed
    seen: set[int] = set()
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    while not exts.done():
        ext_type = exts.u16()
        ext = exts.vec16()
        if ext_type in seen:  # RFC 8446 §4.2: at most one of each
            raise _Malformed
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _server_name(ext)
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(ext)
    return Detection(Protocol.TLS, sni, alpn)


def _server_name(ext: bytes) -> str | None:
    """RFC 6066 §3: one host_name, an ASCII DNS name without a trailing dot."""
    outer = _Reader(ext)
    names = _Reader(outer.vec16())
    if not outer.done() or names.done():
        raise _Malformed
    host: bytes | None = None
    while not names.done():
        name_type = names.u8()
        name = names.vec16()
        if name_type != 0:
            continue  # no other name types are defined; skip them
        if host is not None or len(name) > 253 or not _HOST_NAME.fullmatch(name):
            raise _Malformed
        host = name
    return None if host is None else host.decode("ascii").lower()


def _alpn(ext: bytes) -> tuple[str, ...]:
    """RFC 7301 §3.1: a non-empty list of non-empty protocol names."""
    outer = _Reader(ext)
    names = _Reader(outer.vec16())
    if not outer.done() or names.done():
        raise _Malformed
    out: list[str] = []
    while not names.done():
        name = names.vec8()
        if not name:
            raise _Malformed
        out.append(_printable(name))
    return tuple(out)


def _printable(raw: bytes) -> str:
    """Printable ASCII as is; other bytes (GREASE, binary IDs) as \\xNN, for logs."""
    if all(0x21 <= b <= 0x7E and b != 0x5C for b in raw):
        return raw.decode("ascii")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in raw)


# --- entry points -----------------------------------------------------------------------


def detect(data: bytes | bytearray) -> Detection | None:
    """What the first bytes of a connection are; `None`: need more bytes to tell.

    Looks at no more than `MAX_PEEK` bytes and always decides with that many. A decision is
    final: appending bytes never changes it. Never raises.
    """
    if not data:
        return None
    if len(data) > MAX_PEEK:
        data = bytes(data[:MAX_PEEK])
    first = data[0]
    result: Detection | _Not | None
    if first in _TLS_TYPES:
        result = _tls(data)
        if result is None and len(data) >= MAX_PEEK:
            return _TLS
    else:
        if first == 0x50:  # "P": the HTTP/2 preface, a prefix of it, or neither
            if data.startswith(H2_PREFACE):
                return _HTTP2
            if H2_PREFACE.startswith(data):
                return None
        result = _http1(data)
    return _TCP if isinstance(result, _Not) else result


def detect_final(data: bytes | bytearray) -> Detection:
    """The decision when no more bytes will come in time (detection timeout or EOF).

    `detect(data)` if it decides; else TLS without SNI once a TLS record header has been seen
    (a ClientHello that stalled), else TCP (silence or an undecidable prefix).
    """
    found = detect(data)
    if found is not None:
        return found
    if len(data) >= 3 and data[0] in _TLS_TYPES:  # undecided: the record header was valid
        return _TLS
    return _TCP
