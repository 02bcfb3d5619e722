"""The write side of one transport: batched writes and backpressure.

Writes are batched per loop iteration: the first `write()` schedules one `flush()` with
`call_soon`, later ones in the same iteration join it. So a proxy answering many connections
in one read phase sends its requests (and responses) after the phase, in one `send()` each, and
the next `epoll_wait` finds many answers ready at once — measured on the L7 path: about 1.4 times
the requests per CPU second of writing straight from the read callbacks.

The protocol forwards its `pause_writing`/`resume_writing`/`connection_lost` callbacks here;
a writer that has just written checks `paused` and, if set, awaits `drain()`.
"""

from __future__ import annotations

import asyncio
from typing import final

__all__ = ["WriteFlow"]


@final
class WriteFlow:
    """Tracks whether a transport's write buffer is over its high-water mark."""

    __slots__ = ("_out", "_waiter", "closed", "paused", "transport")

    def __init__(self) -> None:
        self.paused = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def write(self, data: bytes) -> None:
        """Queue `data`; it is written (in order) at the end of this loop iteration."""
        out = self._out
        if out is None:
            self._out = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            out.append(data)

    def flush(self) -> None:
        """Write what is queued now (also before a close or a hand-over of the transport)."""
        out = self._out
        if out is None:
            return
        self._out = None
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def pause(self) -> None:
        """`pause_writing()`: the buffer is over the high-water mark."""
        self.paused = True

    def resume(self) -> None:
        """`resume_writing()`: the buffer drained below the low-water mark."""
        self.paused = False
        self._wake()

    def close(self) -> None:
        """`connection_lost()`: nobody will drain; release any waiter."""
        self.closed = True
        self._wake()

    async def drain(self) -> None:
        """Wait until writing may go on (or the connection is gone)."""
        if self.paused and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self._waiter = fut
            await fut
