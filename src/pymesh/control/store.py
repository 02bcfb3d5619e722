"""Control-plane state: the applied config, live endpoints (with leases), revoked tokens.

Every control-plane replica keeps its state behind one `Store`:

- `MemoryStore` (`memory://`, the default): one process, nothing shared. Leases and
  revocations expire on loop timers (`call_later`), never by polling.
- `EtcdStore` (`etcd://HOST:PORT[,HOST:PORT...]`, in `pymesh.control.etcd`): several replicas
  share one etcd, so a sidecar may connect to any of them; every replica sees every change
  through one watch.

`subscribe()` tells a replica *that* something of a kind changed (config, endpoints,
revocations), never what: the subscriber re-reads. Notifications coalesce per subscriber (at
most one pending per kind), so a slow subscriber costs three flags, never a queue.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, Self, get_args

from pymesh.errors import PymeshError

__all__ = [
    "EndpointLease",
    "EventKind",
    "LeaseExpired",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoreEvent",
    "StoredConfig",
    "open_store",
]

EventKind = Literal["config", "endpoints", "revocations"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)

MAX_TOKEN_ID_LEN = 256


class StoreError(PymeshError):
    """The store failed: unreachable, timed out, refused the request, or a lease is gone.

    Blame: the backing store (or the network to it), except where the message says a lease
    expired or was released — then the caller's keepalive came too late.
    """


class LeaseExpired(StoreError):
    """`keepalive()` on a lease that expired or was released: register again."""


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """The whole applied config as YAML text, and the revision it was stored at."""

    text: str
    revision: int


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """Something of `kind` changed (here or on another replica); re-read it."""

    kind: EventKind


class EndpointLease(Protocol):
    """A registered endpoint, alive while its owner keeps the lease alive."""

    @property
    def ttl_s(self) -> float:
        """The lease's TTL as granted (etcd rounds up to whole seconds and a minimum)."""
        ...

    async def keepalive(self) -> None:
        """Refresh the TTL.

        Raises `LeaseExpired` (a `StoreError`) if the lease expired or was released, and
        `StoreError` if the store could not be reached.
        """
        ...

    async def release(self) -> None:
        """Remove the endpoint now (unless a later registration of the same pair owns it)."""
        ...


class Store(Protocol):
    """The control plane's shared state (see the module docstring)."""

    async def start(self) -> None:
        """Connect (and start watching); raises `StoreError` if the store is unreachable."""
        ...

    async def close(self) -> None:
        """Stop watching and end every subscription; leases are left to expire."""
        ...

    async def get_config(self) -> StoredConfig | None:
        """The applied config, or None if none was ever stored."""
        ...

    async def put_config(self, text: str) -> int:
        """Store the whole config; returns its new revision (monotonic, maybe with gaps)."""
        ...

    async def register_endpoint(self, service: str, address: str, ttl_s: float) -> EndpointLease:
        """Register `address` ("host:port") for `service` ("ns/name") under a fresh lease."""
        ...

    async def endpoints(self) -> dict[str, tuple[str, ...]]:
        """Live endpoints: "ns/name" -> sorted addresses."""
        ...

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        """Revoke a token until `expires_at` (unix time); later it may be forgotten."""
        ...

    async def revoked(self) -> frozenset[str]:
        """Ids of the revoked tokens that have not expired yet."""
        ...

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Coalesced change notifications; the iterator ends when the store closes."""
        ...


# -- validation shared by both stores ----------------------------------------------------------


def check_service(service: str) -> tuple[str, str]:
    """Split "ns/name", rejecting anything that would not be one key segment each."""
    ns, sep, name = service.partition("/")
    if not sep or not ns or not name or "/" in name or _bad_text(service):
        raise ValueError(f"service must be 'namespace/name', got {service!r}")
    return ns, name


def check_address(address: str) -> None:
    """Accept "host:port" (IPv6 as "[addr]:port"); no slashes or whitespace."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or _bad_text(address) or not port.isdigit():
        raise ValueError(f"address must be 'host:port', got {address!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"address port out of range in {address!r}")


def check_token_id(token_id: str) -> None:
    """A token id is one printable key segment of at most MAX_TOKEN_ID_LEN characters."""
    if not token_id or len(token_id) > MAX_TOKEN_ID_LEN or "/" in token_id or _bad_text(token_id):
        raise ValueError(f"token id must be 1-{MAX_TOKEN_ID_LEN} printable characters, no '/'")


def check_ttl(ttl_s: float) -> None:
    """A lease TTL must be a positive, finite number of seconds."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")


def _bad_text(s: str) -> bool:
    return not s.isprintable() or any(c.isspace() for c in s)


# -- fan-out of coalesced notifications ---------------------------------------------------------


class Subscription:
    """One subscriber's view of a `Broadcaster`: pending kinds (a set, so coalesced)."""

    __slots__ = ("__weakref__", "_closed", "_hub", "_pending", "_wakeup")

    def __init__(self, hub: Broadcaster) -> None:
        self._hub = hub
        self._pending: set[EventKind] = set()
        self._wakeup = asyncio.Event()
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StoreEvent:
        while not self._closed:
            for kind in EVENT_KINDS:  # fixed order: config before endpoints before revocations
                if kind in self._pending:
                    self._pending.discard(kind)
                    return StoreEvent(kind)
            self._wakeup.clear()
            await self._wakeup.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop receiving notifications (also happens when the store closes)."""
        self._end()
        self._hub.discard(self)

    def _notify(self, kind: EventKind) -> None:
        self._pending.add(kind)
        self._wakeup.set()

    def _end(self) -> None:
        self._closed = True
        self._pending.clear()
        self._wakeup.set()


class Broadcaster:
    """Publishes kinds to every live subscription; forgotten subscriptions are dropped (weak)."""

    __slots__ = ("_closed", "_subs")

    def __init__(self) -> None:
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    def subscribe(self) -> Subscription:
        """A new subscription; already ended if the broadcaster is closed."""
        sub = Subscription(self)
        if self._closed:
            sub._end()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, *kinds: EventKind) -> None:
        """Mark `kinds` pending for every subscriber."""
        for sub in list(self._subs):
            for kind in kinds:
                sub._notify(kind)

    def discard(self, sub: Subscription) -> None:
        """Forget `sub`."""
        self._subs.discard(sub)

    def close(self) -> None:
        """End every subscription, now and for later subscribers."""
        self._closed = True
        for sub in list(self._subs):
            sub._end()
        self._subs = weakref.WeakSet()


# -- the in-memory store ------------------------------------------------------------------------


class _MemoryLease:
    """A lease with its own loop timer; it owns the endpoint until superseded."""

    __slots__ = ("_handle", "_key", "_store", "_ttl_s", "alive")

    def __init__(self, store: MemoryStore, key: tuple[str, str], ttl_s: float) -> None:
        self._store = store
        self._key = key
        self._ttl_s = ttl_s
        self.alive = True
        self._handle = asyncio.get_running_loop().call_later(ttl_s, self._expire)

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def keepalive(self) -> None:
        if not self.alive:
            raise LeaseExpired(f"lease for {self._key[0]} {self._key[1]} expired or was released")
        self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self._ttl_s, self._expire)

    async def release(self) -> None:
        self._handle.cancel()
        self._expire()

    def _expire(self) -> None:
        if self.alive:
            self.alive = False
            self._store._drop_endpoint(self._key, self)


class MemoryStore:
    """The default store: this process only. Timers expire leases; nothing polls."""

    def __init__(self) -> None:
        self._config: StoredConfig | None = None
        self._revision = 0
        self._endpoints: dict[tuple[str, str], _MemoryLease] = {}
        self._revoked: dict[str, asyncio.TimerHandle] = {}
        self._hub = Broadcaster()
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Nothing to connect to."""
        self._check_open()

    async def close(self) -> None:
        """Cancel every timer and end every subscription."""
        if self._closed:
            return
        self._closed = True
        for lease in self._endpoints.values():
            lease._handle.cancel()
            lease.alive = False
        self._endpoints.clear()
        for handle in self._revoked.values():
            handle.cancel()
        self._revoked.clear()
        self._hub.close()

    async def get_config(self) -> StoredConfig | None:
        """The last config put, or None."""
        self._check_open()
        return self._config

    async def put_config(self, text: str) -> int:
        """Store `text`; revisions count up from 1."""
        self._check_open()
        self._revision += 1
        self._config = StoredConfig(text, self._revision)
        self._hub.publish("config")
        return self._revision

    async def register_endpoint(self, service: str, address: str, ttl_s: float) -> EndpointLease:
        """Register under a new lease of exactly `ttl_s` (a re-registration supersedes)."""
        self._check_open()
        check_service(service)
        check_address(address)
        check_ttl(ttl_s)
        key = (service, address)
        lease = _MemoryLease(self, key, ttl_s)
        self._endpoints[key] = lease  # the earlier lease (if any) now owns nothing
        self._hub.publish("endpoints")
        return lease

    async def endpoints(self) -> dict[str, tuple[str, ...]]:
        """Live endpoints by service, addresses sorted."""
        self._check_open()
        out: dict[str, list[str]] = {}
        for service, address in self._endpoints:
            out.setdefault(service, []).append(address)
        return {s: tuple(sorted(a)) for s, a in sorted(out.items())}

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        """Keep `token_id` until `expires_at` (the last call for a token wins; a past
        `expires_at` is ignored)."""
        self._check_open()
        check_token_id(token_id)
        remaining = expires_at - time.time()
        if remaining <= 0:
            return  # already expired: nothing to remember
        old = self._revoked.pop(token_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._revoked[token_id] = loop.call_later(remaining, self._drop_revocation, token_id)
        self._hub.publish("revocations")

    async def revoked(self) -> frozenset[str]:
        """Revoked, unexpired token ids."""
        self._check_open()
        return frozenset(self._revoked)

    def subscribe(self) -> Subscription:
        """Coalesced notifications of every change to this store."""
        return self._hub.subscribe()

    def _drop_endpoint(self, key: tuple[str, str], lease: _MemoryLease) -> None:
        if self._endpoints.get(key) is lease:
            del self._endpoints[key]
            self._hub.publish("endpoints")

    def _drop_revocation(self, token_id: str) -> None:
        if self._revoked.pop(token_id, None) is not None:
            self._hub.publish("revocations")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")


# -- URLs -----------------------------------------------------------------------------------


def parse_etcd_endpoints(url: str) -> tuple[tuple[str, int], ...]:
    """`etcd://HOST:PORT[,HOST:PORT...]` -> ((host, port), ...); IPv6 hosts in brackets."""
    rest = url[len("etcd://") :]
    if not rest:
        raise ValueError(f"store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    out: list[tuple[str, int]] = []
    for item in rest.split(","):
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            bad_host = not host or ":" not in host
        else:
            bad_host = not host or ":" in host
        if (
            not sep
            or bad_host
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or any(c in host for c in "/?#@[] ")
        ):
            raise ValueError(
                f"store URL {url!r}: bad endpoint {item!r} "
                "(expected HOST:PORT, [IPV6]:PORT; no path, user or scheme per endpoint)"
            )
        out.append((host, int(port)))
    return tuple(out)


def open_store(url: str) -> Store:
    """A store for `url`: `memory://` or `etcd://HOST:PORT[,HOST:PORT...]` (not started yet).

    With several etcd endpoints, requests go to the first that answers, in order.
    Raises `ValueError` for anything else.
    """
    if url == "memory://":
        return MemoryStore()
    if url.startswith("etcd://"):
        from pymesh.control.etcd import EtcdStore  # etcd.py imports this module

        return EtcdStore(parse_etcd_endpoints(url))
    raise ValueError(
        f"unknown store URL {url!r} (expected memory:// or etcd://HOST:PORT[,HOST:PORT...])"
    )
