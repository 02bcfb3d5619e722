"""What the two HTTP/2 shells (downstream `hcm2`, upstream `pool2`) share: the codec, batched
writes, and one wake-up for "a window opened" that every stream waiting to send listens to."""

from __future__ import annotations

import asyncio
from typing import cast

from pymesh.proxy.flow import WriteFlow
from pymesh.proxy.http2 import H2Connection, Role, StreamData
from pymesh.proxy.messages import Body, Headers

__all__ = ["FlowStream", "H2Shell"]


class FlowStream:
    """A stream whose incoming body is flow-controlled by its consumer.

    Received bytes are acknowledged to the peer (reopening its window) while the stream's
    `Body` is below its high-water mark; past it, acknowledgements wait until the consumer
    drains the body, so a slow reader slows the sender instead of a buffer growing.
    """

    __slots__ = ("body", "held", "id", "pending_ack", "trailers")

    def __init__(self, stream_id: int, body: Body | None = None) -> None:
        self.id = stream_id
        self.body = body
        self.held = False
        self.pending_ack = 0
        self.trailers: Headers = []


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

    def give_body(self, stream: FlowStream, body: Body) -> None:
        """Make `body` the stream's incoming body, its flow control tied to the peer's window."""
        stream.body = body

        def pause() -> None:
            stream.held = True

        def resume() -> None:
            stream.held = False
            if stream.pending_ack and not self.closed:
                n, stream.pending_ack = stream.pending_ack, 0
                self.codec.acknowledge_received_data(stream.id, n)
                self.send()

        body.pause = pause
        body.resume = resume

    def receive_body(self, stream: FlowStream | None, ev: StreamData) -> None:
        """Body bytes for `stream` (None: unknown or gone, the bytes are only acknowledged)."""
        if stream is None or stream.body is None:
            self.codec.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)
            return
        stream.body.feed(ev.data)
        if stream.held:
            stream.pending_ack += ev.flow_controlled_length
        else:
            self.codec.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)

    async def wait_window(self) -> None:
        """Wait for the next `wake_window()` (callers re-check their stream afterwards)."""
        w = self._window
        if w is None:
            w = self._window = asyncio.get_running_loop().create_future()
        await w
