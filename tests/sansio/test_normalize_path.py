"""RFC 3986 path normalisation before authorization (`pymesh.policy.authz.normalize_path`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymesh.policy.authz import normalize_path


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/api/orders", b"/api/orders"),
        (b"/api/../admin", b"/admin"),
        (b"/api/./orders", b"/api/orders"),
        (b"/api//orders/", b"/api/orders/"),
        (b"//admin", b"/admin"),
        (b"/%2e%2e/admin", b"/admin"),
        (b"/api/%2E%2E/admin?next=/../x", b"/admin?next=/../x"),  # the query is not touched
        (b"/../../etc", b"/etc"),  # never above the root
        (b"/a/b/..", b"/a/"),
        (b"/a%2fb", b"/a%2Fb"),  # an encoded slash is data, not a separator
        (b"/%7euser/%41", b"/~user/A"),  # unreserved characters decoded
        (b"/a%2", b"/a%2"),  # a broken escape is left alone
        (b"*", b"*"),
    ],
)
def test_examples(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


def test_unchanged_paths_are_returned_as_is() -> None:
    path = b"/api/v1/orders/42?x=1"
    assert normalize_path(path) is path  # the hot path allocates nothing


SEGMENT = st.sampled_from([b"a", b"api", b".", b"..", b"", b"%2e", b"%2E%2e", b"x%2Fy", b"%41"])


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(SEGMENT, max_size=8), st.booleans())
def test_normal_form_properties(segments: list[bytes], query: bool) -> None:
    raw = b"/" + b"/".join(segments) + (b"?q=/../" if query else b"")
    out = normalize_path(raw)
    path, _, rest = out.partition(b"?")
    assert path.startswith(b"/")
    parts = path.split(b"/")[1:]
    assert b"." not in parts and b".." not in parts  # no dot segments left
    assert b"//" not in path
    assert b"%2e" not in path.lower()  # encoded dots decoded (then removed)
    assert normalize_path(out) == out  # idempotent
    if query:
        assert rest == b"q=/../"
