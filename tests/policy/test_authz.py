"""SMI TrafficTarget authorization: `decide()` and its compiled form `InboundAuthz`.

Every case runs through both (`check()` asserts they return the same Decision), starting with
the SMI traffic-access v1alpha3 L7 example as the spec publishes it (../shared/smi-examples,
and the project's byte-identical copy) with the services of tests/fixtures/config/authz.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import re2

from pymesh.policy.authz import Decision, InboundAuthz, decide
from pymesh.policy.kinds import (
    HTTPMatch,
    HTTPRouteGroupSpec,
    IdentitySubject,
    TrafficTargetRule,
    TrafficTargetSpec,
)
from pymesh.policy.model import MeshSpec, Resource, ServicePort, ServiceSpec, Source
from pymesh.policy.snapshot import Mesh

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"
SHARED = Path(__file__).parents[2].parent / "shared" / "smi-examples"
SERVICES = FIXTURES / "authz" / "mesh.yaml"
L7 = "01-traffic-access-v1alpha3-l7-example.yaml"
L4 = "02-traffic-access-v1alpha3-l4-example.yaml"
HEADERS = "03-traffic-specs-v1alpha4-header-filters.yaml"

TD = "smi.example"
PROMETHEUS = f"spiffe://{TD}/ns/default/sa/prometheus"
WEBSITE = f"spiffe://{TD}/ns/default/sa/website-service"
PAYMENTS = f"spiffe://{TD}/ns/default/sa/payments-service"
LEDGER = f"spiffe://{TD}/ns/default/sa/ledger"

Headers = Sequence[tuple[str, str]]


@pytest.fixture(params=["shared", "own"])
def examples(request: pytest.FixtureRequest) -> Path:
    """The SMI examples: ../shared/smi-examples, then the project's own copies."""
    if request.param == "shared":
        if not SHARED.is_dir():
            pytest.skip(f"{SHARED} does not exist (the shared SMI examples are not checked out)")
        return SHARED
    return FIXTURES / "smi"


@pytest.fixture
def l7(examples: Path) -> Mesh:
    """The SMI L7 example with Mesh and Services (api-service 8080 + 9090, ...)."""
    return Mesh.load(SERVICES, examples / L7)


def check(
    mesh: Mesh,
    source: str | None,
    destination: str,
    port: int,
    method: str | None = None,
    path: str = "/",
    headers: Headers = (),
) -> Decision:
    """decide() and InboundAuthz.check_* must return the same Decision; return it."""
    reference = decide(
        mesh, source, destination, port=port, method=method, path=path, headers=headers
    )
    ns, _, name = destination.rpartition("/")
    service = mesh.service(name, ns or "default")
    assert service is not None
    authz = InboundAuthz.compile(mesh, service)
    if method is None:
        compiled = authz.check_tcp(source, port)
    else:
        raw = [(n.encode(), v.encode()) for n, v in headers]
        compiled = authz.check_http(source, port, method.encode(), path.encode(), raw)
    assert compiled == reference
    return reference


# -- the SMI L7 example ------------------------------------------------------------------------


def test_prometheus_may_get_metrics(l7: Mesh) -> None:
    d = check(l7, PROMETHEUS, "api-service", 8080, "GET", "/metrics")
    assert d.allowed
    assert d.rule == (
        "TrafficTarget/default/api-service-metrics "
        "HTTPRouteGroup/default/api-service-routes:metrics "
        "TCPRoute/default/api-service-port:8080"
    )
    assert "TrafficTarget/default/api-service-metrics allows" in d.reason
    assert check(l7, PROMETHEUS, "api-service", 8080, "GET", "/metrics/cpu?x=1").allowed


def test_prometheus_may_not_get_api(l7: Mesh) -> None:
    d = check(l7, PROMETHEUS, "default/api-service", 8080, "GET", "/api/x")
    assert not d.allowed
    assert d.rule is None
    assert d.reason.startswith(
        f"no TrafficTarget allows source {PROMETHEUS} to default/api-service"
    )
    assert "TrafficTarget/default/api-service-metrics allows it only" in d.reason
    assert "HTTPRouteGroup/default/api-service-routes match 'metrics'" in d.reason
    assert "GET /api/x on port 8080 does not match" in d.reason
    assert "pathRegex '/metrics'" in d.reason


def test_prometheus_may_not_post_metrics(l7: Mesh) -> None:
    d = check(l7, PROMETHEUS, "api-service", 8080, "POST", "/metrics")
    assert not d.allowed
    assert "method POST is not GET" in d.reason


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("source", [WEBSITE, PAYMENTS])
def test_website_and_payments_may_call_api_with_any_method(
    l7: Mesh, source: str, method: str
) -> None:
    d = check(l7, source, "api-service", 8080, method, "/api/orders/7?expand=1")
    assert d.allowed
    assert d.rule == (
        "TrafficTarget/default/api-service-api HTTPRouteGroup/default/api-service-routes:api "
        "TCPRoute/default/api-service-port:8080"
    )


def test_website_may_not_get_metrics(l7: Mesh) -> None:
    d = check(l7, WEBSITE, "api-service", 8080, "GET", "/metrics")
    assert not d.allowed
    assert "match 'api'" in d.reason


@pytest.mark.parametrize(
    "source",
    [LEDGER, f"spiffe://{TD}/ns/other/sa/prometheus", "not-a-spiffe-id"],
)
def test_any_other_source_is_denied(l7: Mesh, source: str) -> None:
    for method, path in (("GET", "/metrics"), ("GET", "/api"), (None, "/")):
        d = check(l7, source, "api-service", 8080, method, path)
        assert not d.allowed
        assert f"no TrafficTarget allows source {source}" in d.reason
        assert "not a source of TrafficTarget/default/api-service-metrics" in d.reason


def test_unauthenticated_source_is_denied(l7: Mesh) -> None:
    for method in ("GET", None):
        d = check(l7, None, "api-service", 8080, method, "/api")
        assert not d.allowed
        assert d.reason.startswith(
            "unauthenticated source (plaintext): allow-list active for default/api-service"
        )


def test_a_port_other_than_8080_is_denied(l7: Mesh) -> None:
    for source, path in ((WEBSITE, "/api"), (PROMETHEUS, "/metrics")):
        d = check(l7, source, "api-service", 9090, "GET", path)
        assert not d.allowed
        assert "allows it only on port 8080 (TCPRoute/default/api-service-port)" in d.reason
        assert not check(l7, source, "api-service", 9090).allowed


def test_tcp_connection_on_the_tcproute_port(l7: Mesh) -> None:
    # brief/OSM reading: a TCPRoute rule allows a connection that is not inspected as HTTP
    d = check(l7, PROMETHEUS, "api-service", 8080)
    assert d.allowed
    assert (
        d.rule == "TrafficTarget/default/api-service-metrics TCPRoute/default/api-service-port:8080"
    )


def test_destination_without_traffictarget_allows_everything(l7: Mesh) -> None:
    for source in (PROMETHEUS, None, "spiffe://elsewhere/ns/x/sa/y"):
        for method in ("DELETE", None):
            d = check(l7, source, "ledger", 5432, method, "/anything")
            assert d.allowed
            assert d.rule is None
            assert d.reason == (
                "no TrafficTarget names default/ledger (ServiceAccount default/ledger): "
                "allow-list not active"
            )
    ledger = l7.service("ledger")
    assert ledger is not None
    authz = InboundAuthz.compile(l7, ledger)
    assert not authz.active
    assert not authz.http_rules_on(8000)


def test_compiled_attributes(l7: Mesh) -> None:
    api = l7.service("api-service")
    assert api is not None
    authz = InboundAuthz.compile(l7, api)
    assert authz.active
    assert authz.mode == "enforce"
    assert authz.destination == f"spiffe://{TD}/ns/default/sa/api-service"
    assert authz.http_rules_on(8080)
    assert not authz.http_rules_on(9090)  # nothing is allowed there at all
    dump = authz.to_dict()
    assert json.loads(json.dumps(dump)) == dump
    assert [t["name"] for t in dump["trafficTargets"]] == [
        "TrafficTarget/default/api-service-metrics",
        "TrafficTarget/default/api-service-api",
    ]
    assert dump["trafficTargets"][0]["httpMatches"][0]["pathRegex"] == "/metrics"
    with pytest.raises(AttributeError):
        authz.mode = "audit"  # type: ignore[misc]


def test_raw_shapes_on_the_hot_path(l7: Mesh) -> None:
    api = l7.service("api-service")
    assert api is not None
    authz = InboundAuthz.compile(l7, api)
    d = authz.check_http(PROMETHEUS, 8080, b"GET", b"/metrics?name=/api", [(b"HOST", b"x")])
    assert d.allowed
    assert authz.check_http(PROMETHEUS, 8080, b"GET", b"/metrics", []) is d  # pre-built
    assert not authz.check_http(PROMETHEUS, 8080, b"get", b"/metrics", []).allowed
    assert not authz.check_http(PROMETHEUS, 8080, b"GET", b"/api?/metrics", []).allowed


def test_decide_destination_forms(l7: Mesh) -> None:
    api = l7.service("api-service")
    assert api is not None
    kwargs = {"port": 8080, "method": "GET", "path": "/metrics"}
    assert decide(l7, PROMETHEUS, api, **kwargs) == decide(  # type: ignore[arg-type]
        l7,
        PROMETHEUS,
        "default/api-service",
        **kwargs,  # type: ignore[arg-type]
    )
    with pytest.raises(KeyError, match="no Service default/nope"):
        decide(l7, PROMETHEUS, "nope", port=8080)


# -- the SMI L4 example and header filters ----------------------------------------------------

_SERVER = """
kind: Mesh
metadata: {name: l4}
spec: {trustDomain: smi.example}
---
kind: Service
metadata: {name: server}
spec:
  serviceAccount: server
  ports: [{port: 8300, protocol: tcp}, {port: 8301}, {port: 8302}, {port: 9999}]
"""


def test_smi_l4_example(examples: Path, tmp_path: Path) -> None:
    (tmp_path / "server.yaml").write_text(_SERVER)
    mesh = Mesh.load(tmp_path / "server.yaml", examples / L4)
    client = f"spiffe://{TD}/ns/default/sa/client"
    for port in (8300, 8301, 8302):
        d = check(mesh, client, "server", port)
        assert d.allowed
        assert (
            d.rule == f"TrafficTarget/default/protocal-specific TCPRoute/default/tcp-ports:{port}"
        )
        # a TCP-only TrafficTarget allows any HTTP request on its ports
        assert check(mesh, client, "server", port, "PATCH", "/x").allowed
    d = check(mesh, client, "server", 9999)
    assert not d.allowed
    assert "allows TCP only on ports 8300, 8301, 8302" in d.reason
    assert not check(mesh, client, "server", 9999, "GET", "/").allowed
    assert not check(mesh, PROMETHEUS, "server", 8300).allowed
    server = mesh.service("server")
    assert server is not None
    assert not InboundAuthz.compile(mesh, server).http_rules_on(8300)


_HEADER_TARGET = """
kind: Mesh
metadata: {name: h}
spec: {trustDomain: smi.example}
---
kind: Service
metadata: {name: web}
spec: {serviceAccount: web, ports: [{port: 80, protocol: http}]}
---
kind: TrafficTarget
metadata: {name: insiders}
spec:
  destination: {kind: ServiceAccount, name: web}
  sources: [{kind: ServiceAccount, name: client}]
  rules: [{kind: HTTPRouteGroup, name: the-routes, matches: [android-insiders]}]
"""


def test_smi_header_filters_example(examples: Path, tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(_HEADER_TARGET)
    mesh = Mesh.load(tmp_path / "web.yaml", examples / HEADERS)
    client = f"spiffe://{TD}/ns/default/sa/client"
    android = ("User-Agent", "Mozilla/5.0 (Linux; Android 14) Mobile")

    def http(*headers: tuple[str, str]) -> Decision:
        return check(mesh, client, "web", 80, "GET", "/", headers)

    assert http(android, ("Cookie", "type=insider")).allowed
    assert http(android, ("cookie", "a=1;type=insider;b=2")).allowed
    # the spec's regex allows no space after ";", and it must match the whole value
    assert not http(android, ("cookie", "a=1; type=insider")).allowed
    # cookie crumbs (HTTP/2 splits them) are joined with "; ": "type=insider; b=2" matches
    assert http(android, ("cookie", "type=insider"), ("cookie", "b=2")).allowed
    assert not http(android, ("Cookie", "type=outsider")).allowed
    d = http(("User-Agent", "Firefox"), ("Cookie", "type=insider"))
    assert not d.allowed
    assert "header user-agent value 'Firefox' does not match '.*Android.*'" in d.reason
    d = http(android)
    assert "header cookie is missing" in d.reason
    # firefox-users is in the group, but the rule narrows it to android-insiders
    assert not http(
        ("user-agent", "Firefox"),
    ).allowed


# -- semantics beyond the examples ---------------------------------------------------------------


def mesh_of(policy: str, *, authorization: str = "enforce", service_extra: str = "") -> Mesh:
    return Mesh.from_yaml(
        f"""
kind: Mesh
metadata: {{name: t}}
spec: {{trustDomain: {TD}, authorization: {authorization}}}
---
kind: Service
metadata: {{name: api}}
spec:
  serviceAccount: api
  ports: [{{port: 8080, protocol: http}}, {{port: 9090, protocol: http}}]
  {service_extra}
---
{policy}
"""
    )


def target(name: str, rules: str, sources: str = "[{kind: ServiceAccount, name: web}]") -> str:
    return f"""
kind: TrafficTarget
metadata: {{name: {name}}}
spec:
  destination: {{kind: ServiceAccount, name: api}}
  sources: {sources}
  rules: {rules}
---
"""


WEB = f"spiffe://{TD}/ns/default/sa/web"
GROUP = """
kind: HTTPRouteGroup
metadata: {name: g}
spec:
  matches:
  - {name: tier, headers: {X-Tier: gold}}
  - {name: api, pathRegex: /api}
  - {name: versioned, pathRegex: "/v[0-9]+/orders$", methods: [GET, HEAD]}
---
"""


def test_header_regex_must_match_the_whole_value() -> None:
    mesh = mesh_of(GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g, matches: [tier]}]"))

    def get(*headers: tuple[str, str]) -> bool:
        return check(mesh, WEB, "api", 8080, "GET", "/", headers).allowed

    assert get(("x-tier", "gold"))
    assert get(("X-TIER", " gold "))  # names in any case; surrounding whitespace is not value
    assert not get(("x-tier", "golden"))
    assert not get(("x-tier", "xgold"))
    assert not get(("x-tier", "gold"), ("x-tier", "silver"))  # joined: "gold, silver"
    assert not get()


def test_path_regex_is_anchored_at_the_start_and_ignores_the_query() -> None:
    mesh = mesh_of(GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g}]"))

    def get(path: str, method: str = "GET") -> bool:
        return check(mesh, WEB, "api", 8080, method, path).allowed

    assert get("/api")
    assert get("/api/v2/orders")
    assert get("/apix")  # from the start, not to the end
    assert not get("/apx")
    assert not get("/ap")
    assert not get("/v1/api")
    assert not get("/?x=/api")
    assert get("/v12/orders")
    assert get("/v12/orders?since=1", "HEAD")  # "$" holds: the query is not part of the path
    assert not get("/v12/orders/1")
    assert not get("/vx/orders")
    assert not get("/v1/orders", "POST")


def test_tcp_only_traffictarget_allows_http_on_its_port() -> None:
    mesh = mesh_of(
        "kind: TCPRoute\nmetadata: {name: p}\nspec: {matches: {ports: [8080]}}\n---\n"
        + target("tt", "[{kind: TCPRoute, name: p}]")
    )
    d = check(mesh, WEB, "api", 8080, "DELETE", "/anything")
    assert d.allowed
    assert d.rule == "TrafficTarget/default/tt TCPRoute/default/p:8080"
    assert check(mesh, WEB, "api", 8080).allowed
    assert not check(mesh, WEB, "api", 9090, "GET", "/").allowed
    api = mesh.service("api")
    assert api is not None
    assert not InboundAuthz.compile(mesh, api).http_rules_on(8080)


def test_http_only_traffictarget_denies_opaque_tcp() -> None:
    mesh = mesh_of(GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g, matches: [api]}]"))
    d = check(mesh, WEB, "api", 8080)
    assert not d.allowed
    assert "TrafficTarget/default/tt has no TCPRoute rule" in d.reason
    assert "a TCP connection on port 8080 does not match" in d.reason
    # no TCPRoute rule: HTTP requests are not limited to some ports
    for port in (8080, 9090, 12345):
        d = check(mesh, WEB, "api", port, "GET", "/api")
        assert d.allowed
        assert d.rule == "TrafficTarget/default/tt HTTPRouteGroup/default/g:api"
    api = mesh.service("api")
    assert api is not None
    assert InboundAuthz.compile(mesh, api).http_rules_on(12345)


def test_traffictargets_and_rules_of_one_kind_are_or() -> None:
    mesh = mesh_of(
        GROUP
        + "kind: TCPRoute\nmetadata: {name: a}\nspec: {matches: {ports: [8080]}}\n---\n"
        + "kind: TCPRoute\nmetadata: {name: b}\nspec: {matches: {ports: [9090]}}\n---\n"
        + target(
            "one", "[{kind: HTTPRouteGroup, name: g, matches: [api]}, {kind: TCPRoute, name: a}]"
        )
        + target(
            "two",
            "[{kind: TCPRoute, name: a}, {kind: TCPRoute, name: b},"
            " {kind: HTTPRouteGroup, name: g, matches: [versioned]},"
            " {kind: HTTPRouteGroup, name: g, matches: [tier]}]",
        )
    )
    d = check(mesh, WEB, "api", 8080, "GET", "/api")
    assert (
        d.rule == "TrafficTarget/default/one HTTPRouteGroup/default/g:api TCPRoute/default/a:8080"
    )
    d = check(mesh, WEB, "api", 9090, "GET", "/v2/orders")
    assert d.rule == (
        "TrafficTarget/default/two HTTPRouteGroup/default/g:versioned TCPRoute/default/b:9090"
    )
    assert check(mesh, WEB, "api", 9090, "POST", "/", [("x-tier", "gold")]).allowed
    d = check(mesh, WEB, "api", 9090, "GET", "/api")  # "one" allows /api on 8080 only
    assert not d.allowed
    assert "TrafficTarget/default/one allows it only on port 8080" in d.reason
    assert "TrafficTarget/default/two allows it only HTTPRouteGroup/default/g matches" in d.reason
    assert check(mesh, WEB, "api", 9090).allowed
    assert not check(mesh, WEB, "api", 7070).allowed


def test_tcproute_without_ports_allows_every_port() -> None:
    mesh = mesh_of(
        "kind: TCPRoute\nmetadata: {name: all}\nspec: {}\n---\n"
        + target("tt", "[{kind: TCPRoute, name: all}]")
    )
    for port in (1, 8080, 65535):
        d = check(mesh, WEB, "api", port)
        assert d.allowed
        assert d.rule == "TrafficTarget/default/tt TCPRoute/default/all:*"
        assert check(mesh, WEB, "api", port, "GET", "/").allowed


def test_rule_without_matches_allows_every_match_of_the_group() -> None:
    mesh = mesh_of(GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g}]"))
    assert check(mesh, WEB, "api", 8080, "GET", "/", [("x-tier", "gold")]).allowed
    assert check(mesh, WEB, "api", 8080, "PUT", "/api").allowed
    d = check(mesh, WEB, "api", 8080, "PUT", "/other")
    assert not d.allowed
    assert "HTTPRouteGroup/default/g matches 'tier', 'api', 'versioned'" in d.reason


def test_audit_mode_is_surfaced() -> None:
    policy = GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g}]")
    for mesh_mode, service_mode, expected in (
        ("audit", "", "audit"),
        ("enforce", "authorization: audit", "audit"),
        ("audit", "authorization: enforce", "enforce"),
        ("enforce", "", "enforce"),
    ):
        mesh = mesh_of(policy, authorization=mesh_mode, service_extra=service_mode)
        api = mesh.service("api")
        assert api is not None
        authz = InboundAuthz.compile(mesh, api)
        assert authz.mode == expected
        assert authz.to_dict()["mode"] == expected
        assert not authz.check_http(None, 8080, b"GET", b"/api", []).allowed  # the verdict


def test_subject_namespace_defaults_to_the_traffictargets() -> None:
    mesh = Mesh.from_yaml(
        f"""
kind: Mesh
metadata: {{name: t}}
spec: {{trustDomain: {TD}}}
---
kind: Service
metadata: {{name: api, namespace: shop}}
spec: {{serviceAccount: api}}
---
kind: TCPRoute
metadata: {{name: all, namespace: shop}}
spec: {{}}
---
kind: TrafficTarget
metadata: {{name: tt, namespace: shop}}
spec:
  destination: {{kind: ServiceAccount, name: api}}
  sources:
  - {{kind: ServiceAccount, name: web}}
  - {{kind: ServiceAccount, name: ops, namespace: tools}}
  rules: [{{kind: TCPRoute, name: all}}]
"""
    )
    assert check(mesh, f"spiffe://{TD}/ns/shop/sa/web", "shop/api", 80).allowed
    assert check(mesh, f"spiffe://{TD}/ns/tools/sa/ops", "shop/api", 80).allowed
    assert not check(mesh, f"spiffe://{TD}/ns/default/sa/web", "shop/api", 80).allowed
    assert not check(mesh, f"spiffe://{TD}/ns/shop/sa/ops", "shop/api", 80).allowed


def test_code_built_mesh_namespaces_and_dangling_routes_fail_closed() -> None:
    """A mesh built without the loader: "" namespaces default, missing routes allow nothing."""
    src = Source(file="<code>", line=0)
    base = Mesh.build(
        spec=MeshSpec(trust_domain=TD),
        services={"shop/api": ServiceSpec(service_account="api", ports=(ServicePort(port=8080),))},
    )
    group = Resource(
        api_version="specs.smi-spec.io/v1alpha4",
        kind="HTTPRouteGroup",
        name="g",
        namespace="shop",
        spec=HTTPRouteGroupSpec(matches=(HTTPMatch(name="all"),)),
        source=src,
    )

    def tt(name: str, *rules: TrafficTargetRule) -> Resource:
        return Resource(
            api_version="access.smi-spec.io/v1alpha3",
            kind="TrafficTarget",
            name=name,
            namespace="shop",
            spec=TrafficTargetSpec(
                destination=IdentitySubject(kind="ServiceAccount", name="api"),
                sources=(IdentitySubject(kind="ServiceAccount", name="web"),),
                rules=rules,
            ),
            source=src,
        )

    web = f"spiffe://{TD}/ns/shop/sa/web"
    mesh = Mesh(
        [
            *base.resources,
            group,
            tt("ok", TrafficTargetRule(kind="HTTPRouteGroup", name="g")),
            tt(
                "dangling",
                TrafficTargetRule(kind="TCPRoute", name="missing"),
                TrafficTargetRule(kind="HTTPRouteGroup", name="g"),
            ),
            tt("no-match", TrafficTargetRule(kind="HTTPRouteGroup", name="g", matches=("x",))),
        ]
    )
    d = check(mesh, web, "shop/api", 8080, "GET", "/")
    assert d.rule == "TrafficTarget/shop/ok HTTPRouteGroup/shop/g:all"
    d = check(mesh, web, "shop/api", 8080)
    assert not d.allowed
    assert "TrafficTarget/shop/dangling allows TCP only on no port" in d.reason
    assert "TCPRoute/shop/missing" in d.reason
    only = Mesh(
        [*base.resources, group, tt("dangling", TrafficTargetRule(kind="TCPRoute", name="x"))]
    )
    assert not check(only, web, "shop/api", 8080, "GET", "/").allowed
    nomatch = Mesh(
        [
            *base.resources,
            group,
            tt("n", TrafficTargetRule(kind="HTTPRouteGroup", name="g", matches=("x",))),
        ]
    )
    d = check(nomatch, web, "shop/api", 8080, "GET", "/")
    assert not d.allowed
    assert "HTTPRouteGroup/shop/g:x" in d.reason


def test_source_from_another_trust_domain_is_denied(l7: Mesh) -> None:
    d = check(
        l7, "spiffe://evil.example/ns/default/sa/prometheus", "api-service", 8080, "GET", "/metrics"
    )
    assert not d.allowed
    assert "its trust domain evil.example is not the mesh's smi.example" in d.reason


def test_regexes_are_compiled_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = mesh_of(GROUP + target("tt", "[{kind: HTTPRouteGroup, name: g}]"))
    api = mesh.service("api")
    assert api is not None
    authz = InboundAuthz.compile(mesh, api)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("re2.compile on the request path")

    monkeypatch.setattr(re2, "compile", boom)
    assert authz.check_http(WEB, 8080, b"GET", b"/v3/orders", []).allowed
    assert authz.check_http(WEB, 8080, b"GET", b"/", [(b"X-Tier", b"gold")]).allowed
    assert not authz.check_http(WEB, 8080, b"GET", b"/", [(b"X-Tier", b"lead")]).allowed


def test_invalid_utf8_fails_closed_with_a_reason() -> None:
    mesh = mesh_of(
        "kind: HTTPRouteGroup\nmetadata: {name: any}\n"
        'spec: {matches: [{name: any, headers: {x-any: ".*"}}]}\n---\n'
        + target("tt", "[{kind: HTTPRouteGroup, name: any}]")
    )
    api = mesh.service("api")
    assert api is not None
    authz = InboundAuthz.compile(mesh, api)
    assert authz.check_http(WEB, 8080, b"GET", b"/", [(b"x-any", b"caf\xc3\xa9")]).allowed
    d = authz.check_http(WEB, 8080, b"GET", b"/", [(b"x-any", b"caf\xe9")])  # Latin-1
    assert not d.allowed
    assert "not valid UTF-8 where a rule's regex applies" in d.reason
