"""Named HTTP/1.1 request-smuggling corpus and a seeded mutation generator.

Importable by the sans-IO differential test and by live tests (a real listener in front of a
recording upstream):

- `CORPUS[name] = (raw_bytes, verdict)`: `verdict` is the HTTP status the proxy must answer
  (400, 414, 431, 501) or `None` when every request in the bytes is acceptable. Cases whose
  verdict only appears once the client closes its side (an incomplete message) are listed in
  `NEEDS_EOF`; against a live listener they need a half-close (or end in a 408 timeout).
- `ACCEPTED_REQUESTS[name]`: how many complete requests of a case the parser delivers (and so
  may reach the upstream; default 1 for an accepted case, 0 for a rejected one). Pipelined
  cases deliver the valid ones first. A rejected body may follow a delivered head: a live
  proxy that streams must abort that upstream request.
- `mutations(seed, n)`: `n` deterministic mutants of valid requests and corpus cases.
- `parse(codec, data, splits)`: what a sans-IO request parser makes of the bytes.
- `RESPONSES`, `response_mutations(seed, n)`, `parse_response(...)`: the same for responses
  (an upstream's bytes, with the method of the request they answer).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar, cast

from pymesh.errors import RemoteProtocolError
from pymesh.proxy.events import RequestEvent, ResponseEvent
from pymesh.proxy.http1 import Limits, make_request_parser, make_response_parser

__all__ = [
    "ACCEPTED_REQUESTS",
    "CORPUS",
    "NEEDS_EOF",
    "RESPONSES",
    "VALID",
    "Verdict",
    "mutations",
    "normalise",
    "parse",
    "parse_response",
    "response_mutations",
]

Verdict = int | None

_GET = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"
_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"


def _req(head: bytes, body: bytes = b"", method: bytes = b"POST", target: bytes = b"/") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: svc\r\n" + head + b"\r\n" + body


def _chunked(body: bytes) -> bytes:
    return _req(b"Transfer-Encoding: chunked\r\n", body)


# Valid requests: the seeds of the mutation generator (and accepted corpus cases).
VALID: dict[str, bytes] = {
    "get": _GET,
    "get_headers": (
        b"GET /api/v1/orders?id=1&x=%20 HTTP/1.1\r\nHost: orders.default:8080\r\n"
        b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Request-Id: 0f8fad5b\r\n\r\n"
    ),
    "post_cl": _req(b"Content-Length: 5\r\n", b"hello"),
    "post_chunked": _chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    "chunked_trailers": _chunked(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"),
    "chunk_extensions": _chunked(b'5;name=value;q="a b"\r\nhello\r\n0;last\r\n\r\n'),
    "pipelined": _GET + _req(b"Content-Length: 3\r\n", b"abc") + _GET,
    "http10": b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
    "keep_alive_close": b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    "expect_continue": _req(b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"ok"),
    "absolute_form": b"GET http://svc:8080/x?y HTTP/1.1\r\nHost: svc:8080\r\n\r\n",
    "connect": b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n",
    "upgrade": (
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    ),
}

_LONG_TARGET = b"/" + b"a" * (8 * 1024)
_BIG_HEADER = b"X-Big: " + b"b" * (61 * 1024) + b"\r\n"

CORPUS: dict[str, tuple[bytes, Verdict]] = {
    # --- accepted: the framing is unambiguous ----------------------------------------------
    "ok_get": (_GET, None),
    "ok_post_content_length": (VALID["post_cl"], None),
    "ok_post_chunked": (VALID["post_chunked"], None),
    "ok_chunked_trailers": (VALID["chunked_trailers"], None),
    "ok_chunk_extensions": (VALID["chunk_extensions"], None),
    "ok_pipelined_three": (VALID["pipelined"], None),
    "ok_http10_without_host": (VALID["http10"], None),
    "ok_te_extra_space": (_req(b"Transfer-Encoding:   chunked\r\n", b"0\r\n\r\n"), None),
    "ok_te_tab_ows": (_req(b"Transfer-Encoding:\tchunked\r\n", b"0\r\n\r\n"), None),
    "ok_te_uppercase": (_req(b"Transfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n"), None),
    "ok_cl_leading_zeros": (_req(b"Content-Length: 003\r\n", b"abc"), None),
    "ok_cl_body_contains_request": (
        _req(b"Content-Length: %d\r\n" % len(_SMUGGLED), _SMUGGLED),
        None,
    ),
    "ok_leading_empty_lines": (b"\r\n\r\n" + _GET, None),
    "ok_expect_continue": (VALID["expect_continue"], None),
    "ok_absolute_form": (VALID["absolute_form"], None),
    "ok_options_asterisk": (b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n", None),
    "ok_empty_header_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-Empty:\r\n\r\n", None),
    "ok_obs_text_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-Name: caf\xc3\xa9\r\n\r\n", None),
    "ok_connect": (VALID["connect"], None),
    "ok_upgrade_websocket": (VALID["upgrade"], None),
    "ok_close_then_ignored": (VALID["keep_alive_close"] + _SMUGGLED, None),
    # --- CL.TE / TE.CL ---------------------------------------------------------------------
    "cl_te": (_req(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"), 400),
    "te_cl": (
        _req(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        400,
    ),
    "cl_te_smuggled_request": (
        _req(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + _SMUGGLED),
        400,
    ),
    "cl_te_zero_length": (
        _req(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    # --- TE.TE obfuscations ----------------------------------------------------------------
    "te_xchunked": (_req(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501),
    "te_gzip_chunked": (_req(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    "te_chunked_chunked": (_req(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 501),
    "te_identity": (_req(b"Transfer-Encoding: identity\r\n", b""), 501),
    "te_trailing_whitespace": (_req(b"Transfer-Encoding: chunked\t\r\n", b"0\r\n\r\n"), 501),
    "te_chunked_comma": (_req(b"Transfer-Encoding: chunked,\r\n", b"0\r\n\r\n"), 501),
    "te_quoted": (_req(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 501),
    "te_duplicated": (
        _req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    "te_chunked_then_x": (
        _req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", b"0\r\n\r\n"),
        501,
    ),
    "te_vertical_tab": (_req(b"Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n"), 400),
    "te_form_feed": (_req(b"Transfer-Encoding: \x0cchunked\r\n", b"0\r\n\r\n"), 400),
    "te_space_before_colon": (_req(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    "te_obs_fold": (_req(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    "te_leading_space_line": (
        b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: svc\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te_after_bare_lf": (_req(b"X: y\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    "te_lf_before_colon": (_req(b"Transfer-Encoding\n: chunked\r\n", b"0\r\n\r\n"), 400),
    "te_nul_in_name": (_req(b"Transfer-Encoding\x00: chunked\r\n", b"0\r\n\r\n"), 400),
    "te_http10": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # --- Content-Length -----------------------------------------------------------------------
    "cl_duplicate_equal": (_req(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400),
    "cl_duplicate_different": (_req(b"Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"), 400),
    "cl_list_equal": (_req(b"Content-Length: 3, 3\r\n", b"abc"), 400),
    "cl_plus": (_req(b"Content-Length: +5\r\n", b"hello"), 400),
    "cl_hex": (_req(b"Content-Length: 0x5\r\n", b"hello"), 400),
    "cl_negative": (_req(b"Content-Length: -1\r\n", b""), 400),
    "cl_empty": (_req(b"Content-Length:\r\n", b""), 400),
    "cl_inner_space": (_req(b"Content-Length: 1 2\r\n", b"x" * 12), 400),
    "cl_overflow": (_req(b"Content-Length: 99999999999999999999\r\n", b"x"), 400),
    "cl_underscore_is_other_header": (_req(b"Content_Length: 5\r\n", b""), None),
    # --- line syntax ------------------------------------------------------------------------
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\r\n  b\r\n\r\n", 400),
    "bare_lf_headers": (b"GET / HTTP/1.1\nHost: svc\n\n", 400),
    "bare_lf_end_of_head": (b"GET / HTTP/1.1\r\nHost: svc\r\n\n", 400),
    "bare_cr_in_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\rb\r\n\r\n", 400),
    "bare_cr_line_end": (b"GET / HTTP/1.1\r\nHost: svc\rX-A: b\r\n\r\n", 400),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x00b\r\n\r\n", 400),
    "ctl_in_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x01b\r\n\r\n", 400),
    "del_in_value": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x7fb\r\n\r\n", 400),
    "space_before_colon": (b"GET / HTTP/1.1\r\nHost : svc\r\n\r\n", 400),
    "empty_header_name": (b"GET / HTTP/1.1\r\nHost: svc\r\n: x\r\n\r\n", 400),
    "invalid_header_name": (b"GET / HTTP/1.1\r\nHost: svc\r\nX(A): x\r\n\r\n", 400),
    "header_without_colon": (b"GET / HTTP/1.1\r\nHost: svc\r\nX-A x\r\n\r\n", 400),
    # --- request line -------------------------------------------------------------------------
    "method_not_token": (b"G(T / HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "method_unknown": (b"FOO / HTTP/1.1\r\nHost: svc\r\n\r\n", 501),
    "method_lowercase": (b"get / HTTP/1.1\r\nHost: svc\r\n\r\n", 501),
    "target_with_space": (b"GET /a b HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "target_with_ctl": (b"GET /a\x01b HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "target_high_byte": (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "target_relative": (b"GET admin HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "target_userinfo": (b"GET http://user@svc/ HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "asterisk_not_options": (b"GET * HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "double_space": (b"GET  / HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "version_http2": (b"GET / HTTP/2.0\r\nHost: svc\r\n\r\n", 400),
    "version_http12": (b"GET / HTTP/1.2\r\nHost: svc\r\n\r\n", 400),
    "version_lowercase": (b"GET / http/1.1\r\nHost: svc\r\n\r\n", 400),
    "http09_request": (b"GET /\r\n\r\n", 400),
    "connect_without_port": (b"CONNECT svc HTTP/1.1\r\nHost: svc\r\n\r\n", 400),
    "connect_with_body": (
        b"CONNECT svc:443 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "upgrade_with_body": (
        _req(b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 3\r\n", b"abc"),
        400,
    ),
    # --- Host ---------------------------------------------------------------------------------
    "no_host_http11": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    "double_host": (b"GET / HTTP/1.1\r\nHost: svc\r\nHost: evil\r\n\r\n", 400),
    # --- chunked bodies -------------------------------------------------------------------------
    "chunk_size_0x": (_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_trailing_space": (_chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_leading_space": (_chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_negative": (_chunked(b"-1\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_empty": (_chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_overflow": (_chunked(b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_size_huge_hex": (_chunked(b"fffffffffffffffff\r\nhello\r\n"), 400),
    "chunk_size_plus": (_chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_ext_bws": (_chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_ext_junk": (_chunked(b"5;@@\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_ext_empty_name": (_chunked(b"5;=x\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_ext_unterminated_quote": (_chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), 400),
    "chunk_line_too_long": (_chunked(b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk_data_without_crlf": (_chunked(b"3\r\nabcXX0\r\n\r\n"), 400),
    "chunk_data_too_long": (_chunked(b"3\r\nabcd\r\n0\r\n\r\n"), 400),
    "chunk_bare_lf": (_chunked(b"5\nhello\n0\n\n"), 400),
    "chunk_missing_final_crlf": (_chunked(b"5\r\nhello\r\n0\r\n"), 400),
    "chunk_missing_last_chunk": (_chunked(b"5\r\nhello\r\n"), 400),
    "trailer_content_length": (_chunked(b"0\r\nContent-Length: 5\r\n\r\n"), 400),
    "trailer_transfer_encoding": (_chunked(b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
    "trailer_obs_fold": (_chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    "trailer_bare_lf": (_chunked(b"0\r\nX-T: a\n\r\n"), 400),
    # --- limits -----------------------------------------------------------------------------
    "request_line_too_long": (b"GET " + _LONG_TARGET + b" HTTP/1.1\r\nHost: svc\r\n\r\n", 414),
    "header_block_too_large": (b"GET / HTTP/1.1\r\nHost: svc\r\n" + _BIG_HEADER + b"\r\n", 431),
    "too_many_headers": (
        b"GET / HTTP/1.1\r\nHost: svc\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(100))
        + b"\r\n",
        431,
    ),
    "endless_request_line": (b"GET /" + b"a" * (9 * 1024), 414),
    "endless_headers": (b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"X-A: b\r\n" * 8000, 431),
    # --- smuggling through pipelining ---------------------------------------------------------
    "pipelined_second_cl_te": (
        _GET + _req(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    "pipelined_second_bare_lf": (_GET + b"GET /admin HTTP/1.1\nHost: svc\n\n", 400),
    "pipelined_after_short_cl": (
        _req(b"Content-Length: 2\r\n", b"abGET /admin HTTP/1.1\r\n\r\n"),
        400,
    ),
    "get_body_hides_request": (
        b"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(_SMUGGLED) + _SMUGGLED,
        None,
    ),
}

NEEDS_EOF = frozenset({"chunk_missing_final_crlf", "chunk_missing_last_chunk"})

ACCEPTED_REQUESTS: dict[str, int] = {
    "ok_pipelined_three": 3,
    "pipelined_second_cl_te": 1,
    "pipelined_second_bare_lf": 1,
    "pipelined_after_short_cl": 1,
}


# ---------------------------------------------------------------------------------------------
# Mutations.

_BYTES = (
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\x00",
    b"\x0b",
    b"\x7f",
    b"\x80",
    b":",
    b",",
    b";",
    b"=",
    b'"',
    b"-",
    b"+",
    b"0",
    b"5",
    b"f",
    b"x",
    b"A",
    b"/",
)
_SNIPPETS = (
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 12\r\n",
    b"Host: evil\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"\r\n\r\n",
    b" chunked",
    b"chunked",
    _SMUGGLED,
)


_NAMES = (
    b"Host",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"X-Forwarded-For",
)
_VALUES = (
    b"chunked",
    b"CHUNKED",
    b" chunked",
    b"chunked ",
    b"gzip, chunked",
    b"0",
    b"3",
    b"5",
    b"05",
    b"5, 5",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade, close",
    b"websocket",
    b"100-continue",
    b"svc",
    b"",
)


def _edit(rng: random.Random, data: bytes) -> bytes:
    """A raw byte-level edit: flip, insert or delete."""
    if not data:
        return rng.choice(_BYTES)
    i = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        return data[:i] + rng.choice(_BYTES) + data[i + 1 :]
    if kind == 1:
        return data[:i] + bytes((rng.randrange(256),)) + data[i + 1 :]
    if kind == 2:
        return data[:i] + rng.choice(_BYTES) + data[i:]
    return data[:i] + data[i + rng.randint(1, 4) :]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(11)
    if kind <= 1:  # anywhere
        return _edit(rng, data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if kind == 2 and sep:  # the body only (chunk lines, data, trailers, pipelined requests)
        return head + sep + _edit(rng, body)
    if kind == 3:  # renumber a length or a chunk size
        digits = [i for i, c in enumerate(data) if 0x30 <= c <= 0x39]
        if digits:
            i = rng.choice(digits)
            return data[:i] + b"%x" % rng.choice((0, 1, 2, 3, 4, 5, 6, 9, 10, 16)) + data[i + 1 :]
    lines = head.split(b"\r\n")
    j = rng.randrange(len(lines))
    if kind == 4:  # duplicate a line
        lines.insert(j, lines[j])
    elif kind == 5:  # drop a line
        del lines[j]
    elif kind == 6 and len(lines) > 2:  # swap two header lines
        k = rng.randrange(1, len(lines))
        j = max(j, 1)
        lines[j], lines[k] = lines[k], lines[j]
    elif kind == 7:  # add a well-formed framing or routing field
        lines.insert(max(j, 1), rng.choice(_NAMES) + b": " + rng.choice(_VALUES))
    elif kind == 8 and j:  # give a field a new, well-formed value
        lines[j] = lines[j].partition(b":")[0] + b": " + rng.choice(_VALUES)
    elif kind == 9:  # insert a snippet at a line boundary
        lines.insert(j, rng.choice(_SNIPPETS).removesuffix(b"\r\n"))
    else:  # change the case of a line
        lines[j] = lines[j].swapcase() if rng.random() < 0.5 else lines[j].upper()
    return b"\r\n".join(lines) + sep + body


def mutations(seed: int, n: int) -> Iterator[bytes]:
    """`n` mutants (byte flips, insertions, deletions, duplicated/dropped/swapped header
    lines, injected framing headers) of the valid requests and the corpus, reproducibly."""
    rng = random.Random(seed)
    valid = list(VALID.values())
    corpus = [raw for raw, _ in CORPUS.values() if len(raw) < 4096]
    for _ in range(n):
        data = rng.choice(valid) if rng.random() < 0.7 else rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = _mutate(rng, data)
        yield data


# Responses (method of the request, raw bytes from the upstream), all acceptable.
RESPONSES: dict[str, tuple[bytes, bytes]] = {
    "content_length": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello"),
    "chunked_trailers": (
        b"POST",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    ),
    "no_content": (b"DELETE", b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"),
    "not_modified": (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    "continue_then_ok": (
        b"PUT",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ),
    "early_hints": (
        b"GET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ),
    "http10_until_close": (b"GET", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close"),
    "close_until_close": (b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"),
    "head_with_length": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    "head_with_chunked": (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "switching": (
        b"GET",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x00",
    ),
    "connect_ok": (b"CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01"),
    "connect_refused": (b"CONNECT", b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n"),
    "empty_body": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
}


def response_mutations(seed: int, n: int) -> Iterator[tuple[bytes, bytes]]:
    """`n` mutants of `RESPONSES` as (method, bytes), reproducibly."""
    rng = random.Random(seed)
    seeds = list(RESPONSES.values())
    for _ in range(n):
        method, data = rng.choice(seeds)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = _mutate(rng, data)
        yield method, data


# ---------------------------------------------------------------------------------------------
# Running a parser.


_E = TypeVar("_E")


def normalise(events: Iterable[_E]) -> list[_E]:
    """Merge adjacent body chunks: how a body is cut is not part of a verdict."""
    out: list[_E] = []
    for ev in events:
        last = out[-1] if out else None
        if isinstance(ev, bytes) and isinstance(last, bytes):
            out[-1] = cast(_E, last + ev)
        else:
            out.append(ev)
    return out


def parse(
    codec: str,
    data: bytes,
    splits: Iterable[int] = (),
    limits: Limits | None = None,
) -> tuple[list[RequestEvent], Verdict]:
    """Feed `data` (cut at `splits`) then EOF to a fresh request parser.

    Returns the normalised events and the verdict: the status of the RemoteProtocolError
    raised, or None. Any other exception propagates (it is a bug).
    """
    parser = make_request_parser("h11" if codec == "h11" else "httptools", limits or Limits())
    events: list[RequestEvent] = []
    cuts = sorted({c for c in splits if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.feed_eof()
    except RemoteProtocolError as exc:
        return normalise(events), exc.http_status
    return normalise(events), None


def parse_response(
    codec: str, method: bytes, data: bytes, splits: Iterable[int] = ()
) -> tuple[list[ResponseEvent], Verdict, bytes | None]:
    """Feed an upstream's `data` answering one `method` request (cut at `splits`), then EOF,
    to a fresh response parser.

    Returns the normalised events, the verdict (the status of the RemoteProtocolError, or
    None) and, after a protocol switch, the bytes that followed the switching head.
    """
    parser = make_response_parser("h11" if codec == "h11" else "httptools")
    parser.expect(method)
    events: list[ResponseEvent] = []
    cuts = sorted({c for c in splits if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for i, piece in enumerate(pieces):
            events += parser.feed(piece)
            if _switched(method, events):
                return normalise(events), None, parser.upgraded() + b"".join(pieces[i + 1 :])
        events += parser.feed_eof()
    except RemoteProtocolError as exc:
        return normalise(events), exc.http_status, None
    return normalise(events), None, None


def _switched(method: bytes, events: list[ResponseEvent]) -> bool:
    for ev in events:
        status = getattr(ev, "status", 0)
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            return True
    return False
