"""A sidecar's live credentials: its identity, the SSLContexts built from it, and renewal.

`Credentials` holds the current `Identity` and the contexts made from it (one server context,
one client context per ALPN offer). `update()` builds the new contexts first and then swaps
references, so a new connection always gets a complete, current set while connections already
open keep the context they were made with (rotation without a cliff).

Where identities come from (`IdentitySource`):
- `StaticSource`: a fixed identity (tests, embedding);
- `DirSource`: `cert.pem`, `key.pem`, `bundle.pem` in a directory (`pymesh ca issue` writes
  them), reloaded when the files change; a bad edit is logged and the last good one stays;
- `CsrSource`: the sidecar makes its own key and asks a signer (the in-process CA of `pymesh
  up`, later the control plane) for a certificate, again at `renew_fraction` of its lifetime.
  The private key never leaves the process.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, Protocol, final

import structlog

from pymesh.tls.context import client_context, server_context
from pymesh.tls.identity import Identity, key_pem, make_csr, new_key
from pymesh.tls.spiffe import SpiffeId

__all__ = [
    "ALPN_OFFERS",
    "Alpn",
    "Credentials",
    "CsrSource",
    "DirSource",
    "IdentitySource",
    "Signer",
    "StaticSource",
]

Alpn = Literal["h1", "h2", "none"]
ALPN_OFFERS: Final[dict[Alpn, tuple[str, ...]]] = {
    "h1": ("http/1.1",),
    "h2": ("h2", "http/1.1"),
    "none": (),
}
EXPIRY_WARNING_FRACTION: Final = 0.2
"""Log a warning when less than this fraction of the certificate's lifetime is left."""

_log = structlog.get_logger("pymesh.identity")


@final
class Credentials:
    """The current identity of a sidecar and the TLS contexts made from it."""

    __slots__ = ("_client", "_listeners", "generation", "identity", "server")

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity: Identity | None = None
        self.server: ssl.SSLContext | None = None
        self._client: dict[Alpn, ssl.SSLContext] = {}
        self._listeners: list[Callable[[Identity], None]] = []
        self.generation = 0
        if identity is not None:
            self.update(identity)

    @property
    def ready(self) -> bool:
        """True once an identity is loaded."""
        return self.identity is not None

    @property
    def trust_domain(self) -> str | None:
        """The trust domain of the current identity."""
        return self.identity.spiffe_id.trust_domain if self.identity else None

    def client(self, alpn: Alpn) -> ssl.SSLContext:
        """The client context offering `alpn` (h1: http/1.1; h2: h2 and http/1.1; none)."""
        ctx = self._client.get(alpn)
        if ctx is None:
            raise RuntimeError("no identity loaded: cannot originate mTLS")
        return ctx

    def on_update(self, callback: Callable[[Identity], None]) -> None:
        """Call `callback(identity)` after every update (metrics, logs)."""
        self._listeners.append(callback)

    def update(self, identity: Identity) -> None:
        """Build contexts for `identity`, then swap them in (existing connections keep theirs)."""
        server = server_context(identity, alpn=("h2", "http/1.1"))
        server.num_tickets = 0  # no resumption between sidecars (DESIGN.md §4): pool instead
        clients = {
            alpn: client_context(identity, alpn=offer) for alpn, offer in ALPN_OFFERS.items()
        }
        previous = self.identity
        self.server, self._client, self.identity = server, clients, identity
        self.generation += 1
        _log.info(
            "identity_loaded",
            identity=str(identity.spiffe_id),
            serial=f"{identity.serial:x}",
            not_after=identity.not_after.isoformat(),
            previous_serial=f"{previous.serial:x}" if previous else None,
        )
        for cb in self._listeners:
            cb(identity)


def check_expiry(identity: Identity, now: datetime | None = None) -> float:
    """Seconds left; logs a warning when less than 20% of the lifetime is left."""
    now = now or datetime.now(UTC)
    left = (identity.not_after - now).total_seconds()
    lifetime = (identity.not_after - identity.not_before).total_seconds()
    if left <= lifetime * EXPIRY_WARNING_FRACTION:
        _log.warning(
            "certificate_expiring",
            identity=str(identity.spiffe_id),
            serial=f"{identity.serial:x}",
            not_after=identity.not_after.isoformat(),
            seconds_left=round(left, 1),
        )
    return left


class IdentitySource(Protocol):
    """Where a sidecar's identity comes from; keeps `Credentials` fresh until stopped."""

    async def load(self, creds: Credentials) -> None:
        """Load the first identity into `creds` (raise with a clear message if impossible)."""

    async def maintain(self, creds: Credentials) -> None:
        """Keep `creds` current forever (renewal, reload); cancelled when the sidecar stops."""


@final
class StaticSource:
    """A fixed identity (tests and embedding); warns as it nears expiry."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def load(self, creds: Credentials) -> None:
        """Install the identity."""
        creds.update(self.identity)

    async def maintain(self, creds: Credentials) -> None:
        """Warn before expiry; nothing else to do."""
        while True:
            left = check_expiry(self.identity)
            await asyncio.sleep(max(1.0, min(60.0, left / 10)))


@final
class DirSource:
    """`cert.pem`, `key.pem`, `bundle.pem` in a directory, reloaded when they change."""

    FILES: Final = ("cert.pem", "key.pem", "bundle.pem")

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._stamp: tuple[tuple[int, int, int], ...] | None = None

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for name in self.FILES:
            try:
                st = (self.path / name).stat()
            except OSError:
                out.append((0, 0, 0))
                continue
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    async def load(self, creds: Credentials) -> None:
        """Load the directory (ValueError naming the file if it is incomplete or invalid)."""
        self._stamp = self._current_stamp()
        creds.update(Identity.from_dir(self.path))

    async def maintain(self, creds: Credentials) -> None:
        """Poll the files; reload on change; keep the last good identity on a bad edit."""
        last_warning = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_interval)
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    identity = Identity.from_dir(self.path)
                except (OSError, ValueError) as exc:
                    _log.error("identity_reload_failed", dir=str(self.path), error=str(exc))
                else:
                    if creds.identity is None or identity.serial != creds.identity.serial:
                        creds.update(identity)
            if creds.identity is not None and loop.time() - last_warning > 60.0:
                last_warning = loop.time()
                check_expiry(creds.identity)


Signer = Callable[[bytes], Awaitable[tuple[bytes, bytes]]]
"""Send a CSR (PEM), get (certificate chain PEM, trust bundle PEM)."""


@final
class CsrSource:
    """Own key, CSR to a signer, renewal at `renew_fraction` of the lifetime."""

    def __init__(
        self,
        spiffe_id: str | SpiffeId,
        signer: Signer,
        *,
        renew_fraction: float = 0.5,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if not 0.0 < renew_fraction < 1.0:
            raise ValueError(f"renew_fraction {renew_fraction} (expected 0 < f < 1)")
        self.spiffe_id = SpiffeId.parse(str(spiffe_id))
        self.signer = signer
        self.renew_fraction = renew_fraction
        self.retry_min = retry_min
        self.retry_max = retry_max

    async def _fetch(self) -> Identity:
        key = new_key()  # a fresh key per certificate; it never leaves this process
        chain, bundle = await self.signer(make_csr(key, self.spiffe_id))
        return Identity.from_pem(chain, key_pem(key), bundle)

    async def load(self, creds: Credentials) -> None:
        """Get the first certificate (retried briefly: the signer may be starting)."""
        delay = self.retry_min
        for attempt in range(5):
            try:
                creds.update(await self._fetch())
                return
            except (OSError, ValueError, RuntimeError) as exc:
                if attempt == 4:
                    raise RuntimeError(f"could not get a certificate: {exc}") from exc
                _log.warning("csr_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def maintain(self, creds: Credentials) -> None:
        """Renew at `renew_fraction` of each certificate's lifetime; retry with backoff.

        The lifetime counts from when the certificate arrived (a CA backdates `not_before`
        for clock skew, which would otherwise make a short-lived certificate look half spent
        on arrival)."""
        delay = self.retry_min
        arrived = datetime.now(UTC)
        while True:
            ident = creds.identity
            assert ident is not None
            start = max(ident.not_before, arrived)
            due = start + (ident.not_after - start) * self.renew_fraction
            wait = (due - datetime.now(UTC)).total_seconds()
            # A little jitter so that sidecars started together do not renew together; never
            # a busy loop, whatever the dates say.
            await asyncio.sleep(max(wait * random.uniform(0.95, 1.0), 0.05))
            try:
                creds.update(await self._fetch())
                arrived = datetime.now(UTC)
                delay = self.retry_min
            except (OSError, ValueError, RuntimeError) as exc:
                check_expiry(ident)
                _log.warning("certificate_renewal_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
