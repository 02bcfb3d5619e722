"""Differential fuzzing of the two HTTP/1.1 codecs: the named smuggling corpus, then seeded
mutations. Both codecs must agree on every input (same events, or the same error status), the
verdict must not depend on how the bytes are split, and nothing but RemoteProtocolError may
escape a parser (any other exception fails the test as an error)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz.smuggling_corpus import (
    ACCEPTED_REQUESTS,
    CORPUS,
    NEEDS_EOF,
    RESPONSES,
    VALID,
    mutations,
    parse,
    parse_response,
    response_mutations,
)

from pymesh.errors import RemoteProtocolError
from pymesh.proxy.events import EndOfMessage, ResponseHead
from pymesh.proxy.http1 import Codec, make_request_parser

CODECS: tuple[Codec, ...] = ("httptools", "h11")
REQUEST_MUTANTS = 20_000
SPLIT_MUTANTS = 3_000
RESPONSE_MUTANTS = 6_000


def test_corpus_is_large_and_named() -> None:
    assert len(CORPUS) >= 40
    verdicts = Counter(v for _, v in CORPUS.values())
    assert verdicts[None] >= 10 and verdicts[400] >= 30 and verdicts[501] >= 5
    assert verdicts[414] and verdicts[431]
    assert set(NEEDS_EOF) <= set(CORPUS) and set(ACCEPTED_REQUESTS) <= set(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_verdict_on_both_codecs(name: str) -> None:
    data, expected = CORPUS[name]
    fast = parse("httptools", data)
    slow = parse("h11", data)
    assert fast[1] == expected, f"{name}: httptools says {fast[1]}, expected {expected}"
    assert slow == fast, f"{name}: the codecs disagree"
    accepted = sum(isinstance(e, EndOfMessage) for e in fast[0])
    assert accepted == ACCEPTED_REQUESTS.get(name, 1 if expected is None else 0)


@pytest.mark.parametrize("name", sorted(NEEDS_EOF))
def test_incomplete_cases_get_their_verdict_at_eof(name: str) -> None:
    data, expected = CORPUS[name]
    for codec in CODECS:
        parser = make_request_parser(codec)
        parser.feed(data)  # no verdict yet: the message may still complete
        with pytest.raises(RemoteProtocolError) as err:
            parser.feed_eof()
        assert err.value.http_status == expected


def test_seeded_mutations_agree() -> None:
    verdicts: Counter[int | None] = Counter()
    for i, data in enumerate(mutations(seed=20240601, n=REQUEST_MUTANTS)):
        fast = parse("httptools", data)
        slow = parse("h11", data)
        assert fast == slow, f"mutant #{i} {data[:300]!r}: {fast[1]} vs {slow[1]}"
        verdicts[fast[1]] += 1
    # The generator must keep producing a mix, or this test silently stops testing parsing.
    assert verdicts[None] > REQUEST_MUTANTS // 6, verdicts
    assert verdicts[400] > REQUEST_MUTANTS // 3, verdicts
    assert verdicts[501] > 50 and verdicts[431] > 0, verdicts


def test_mutations_are_deterministic() -> None:
    assert list(mutations(7, 50)) == list(mutations(7, 50))
    assert list(mutations(7, 50)) != list(mutations(8, 50))


def test_seeded_mutations_do_not_depend_on_splits() -> None:
    rng = random.Random(99)
    for i, data in enumerate(mutations(seed=31337, n=SPLIT_MUTANTS)):
        codec = ("httptools", "h11")[i % 2]
        whole = parse(codec, data)
        if i % 10 == 0:
            cuts: list[int] = list(range(1, len(data)))  # byte by byte
        else:
            cuts = [rng.randrange(1, max(2, len(data))) for _ in range(rng.randint(1, 6))]
        assert parse(codec, data, cuts) == whole, f"mutant #{i} {data[:300]!r} cut at {cuts[:8]}"


def test_response_corpus_is_accepted_identically() -> None:
    for name, (method, data) in RESPONSES.items():
        fast = parse_response("httptools", method, data)
        assert fast[1] is None, name
        assert parse_response("h11", method, data) == fast, name
        assert any(isinstance(e, ResponseHead) for e in fast[0])


def test_seeded_response_mutations_agree() -> None:
    rng = random.Random(5)
    verdicts: Counter[int | None] = Counter()
    for i, (method, data) in enumerate(response_mutations(seed=4242, n=RESPONSE_MUTANTS)):
        fast = parse_response("httptools", method, data)
        slow = parse_response("h11", method, data)
        assert fast == slow, f"mutant #{i} {method!r} {data[:300]!r}: {fast[1]} vs {slow[1]}"
        verdicts[fast[1]] += 1
        if i % 4 == 0:
            cuts = [rng.randrange(1, max(2, len(data))) for _ in range(3)]
            assert parse_response("httptools", method, data, cuts) == fast, f"split #{i}"
    assert set(verdicts) == {None, 502}
    assert verdicts[None] > RESPONSE_MUTANTS // 6, verdicts


_GARBAGE = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_GARBAGE
@given(
    prefix=st.sampled_from([b"", *VALID.values()]),
    junk=st.binary(max_size=300),
    codec=st.sampled_from(["httptools", "h11"]),
)
def test_arbitrary_bytes_only_raise_remote_protocol_errors(
    prefix: bytes, junk: bytes, codec: str
) -> None:
    events, verdict = parse(codec, prefix + junk)
    assert verdict in (None, 400, 414, 431, 501)
    other = "h11" if codec == "httptools" else "httptools"
    assert parse(other, prefix + junk) == (events, verdict)


@_GARBAGE
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"CONNECT"]),
    junk=st.binary(max_size=300),
    status=st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b""]),
)
def test_arbitrary_response_bytes_only_raise_remote_protocol_errors(
    method: bytes, junk: bytes, status: bytes
) -> None:
    fast = parse_response("httptools", method, status + junk)
    assert fast[1] in (None, 502)
    assert parse_response("h11", method, status + junk) == fast
