"""SPIFFE IDs: `spiffe://<trust domain>/<path>`, parsed and validated by the SPIFFE ID spec.

Rules (SPIFFE-ID.md §2, the strict form go-spiffe and SPIRE enforce):

- the scheme is exactly `spiffe://` (lowercase);
- the trust domain is non-empty, at most 255 bytes, and made only of lowercase letters,
  digits, `.`, `-` and `_` (so no userinfo `@`, no port `:`, no percent-encoding, no IPv6);
- the path is empty or a sequence of `/segment`s, each non-empty, not `.` or `..`, and made
  only of `[A-Za-z0-9._-]` (so no trailing `/`, no `//`, no percent-encoding);
- no query (`?`) or fragment (`#`);
- the whole ID is at most 2048 bytes (the length every implementation must support).

A `SpiffeId` can only hold a valid ID: the constructor validates, so `SpiffeId("td", "/x")`
and `SpiffeId.parse("spiffe://td/x")` both refuse anything else with a `ValueError` naming
the exact problem. Instances are immutable, hashable and cheap to compare.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SCHEME_PREFIX",
    "SpiffeId",
    "check_trust_domain",
]

SCHEME_PREFIX: Final = "spiffe://"
MAX_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_BYTES: Final = 255

_TRUST_DOMAIN_RE: Final = re.compile(r"[a-z0-9._-]+")
_PATH_RE: Final = re.compile(r"(?:/[A-Za-z0-9._-]+)*")
_SEGMENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + ".-_")


def _trust_domain_problem(td: str) -> str | None:
    """Why `td` is not a valid trust domain name, or None if it is."""
    if _TRUST_DOMAIN_RE.fullmatch(td):
        if len(td) > MAX_TRUST_DOMAIN_BYTES:
            return f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        return None
    if not td:
        return "trust domain is missing"
    if td.startswith("["):
        return "an IPv6 address is not allowed as a trust domain"
    if "@" in td:
        return "userinfo is not allowed in the trust domain"
    if ":" in td:
        return "a port is not allowed in the trust domain"
    if "%" in td:
        return "percent-encoded characters are not allowed in the trust domain"
    for ch in td:
        if "A" <= ch <= "Z":
            return f"trust domain must be lowercase (got {td!r})"
        if not _TRUST_DOMAIN_RE.fullmatch(ch):
            return (
                f"trust domain contains {ch!r} (expected only lowercase letters, digits, "
                "'.', '-' and '_')"
            )
    raise AssertionError(td)  # pragma: no cover - the regex failed, so some char is bad


def check_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a valid trust domain name, else raise ValueError why."""
    problem = _trust_domain_problem(trust_domain)
    if problem is not None:
        raise ValueError(f"invalid trust domain {trust_domain!r}: {problem}")
    return trust_domain


def _path_problem(path: str) -> str | None:
    """Why `path` is not a valid SPIFFE ID path, or None if it is."""
    if _PATH_RE.fullmatch(path):
        if "/." in path:  # cheap pre-check; only `.`/`..` segments are errors
            for seg in path.split("/")[1:]:
                if seg in (".", ".."):
                    return f"path segment {seg!r} is not allowed (no relative segments)"
        return None
    if "?" in path:
        return "a query is not allowed"
    if "#" in path:
        return "a fragment is not allowed"
    if not path.startswith("/"):
        return f"path must start with '/' (got {path!r})"
    if path.endswith("/"):
        return "path must not end with '/'"
    if "//" in path:
        return "path contains an empty segment ('//')"
    if "%" in path:
        return "percent-encoded characters are not allowed in the path"
    for ch in path:
        if ch != "/" and ch not in _SEGMENT_CHARS:
            return f"path contains {ch!r} (expected only letters, digits, '.', '-' and '_')"
    raise AssertionError(path)  # pragma: no cover - the regex failed, so some char is bad


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID: a trust domain and a path such as `/ns/default/sa/orders`.

    Construct with `SpiffeId.parse(text)`, `SpiffeId.for_service(td, ns, sa)` or
    `SpiffeId(trust_domain, path)`; all three validate. The path is `""` for the trust
    domain's own ID (`spiffe://td`), which is valid but never a workload's (leaf) identity.
    """

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        problem = _trust_domain_problem(self.trust_domain) or _path_problem(self.path)
        if problem is None and len(self.trust_domain) + len(self.path) + 9 > MAX_ID_BYTES:
            problem = f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes"
        if problem is not None:
            raise ValueError(f"invalid SPIFFE ID {self._raw()!r}: {problem}")

    def _raw(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `spiffe://td/path`; ValueError with the precise reason if it is not valid."""
        if not text:
            raise ValueError("invalid SPIFFE ID '': empty")
        if not text.startswith(SCHEME_PREFIX):
            if text[:9].lower() == SCHEME_PREFIX:
                why = "the scheme must be lowercase 'spiffe://'"
            else:
                why = "the scheme must be 'spiffe://'"
            raise ValueError(f"invalid SPIFFE ID {text!r}: {why}")
        if len(text) > MAX_ID_BYTES:
            raise ValueError(f"invalid SPIFFE ID: longer than {MAX_ID_BYTES} bytes")
        rest = text[9:]
        # The authority ends at the first '/', '?' or '#' (RFC 3986 §3.2).
        end = len(rest)
        for sep in "/?#":
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        return cls(rest[:end], rest[end:])

    @classmethod
    def for_service(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The mesh identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`."""
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    def _ns_sa(self) -> tuple[str, str] | None:
        """(X, Y) when the path is exactly `/ns/X/sa/Y`, else None."""
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2], parts[4]
        return None

    @property
    def namespace(self) -> str | None:
        """`X` when the path is exactly `/ns/X/sa/Y`, else None."""
        both = self._ns_sa()
        return both[0] if both else None

    @property
    def service_account(self) -> str | None:
        """`Y` when the path is exactly `/ns/X/sa/Y`, else None."""
        both = self._ns_sa()
        return both[1] if both else None

    def member_of(self, trust_domain: str) -> bool:
        """True if this ID is in `trust_domain`."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"
