"""Protocol detection (`pymesh.proxy.detect`): real ClientHellos, HTTP/1 and h2 openings,
server-first and binary protocols, and properties (never raises, decisions are final)."""

from __future__ import annotations

import random
import ssl
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymesh.proxy.detect import (
    DETECT_TIMEOUT_S,
    H2_PREFACE,
    MAX_PEEK,
    Detection,
    Protocol,
    detect,
    detect_final,
)

HOST = "orders.default.svc.cluster.local"
TLS = Detection(Protocol.TLS)
HTTP1 = Detection(Protocol.HTTP1)
HTTP2 = Detection(Protocol.HTTP2)
TCP = Detection(Protocol.TCP)

PROPS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@cache
def client_hello(
    server_hostname: str | None = HOST,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The bytes a real client (Python's ssl, i.e. OpenSSL) sends first: its ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def handshake_message(hello: bytes) -> bytes:
    """The handshake message inside a one-record ClientHello."""
    assert hello[0] == 22 and int.from_bytes(hello[3:5]) == len(hello) - 5
    return hello[5:]


def records(message: bytes, size: int, version: bytes = b"\x03\x01", ctype: int = 22) -> bytes:
    """`message` framed as TLS records of at most `size` bytes each."""
    out = bytearray()
    for i in range(0, len(message), size):
        part = message[i : i + size]
        out += bytes([ctype]) + version + len(part).to_bytes(2) + part
    return bytes(out)


# Hand-made ClientHellos, for what real clients do not send.
def ext(ext_type: int, body: bytes) -> bytes:
    return ext_type.to_bytes(2) + len(body).to_bytes(2) + body


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2) + n for n in names)
    return ext(0, len(entries).to_bytes(2) + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(16, len(entries).to_bytes(2) + entries)


def hello_message(extensions: bytes | None, *, msg_type: int = 1, session_id: bytes = b"") -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += b"\x00\x02\x13\x01" + b"\x01\x00"  # one cipher suite, null compression
    if extensions is not None:
        body += len(extensions).to_bytes(2) + extensions
    return bytes([msg_type]) + len(body).to_bytes(3) + body


def crafted(extensions: bytes | None, *, msg_type: int = 1, session_id: bytes = b"") -> bytes:
    return records(hello_message(extensions, msg_type=msg_type, session_id=session_id), 16384)


def assert_prefixes(data: bytes, final: Detection) -> None:
    """Every prefix says `None` or the final answer, and the whole says the final answer."""
    assert detect(data) == final
    for k in range(len(data)):
        assert detect(data[:k]) in (None, final), (k, data[:k])


# --- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_2], ids=["1.3", "1.2"]
)
def test_real_client_hello_gives_sni_and_alpn(version: ssl.TLSVersion) -> None:
    hello = client_hello(version=version)
    want = Detection(Protocol.TLS, HOST, ("h2", "http/1.1"))
    assert detect(hello) == want
    # The SNI is only complete with the whole message: every proper prefix needs more.
    assert all(detect(hello[:k]) is None for k in range(len(hello)))
    assert detect_final(hello) == want


def test_client_hello_variants() -> None:
    assert detect(client_hello(alpn=())) == Detection(Protocol.TLS, HOST)
    assert detect(client_hello(alpn=("h2",))) == Detection(Protocol.TLS, HOST, ("h2",))
    assert detect(client_hello(server_hostname=None)) == Detection(
        Protocol.TLS, None, ("h2", "http/1.1")
    )
    # Clients send no SNI for an IP address (RFC 6066 §3).
    assert detect(client_hello(server_hostname="127.0.0.1")) == Detection(
        Protocol.TLS, None, ("h2", "http/1.1")
    )
    upper = client_hello(server_hostname="Orders.Default.SVC.cluster.local")
    assert detect(upper) == Detection(Protocol.TLS, HOST, ("h2", "http/1.1"))


@pytest.mark.parametrize("size", [20, 50, 100, 300])
def test_client_hello_fragmented_across_records(size: int) -> None:
    """A handshake message may span records (RFC 8446 §5.1), and records span segments."""
    data = records(handshake_message(client_hello()), size)
    assert len(data) < MAX_PEEK
    assert_prefixes(data, Detection(Protocol.TLS, HOST, ("h2", "http/1.1")))


def test_client_hello_followed_by_more_records() -> None:
    hello = client_hello()
    ccs = b"\x14\x03\x03\x00\x01\x01"
    early = b"\x17\x03\x03\x00\x05hello"
    want = Detection(Protocol.TLS, HOST, ("h2", "http/1.1"))
    assert detect(hello + ccs + early) == want
    assert detect(hello + b"GET / HTTP/1.1\r\n") == want


def test_too_many_records_decide_tls_without_sni() -> None:
    hs = handshake_message(client_hello())
    data = records(hs, 1)
    assert_prefixes(data[:400], TLS)
    assert detect(data[: 32 * 6 - 1]) is None
    assert detect(data[: 32 * 6]) == TLS  # 32 records and the message still incomplete
    assert detect(records(hs, len(hs) // 32 + 1)) == Detection(
        Protocol.TLS, HOST, ("h2", "http/1.1")
    )


def test_fragmented_beyond_the_bound_decides_tls_without_sni() -> None:
    # 32 records of 2^14 bytes: the message would be complete only past MAX_PEEK.
    big = hello_message(ext(21, bytes(MAX_PEEK - 100)) + sni_ext(HOST.encode()))
    data = records(big, 1000)
    assert len(data) > MAX_PEEK
    assert all(detect(data[:k]) is None for k in range(0, MAX_PEEK, 97))
    assert detect(data[: MAX_PEEK - 1]) is None
    assert detect(data[:MAX_PEEK]) == TLS
    assert detect(data) == TLS
    # The same message in 1000-byte records minus the bound: complete in the window.
    ok = hello_message(ext(21, bytes(MAX_PEEK - 1000)) + sni_ext(HOST.encode()))
    assert len(records(ok, 1000)) < MAX_PEEK
    assert detect(records(ok, 1000)) == Detection(Protocol.TLS, HOST)


def test_oversized_client_hello_decides_at_once() -> None:
    huge = hello_message(ext(21, bytes(MAX_PEEK)) + sni_ext(HOST.encode()))
    data = records(huge, 16384)
    assert detect(data[:9]) == TLS  # record header + handshake header: too long to wait for
    assert detect(data[:8]) is None
    # The bound, exactly: record header + message of MAX_PEEK bytes in all.
    pad = MAX_PEEK - 5 - len(hello_message(ext(21, b""))) - 4
    fits = records(hello_message(ext(21, bytes(pad)) + ext(22, b"")), 16384)
    assert len(fits) == MAX_PEEK
    assert detect(fits[:9]) is None
    assert_prefixes(fits, TLS)
    over = records(hello_message(ext(21, bytes(pad + 1)) + ext(22, b"")), 16384)
    assert len(over) == MAX_PEEK + 1
    assert detect(over[:9]) == TLS  # one byte too many: decided without waiting
    exact = records(hello_message(ext(21, bytes(pad - 6)) + sni_ext(b"a")), 16384)
    assert len(exact) == MAX_PEEK
    assert detect(exact) == Detection(Protocol.TLS, "a")


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"\x15\x03\x03\x00\x02\x02\x28", TLS),  # alert: handshake_failure
        (b"\x17\x03\x03\x00\x05hello", TLS),  # application data
        (b"\x14\x03\x01", TLS),  # change_cipher_spec, decided on the header alone
        (b"\x16\x03\x01\x00\x00", TLS),  # empty record (forbidden)
        (b"\x16\x03\x01\x40\x01", TLS),  # record over 2^14
        (b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", TLS),  # ServerHello, not ClientHello
        (b"\x16\x03\x05", TCP),  # no TLS version 3.5
        (b"\x16\x02\x00", TCP),  # no SSL 2 record layer
        (b"\x17\x00", TCP),
        (b"\x80\x2e\x01\x00\x02", TCP),  # SSLv2-compatible hello: not supported, opaque
    ],
)
def test_tls_records(data: bytes, want: Detection) -> None:
    assert_prefixes(data, want)


@pytest.mark.parametrize(
    ("exts", "want"),
    [
        (None, TLS),  # no extensions block at all
        (b"", TLS),
        (sni_ext(b"a.b"), Detection(Protocol.TLS, "a.b")),
        (sni_ext(b"svc_1.ns"), Detection(Protocol.TLS, "svc_1.ns")),
        (sni_ext(b"a.b", name_type=7), TLS),  # unknown name type: skipped
        (sni_ext(b"a.b", b"c.d"), TLS),  # two host_names: ambiguous
        (sni_ext(b"a.b.") + alpn_ext(b"h2"), TLS),  # trailing dot: malformed, no ALPN either
        (sni_ext(b"a..b"), TLS),
        (sni_ext(b"a b"), TLS),
        (sni_ext(b"caf\xc3\xa9"), TLS),  # not ASCII (IDNs go as A-labels)
        (sni_ext(b""), TLS),
        (sni_ext(b"x" * 64), TLS),  # label over 63
        (sni_ext(b"a." * 126 + b"a"), Detection(Protocol.TLS, "a." * 126 + "a")),  # 253
        (sni_ext(b"a." * 126 + b"ab"), TLS),  # 254
        (ext(0, b""), TLS),  # empty server_name in a ClientHello
        (ext(0, b"\x00\x05\x00\x00\x02ab"), Detection(Protocol.TLS, "ab")),
        (ext(0, b"\x00\x06\x00\x00\x02ab"), TLS),  # list longer than its content
        (ext(0, b"\x00\x05\x00\x00\x03ab"), TLS),  # name overruns the list
        (ext(0, b"\x00\x05\x00\x00\x02ab\x00"), TLS),  # bytes after the list
        (sni_ext(b"a.b") + sni_ext(b"c.d"), TLS),  # duplicate extension
        (alpn_ext(b"h2") + alpn_ext(b"h2"), TLS),
        (alpn_ext(b"h2", b"http/1.1"), Detection(Protocol.TLS, None, ("h2", "http/1.1"))),
        (alpn_ext(b"\x0a\x0a", b"h2"), Detection(Protocol.TLS, None, ("\\x0a\\x0a", "h2"))),
        (alpn_ext(b"h2", b""), TLS),  # empty protocol name
        (ext(16, b"\x00\x00"), TLS),  # empty list
        (ext(16, b"\x00\x03\x02h2"), Detection(Protocol.TLS, None, ("h2",))),
        (ext(16, b"\x00\x03\x03h2"), TLS),  # entry overruns the list
        (ext(0x0A0A, b"") + sni_ext(b"a.b"), Detection(Protocol.TLS, "a.b")),  # GREASE ext
        (sni_ext(b"a.b") + b"\x00", TLS),  # truncated extension header
    ],
)
def test_crafted_client_hellos(exts: bytes | None, want: Detection) -> None:
    assert_prefixes(crafted(exts), want)


def test_client_hello_structure_errors() -> None:
    good = crafted(sni_ext(b"a.b"))
    assert detect(good) == Detection(Protocol.TLS, "a.b")
    assert detect(crafted(sni_ext(b"a.b"), session_id=bytes(33))) == TLS
    assert detect(crafted(sni_ext(b"a.b"), msg_type=2)) == TLS
    # Legacy version major byte (offset 9) not 3.
    assert detect(good[:9] + b"\x02" + good[10:]) == TLS
    # Extensions block length one short of the rest: trailing bytes in the message.
    body = hello_message(sni_ext(b"a.b"))[4:] + b"\x00"
    assert detect(records(b"\x01" + len(body).to_bytes(3) + body, 16384)) == TLS
    # Bytes after the message (not part of it) do not matter.
    after = records(hello_message(sni_ext(b"a.b")) + b"\x00", 16384)
    assert detect(after) == Detection(Protocol.TLS, "a.b")
    # A non-handshake record in the middle of the message.
    hs = handshake_message(client_hello())
    mixed = records(hs[:50], 50) + b"\x15\x03\x03\x00\x02\x01\x00" + records(hs[50:], 16384)
    assert_prefixes(mixed, TLS)


@PROPS
@given(st.data())
def test_mutated_client_hellos_stay_tls(data: st.DataObject) -> None:
    """Any corruption after the record header: TLS (with or without SNI), never an error."""
    hello = bytearray(client_hello())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(3, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(3, len(hello)))
    found = detect_final(bytes(hello[:cut]))
    assert found.protocol is Protocol.TLS
    d = detect(bytes(hello))
    assert d is None or d.protocol is Protocol.TLS


# --- HTTP/2 and HTTP/1 --------------------------------------------------------------------

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_h2_preface() -> None:
    assert_prefixes(H2_PREFACE + SETTINGS_FRAME, HTTP2)
    assert all(detect(H2_PREFACE[:k]) is None for k in range(len(H2_PREFACE)))
    # Not the preface after all: the request line of a (bad) HTTP/1 request, for the codec.
    assert detect(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n") == HTTP1
    assert detect(b"PRI * HTTP/1.1\r\n") == HTTP1


CURL = b"GET /stock/1 HTTP/1.1\r\nHost: inventory\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        CURL,
        b"GET http://inventory/stock/1 HTTP/1.1\r\nHost: inventory\r\n\r\n",  # http_proxy
        b"POST https://x/ HTTP/1.1\r\n",
        b"CONNECT orders.default:8080 HTTP/1.1\r\nHost: orders.default:8080\r\n\r\n",
        b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n",
        b"CONNECT [::1]:443 HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"PROPFIND /dav/ HTTP/1.1\r\nDepth: 1\r\n",
        b"MKCALENDAR /cal HTTP/1.1\r\n",
        b"UPDATEREDIRECTREF /x HTTP/1.1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"get / HTTP/1.1\r\n",  # any token; the codec decides what it accepts
        b"X" * 24 + b" / HTTP/1.1\r\n",
        b"GET ws+unix.x://h/ HTTP/1.1\r\n",
        b"PUT /",
        b"DELETE /",
    ],
)
def test_http1(data: bytes) -> None:
    assert_prefixes(data, HTTP1)


@pytest.mark.parametrize(
    ("data", "at"),
    [
        (b"GET /", 5),
        (b"CONNECT o", 9),
        (b"OPTIONS * ", 10),
        (b"GET http://", 11),
    ],
)
def test_http1_decided_as_soon_as_possible(data: bytes, at: int) -> None:
    assert len(data) == at
    assert detect(data) == HTTP1
    assert detect(data[:-1]) is None


# --- TCP ----------------------------------------------------------------------------------

MYSQL_GREETING = (
    b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00\x3b\x5a\x25\x0d\x2b\x6d\x38\x1a\x00"
    b"\xff\xff\xff\x02\x00\xff\xdf\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x11\x4f\x0c"
    b"\x1c\x4a\x41\x5c\x27\x1d\x1e\x40\x59\x00caching_sha2_password\x00"
)


@pytest.mark.parametrize(
    "data",
    [
        MYSQL_GREETING,
        b"220 smtp.example.com ESMTP Postfix (Debian/GNU)\r\n",
        b"220 mx.shop.local ESMTP\r\n",
        b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n",
        b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u2\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # Redis RESP
        b"set key:1 0 0 5\r\nhello\r\n",  # memcached / redis inline: "key:" is no scheme
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00app\x00database\x00orders\x00\x00",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n",
        b"GET\r\n",
        b"GET  /",  # two spaces
        b"GET\t/",
        b"X" * 25 + b" / HTTP/1.1\r\n",  # method over the bound
        b"GET averyveryverylongscheme://x/",  # scheme over the bound
        b"GET 1http://x/",
        b"OPTIONS *x",
        b"\r\nGET / HTTP/1.1\r\n",  # leading empty line: not supported (documented)
        b"\xff\xfb\x01",  # telnet IAC
        b"\x05\x01\x00",  # SOCKS5
        b"\x16",  # alone: still a possible TLS start (None), decided TCP on timeout
    ],
)
def test_tcp(data: bytes) -> None:
    assert detect_final(data) == TCP
    final = detect(data)
    assert final in (None, TCP)
    for k in range(len(data)):
        assert detect(data[:k]) in (None, TCP)


def test_random_binary_is_tcp() -> None:
    rng = random.Random(3)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(1, 200))
        found = detect_final(data)
        if len(data) >= 3 and data[0] in (20, 21, 22, 23) and data[1] == 3 and data[2] <= 4:
            assert found.protocol is Protocol.TLS
        else:
            assert found == TCP, data


# --- timeout, bounds, properties ----------------------------------------------------------


def test_timeout_fallback() -> None:
    assert 0 < DETECT_TIMEOUT_S <= 1
    assert detect(b"") is None
    assert detect_final(b"") == TCP  # silence: server-first protocol
    assert detect_final(b"GE") == TCP
    assert detect_final(H2_PREFACE[:10]) == TCP
    assert detect_final(b"\x16\x03") == TCP
    # A ClientHello that stalled after its record header: TLS, but nothing to route on.
    assert detect_final(client_hello()[:100]) == TLS
    assert detect_final(CURL) == HTTP1


def test_bounded() -> None:
    # Any input of MAX_PEEK bytes or more is decided, and nothing past MAX_PEEK matters.
    for head in (b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc", b"GET ", b"\x14\x03\x03", b"z"):
        data = head + bytes(MAX_PEEK)
        assert detect(data[:MAX_PEEK]) is not None
        assert detect(data) == detect(data[:MAX_PEEK]) == detect(data + b"\xff" * MAX_PEEK)


def test_input_is_not_modified() -> None:
    buf = bytearray(client_hello())
    before = bytes(buf)
    assert detect(buf) == detect(before)
    assert buf == before


interesting = st.sampled_from(
    [
        b"",
        b"\x16\x03\x01",
        b"\x16\x03\x03\x00\x40\x01\x00\x00\x3c\x03\x03",
        b"\x15\x03\x03",
        b"GET ",
        b"CONNECT ",
        b"OPTIONS ",
        b"GET http:/",
        b"PRI * HTTP/2.0\r\n",
        H2_PREFACE,
    ]
)
inputs = st.builds(lambda head, tail: head + tail, interesting, st.binary(max_size=300))


@PROPS
@given(st.binary(min_size=44, max_size=80))
def test_plaintext_decided_within_44_bytes(data: bytes) -> None:
    if data[0] not in (20, 21, 22, 23):
        assert detect(data[:44]) is not None


@PROPS
@given(st.binary(max_size=2000))
def test_never_raises(data: bytes) -> None:
    detect(data)
    assert detect_final(data) is not None


@PROPS
@given(inputs, st.binary(min_size=1, max_size=64))
def test_decisions_are_final(data: bytes, more: bytes) -> None:
    found = detect(data)
    if found is None:
        assert len(data) < MAX_PEEK
        return
    assert detect(data + more) == found
    assert detect_final(data) == found
    for k in range(len(data)):
        assert detect(data[:k]) in (None, found)


@settings(PROPS, max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 64))
def test_real_hello_in_random_segments(seed: int, max_segment: int) -> None:
    """The listener's view: a buffer growing segment by segment, re-detected each time."""
    rng = random.Random(seed)
    data = records(handshake_message(client_hello()), rng.choice([16384, 200, 50]))
    buf = b""
    answers = []
    while len(buf) < len(data):
        buf += data[len(buf) : len(buf) + rng.randint(1, max_segment)]
        answers.append(detect(buf))
    assert answers[-1] == Detection(Protocol.TLS, HOST, ("h2", "http/1.1"))
    assert all(a is None for a in answers[:-1])
