"""Property: the compiled `InboundAuthz` answers exactly as the reference `decide()`.

Hypothesis builds small meshes straight from Resource objects (so code-built quirks such as
empty subject namespaces and dangling routes are covered too): TrafficTargets for one
destination with TCPRoute, HTTPRouteGroup and UDPRoute rules, matches with methods, literal
and real path regexes and header regexes; then requests from listed, unlisted, foreign and
unauthenticated sources. Every Decision (allowed, rule and reason) must be equal.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymesh.policy.authz import InboundAuthz, decide
from pymesh.policy.kinds import (
    HTTPMatch,
    HTTPRouteGroupSpec,
    IdentitySubject,
    PortMatch,
    TCPRouteSpec,
    TrafficTargetRule,
    TrafficTargetSpec,
    UDPRouteSpec,
)
from pymesh.policy.model import MeshSpec, Resource, ServicePort, ServiceSpec, Source
from pymesh.policy.snapshot import Mesh

TD = "td.local"
ACCOUNTS = ("a", "b", "dest")
NAMESPACES = ("default", "other")
PORTS = (80, 8080, 9090)
SRC = Source(file="<hypothesis>", line=0)

PATH_REGEXES = (None, "/api", "/api/v[0-9]+", ".*", "", "/metrics$", "/api/?$", "/a.c", "/é")
HEADER_SETS: tuple[tuple[tuple[str, str], ...], ...] = (  # half of the matches: none
    (),
    (),
    (),
    (),
    (("x-tier", "gold"),),
    (("X-Tier", "gold|silver"),),
    (("cookie", "^(.*?;)?(type=insider)(;.*)?$"),),
    (("x-tier", "gold"), ("x-other", "[0-9]+")),
)
METHOD_SETS: tuple[tuple[Any, ...], ...] = ((), ("GET",), ("GET", "POST"), ("*",), ("DELETE",))


def resource(kind: str, name: str, spec: object, namespace: str = "default") -> Resource:
    api = {
        "TrafficTarget": "access.smi-spec.io/v1alpha3",
        "Service": "pymesh.io/v1alpha1",
    }.get(kind, "specs.smi-spec.io/v1alpha4")
    return Resource(
        api_version=api, kind=kind, name=name, namespace=namespace, spec=spec, source=SRC
    )


@st.composite
def meshes(draw: st.DrawFn) -> Mesh:
    """A mesh with Service default/dest and 0-3 TrafficTargets (most of them naming it)."""
    base = Mesh.build(
        spec=MeshSpec(trust_domain=TD),
        services={"dest": _service("dest")},
    )
    resources = list(base.resources)
    for i in range(3):
        ports = draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=2))
        resources.append(
            resource("TCPRoute", f"tcp-{i}", TCPRouteSpec(matches=PortMatch(ports=tuple(ports))))
        )
    resources.append(resource("UDPRoute", "udp-0", UDPRouteSpec(matches=PortMatch(ports=(80,)))))
    for g in range(2):
        matches = tuple(
            HTTPMatch(
                name=f"m{j}",
                methods=draw(st.sampled_from(METHOD_SETS)),
                path_regex=draw(st.sampled_from(PATH_REGEXES)),
                headers=draw(st.sampled_from(HEADER_SETS)),
            )
            for j in range(draw(st.integers(1, 3)))
        )
        resources.append(resource("HTTPRouteGroup", f"g{g}", HTTPRouteGroupSpec(matches=matches)))
    rule = st.one_of(
        st.builds(
            lambda n: TrafficTargetRule(kind="TCPRoute", name=n),
            st.sampled_from(("tcp-0", "tcp-1", "tcp-2", "missing")),
        ),
        st.builds(
            lambda n, m: TrafficTargetRule(kind="HTTPRouteGroup", name=n, matches=tuple(m)),
            st.sampled_from(("g0", "g1", "missing")),
            st.lists(st.sampled_from(("m0", "m1", "m2")), unique=True, max_size=2),
        ),
        st.just(TrafficTargetRule(kind="UDPRoute", name="udp-0")),
    )
    subject = st.builds(
        lambda name, ns: IdentitySubject(kind="ServiceAccount", name=name, namespace=ns),
        st.sampled_from(ACCOUNTS),
        st.sampled_from(("", *NAMESPACES)),
    )
    for t in range(draw(st.integers(0, 3))):
        spec = TrafficTargetSpec(
            destination=IdentitySubject(
                kind="ServiceAccount",
                name=draw(st.sampled_from(("dest", "dest", "dest", "a"))),
                namespace=draw(st.sampled_from(("", "default"))),
            ),
            sources=tuple(draw(st.lists(subject, min_size=1, max_size=3))),
            rules=tuple(draw(st.lists(rule, min_size=1, max_size=3))),
        )
        resources.append(resource("TrafficTarget", f"tt-{t}", spec))
    return Mesh(resources)


def _service(account: str) -> ServiceSpec:
    return ServiceSpec(service_account=account, ports=(ServicePort(port=8080),))


OTHER_SOURCES = (
    None,
    f"spiffe://{TD}/ns/default/sa/a",
    f"spiffe://{TD}/ns/other/sa/b",
    "spiffe://evil.example/ns/default/sa/a",
)
PATHS = st.sampled_from(
    (
        "/",
        "/api",
        "/api/v2/x",
        "/api?x=1",
        "/api/?x",
        "/apiv2",
        "/ap",
        "/apx",
        "/metrics",
        "/metrics?x",
        "/metrics/x",
        "/abc",
        "/a.c?q=1",
        "/é/x",
        "/?/api",
    )
)
HEADERS = st.lists(
    st.sampled_from(
        (
            ("X-Tier", "gold"),
            ("x-tier", "silver"),
            ("x-tier", " gold "),
            ("cookie", "type=insider"),
            ("Cookie", "b=1"),
            ("x-other", "12"),
            ("X-OTHER", "x"),
        )
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mesh=meshes(), data=st.data())
def test_compiled_agrees_with_decide(mesh: Mesh, data: st.DataObject) -> None:
    service = mesh.service("dest")
    assert service is not None
    authz = InboundAuthz.compile(mesh, service)
    assert authz.active == any(
        t.spec.destination.name == "dest" for t in mesh.of_kind("TrafficTarget")
    )
    listed = sorted({s for t in authz.to_dict()["trafficTargets"] for s in t["sources"]})
    # mostly sources that some TrafficTarget lists, so that rules (not just sources) decide
    sources = st.sampled_from([*listed, *listed, *listed, *OTHER_SOURCES])
    request = st.tuples(
        sources,
        st.sampled_from((*PORTS, 7000)),
        st.sampled_from((None, "GET", "POST", "DELETE")),
        PATHS,
        HEADERS,
    )
    for source, port, method, path, headers in data.draw(
        st.lists(request, min_size=8, max_size=24)
    ):
        reference = decide(
            mesh, source, service, port=port, method=method, path=path, headers=headers
        )
        tcp = authz.check_tcp(source, port)
        if method is None:
            assert tcp == reference
            continue
        raw = [(n.encode(), v.encode()) for n, v in headers]
        http = authz.check_http(source, port, method.encode(), path.encode(), raw)
        assert http == reference
        if not authz.http_rules_on(port):
            # no HTTPRouteGroup constrains this port: the connection's answer is the request's
            assert (http.allowed, http.rule) == (tcp.allowed, tcp.rule)
