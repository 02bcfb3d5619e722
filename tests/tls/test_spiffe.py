"""SPIFFE ID parsing: the SPIFFE-ID.md §2 rules, good IDs and many bad ones."""

from __future__ import annotations

import pytest

from pymesh.tls import SpiffeId, check_trust_domain


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    [
        ("spiffe://shop.local/ns/default/sa/orders", "shop.local", "/ns/default/sa/orders"),
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://td/a", "td", "/a"),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ("spiffe://under_score-dash.0/Mixed-Case_Path.v1/...x", "under_score-dash.0", None),
        ("spiffe://td/9eebccd2-12bf-40a6-b262-65fe0487d453", "td", None),
        ("spiffe://td/a/.b/..c/c.", "td", "/a/.b/..c/c."),  # dots inside segments are fine
    ],
)
def test_valid_ids_round_trip(text: str, trust_domain: str, path: str | None) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == trust_domain
    if path is not None:
        assert sid.path == path
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid
    assert hash(sid) == hash(SpiffeId(sid.trust_domain, sid.path))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("shop.local/ns/default", "scheme must be 'spiffe://'"),
        ("https://shop.local/x", "scheme must be 'spiffe://'"),
        ("spiffe:/shop.local/x", "scheme must be 'spiffe://'"),
        ("SPIFFE://shop.local/x", "scheme must be lowercase"),
        ("spiffe://", "trust domain is missing"),
        ("spiffe:///path", "trust domain is missing"),
        ("spiffe://Shop.local/x", "trust domain must be lowercase"),
        ("spiffe://shop.local:8443/x", "port is not allowed"),
        ("spiffe://user@shop.local/x", "userinfo is not allowed"),
        ("spiffe://user:pw@shop.local/x", "userinfo is not allowed"),
        ("spiffe://sh%6Fp/x", "percent-encoded characters are not allowed in the trust domain"),
        ("spiffe://[::1]/x", "IPv6 address is not allowed"),
        ("spiffe://a[b/x", "trust domain contains '['"),
        ("spiffe://shop local/x", "trust domain contains ' '"),
        ("spiffe://shöp/x", "trust domain contains 'ö'"),
        ("spiffe://td/", "must not end with '/'"),
        ("spiffe://td/a/", "must not end with '/'"),
        ("spiffe://td//a", "empty segment"),
        ("spiffe://td/a//b", "empty segment"),
        ("spiffe://td/./a", "segment '.' is not allowed"),
        ("spiffe://td/a/..", "segment '..' is not allowed"),
        ("spiffe://td/a/../b", "segment '..' is not allowed"),
        ("spiffe://td/a%20b", "percent-encoded characters are not allowed in the path"),
        ("spiffe://td/a b", "path contains ' '"),
        ("spiffe://td/a:b", "path contains ':'"),
        ("spiffe://td/ä", "path contains 'ä'"),
        ("spiffe://td/x?q=1", "query is not allowed"),
        ("spiffe://td?q=1", "query is not allowed"),
        ("spiffe://td/x#frag", "fragment is not allowed"),
        ("spiffe://td#frag", "fragment is not allowed"),
        ("spiffe://" + "a" * 256 + "/x", "longer than 255 bytes"),
        ("spiffe://td/" + "a" * 2040, "longer than 2048 bytes"),
    ],
)
def test_invalid_ids_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid SPIFFE ID") as info:
        SpiffeId.parse(text)
    assert reason in str(info.value)


def test_longest_allowed_id() -> None:
    text = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))
    assert len(text) == 2048
    assert str(SpiffeId.parse(text)) == text


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="trust domain must be lowercase"):
        SpiffeId("TD", "/x")
    with pytest.raises(ValueError, match="path must start with '/'"):
        SpiffeId("td", "x")
    with pytest.raises(ValueError, match="empty segment"):
        SpiffeId.for_service("td", "", "orders")


def test_for_service_and_its_parts() -> None:
    sid = SpiffeId.for_service("shop.local", "default", "orders")
    assert str(sid) == "spiffe://shop.local/ns/default/sa/orders"
    assert (sid.namespace, sid.service_account) == ("default", "orders")
    assert sid.member_of("shop.local") and not sid.member_of("other.local")
    with pytest.raises(ValueError, match="empty segment"):
        SpiffeId.for_service("shop.local", "a/", "b")


@pytest.mark.parametrize(
    "text",
    ["spiffe://td/ns/x", "spiffe://td/ns/x/sa/y/z", "spiffe://td/xs/x/sa/y", "spiffe://td"],
)
def test_namespace_only_for_ns_sa_paths(text: str) -> None:
    sid = SpiffeId.parse(text)
    assert sid.namespace is None
    assert sid.service_account is None


def test_ids_are_immutable_values() -> None:
    a = SpiffeId.parse("spiffe://td/a")
    with pytest.raises(AttributeError):
        a.path = "/b"  # type: ignore[misc]
    assert a != SpiffeId.parse("spiffe://td/A")  # the path is case-sensitive
    assert {a, SpiffeId("td", "/a")} == {a}


def test_check_trust_domain() -> None:
    assert check_trust_domain("shop.local") == "shop.local"
    with pytest.raises(ValueError, match=r"invalid trust domain 'Shop': .*lowercase"):
        check_trust_domain("Shop")
    with pytest.raises(ValueError, match="missing"):
        check_trust_domain("")
