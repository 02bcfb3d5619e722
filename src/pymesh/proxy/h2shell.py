"""What the two HTTP/2 shells (downstream `hcm2`, upstream `pool2`) share: the codec, batched
writes, and one wake-up for "a window opened" that every stream waiting to send listens to."""

from __future__ import annotations

import asyncio
from typing import cast

from pymesh.proxy.flow import WriteFlow
from pymesh.proxy.http2 import H2Connection, Role

__all__ = ["H2Shell"]


class H2Shell(asyncio.Protocol):
    """Base of an asyncio.Protocol driving one sans-IO `H2Connection`."""

    def __init__(self, role: Role, codec: H2Connection | None = None) -> None:
        self.codec = codec if codec is not None else H2Connection(role)
        self.flow = WriteFlow()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._window: asyncio.Future[None] | None = None

    def _attach(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = t
        self.flow.transport = t
        return t

    def _detach(self) -> None:
        """`connection_lost`: nothing more is written; release every waiter."""
        self.closed = True
        self.flow.close()
        self.wake_window()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def send(self) -> None:
        """Queue what the codec has for the peer (written at the end of the iteration)."""
        out = self.codec.data_to_send()
        if out:
            self.flow.write(out)

    def close(self) -> None:
        """Close the connection, flushing what is queued."""
        self.flow.flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def wake_window(self) -> None:
        """A WINDOW_UPDATE (or the end of the connection): wake every waiting sender."""
        w = self._window
        if w is not None:
            self._window = None
            if not w.done():
                w.set_result(None)

    async def wait_window(self) -> None:
        """Wait for the next `wake_window()` (callers re-check their stream afterwards)."""
        w = self._window
        if w is None:
            w = self._window = asyncio.get_running_loop().create_future()
        await w
