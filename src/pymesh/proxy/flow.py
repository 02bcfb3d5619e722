"""Write-side backpressure for one transport (the `FlowControl` of the asyncio shells).

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

    __slots__ = ("_waiter", "closed", "paused")

    def __init__(self) -> None:
        self.paused = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

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
