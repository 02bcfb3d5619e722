"""The registry: validated, versioned snapshots; conflicts; subscriptions; endpoints; views."""

from __future__ import annotations

import asyncio
import gc
import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pymesh.errors import ConfigError, FieldError
from pymesh.policy import (
    Endpoint,
    Mesh,
    Resource,
    ServicePort,
    ServiceSpec,
    Source,
    load_paths,
    load_text,
)
from pymesh.policy.authz import InboundAuthz
from pymesh.policy.dump import to_yaml
from pymesh.policy.registry import Registry, Snapshot, Subscription, conflicts, view_for

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "config"
SMI = FIXTURES / "smi"
SHOP = ROOT / "examples" / "shop" / "mesh.yaml"
EXAMPLE = ROOT / "examples" / "config" / "mesh.yaml"

# the sets of paths of every valid config that defines Services
MESHES: dict[str, list[Path]] = {
    "good": [FIXTURES / "good"],
    "authz+smi01": [
        FIXTURES / "authz" / "mesh.yaml",
        SMI / "01-traffic-access-v1alpha3-l7-example.yaml",
    ],
    "authz": [FIXTURES / "authz" / "mesh.yaml"],
    "shop": [SHOP],
    "example": [EXAMPLE],
}

# FILE:LINE: KIND/NAMESPACE/NAME: spec.path.to.field: what is wrong (expected ...)
FORMAT = re.compile(
    r"(?P<file>.+?):(?P<line>[1-9][0-9]*): (?P<resource>[A-Za-z]+/[a-z0-9-]+/[A-Za-z0-9_.-]+): "
    r"(?P<path>\S+): (?P<message>.+\((expected|did you mean) .+\))"
)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str) -> int:
    """The line of the only line of `text` containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def rejected(registry: Registry, resources: object, *, text: bool = False) -> list[FieldError]:
    """The errors of an apply that must fail; the snapshot in force must not change."""
    before = registry.current
    with pytest.raises(ConfigError) as info:
        if text:
            assert isinstance(resources, str)
            registry.apply_text(resources, "t.yaml")
        else:
            registry.apply(resources)  # type: ignore[arg-type]
    assert registry.current is before
    errors = list(info.value.errors)
    assert errors
    for e in errors:
        assert FORMAT.fullmatch(str(e)), str(e)
    return errors


BASE = dedent("""
    kind: Mesh
    metadata: {name: m}
    spec: {trustDomain: m.local}
    ---
    kind: Service
    metadata: {name: web}
    spec:
      ports: [{name: http, port: 8080, protocol: http}]
    ---
    kind: Service
    metadata: {name: orders}
    spec:
      ports:
      - {name: http, port: 8080, protocol: http}
      - {name: grpc, port: 9090, protocol: grpc}
      endpoints: [{address: 127.0.0.1, port: 9001}]
    """)


# -- apply: versions and validation ---------------------------------------------------------------


def test_versions_count_and_an_identical_config_is_not_a_new_version() -> None:
    registry = Registry()
    assert (registry.current, registry.config) == (None, None)
    one = registry.apply_text(BASE, "a.yaml")
    assert (one.version, one.mesh.version) == (1, Mesh.from_yaml(BASE).version)
    assert registry.current is one
    # the same content from elsewhere (other file, re-dumped, a Mesh): the same snapshot
    assert registry.apply_text(BASE, "elsewhere.yaml") is one
    assert registry.apply(load_text(to_yaml(one.mesh.resources))) is one
    assert registry.apply(Mesh.from_yaml(BASE)) is one
    changed = BASE.replace("trustDomain: m.local", "trustDomain: n.local")
    two = registry.apply_text(changed)
    assert two.version == 2 and two.mesh.spec.trust_domain == "n.local"
    three = registry.apply_paths([str(SHOP)])
    assert three.version == 3 and three.mesh.name == "shop"
    back = registry.apply_text(BASE)
    assert back.version == 4 and back.mesh.version == one.mesh.version


def test_a_registry_can_start_with_a_mesh() -> None:
    mesh = Mesh.load(SHOP)
    registry = Registry(mesh)
    assert registry.current == Snapshot(1, mesh)
    assert registry.config is mesh


def test_a_set_from_several_loads_is_checked_as_a_whole() -> None:
    smi = dedent("""
        kind: HTTPRouteGroup
        metadata: {name: routes}
        spec:
          matches: [{name: all}]
        ---
        kind: TrafficTarget
        metadata: {name: web-to-orders}
        spec:
          destination: {kind: ServiceAccount, name: orderz}
          sources: [{kind: ServiceAccount, name: web}]
          rules: [{kind: HTTPRouteGroup, name: routes}]
        ---
        kind: TrafficSplit
        metadata: {name: canary}
        spec:
          service: orders
          backends: [{service: orders, weight: 9}, {service: orders-v3, weight: 1}]
        """)
    services = BASE + "---\n" + smi.split("---\n")[0]  # the same HTTPRouteGroup again
    registry = Registry()
    registry.apply_text(BASE)
    # each file loads on its own (without Services, the SMI file's references to them are
    # not checked) ...
    loaded_smi, loaded_services = load_text(smi, "smi.yaml"), load_text(services, "svc.yaml")
    # ... but together the TrafficTarget and the split name missing things, and the route
    # group is defined twice
    errors = rejected(registry, [*loaded_smi, *loaded_services])
    assert [(e.file, e.line, e.resource, e.path) for e in errors] == [
        ("smi.yaml", line_of(smi, "kind: TrafficTarget"), "TrafficTarget/default/web-to-orders",
         "spec.destination.name"),
        ("smi.yaml", line_of(smi, "kind: TrafficSplit"), "TrafficSplit/default/canary",
         "spec.backends[1].service"),
        ("svc.yaml", line_of(services, "kind: HTTPRouteGroup"), "HTTPRouteGroup/default/routes",
         "metadata.name"),
    ]  # fmt: skip
    assert errors[0].message == (
        'no Service in namespace default has serviceAccount "orderz" (did you mean orders?)'
    )
    assert errors[1].message.startswith('no Service "orders-v3" in namespace default')
    assert "first defined at smi.yaml:1 " in errors[2].message
    assert registry.current is not None and registry.current.version == 1
    assert registry.apply([*loaded_smi[:1], *load_text(BASE)]).version == 2


def test_a_mesh_built_in_code_is_validated() -> None:
    registry = Registry()
    bad = Mesh.build(
        services={
            "web": ServiceSpec(service_account="web", ports=(ServicePort(port=0),)),
            "Bad_Name": ServiceSpec(service_account="x"),
        }
    )
    errors = rejected(registry, bad)
    assert [(e.file, e.line, e.resource, e.path) for e in errors] == [
        ("<code>", 1, "Service/default/web", "spec.ports[0].port"),
        ("<code>", 1, "Service/default/-", "metadata.name"),  # the loader: an invalid name
    ]
    assert errors[0].message == "0 is out of range (expected an integer 1-65535)"
    good = Mesh.build(services={"web": ServiceSpec(service_account="web")})
    assert registry.apply(good).version == 1


def test_a_resource_that_config_cannot_express_is_an_error() -> None:
    src = Source(file="code.py", line=7)
    weird = Resource(
        api_version="pymesh.io/v1alpha1", kind="Service", name="w", spec=None, source=src
    )
    errors = rejected(Registry(), [*Mesh.from_yaml(BASE).resources, weird])
    assert len(errors) == 1
    assert (errors[0].file, errors[0].line, errors[0].path) == ("code.py", 7, "spec")
    assert errors[0].message.startswith("cannot be written as config: ")


def test_apply_text_reports_the_loaders_errors() -> None:
    registry = Registry()
    errors = rejected(registry, BASE.replace("port: 9090", "port: 99999"), text=True)
    assert [(e.file, e.line, e.path) for e in errors] == [
        ("t.yaml", line_of(BASE, "port: 9090"), "spec.ports[1].port")
    ]
    assert registry.current is None


# -- conflicts ------------------------------------------------------------------------------------


def http_route(name: str, parent: str, rules: str, namespace: str = "default") -> str:
    body = textwrap.indent(dedent(rules).rstrip("\n"), "  ")
    return (
        dedent(f"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          parentRefs: [{parent}]
          rules:
        """)
        + body
        + "\n"
    )


def grpc_route(name: str, parent: str, rules: str) -> str:
    return http_route(name, parent, rules).replace("kind: HTTPRoute", "kind: GRPCRoute")


def conflict_errors(text: str) -> list[FieldError]:
    errors = conflicts(Mesh.from_yaml(text, "t.yaml"))
    for e in errors:
        assert FORMAT.fullmatch(str(e)), str(e)
    return errors


def test_two_routes_with_the_same_match_on_the_same_service_conflict() -> None:
    text = (
        BASE
        + http_route(
            "a",
            "{kind: Service, name: orders, port: 8080}",
            """
        - matches:
          - path: {type: PathPrefix, value: /x}
            headers: [{name: X-A, value: "1"}, {name: x-b, value: "2"}]
          backendRefs: [{name: orders, port: 8080}]
        """,
        )
        + http_route(
            "b",
            "{kind: Service, name: orders, port: 8080}",
            """
        - matches:
          - {path: {value: /other}}
          - path: {type: PathPrefix, value: /x}
            headers: [{name: x-b, value: "2"}, {name: x-a, value: "1"}]
          backendRefs: [{name: web, port: 8080}]
        """,
        )
    )
    (e,) = conflict_errors(text)
    a_line = line_of(text, "name: a,") - 2
    b_line = line_of(text, "name: b,") - 2
    assert (e.file, e.line, e.resource, e.path) == (
        "t.yaml",
        b_line,
        "HTTPRoute/default/b",
        "spec.rules[0].matches[1]",
    )
    assert e.message == (
        f"same match as HTTPRoute/default/a spec.rules[0].matches[0] at t.yaml:{a_line} "
        "on Service default/orders port 8080 (expected each match of a Service's HTTPRoutes "
        "in one route only)"
    )
    registry = Registry()
    errors = rejected(registry, text, text=True)
    assert [str(x) for x in errors] == [str(e)]


ORDERS_8080 = "{kind: Service, name: orders, port: 8080}"


@pytest.mark.parametrize(
    ("parent_a", "parent_b", "conflict"),
    [
        ("{kind: Service, name: orders}", "{kind: Service, name: orders, port: 8080}", True),
        ("{kind: Service, name: orders, port: 9090}", ORDERS_8080, False),
        ("{kind: Service, name: orders, sectionName: http}", ORDERS_8080, True),
        ("{kind: Service, name: orders, sectionName: grpc}", ORDERS_8080, False),
        ("{kind: Service, name: orders}", "{kind: Service, name: web}", False),
        ("{kind: Service, name: orders}", "{kind: Service, name: orders, namespace: prod}", False),
    ],
)
def test_routes_conflict_only_on_the_same_service_and_port(
    parent_a: str, parent_b: str, conflict: bool
) -> None:
    prod = "---\nkind: Service\nmetadata: {name: orders, namespace: prod}\nspec:\n"
    prod += "  ports: [{port: 8080}]\n"
    rule = "- matches: [{path: {value: /x}}]\n"
    rule += "  backendRefs: [{name: orders, namespace: default, port: 8080}]\n"
    text = BASE + prod + http_route("a", parent_a, rule) + http_route("b", parent_b, rule)
    assert bool(conflict_errors(text)) is conflict


@pytest.mark.parametrize(
    ("rules_b", "hostnames_b", "conflict"),
    [
        ("- backendRefs: [{name: web, port: 8080}]", "", True),  # both: every request
        ("- matches: [{path: {value: /}}]\n  backendRefs: [{name: web, port: 8080}]", "", True),
        ("- matches: [{path: {type: Exact, value: /}}]", "", False),
        ("- matches: [{method: GET}]", "", False),
        ("- matches: [{queryParams: [{name: q, value: v}]}]", "", False),
        ("- backendRefs: [{name: web, port: 8080}]", "hostnames: [b.example]", True),
    ],
)
def test_rules_without_matches_match_everything(
    rules_b: str, hostnames_b: str, conflict: bool
) -> None:
    text = BASE + http_route(
        "a", "{kind: Service, name: orders}", "- backendRefs: [{name: orders, port: 8080}]"
    )
    b = http_route("b", "{kind: Service, name: orders}", rules_b)
    if hostnames_b:
        b = b.replace("  rules:", f"  {hostnames_b}\n  rules:")
    errors = conflict_errors(text + b)
    assert bool(errors) is conflict
    if errors:
        assert errors[0].path.startswith("spec.rules[0]")


def test_disjoint_hostnames_do_not_conflict() -> None:
    rule = "- backendRefs: [{name: orders, port: 8080}]"
    a = http_route("a", "{kind: Service, name: orders}", rule)
    b = http_route("b", "{kind: Service, name: orders}", rule)
    a = a.replace("  rules:", "  hostnames: [a.example]\n  rules:")
    b = b.replace("  rules:", "  hostnames: [b.example, c.example]\n  rules:")
    assert conflict_errors(BASE + a + b) == []
    c = b.replace("c.example", "a.example")
    assert len(conflict_errors(BASE + a + c)) == 1


def test_grpc_routes_conflict_with_grpc_routes_only() -> None:
    rule = "- matches: [{method: {service: shop.Orders, method: Get}}]\n"
    rule += "  backendRefs: [{name: orders, port: 9090}]"
    parent = "{kind: Service, name: orders, port: 9090}"
    text = (
        BASE
        + grpc_route("g1", parent, rule)
        + http_route("h1", parent, "- backendRefs: [{name: orders, port: 9090}]")
    )
    assert conflict_errors(text) == []
    (e,) = conflict_errors(text + grpc_route("g2", parent, rule))
    assert (e.resource, e.path) == ("GRPCRoute/default/g2", "spec.rules[0].matches[0]")
    assert "same match as GRPCRoute/default/g1 spec.rules[0].matches[0]" in e.message
    other = rule.replace("method: Get", "method: List")
    assert conflict_errors(text + grpc_route("g3", parent, other)) == []


def test_one_route_may_repeat_itself() -> None:
    rule = "- matches: [{path: {value: /x}}]\n- matches: [{path: {value: /x}}]"
    text = BASE + http_route(
        "a", "{kind: Service, name: orders}, {kind: Service, name: orders, port: 8080}", rule
    )
    assert conflict_errors(text) == []


def test_a_rejection_lists_conflicts_with_every_other_error() -> None:
    rule = "- backendRefs: [{name: orders, port: 8080}]"
    routes = http_route("a", "{kind: Service, name: orders}", rule)
    routes += http_route("b", "{kind: Service, name: orders}", rule)
    broken = load_text(routes.replace("name: orders, port: 8080", "name: orderz, port: 8080"))
    errors = rejected(Registry(), [*load_text(BASE, "base.yaml"), *broken])
    assert [(e.resource, e.path) for e in errors] == [
        ("HTTPRoute/default/a", "spec.rules[0].backendRefs[0].name"),
        ("HTTPRoute/default/b", "spec.rules[0].backendRefs[0].name"),
        ("HTTPRoute/default/b", "spec.rules[0]"),  # the conflict
    ]


def test_one_traffic_split_per_root_service() -> None:
    split = dedent("""
        ---
        kind: TrafficSplit
        metadata: {{name: {name}, namespace: {ns}}}
        spec:
          service: {root}
          backends: [{{service: {root}, weight: 1}}]
        """)
    prod = "---\nkind: Service\nmetadata: {name: orders, namespace: prod}\nspec: {}\n"
    text = BASE + prod
    text += split.format(name="s1", ns="default", root="orders")
    text += split.format(name="s2", ns="prod", root="orders")  # another namespace: fine
    text += split.format(name="s3", ns="default", root="web")
    assert conflict_errors(text) == []
    text += split.format(name="s4", ns="default", root="orders")
    (e,) = conflict_errors(text)
    assert (e.resource, e.path, e.line) == (
        "TrafficSplit/default/s4",
        "spec.service",
        line_of(text, "name: s4") - 1,
    )
    assert e.message == (
        f"Service default/orders is already split by TrafficSplit/default/s1 at "
        f"t.yaml:{line_of(text, 'name: s1') - 1} (expected one TrafficSplit per root service)"
    )


# -- subscriptions ------------------------------------------------------------------------------


async def next_within(sub: Subscription, seconds: float = 2.0) -> Snapshot:
    async with asyncio.timeout(seconds):
        return await anext(sub)


async def nothing_within(sub: Subscription, seconds: float = 0.05) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await anext(sub)


def variant(i: int) -> str:
    return BASE.replace("trustDomain: m.local", f"trustDomain: m{i}.local")


async def test_a_subscriber_gets_the_current_snapshot_then_each_new_one() -> None:
    registry = Registry()
    sub = registry.subscribe()
    await nothing_within(sub)  # no config yet
    one = registry.apply_text(variant(1))
    assert await next_within(sub) is one
    await nothing_within(sub)
    two = registry.apply_text(variant(2))
    assert await next_within(sub) is two
    late = registry.subscribe()
    assert await next_within(late) is two  # the current one first
    # identical or rejected configs never reach a subscriber
    registry.apply_text(variant(2), "other.yaml")
    with pytest.raises(ConfigError):
        registry.apply_text(variant(3).replace("port: 9090", "port: 0"))
    await nothing_within(sub)
    sub.close()
    late.close()
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_a_slow_subscriber_gets_only_the_latest() -> None:
    registry = Registry()
    sub = registry.subscribe()
    snaps = [registry.apply_text(variant(i)) for i in range(50)]
    last = snaps[-1]
    assert last.version == 50
    assert await next_within(sub) is last
    await nothing_within(sub)  # nothing queued behind it


async def test_async_for_ends_when_the_registry_closes() -> None:
    registry = Registry(Mesh.from_yaml(BASE))
    seen: list[int] = []

    async def consume() -> None:
        seen.extend([snap.version async for snap in registry.subscribe()])

    async with asyncio.timeout(2), asyncio.TaskGroup() as tg:
        tg.create_task(consume())
        await asyncio.sleep(0)
        registry.apply_text(variant(7))
        await asyncio.sleep(0.01)
        registry.close()
    assert seen == [1, 2]
    after = registry.subscribe()
    with pytest.raises(StopAsyncIteration):
        await next_within(after)
    assert registry.apply_text(variant(8)).version == 3  # the config itself stays usable


async def test_close_wakes_a_waiting_subscriber() -> None:
    registry = Registry()
    sub = registry.subscribe()

    async def close_soon() -> None:
        await asyncio.sleep(0.01)
        sub.close()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(close_soon())
        with pytest.raises(StopAsyncIteration):
            await next_within(sub)
    assert len(registry._subs) == 0


async def test_a_cancelled_wait_loses_nothing() -> None:
    registry = Registry()
    sub = registry.subscribe()
    await nothing_within(sub)  # cancelled by the timeout
    await nothing_within(sub)
    snap = registry.apply_text(BASE)
    assert await next_within(sub) is snap


async def test_one_waiter_per_subscription() -> None:
    registry = Registry()
    sub = registry.subscribe()
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(next_within(sub))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await anext(sub)
        snap = registry.apply_text(BASE)
    assert first.result() is snap


async def test_an_apply_from_another_thread_wakes_subscribers() -> None:
    registry = Registry()
    sub = registry.subscribe()
    result: list[Snapshot] = []
    thread = threading.Thread(target=lambda: result.append(registry.apply_text(BASE)))

    async def apply_later() -> None:
        await asyncio.sleep(0.01)
        thread.start()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(apply_later())
        snap = await next_within(sub)
    thread.join(5)
    assert result == [snap]


def test_forgotten_subscriptions_are_dropped() -> None:
    registry = Registry(Mesh.from_yaml(BASE))
    registry.subscribe()
    kept = registry.subscribe()
    gc.collect()
    assert list(registry._subs) == [kept]


async def test_a_thousand_subscribers_get_a_change() -> None:
    registry = Registry(Mesh.from_yaml(BASE))
    subs = [registry.subscribe() for _ in range(1000)]
    for s in subs:
        assert (await next_within(s)).version == 1
    got: list[int] = []

    async def wait(s: Subscription) -> None:
        got.append((await next_within(s, 5.0)).version)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for s in subs:
            tg.create_task(wait(s))
        await asyncio.sleep(0)
        registry.apply_text(variant(1))
    elapsed = time.perf_counter() - start  # until every subscriber has the new snapshot
    assert got == [2] * 1000
    assert elapsed < 2.0, elapsed


# -- endpoints ------------------------------------------------------------------------------------


def eps(*ports: int, host: str = "10.0.0.1") -> list[Endpoint]:
    return [Endpoint(address=host, port=p) for p in ports]


def test_registered_endpoints_replace_the_static_ones() -> None:
    registry = Registry()
    with pytest.raises(RuntimeError, match="no config"):
        registry.set_endpoints({("default", "web"): eps(1)})
    one = registry.apply_text(BASE)  # the endpoints registered before apply count
    assert one.version == 1
    assert one.mesh.service_spec("web").endpoints == tuple(eps(1))
    assert one.mesh.service_spec("orders").endpoints == (Endpoint(address="127.0.0.1", port=9001),)
    two = registry.set_endpoints({("default", "orders"): eps(2, 3), ("prod", "nope"): eps(4)})
    assert two.version == 2
    assert two.mesh.service_spec("orders").endpoints == tuple(eps(2, 3))
    assert two.mesh.service_spec("web").endpoints == ()  # no longer registered: static (none)
    assert (
        two.mesh.version
        == registry.config.with_endpoints(  # type: ignore[union-attr]
            {("default", "orders"): eps(2, 3)}
        ).version
    )
    # the config as applied keeps its static endpoints
    assert registry.config is not None
    assert registry.config.service_spec("orders").endpoints == (
        Endpoint(address="127.0.0.1", port=9001),
    )
    # the same endpoints again: no new version; a new config keeps the registered endpoints
    assert (
        registry.set_endpoints({("default", "orders"): eps(2, 3), ("prod", "nope"): eps(4)}) is two
    )
    three = registry.apply_text(variant(1))
    assert three.version == 3
    assert three.mesh.service_spec("orders").endpoints == tuple(eps(2, 3))
    # an empty list means none; a static list equal to the registered one is no change
    four = registry.set_endpoints({("default", "orders"): []})
    assert four.mesh.service_spec("orders").endpoints == ()
    five = registry.set_endpoints({("default", "orders"): eps(9001, host="127.0.0.1")})
    assert five.mesh.version == registry.config.version
    assert registry.set_endpoints({}) is five


def test_endpoints_that_config_cannot_hold_are_left_out() -> None:
    registry = Registry(Mesh.from_yaml(BASE))
    snap = registry.set_endpoints(
        {
            ("default", "web"): [
                Endpoint(address="10.0.0.1", port=1),
                Endpoint(address="10.0.0.1", port=1),  # a repeat
                Endpoint(address="10.0.0.2", port=0),
                Endpoint(address="bad host", port=80),
                Endpoint(address="::1", port=65535),
                Endpoint(address="web-1.internal", port=15006),
            ]
        }
    )
    assert snap.mesh.service_spec("web").endpoints == (
        Endpoint(address="10.0.0.1", port=1),
        Endpoint(address="::1", port=65535),
        Endpoint(address="web-1.internal", port=15006),
    )
    Mesh.from_yaml(to_yaml(view_for(snap.mesh, "default/web").resources))


# -- views ----------------------------------------------------------------------------------------


def all_views() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, paths in MESHES.items():
        mesh = Mesh(load_paths(paths))
        out.extend((name, f"{ns}/{svc}") for ns, svc in mesh.services)
    return out


@pytest.mark.parametrize(("config", "service"), all_views())
def test_every_view_loads_on_its_own_and_keeps_the_inbound_policy(
    config: str, service: str
) -> None:
    mesh = Mesh(load_paths(MESHES[config]))
    view = view_for(mesh, service)
    assert view_for(mesh, service) is view  # computed once per mesh and service
    reloaded = Mesh.from_yaml(to_yaml(view.resources), "view.yaml")
    assert reloaded.version == view.version
    assert set(view.resources) <= set(mesh.resources)
    assert view.name == mesh.name and view.spec == mesh.spec
    ns, _, name = service.partition("/")
    own = mesh.service(name, ns)
    assert own is not None and view.service(name, ns) is own
    assert InboundAuthz.compile(view, own).to_dict() == InboundAuthz.compile(mesh, own).to_dict()


def names(view: Mesh, kind: str) -> set[str]:
    return {r.name for r in view.of_kind(kind)}


def test_shop_views() -> None:
    mesh = Mesh.load(SHOP)
    web, orders, inventory = (view_for(mesh, s) for s in ("web", "orders", "default/inventory"))
    # web may call orders, not inventory; no TrafficTarget names web
    assert names(web, "Service") == {"web", "orders"}
    assert names(web, "TrafficTarget") == set() and names(web, "HTTPRouteGroup") == set()
    assert names(orders, "Service") == {"web", "orders", "inventory"}
    assert names(orders, "TrafficTarget") == {"web-to-orders"}
    assert names(orders, "HTTPRouteGroup") == {"shop-routes"}
    assert names(inventory, "Service") == {"web", "inventory"}
    assert names(inventory, "TrafficTarget") == {"orders-to-inventory"}
    assert view_for(mesh, "orders") is orders
    with pytest.raises(KeyError, match="no Service default/nope"):
        view_for(mesh, "nope")
    with pytest.raises(KeyError, match="no Service prod/web"):
        view_for(mesh, "prod/web")


def test_example_views_follow_splits_routes_and_policies() -> None:
    mesh = Mesh.load(EXAMPLE)
    web = view_for(mesh, "web")
    assert names(web, "Service") == {"web", "orders", "orders-v2", "legacy-db"}
    assert names(web, "TrafficSplit") == {"orders-canary"}
    assert names(web, "HTTPRoute") == {"orders-beta"}
    assert names(web, "GRPCRoute") == {"orders-grpc"}
    assert names(web, "TrafficPolicy") == {"orders", "orders-beta-chaos"}
    assert names(web, "TrafficTarget") == set()
    # legacy-db may not call orders (nor orders-v2: same ServiceAccount): none of their rules
    db = view_for(mesh, "legacy-db")
    assert names(db, "Service") == {"web", "legacy-db"}
    assert {r.kind for r in db.resources} == {"Mesh", "Service"}
    # orders-v2 shares the orders ServiceAccount: the same inbound policy
    v2 = view_for(mesh, "orders-v2")
    assert names(v2, "TrafficTarget") == {"web-to-orders"}
    assert names(v2, "HTTPRouteGroup") == {"orders-routes"}
    assert "orders" not in names(v2, "Service")


def test_audit_mode_makes_every_service_callable() -> None:
    text = SHOP.read_text()
    mesh = Mesh.from_yaml(text.replace("authorization: enforce", "authorization: audit"))
    assert names(view_for(mesh, "web"), "Service") == {"web", "orders", "inventory"}
    override = text.replace(
        "  serviceAccount: inventory\n", "  serviceAccount: inventory\n  authorization: audit\n"
    )
    assert override != text
    mesh = Mesh.from_yaml(override)
    assert names(view_for(mesh, "web"), "Service") == {"web", "orders", "inventory"}


def test_a_route_brings_every_service_it_names() -> None:
    # web may not call orders-v2 directly, but a route on web sends there and mirrors to db
    text = (
        BASE
        + dedent("""
        ---
        kind: Service
        metadata: {name: v2}
        spec:
          serviceAccount: orders
          ports: [{port: 8080}]
        ---
        kind: Service
        metadata: {name: db}
        spec:
          serviceAccount: db
          ports: [{port: 5432, protocol: tcp}]
        ---
        kind: Service
        metadata: {name: shadow}
        spec:
          serviceAccount: db
          ports: [{port: 8080}]
        ---
        kind: TrafficTarget
        metadata: {name: only-orders}
        spec:
          destination: {kind: ServiceAccount, name: orders}
          sources: [{kind: ServiceAccount, name: orders}]
          rules: [{kind: TCPRoute, name: any}]
        ---
        kind: TrafficTarget
        metadata: {name: db}
        spec:
          destination: {kind: ServiceAccount, name: db}
          sources: [{kind: ServiceAccount, name: orders}]
          rules: [{kind: TCPRoute, name: any}]
        ---
        kind: TCPRoute
        metadata: {name: any}
        spec: {}
        ---
        kind: TrafficPolicy
        metadata: {name: v2}
        spec:
          targetRef: {kind: Service, name: v2}
          timeouts: {request: 1s}
          mirror: {service: shadow, port: 8080, percent: 5}
        """)
        + http_route(
            "web-beta",
            "{kind: Service, name: web}, {kind: Service, name: orders}",
            """
        - matches: [{path: {value: /beta}}]
          filters:
          - type: RequestMirror
            requestMirror: {backendRef: {name: db, port: 5432}}
          backendRefs: [{name: v2, port: 8080}]
        """,
        )
    )
    mesh = Mesh.from_yaml(text)
    web = view_for(mesh, "web")
    assert names(web, "HTTPRoute") == {"web-beta"}
    assert names(web, "Service") == {"web", "orders", "v2", "db", "shadow"}
    assert names(web, "TrafficPolicy") == {"v2"}
    assert names(web, "TrafficTarget") == set()
    Mesh.from_yaml(to_yaml(web.resources))
    db = view_for(mesh, "db")
    assert names(db, "Service") == {"web", "orders", "v2", "db", "shadow"}  # via web's route
    assert names(db, "TrafficTarget") == {"db"} and names(db, "TCPRoute") == {"any"}
    Mesh.from_yaml(to_yaml(db.resources))


# -- a large mesh ---------------------------------------------------------------------------------


def big_mesh_yaml(n: int) -> str:
    """A mesh of `n` services: every 4th protected by a TrafficTarget (4 sources), every 5th
    with an HTTPRoute, every 7th with a TrafficSplit, every 3rd with a TrafficPolicy."""
    docs = [
        "kind: Mesh\nmetadata: {name: big}\nspec: {trustDomain: big.local}\n",
        "kind: HTTPRouteGroup\nmetadata: {name: api}\nspec:\n  matches:\n"
        "  - {name: read, methods: [GET], pathRegex: /api}\n  - {name: all}\n",
        "kind: TCPRoute\nmetadata: {name: tcp}\nspec: {matches: {ports: [8080]}}\n",
    ]
    for i in range(n):
        a, b = divmod(i, 250)
        docs.append(
            f"kind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports:\n"
            "  - {name: http, port: 8080, protocol: http}\n"
            "  - {name: grpc, port: 9090, protocol: grpc}\n"
            f"  endpoints:\n  - {{address: 10.0.{a}.{b + 1}, port: 15006}}\n"
            f"  - {{address: 10.1.{a}.{b + 1}, port: 15006}}\n"
        )
    for i in range(0, n, 4):
        sources = ", ".join(
            f"{{kind: ServiceAccount, name: s{(i + d) % n}}}" for d in (1, 2, 3, 17)
        )
        docs.append(
            f"kind: TrafficTarget\nmetadata: {{name: to-s{i}}}\nspec:\n"
            f"  destination: {{kind: ServiceAccount, name: s{i}}}\n  sources: [{sources}]\n"
            "  rules:\n  - {kind: HTTPRouteGroup, name: api, matches: [read]}\n"
            "  - {kind: TCPRoute, name: tcp}\n"
        )
    docs.extend(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        f"metadata: {{name: r{i}}}\nspec:\n"
        f"  parentRefs: [{{kind: Service, name: s{i}, port: 8080}}]\n  rules:\n"
        "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n"
        f"    backendRefs: [{{name: s{(i + 1) % n}, port: 8080}}]\n"
        f"  - backendRefs: [{{name: s{i}, port: 8080}}]\n"
        for i in range(1, n, 5)
    )
    docs.extend(
        f"kind: TrafficSplit\nmetadata: {{name: split-s{i}}}\nspec:\n  service: s{i}\n"
        f"  backends:\n  - {{service: s{i}, weight: 90}}\n"
        f"  - {{service: s{(i + 3) % n}, weight: 10}}\n"
        for i in range(2, n, 7)
    )
    docs.extend(
        f"kind: TrafficPolicy\nmetadata: {{name: p{i}}}\nspec:\n"
        f"  targetRef: {{kind: Service, name: s{i}}}\n  timeouts: {{request: 5s}}\n"
        "  retries: {attempts: 2, perTryTimeout: 1s}\n"
        for i in range(0, n, 3)
    )
    return "---\n".join(docs)


def test_views_of_a_large_mesh(capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry()
    start = time.perf_counter()
    snap = registry.apply_text(big_mesh_yaml(200))
    applied = time.perf_counter() - start
    mesh = snap.mesh
    assert len(mesh.services) == 200 and conflicts(mesh) == []
    sample = [f"default/s{i}" for i in range(0, 200, 10)]
    start = time.perf_counter()
    texts = [to_yaml(view_for(mesh, s).resources) for s in sample]
    per_view = (time.perf_counter() - start) / len(sample)
    for s, text in zip(sample[:3], texts, strict=False):
        view = Mesh.from_yaml(text)
        assert view.service(s.partition("/")[2]) is not None
    # s0 is protected: only s1, s2, s3 and s17 may call it, and its view has its policy
    s1 = view_for(mesh, "default/s1")
    assert "s0" in names(s1, "Service") and "s4" not in names(s1, "Service")
    assert names(view_for(mesh, "default/s0"), "TrafficTarget") == {"to-s0"}
    with capsys.disabled():
        print(
            f"\n[registry] 200 services, {len(mesh.resources)} resources: apply_text "
            f"{applied * 1e3:.0f} ms; view_for + to_yaml {per_view * 1e3:.1f} ms per view "
            f"({len(texts[0]) // 1024} KiB)"
        )
    assert per_view < 0.5
