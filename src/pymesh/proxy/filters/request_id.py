"""Request ids: every request carries an `x-request-id` (kept if the client sent one).

The connection manager applies this to every request (it is not an optional filter); ids are
UUID-shaped: a random per-process prefix and a counter, so they are unique across sidecars and
cost a counter increment instead of a random draw per request.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["new_request_id"]

_PREFIX = os.urandom(10).hex()  # 20 hex digits, fixed for this process
_PREFIX_FMT = f"{_PREFIX[:8]}-{_PREFIX[8:12]}-4{_PREFIX[13:16]}-{_PREFIX[16:20]}-"
_COUNTER = itertools.count(1)


def new_request_id() -> bytes:
    """A new id, e.g. `3f2a9c1e-77b0-4d21-9e8f-0000000004d2`."""
    return f"{_PREFIX_FMT}{next(_COUNTER) & 0xFFFFFFFFFFFF:012x}".encode()
