"""The request-id filter: every request carries an `x-request-id` (generated if absent)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import final

from pymesh.proxy.chain import HttpService
from pymesh.proxy.messages import Request, Response

__all__ = ["RequestIdFilter", "new_request_id"]


def new_request_id() -> bytes:
    """A random UUID-4-shaped id (os.urandom is cheaper than the uuid module)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


@final
@dataclass(frozen=True, slots=True)
class RequestIdFilter:
    """Keep the client's `x-request-id` or add one; echo it on the response."""

    echo: bool = True

    async def __call__(self, request: Request, call_next: HttpService, /) -> Response:
        rid: bytes | None = None
        for k, v in request.headers:
            if len(k) == 12 and k.lower() == b"x-request-id":
                rid = v
                break
        if rid is None:
            rid = new_request_id()
            request.headers.append((b"x-request-id", rid))
        request.context.request_id = rid.decode("latin-1")
        response = await call_next(request)
        if self.echo:
            response.headers.append((b"x-request-id", rid))
        return response
