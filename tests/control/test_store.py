"""The control-plane stores: MemoryStore and EtcdStore (against a real etcd) behave alike."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.control.conftest import EtcdServer, free_port

from pymesh.control.etcd import EtcdClient, EtcdStore, prefix_end
from pymesh.control.store import (
    EventKind,
    LeaseExpired,
    MemoryStore,
    Store,
    StoreError,
    StoreEvent,
    open_store,
)
from pymesh.errors import PymeshError

_prefixes = itertools.count()
EVENT_WAIT_S = 5.0  # etcd delivers watch events in milliseconds; this only bounds a failure


def unique_prefix() -> str:
    """A key prefix of its own per store pair, so tests share one etcd without seeing each other."""
    return f"/pymesh-test-{time.monotonic_ns()}-{next(_prefixes)}/"


def watching(store: EtcdStore) -> bool:
    """The store's watch state (a function, so mypy does not narrow it between reads)."""
    return store.watching


def etcd_store(server: EtcdServer, prefix: str, **kwargs: Any) -> EtcdStore:
    return EtcdStore([server.endpoint], prefix=prefix, **kwargs)


@pytest.fixture(params=["memory", "etcd"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A started store of each kind (etcd: a fresh prefix on the session's etcd)."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        s = etcd_store(server, unique_prefix())
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def wait_for_kind(events: AsyncIterator[StoreEvent], kind: EventKind) -> None:
    """Consume events until one of `kind` arrives (bounded in time)."""
    async with asyncio.timeout(EVENT_WAIT_S):
        async for event in events:
            if event.kind == kind:
                return
    raise AssertionError(f"subscription ended before a {kind!r} event")


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, step_s: float = 0.05
) -> float:
    """Poll `check` until true; the seconds it took. Fails after `timeout_s`."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling etcd, nothing to wait on locally
            await asyncio.sleep(step_s)
    return time.monotonic() - start


# -- config -----------------------------------------------------------------------------------


async def test_config_round_trip_with_monotonic_revisions(store: Store) -> None:
    assert await store.get_config() is None
    first = await store.put_config("kind: Mesh\nname: ä\n")
    stored = await store.get_config()
    assert stored is not None
    assert (stored.text, stored.revision) == ("kind: Mesh\nname: ä\n", first)
    await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)  # other writes
    second = await store.put_config("kind: Mesh\nname: b\n")
    assert second > first
    stored = await store.get_config()
    assert stored is not None
    assert (stored.text, stored.revision) == ("kind: Mesh\nname: b\n", second)


# -- endpoints --------------------------------------------------------------------------------


async def test_endpoints_register_and_list_sorted(store: Store) -> None:
    assert await store.endpoints() == {}
    await store.register_endpoint("default/orders", "127.0.0.1:9002", 30)
    await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
    await store.register_endpoint("shop/pay", "[::1]:7000", 30)
    assert await store.endpoints() == {
        "default/orders": ("127.0.0.1:9001", "127.0.0.1:9002"),
        "shop/pay": ("[::1]:7000",),
    }


async def test_release_removes_at_once(store: Store) -> None:
    lease = await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
    await store.register_endpoint("default/orders", "127.0.0.1:9002", 30)
    await lease.release()
    assert await store.endpoints() == {"default/orders": ("127.0.0.1:9002",)}
    await lease.release()  # twice is harmless
    with pytest.raises(LeaseExpired):
        await lease.keepalive()


async def test_lease_expiry_removes_endpoint_after_ttl(store: Store) -> None:
    lease = await store.register_endpoint("default/orders", "127.0.0.1:9001", 1.0)
    assert lease.ttl_s >= 1.0

    async def gone() -> bool:
        return await store.endpoints() == {}

    assert not await gone()
    # etcd checks expiry twice a second: allow ttl + 1.5 s, and never much before the ttl
    took = await wait_until(gone, timeout_s=lease.ttl_s + 1.5)
    assert took >= lease.ttl_s - 0.2
    with pytest.raises(LeaseExpired):
        await lease.keepalive()


async def test_keepalive_keeps_endpoint_past_ttl(store: Store) -> None:
    lease = await store.register_endpoint("default/orders", "127.0.0.1:9001", 1.0)
    deadline = time.monotonic() + 2.5 * lease.ttl_s
    while time.monotonic() < deadline:
        await asyncio.sleep(lease.ttl_s / 4)
        await lease.keepalive()
        assert await store.endpoints() == {"default/orders": ("127.0.0.1:9001",)}


async def test_reregistering_a_pair_supersedes_the_old_lease(store: Store) -> None:
    old = await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
    new = await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
    await old.release()  # e.g. a stale session's cleanup: the endpoint is the new lease's now
    assert await store.endpoints() == {"default/orders": ("127.0.0.1:9001",)}
    await new.release()
    assert await store.endpoints() == {}


@pytest.mark.parametrize(
    ("service", "address", "ttl_s"),
    [
        ("orders", "127.0.0.1:1", 5),
        ("default/orders/x", "127.0.0.1:1", 5),
        ("default/", "127.0.0.1:1", 5),
        ("default/or ders", "127.0.0.1:1", 5),
        ("default/orders", "127.0.0.1", 5),
        ("default/orders", "a/b:1", 5),
        ("default/orders", "host:99999", 5),
        ("default/orders", "127.0.0.1:1", 0),
        ("default/orders", "127.0.0.1:1", float("inf")),
    ],
)
async def test_register_rejects_bad_arguments(
    service: str, address: str, ttl_s: float, store: Store
) -> None:
    with pytest.raises(ValueError, match=r"service|address|ttl"):
        await store.register_endpoint(service, address, ttl_s)
    assert await store.endpoints() == {}


# -- revocations ------------------------------------------------------------------------------


async def test_revocations_kept_until_expiry(store: Store) -> None:
    now = time.time()
    await store.revoke_token("tok-long", now + 600)
    await store.revoke_token("tok-past", now - 1)  # already expired: nothing to keep
    await store.revoke_token("tok-short", now + 1.0)
    assert await store.revoked() == {"tok-long", "tok-short"}

    async def short_gone() -> bool:
        return await store.revoked() == {"tok-long"}

    await wait_until(short_gone, timeout_s=3.0)
    assert time.time() >= now + 1.0  # never dropped before it expired
    with pytest.raises(ValueError, match="token id"):
        await store.revoke_token("a/b", now + 60)


# -- subscriptions ----------------------------------------------------------------------------


async def test_subscribe_sees_every_kind_of_change(store: Store) -> None:
    events = store.subscribe()
    await store.put_config("a: 1\n")
    await wait_for_kind(events, "config")
    lease = await store.register_endpoint("default/orders", "127.0.0.1:9001", 1.0)
    await wait_for_kind(events, "endpoints")
    await store.revoke_token("tok", time.time() + 600)
    await wait_for_kind(events, "revocations")
    await lease.release()
    await wait_for_kind(events, "endpoints")
    await store.register_endpoint("default/orders", "127.0.0.1:9002", 1.0)
    await wait_for_kind(events, "endpoints")
    async with asyncio.timeout(EVENT_WAIT_S):  # the expiry is a change too
        await wait_for_kind(events, "endpoints")
    assert await store.endpoints() == {}


async def test_subscription_ends_when_the_store_closes(store: Store) -> None:
    events = store.subscribe()
    got_one = asyncio.Event()
    ended = asyncio.Event()

    async def consume() -> None:
        async for event in events:
            assert event == StoreEvent("config")
            got_one.set()
        ended.set()

    async with asyncio.timeout(EVENT_WAIT_S), asyncio.TaskGroup() as tg:
        tg.create_task(consume())
        await store.put_config("a: 1\n")
        await got_one.wait()
        await store.close()
    assert ended.is_set()
    late = [e async for e in store.subscribe()]  # subscribing to a closed store: ends at once
    assert late == []
    with pytest.raises(StoreError, match="closed"):
        await store.get_config()


async def _true_if(value: bool) -> bool:
    return value


async def test_memory_subscription_coalesces_instead_of_queueing() -> None:
    async with MemoryStore() as store:
        events = store.subscribe()
        for i in range(1000):
            await store.put_config(f"n: {i}\n")
            await store.revoke_token(f"tok{i}", time.time() + 600)
        got: list[str] = []
        while len(got) < 10:
            try:
                async with asyncio.timeout(0.2):
                    event = await anext(events)
            except TimeoutError:
                break
            got.append(event.kind)
        assert got == ["config", "revocations"]  # one pending flag per kind, never 2000 items


# -- etcd: replicas, restarts, failures -------------------------------------------------------


async def test_two_replicas_see_each_others_changes(etcd: EtcdServer) -> None:
    prefix = unique_prefix()
    # a short idle probe so the watch's liveness check runs during the test
    async with (
        etcd_store(etcd, prefix, watch_idle_probe_s=0.3) as a,
        etcd_store(etcd, prefix, watch_idle_probe_s=0.3) as b,
    ):
        events_b = b.subscribe()
        await asyncio.sleep(0.8)  # idle: the probe runs and must not break the watch
        assert b.watching

        revision = await a.put_config("from: a\n")
        await wait_for_kind(events_b, "config")
        assert await b.get_config() is not None
        stored = await b.get_config()
        assert stored is not None
        assert (stored.text, stored.revision) == ("from: a\n", revision)

        lease = await a.register_endpoint("default/orders", "127.0.0.1:9001", 1.0)
        await wait_for_kind(events_b, "endpoints")
        assert await b.endpoints() == {"default/orders": ("127.0.0.1:9001",)}

        await a.revoke_token("tok", time.time() + 600)
        await wait_for_kind(events_b, "revocations")
        assert await b.revoked() == {"tok"}

        # a sidecar's session moves to replica b: b refreshes the endpoint a registered
        moved = await b.register_endpoint("default/orders", "127.0.0.1:9001", 1.0)
        await lease.release()  # a's stale cleanup must not remove it
        assert await a.endpoints() == {"default/orders": ("127.0.0.1:9001",)}
        await wait_for_kind(events_b, "endpoints")
        # and when nobody keeps it alive, it expires for both replicas
        assert moved.ttl_s >= 1.0
        await wait_for_kind(events_b, "endpoints")
        assert await a.endpoints() == {}
        assert await b.endpoints() == {}


class Gate:
    """A loopback TCP relay to etcd that can refuse new connections (and cut open ones)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open = True
        self.blackhole = False  # relay nothing, close nothing: a silent partition
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return (host, port)

    async def __aenter__(self) -> Gate:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def cut(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not self.blackhole:
                        dst.write(data)
                        await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, up_writer))
            tg.create_task(pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_watch_resumes_after_etcd_restart_without_losing_changes(
    etcd_factory: Callable[[], EtcdServer],
) -> None:
    server = etcd_factory()
    prefix = unique_prefix()
    async with (
        Gate(server.endpoint) as gate,
        EtcdStore([gate.endpoint], prefix=prefix, backoff_max_s=0.3) as store,
    ):
        events = store.subscribe()
        await store.put_config("before: 1\n")
        await wait_for_kind(events, "config")
        assert watching(store)

        gate.open = False  # this replica cannot reconnect until the gate opens again
        server.stop()
        await wait_until(lambda: _true_if(not watching(store)), timeout_s=EVENT_WAIT_S)
        with pytest.raises(StoreError, match="unreachable"):
            await store.get_config()

        server.start()  # same data dir and ports
        async with etcd_store(server, prefix) as other:  # another replica changes things
            revision = await other.put_config("after: 1\n")
            await other.revoke_token("while-away", time.time() + 60)
        await asyncio.sleep(0.5)  # several reconnect attempts, all refused
        assert not watching(store)

        gate.open = True
        await wait_for_kind(events, "config")  # replayed from the last revision seen
        await wait_for_kind(events, "revocations")
        assert watching(store)
        stored = await store.get_config()  # stale pooled connections are replaced
        assert stored is not None
        assert (stored.text, stored.revision) == ("after: 1\n", revision)
        await store.register_endpoint("default/orders", "127.0.0.1:9001", 5)
        await wait_for_kind(events, "endpoints")  # and live changes still arrive


async def test_silent_partition_is_detected_by_the_idle_probe(
    etcd: EtcdServer,
) -> None:
    prefix = unique_prefix()
    async with (
        Gate(etcd.endpoint) as gate,
        EtcdStore(
            [gate.endpoint],
            prefix=prefix,
            watch_idle_probe_s=0.3,
            request_timeout_s=0.5,
            backoff_max_s=0.3,
        ) as store,
    ):
        events = store.subscribe()
        await wait_until(lambda: _true_if(watching(store)), timeout_s=EVENT_WAIT_S)
        gate.blackhole = True  # the watch's TCP connection stays up but nothing gets through
        gate.open = False
        took = await wait_until(lambda: _true_if(not watching(store)), timeout_s=EVENT_WAIT_S)
        assert took < 2.0  # idle probe (0.3 s) + its timeout (0.5 s), not a TCP timeout
        async with etcd_store(etcd, prefix) as other:
            await other.put_config("during: partition\n")
        gate.blackhole = False
        gate.open = True
        await wait_for_kind(events, "config")
        stored = await store.get_config()
        assert stored is not None
        assert stored.text == "during: partition\n"


async def test_a_replaced_etcd_is_watched_from_its_own_history(
    etcd_factory: Callable[[], EtcdServer],
) -> None:
    server = etcd_factory()
    prefix = unique_prefix()
    async with etcd_store(server, prefix, backoff_max_s=0.3) as store:
        seen = store.subscribe()
        for i in range(5):
            await store.put_config(f"n: {i}\n")
        await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
        await wait_for_kind(seen, "endpoints")  # in revision order: the whole history was seen
        await seen.aclose()
        server.stop()
        shutil.rmtree(server.data_dir)  # a new, empty etcd on the same address
        server.start()  # blocks the loop: the watch cannot reconnect before we subscribe
        events = store.subscribe()
        await wait_for_kind(events, "config")  # "everything may have changed: re-read"
        async with etcd_store(server, prefix) as other:
            revision = await other.put_config("fresh: 1\n")
        assert revision < 5
        await wait_for_kind(events, "config")  # and later changes are seen again
        stored = await store.get_config()
        assert stored is not None
        assert (stored.text, stored.revision) == ("fresh: 1\n", revision)


async def test_dead_port_fails_fast_with_store_error() -> None:
    store = EtcdStore([("127.0.0.1", free_port())])
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"unreachable.*connect failed"):
        await store.start()
    assert time.monotonic() - start < 1.0
    await store.close()
    assert issubclass(StoreError, PymeshError)


async def test_silent_server_times_out_with_store_error() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        store = EtcdStore([("127.0.0.1", port)], request_timeout_s=0.3)
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"no answer within 0\.3s"):
            await store.start()
        assert time.monotonic() - start < 1.5
        assert accepted
        await store.close()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_endpoints_are_tried_in_order(etcd: EtcdServer) -> None:
    dead = ("127.0.0.1", free_port())
    async with EtcdStore([dead, etcd.endpoint], prefix=unique_prefix()) as store:
        revision = await store.put_config("x: 1\n")
        stored = await store.get_config()
        assert stored is not None
        assert stored.revision == revision
        assert store.client.endpoints[0] == dead


async def test_open_store_etcd_uses_the_documented_key_layout(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.endpoint])
    try:
        await client.delete_range(b"/pymesh/", prefix_end(b"/pymesh/"))
        store = open_store(f"{etcd.url}")
        assert isinstance(store, EtcdStore)
        async with store:
            await store.put_config("kind: Mesh\n")
            before = time.time()
            await store.register_endpoint("default/orders", "127.0.0.1:9001", 30)
            await store.revoke_token("tok-1", time.time() + 60)
        result = await client.range(b"/pymesh/", prefix_end(b"/pymesh/"))
        layout = {kv.key: kv for kv in result.kvs}
        assert sorted(layout) == [
            b"/pymesh/config",
            b"/pymesh/endpoints/default/orders/127.0.0.1:9001",
            b"/pymesh/revoked/tok-1",
        ]
        assert layout[b"/pymesh/config"].value == b"kind: Mesh\n"
        assert layout[b"/pymesh/config"].lease == 0
        endpoint = layout[b"/pymesh/endpoints/default/orders/127.0.0.1:9001"]
        assert endpoint.lease != 0
        assert json.loads(endpoint.value)["registered_at"] >= before - 1
        assert layout[b"/pymesh/revoked/tok-1"].lease != 0
    finally:
        await client.delete_range(b"/pymesh/", prefix_end(b"/pymesh/"))
        await client.close()


async def test_etcd_minimum_lease_ttl_is_reported(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.endpoint])
    try:
        lease_id, granted = await client.lease_grant(1)
        assert granted == 1  # the test etcd's floor (election timeout 250 ms); 2 by default
        assert await client.lease_keepalive(lease_id) == 1
        assert await client.lease_revoke(lease_id)
        assert await client.lease_keepalive(lease_id) == 0
        assert not await client.lease_revoke(lease_id)
    finally:
        await client.close()


async def test_etcd_response_size_is_bounded(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.endpoint])
    try:
        await client.put(b"/pymesh-test-big", b"x" * 4096)
        with pytest.raises(StoreError, match="larger than 1024 bytes"):
            await client.call("/v3/kv/range", {"key": "L3B5bWVzaC10ZXN0LWJpZw=="}, max_bytes=1024)
        assert (await client.range(b"/pymesh-test-big")).kvs[0].value == b"x" * 4096
    finally:
        await client.delete_range(b"/pymesh-test-big")
        await client.close()


# -- URLs -------------------------------------------------------------------------------------


def test_open_store_parses_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    store = open_store("etcd://10.0.0.5:2379,etcd-2:2380,[::1]:2379")
    assert isinstance(store, EtcdStore)
    assert store.client.endpoints == (("10.0.0.5", 2379), ("etcd-2", 2380), ("::1", 2379))


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory",
        "memory://x",
        "redis://127.0.0.1:6379",
        "etcd://",
        "etcd://host",
        "etcd://host:",
        "etcd://:2379",
        "etcd://host:0",
        "etcd://host:65536",
        "etcd://host:2379/prefix",
        "etcd://user@host:2379",
        "etcd://::1:2379",
        "etcd://host:1,,host:2",
        "etcd://http://host:2379",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="store URL") as info:
        open_store(url)
    assert repr(url) in str(info.value)
