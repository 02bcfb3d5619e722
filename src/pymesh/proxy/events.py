"""Sans-IO HTTP/1.1 event vocabulary shared by both codecs (httptools and h11).

Rule 1: nothing here touches a socket, a loop or a clock.
Rule 2: header names and values are raw `bytes` as received (names keep their case; values
have surrounding whitespace removed); the codec has already validated them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RequestHead:
    """A complete, validated request head.

    `content_length` is set for a Content-Length body, `chunked` for a chunked one; neither
    means no body. `keep_alive` already reflects the version and `Connection` header.
    """

    method: bytes
    target: bytes
    http_version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None
    expect_continue: bool = False
    upgrade: bytes | None = None  # the Upgrade header when Connection: upgrade asks for it


@dataclass(slots=True)
class ResponseHead:
    """A complete response head (1xx interim responses are separate `ResponseHead`s)."""

    status: int
    reason: bytes
    http_version: bytes
    headers: Headers
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None  # None and not chunked: no body or read-until-close


@dataclass(slots=True)
class EndOfMessage:
    """The body ended; chunked trailers, if any."""

    trailers: Headers = field(default_factory=list)


# A body chunk is a plain `bytes` object in the event list: the most common event is the
# cheapest one. Event lists are `list[RequestHead | bytes | EndOfMessage]`.
RequestEvent = RequestHead | bytes | EndOfMessage
ResponseEvent = ResponseHead | bytes | EndOfMessage
EOM = EndOfMessage()  # shared instance for the trailer-less case; never mutate
