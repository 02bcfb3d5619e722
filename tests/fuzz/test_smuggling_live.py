"""The smuggling corpus and >= 10,000 seeded mutations against live listeners.

Two sidecars, one per HTTP/1.1 codec, each in front of its own recording upstream. Every input
is sent on a fresh connection (then half-closed); both codecs must give the same sequence of
statuses, and whenever the proxy rejects an input as malformed, its upstream must have received
zero bytes for it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable

import pytest
from tests.fuzz.smuggling_corpus import CORPUS, mutations
from tests.helpers import Backend, mesh_for, sidecar

from pymesh.proxy.sidecar import Sidecar

N_MUTATIONS = int(os.environ.get("PYMESH_FUZZ_MUTATIONS", "10000"))
_STATUS = re.compile(rb"(?:\A|\n)HTTP/1\.[01] (\d{3}) ")
_REJECTS = (b"bad_request", b"uri_too_long", b"headers_too_large", b"not_implemented")


async def _send(address: tuple[str, int], data: bytes) -> bytes:
    r, w = await asyncio.open_connection(*address)
    try:
        w.write(data)
        w.write_eof()
        out = bytearray()
        async with asyncio.timeout(5):
            while chunk := await r.read(65536):
                out += chunk
        return bytes(out)
    except ConnectionError:
        return b"<reset>"
    finally:
        w.close()


def _verdict(out: bytes) -> tuple[tuple[int, ...], bool]:
    statuses = tuple(s for m in _STATUS.finditer(out) if (s := int(m.group(1))) >= 200)
    rejected = any(b"x-pymesh-error: " + code in out.lower() for code in _REJECTS)
    return statuses, rejected


async def _run_all(
    sc: Sidecar, app: Backend, inputs: Iterable[bytes]
) -> list[tuple[tuple[int, ...], bool, int]]:
    out = []
    for data in inputs:
        before = app.raw_bytes
        reply = await _send(sc.inbound_address, data)
        statuses, rejected = _verdict(reply)
        out.append((statuses, rejected, app.raw_bytes - before))
    return out


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_corpus_and_mutations_live_both_codecs_agree() -> None:
    names = list(CORPUS)
    inputs = [CORPUS[n][0] for n in names] + list(mutations(20261125, N_MUTATIONS))
    async with Backend() as app1, Backend() as app2:
        m1 = mesh_for({"svc": ([(80, "http")], [])})
        async with (
            sidecar(m1, "svc", app=app1.address, http1_codec="httptools") as s1,
            sidecar(m1, "svc", app=app2.address, http1_codec="h11") as s2,
        ):
            r1, r2 = await asyncio.gather(_run_all(s1, app1, inputs), _run_all(s2, app2, inputs))
    mismatches = [
        (i, inputs[i][:200], a, b)
        for i, (a, b) in enumerate(zip(r1, r2, strict=True))
        if a[:2] != b[:2]
    ]
    assert not mismatches, mismatches[:5]
    leaks = [
        (i, inputs[i % len(inputs)][:300], a)
        for i, a in enumerate(r1 + r2)
        if a[1] and len(a[0]) <= 1 and a[2] != 0
    ]  # rejected before any response
    assert not leaks, leaks[:5]
    # the named corpus: the expected verdict, live
    for i, name in enumerate(names):
        expected = CORPUS[name][1]
        statuses, rejected, upstream = r1[i]
        if expected is None:
            assert not rejected, (name, statuses)
            assert statuses and all(s == 200 for s in statuses), (name, statuses)
        else:
            assert rejected and statuses[-1:] == (expected,), (name, statuses)
            assert upstream == 0, name
    assert sum(1 for s in r1 if s[1]) > 1000  # the mutations really exercise the rejects
