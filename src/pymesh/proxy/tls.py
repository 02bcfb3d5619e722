"""TLS over memory BIOs: the layer between a socket and the protocol above it.

`TlsLayer` is an `asyncio.Protocol` on the raw transport and, once the handshake is done, the
transport of the protocol above it (the HTTP/1.1 or HTTP/2 connection manager, the L4 relay,
an upstream pool connection). It runs TLS itself over `ssl.MemoryBIO` + `ssl.SSLObject`
instead of `loop.start_tls()` or `create_server(ssl=...)`, for three reasons (DESIGN.md §4):

- protocol detection has already read the ClientHello from the socket, and `start_tls()`
  cannot replay bytes already read; here they are simply written into the incoming BIO;
- asyncio and uvloop close a refused handshake without flushing the TLS alert, so a client
  without a certificate, with an unknown CA or an expired one sees a bare reset; here the alert
  OpenSSL wrote is sent before the socket closes — and the socket then lingers (reading and
  discarding, `ALERT_LINGER_S` at most) until the peer closes: a TLS 1.3 client has finished
  its handshake and already sends application data, and closing a socket with unread bytes
  makes the kernel send a RST, which can reach the client before it reads the alert (curl:
  "Connection reset by peer" instead of "alert certificate required");
- the peer's SPIFFE identity must be checked after the handshake and before any byte is
  forwarded: `on_ready` runs first, and application data is only read once it has accepted.

Half-close: `send_close_notify()` sends TLS close_notify and keeps reading (TLS 1.3 allows
the other direction to go on); a received close_notify is the protocol's `eof_received()`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Final, NamedTuple, final

import structlog

__all__ = ["HANDSHAKE_TIMEOUT_S", "PLAINTEXT", "Security", "TlsLayer", "security_of"]

HANDSHAKE_TIMEOUT_S: Final = 10.0
"""How long a TLS handshake may take before the connection is closed."""

ALERT_LINGER_S: Final = 1.0
"""After a failed handshake's alert, how long the socket stays open (reading and discarding)
for the peer to read the alert and close first."""

_READ_SIZE: Final = 256 * 1024
_log = structlog.get_logger("pymesh.tls")

_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2


class Security(NamedTuple):
    """What a downstream connection proved: `source_principal` (the client's SPIFFE ID or
    "unknown"), `policy` ("mutual_tls" or "none"), and the service `port` its SNI named."""

    principal: str
    policy: str
    port: int | None


PLAINTEXT: Final = Security("unknown", "none", None)


def security_of(transport: asyncio.BaseTransport) -> Security:
    """The `Security` of a connection (PLAINTEXT unless it is an accepted mTLS session)."""
    tls = transport.get_extra_info("tls")
    if tls is None or tls.peer_id is None:
        return PLAINTEXT
    return Security(tls.peer_id, "mutual_tls", tls.port)


def _noop_fail(layer: TlsLayer, exc: BaseException) -> None:
    return None


@final
class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """TLS on a raw transport; the transport of the protocol above it after the handshake.

    `on_ready(layer)` runs once the handshake has completed: it may inspect the session
    (`alpn`, `peer_cert_der()`, `sni`), refuse it with `close()`/`abort()`, or accept it by
    installing a protocol (`layer.set_protocol(p); p.connection_made(layer)`). `on_fail(layer,
    exc)` runs when the handshake fails or times out (the alert has been sent by then) or
    the connection is lost before it completes.
    """

    __slots__ = (
        "_app",
        "_eof",
        "_in",
        "_in_eof",
        "_on_fail",
        "_on_ready",
        "_out",
        "_paused",
        "_read_scheduled",
        "_ssl",
        "_state",
        "_timer",
        "alpn",
        "closing",
        "peer_id",
        "port",
        "raw",
        "sni",
        "timeout",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        on_ready: Callable[[TlsLayer], None],
        on_fail: Callable[[TlsLayer, BaseException], None] = _noop_fail,
        server_hostname: str | None = None,
        timeout: float = HANDSHAKE_TIMEOUT_S,
        sni: str | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._on_ready = on_ready
        self._on_fail = on_fail
        self._app: asyncio.BaseProtocol | None = None
        self._state = _HANDSHAKE
        self._paused = False
        self._eof = False
        self._in_eof = False  # the peer sent EOF (TCP FIN)
        self._read_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.timeout = timeout
        self.raw: asyncio.Transport | None = None
        self.alpn: str | None = None
        self.closing: bool = False
        self.peer_id: str | None = None  # the peer's SPIFFE ID, once verified
        self.port: int | None = None  # the service port the connection is for (inbound SNI)
        # The server name: what the client asked for (server side, from the ClientHello that
        # detection parsed) or what we sent (client side).
        self.sni = sni if server_side else server_hostname

    # -- raw transport side (asyncio.Protocol) -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._on_timeout)
        if not self._ssl.server_side:
            self._handshake()

    def feed(self, data: bytes) -> None:
        """Bytes read before this layer took the transport (the detected ClientHello)."""
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _CLOSED:
            return  # lingering after an alert: discard
        self._in.write(data)
        if state == _OPEN:
            self._read()
        elif state == _HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool:
        if self._state == _CLOSED:
            return False  # the peer closed after our alert: close now
        self._in_eof = True
        self._in.write_eof()
        if self._state == _HANDSHAKE:
            self._handshake()  # fails with an EOF error: reported through on_fail
            return False
        self._read()
        return True  # the layer decides when the raw transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        state, self._state = self._state, _CLOSED
        self.closing = True
        app = self._app
        if app is not None:
            self._app = None
            app.connection_lost(exc)
        elif state == _HANDSHAKE:
            self._on_fail(self, exc or ConnectionResetError("connection closed in handshake"))

    def pause_writing(self) -> None:
        app = self._app
        if app is not None:
            app.pause_writing()

    def resume_writing(self) -> None:
        app = self._app
        if app is not None:
            app.resume_writing()

    # -- handshake ---------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            alert = self._flush()  # the alert OpenSSL wrote goes out before the close
            self._fail(exc, linger=alert)
            return
        self._flush()
        self._cancel_timer()
        self._state = _OPEN
        self.alpn = self._ssl.selected_alpn_protocol()
        self._on_ready(self)
        if self._state == _OPEN and not self.closing:
            self._read()

    def _fail(self, exc: BaseException, *, linger: bool = False) -> None:
        self._cancel_timer()
        self._state = _CLOSED
        self.closing = True
        raw = self.raw
        if raw is not None and not raw.is_closing():
            if linger and not self._in_eof:
                # Keep reading (and discarding) so the close is a FIN after the alert, not a
                # RST that could overtake it; close when the peer does or the linger ends.
                self._timer = asyncio.get_running_loop().call_later(ALERT_LINGER_S, raw.close)
            else:
                raw.close()  # close() flushes the alert first
        self._on_fail(self, exc)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            self._fail(TimeoutError(f"TLS handshake not done in {self.timeout:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- application data in ------------------------------------------------------------
    def _read(self) -> None:
        app = self._app
        if app is None or self._paused or self._eof:
            return
        sslobj = self._ssl
        data_received = app.data_received  # type: ignore[attr-defined]
        while True:
            try:
                chunk = sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                self._got_eof(app, truncated=True)
                break
            except ssl.SSLError as exc:
                _log.info("tls_read_error", error=str(exc), peer=self._peer())
                self.abort()
                return
            if not chunk:
                self._got_eof(app, truncated=False)  # close_notify
                break
            data_received(chunk)
            if not self._may_deliver(app):
                break
        if self._out.pending:
            self._flush()  # post-handshake messages (key updates, alerts)

    def _may_deliver(self, app: asyncio.BaseProtocol) -> bool:
        """Whether `app` still takes data (it may have paused, closed or handed over)."""
        return not self._paused and self._app is app and not self.closing

    def _got_eof(self, app: asyncio.BaseProtocol, *, truncated: bool) -> None:
        if self._eof:
            return
        self._eof = True
        if truncated:
            _log.debug("tls_eof_without_close_notify", peer=self._peer())
        keep_open = app.eof_received()  # type: ignore[attr-defined]
        if not keep_open:
            self.close()

    def _scheduled_read(self) -> None:
        self._read_scheduled = False
        if self._state == _OPEN and not self.closing:
            self._read()

    # -- application data out -----------------------------------------------------------
    def _flush(self) -> bool:
        """Send what OpenSSL wrote; True if there was something to send."""
        data = self._out.read()
        raw = self.raw
        if data and raw is not None and not raw.is_closing():
            raw.write(data)
            return True
        return False

    def _peer(self) -> str:
        raw = self.raw
        peer = raw.get_extra_info("peername") if raw is not None else None
        return f"{peer[0]}:{peer[1]}" if peer else "-"

    # -- transport side (what the protocol above sees) -------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send `data` (ignored once closing, like a transport)."""
        if self._state != _OPEN or self.closing:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            _log.info("tls_write_error", error=str(exc), peer=self._peer())
            self.abort()
            return
        raw = self.raw
        if raw is not None:
            raw.write(self._out.read())

    def writelines(self, list_of_data: Any) -> None:
        """Write several buffers as one TLS write."""
        self.write(b"".join(list_of_data))

    def send_close_notify(self) -> None:
        """Half-close: send TLS close_notify; reading goes on until the peer closes too."""
        if self._state != _OPEN or self.closing:
            return
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: close_notify written, the peer's not received yet
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Same as `send_close_notify()`."""
        self.send_close_notify()

    def close(self) -> None:
        """Send close_notify (when the session is open), flush, close the socket."""
        if self.closing:
            return
        self.send_close_notify()  # (an open session only)
        self.closing = True
        self._cancel_timer()
        raw = self.raw
        if raw is not None:
            raw.close()

    def abort(self) -> None:
        """Close the socket at once (RST when data is pending)."""
        self.closing = True
        self._cancel_timer()
        raw = self.raw
        if raw is not None:
            raw.abort()

    def is_closing(self) -> bool:
        raw = self.raw
        return self.closing or raw is None or raw.is_closing()

    def pause_reading(self) -> None:
        self._paused = True
        raw = self.raw
        if raw is not None:
            raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        raw = self.raw
        if raw is not None:
            raw.resume_reading()
        # Records already decrypted or buffered in the BIO are delivered without waiting for
        # the socket to become readable again.
        if not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_read)

    def is_reading(self) -> bool:
        return not self._paused

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    def get_write_buffer_size(self) -> int:
        raw = self.raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        raw = self.raw
        if raw is not None:
            raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        raw = self.raw
        return raw.get_write_buffer_limits() if raw is not None else (0, 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "tls":
            return self
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "socket":
            return None  # shutting the socket down under TLS would truncate the session
        raw = self.raw
        return raw.get_extra_info(name, default) if raw is not None else default

    # -- session ------------------------------------------------------------------------
    def peer_cert_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), verified by OpenSSL against the trust bundle."""
        return self._ssl.getpeercert(binary_form=True)

    @property
    def version(self) -> str | None:
        """The negotiated TLS version, e.g. "TLSv1.3"."""
        return self._ssl.version()

    @property
    def handshake_done(self) -> bool:
        """True once the handshake has completed (and not yet closed)."""
        return self._state == _OPEN
