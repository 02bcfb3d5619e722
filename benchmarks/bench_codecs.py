"""Micro-benchmark of the sans-IO HTTP/1.1 codecs: µs per parse (and per serialisation).

    python -m benchmarks.bench_codecs            # both codecs, every case
    python -m benchmarks.bench_codecs --quick    # fewer rounds

Each figure is the best of several rounds (the least disturbed by other processes) of a
keep-alive parser fed one message per `feed()` call, rules pre-scan included: what the
proxy pays per request on the hot path. Not a test; no sockets.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

from pymesh.proxy.http1 import (
    Codec,
    encode_chunk,
    encode_last_chunk,
    make_request_parser,
    make_response_parser,
    serialize_request_head,
    serialize_response_head,
)

GET = (
    b"GET /api/v1/orders?id=12345&expand=items HTTP/1.1\r\n"
    b"Host: orders.default.svc.cluster.local:8080\r\n"
    b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n"
    b"X-Request-Id: 0f8fad5b-d9cb-469f-a165-70867728950e\r\n\r\n"
)
POST = (
    b"POST /api/v1/orders HTTP/1.1\r\nHost: orders:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1024\r\n\r\n" + b"x" * 1024
)
CHUNKED = (
    b"POST /upload HTTP/1.1\r\nHost: orders:8080\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(encode_chunk(b"y" * 300) for _ in range(3))
    + encode_last_chunk([(b"X-Checksum", b"abc")])
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"z"
    * 100
)
HEADERS = [
    (b"Host", b"orders.default.svc.cluster.local:8080"),
    (b"User-Agent", b"curl/8.5.0"),
    (b"Accept", b"*/*"),
    (b"X-Request-Id", b"0f8fad5b-d9cb-469f-a165-70867728950e"),
]


def _request_case(codec: Codec, data: bytes, per_feed: int = 1) -> Callable[[], object]:
    parser = make_request_parser(codec)
    blob = data * per_feed
    return lambda: parser.feed(blob)


def _response_case(codec: Codec, data: bytes) -> Callable[[], object]:
    parser = make_response_parser(codec)

    def run() -> object:
        parser.expect(b"GET")
        return parser.feed(data)

    return run


def cases(codec: Codec) -> list[tuple[str, Callable[[], object], int]]:
    """(name, callable, messages per call) for one codec."""
    return [
        (f"request GET {len(GET)} B", _request_case(codec, GET), 1),
        ("request GET x10 pipelined", _request_case(codec, GET, 10), 10),
        ("request POST 1 KiB body", _request_case(codec, POST), 1),
        ("request chunked 3x300 B", _request_case(codec, CHUNKED), 1),
        (f"response 200 {len(RESPONSE)} B", _response_case(codec, RESPONSE), 1),
    ]


def measure(fn: Callable[[], object], number: int, rounds: int) -> float:
    """Best µs per call over `rounds` rounds of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print µs per parse for each codec and case, then the serialisers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 1 s)")
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else 7
    base = 2_000 if args.quick else 20_000

    print(f"{'codec':10} {'case':28} {'µs/message':>10}")
    codecs: tuple[Codec, ...] = ("httptools", "h11")
    for codec in codecs:
        number = base if codec == "httptools" else max(200, base // 10)
        for name, fn, per_call in cases(codec):
            us = measure(fn, number, rounds) / per_call
            print(f"{codec:10} {name:28} {us:10.2f}")
    serialisers: list[tuple[str, Callable[[], object]]] = [
        ("serialize_request_head", lambda: serialize_request_head(b"GET", b"/a", HEADERS)),
        ("serialize_response_head", lambda: serialize_response_head(200, b"OK", HEADERS)),
        ("encode_chunk 1 KiB", lambda: encode_chunk(b"x" * 1024)),
    ]
    for name, fn in serialisers:
        print(f"{'shared':10} {name:28} {measure(fn, base * 5, rounds):10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
