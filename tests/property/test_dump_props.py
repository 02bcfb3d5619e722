"""Property tests for writing config back out (hypothesis, derandomized).

- every spec of every kind, generated from the schema itself (the type hints and markers the
  loader validates with), is written by `to_document` and read back by the loader's converter
  to an equal object;
- every duration is written as text that parses back to exactly the same float;
- generated meshes (Services with SMI access, route groups, splits, Gateway API routes and
  TrafficPolicies that refer to them) survive load → to_yaml → load; they have no conflicts;
  the registry applies them; every view of every service loads on its own, keeps the inbound
  policy and leaves out only services it may not call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.property.test_loader_props import durations, labels, service_docs

from pymesh.errors import FieldError
from pymesh.policy import KINDS, Mesh, Resource, Source, load_text, parse_duration
from pymesh.policy import kinds as k
from pymesh.policy._schema import (
    BoolConv,
    Conv,
    Cx,
    DataclassConv,
    DurationConv,
    FloatConv,
    IntConv,
    ListConv,
    LiteralConv,
    OptionalConv,
    Re2,
    StrConv,
    StrMapConv,
    converter,
)
from pymesh.policy.authz import InboundAuthz
from pymesh.policy.dump import format_duration, to_document, to_yaml
from pymesh.policy.registry import Registry, conflicts, view_for

PROPS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- specs generated from the schema ---------------------------------------------------------------

RE2 = ["", ".*", "/api", "/orders(/[0-9]+)?", "^a|b$", "[a-z]+", r"\d{1,3}", "(?i)firefox", "é+"]
TEXT = st.text(max_size=10)


def _pattern(p: Any) -> st.SearchStrategy[str]:
    return st.from_regex(p.regex, fullmatch=True).filter(lambda s: p.problem(s) is None)


@functools.cache
def values(conv: Conv) -> st.SearchStrategy[Any]:
    """Valid values for one loader converter (the YAML-facing type of a field)."""
    if isinstance(conv, OptionalConv):
        return values(conv.inner)
    if isinstance(conv, DataclassConv):
        return specs(conv.cls)
    if isinstance(conv, StrConv):
        if conv.check is not None:  # Endpoint.address
            return st.ip_addresses().map(str) | _pattern(k.DNS_SUBDOMAIN)
        if conv.pattern is not None:
            base = _pattern(conv.pattern)
        elif conv.regex:
            base = st.sampled_from(RE2)
        else:
            base = TEXT
        if conv.length is not None:
            lo, hi = conv.length.lo, conv.length.hi
            base = base.filter(lambda s: len(s) >= lo and (hi is None or len(s) <= hi))
            if lo > 0 and conv.pattern is None and not conv.regex:
                base = st.text(min_size=lo, max_size=max(lo, 10))
        return base
    if isinstance(conv, IntConv):
        r = conv.range
        lo = int(r.lo) if r is not None and r.lo is not None else -(2**40)
        hi = int(r.hi) if r is not None and r.hi is not None else 2**40
        return st.integers(lo, hi)
    if isinstance(conv, FloatConv):
        r = conv.range
        return st.floats(
            min_value=r.lo if r is not None and r.lo is not None else -1e12,
            max_value=r.hi if r is not None and r.hi is not None else 1e12,
            exclude_min=r is not None and r.lo_open,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(conv, DurationConv):
        positive = st.floats(min_value=0, max_value=1e9, exclude_min=True) | st.sampled_from(
            [1e-9, 0.001, 0.25, 1.0, 1.5, 60.0, 5400.0, 86400.0]
        )
        return st.just(0.0) | positive if conv.allow_zero else positive
    if isinstance(conv, BoolConv):
        return st.booleans()
    if isinstance(conv, LiteralConv):
        return st.sampled_from(conv.values)
    if isinstance(conv, ListConv):
        lo = conv.length.lo if conv.length is not None else 0
        unique: Callable[[Any], Any] | None = None
        if conv.unique is not None:
            attr, fold = conv.unique.attr, conv.unique.casefold

            def unique(v: Any) -> Any:
                key = getattr(v, attr) if attr is not None else v
                return key.lower() if fold and isinstance(key, str) else key

        return st.lists(values(conv.item), min_size=lo, max_size=lo + 2, unique_by=unique).map(
            tuple
        )
    if isinstance(conv, StrMapConv):
        m = conv.marker
        keys = _pattern(m.key) if m.key is not None else TEXT
        vals = st.sampled_from(RE2) if isinstance(m.value, Re2) else values(conv.value_conv)
        fold = m.casefold_keys
        return st.lists(
            st.tuples(keys, vals),
            max_size=3,
            unique_by=lambda kv: kv[0].lower() if fold else kv[0],
        ).map(tuple)
    raise AssertionError(f"no strategy for {conv!r}")


def _valid(cls: type) -> Callable[[Any], bool]:
    check = converter(cls).check

    def ok(obj: Any) -> bool:
        return check is None or not list(check(obj))

    return ok


def _only(cls: type, field: str, attr: str) -> st.SearchStrategy[Any]:
    """A filter: `type` chosen, then only the field it names."""
    conv = converter(cls)
    inner = {f.attr: f.conv for f in conv.fields}[attr]
    return st.builds(lambda v: cls(**{"type": field, attr: v}), values(inner))


def _filters(cls: type, types: tuple[str, ...]) -> st.SearchStrategy[Any]:
    attrs = {
        "RequestHeaderModifier": "request_header_modifier",
        "ResponseHeaderModifier": "response_header_modifier",
        "RequestRedirect": "request_redirect",
        "URLRewrite": "url_rewrite",
        "RequestMirror": "request_mirror",
    }
    return st.one_of([_only(cls, t, attrs[t]) for t in types])


def _path_modifier() -> st.SearchStrategy[k.HTTPPathModifier]:
    path = st.builds(lambda s: "/" + s, st.text(max_size=8))
    return st.builds(
        k.HTTPPathModifier, type=st.just("ReplaceFullPath"), replace_full_path=path
    ) | (
        st.builds(k.HTTPPathModifier, type=st.just("ReplacePrefixMatch"), replace_prefix_match=path)
    )


def _path_match() -> st.SearchStrategy[k.HTTPPathMatch]:
    plain = st.builds(
        k.HTTPPathMatch,
        type=st.sampled_from(["Exact", "PathPrefix"]),
        value=st.builds(lambda s: "/" + s, st.text(max_size=8)),
    )
    regex = st.builds(
        k.HTTPPathMatch,
        type=st.just("RegularExpression"),
        value=st.sampled_from([r for r in RE2 if r]),
    )
    return plain | regex | st.just(k.HTTPPathMatch())


def _grpc_method() -> st.SearchStrategy[k.GRPCMethodMatch]:
    exact = st.builds(
        k.GRPCMethodMatch,
        type=st.sampled_from(["Exact"]),
        service=st.none() | _pattern(k._GRPC_SERVICE),
        method=st.none() | _pattern(k._GRPC_METHOD),
    )
    regex = st.builds(
        k.GRPCMethodMatch,
        type=st.just("RegularExpression"),
        service=st.none() | st.sampled_from([r for r in RE2 if r]),
        method=st.none() | st.sampled_from([r for r in RE2 if r]),
    )
    return (exact | regex).filter(_valid(k.GRPCMethodMatch))


def _consistent_hash() -> st.SearchStrategy[k.ConsistentHash]:
    return (
        st.builds(k.ConsistentHash, header=_pattern(k.HEADER_NAME))
        | st.builds(k.ConsistentHash, cookie=_pattern(k.COOKIE_NAME))
        | st.just(k.ConsistentHash(use_source_ip=True))
    )


OVERRIDES: dict[type, Callable[[], st.SearchStrategy[Any]]] = {
    k.HTTPRouteFilter: lambda: _filters(k.HTTPRouteFilter, tuple(k._FILTER_FIELDS)),
    k.GRPCRouteFilter: lambda: _filters(k.GRPCRouteFilter, k._GRPC_FILTERS),
    k.HTTPPathModifier: _path_modifier,
    k.HTTPPathMatch: _path_match,
    k.GRPCMethodMatch: _grpc_method,
    k.ConsistentHash: _consistent_hash,
}


@functools.cache
def specs(cls: type) -> st.SearchStrategy[Any]:
    """Valid objects of a spec class: each field at its default, None or a valid value."""
    override = OVERRIDES.get(cls)
    if override is not None:
        return override()
    defaults: dict[str, Any] = {}
    for d in dataclasses.fields(cls):
        if d.default is not dataclasses.MISSING:
            defaults[d.name] = d.default
        elif callable(d.default_factory):
            defaults[d.name] = d.default_factory()
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in converter(cls).fields:
        s = values(f.conv)
        if isinstance(f.conv, OptionalConv):
            s = st.none() | s
        if f.attr in defaults:
            s = st.just(defaults[f.attr]) | s
        fields[f.attr] = s
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw)).filter(_valid(cls))


def _read_back(cls: type, data: Any) -> tuple[Any, list[FieldError]]:
    """The loader's conversion of `data` (written as YAML) into `cls`, and its errors."""
    text = yaml.safe_dump({"spec": data}, allow_unicode=False, sort_keys=False)  # as dump.py
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    errors: list[FieldError] = []
    ((_, spec_node),) = node.value
    value = converter(cls).convert(spec_node, "spec", Cx("t.yaml", "-", errors))
    return value, errors


@pytest.mark.parametrize("kind", sorted(KINDS))
@PROPS
@given(data=st.data())
def test_every_spec_of_every_kind_round_trips(kind: str, data: st.DataObject) -> None:
    info = KINDS[kind]
    spec = data.draw(specs(info.spec))
    r = Resource(
        api_version=info.api_version,
        kind=kind,
        name="x",
        spec=spec,
        source=Source(file="<t>", line=1),
    )
    doc = to_document(r)
    back, errors = _read_back(info.spec, doc["spec"])
    assert errors == []
    assert back == spec
    # and through the writer's own YAML: the text of the resource is the same document
    (written,) = yaml.safe_load_all(to_yaml([r]))
    assert written == doc


@PROPS
@given(st.floats(min_value=0, allow_infinity=False, allow_nan=False))
def test_every_duration_is_written_exactly(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds


@PROPS
@given(durations())
def test_written_durations_of_config_text_read_back(case: tuple[str, float]) -> None:
    seconds = parse_duration(case[0])
    assert seconds is not None
    assert parse_duration(format_duration(seconds)) == seconds


# -- generated meshes ------------------------------------------------------------------------------

NAMESPACES = ["default", "prod"]


@st.composite
def meshes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid mesh as documents: Services and every kind that refers to them."""
    docs: list[dict[str, Any]] = []
    mesh_spec: dict[str, Any] = {}
    if draw(st.booleans()):
        mesh_spec["trustDomain"] = draw(labels)
    if draw(st.booleans()):
        mesh_spec["authorization"] = draw(st.sampled_from(["enforce", "audit"]))
    if draw(st.booleans()):
        mesh_spec["certificateTTL"] = draw(durations().filter(lambda d: d[1] > 0))[0]
    docs.append({"kind": "Mesh", "metadata": {"name": "gen"}, "spec": mesh_spec})
    services: list[dict[str, Any]] = []
    for doc, _ in draw(
        st.lists(
            service_docs(text=st.text(alphabet="abc -_./", max_size=6)),
            min_size=1,
            max_size=6,
            unique_by=lambda d: d[0]["metadata"]["name"],
        )
    ):
        doc["metadata"]["namespace"] = draw(st.sampled_from(NAMESPACES))
        services.append(doc)
    docs.extend(services)

    def ref(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["metadata"]["namespace"], doc["metadata"]["name"]

    def account(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["metadata"]["namespace"], doc["spec"].get("serviceAccount", ref(doc)[1])

    def ports(doc: dict[str, Any]) -> list[int]:
        return [p["port"] for p in doc["spec"].get("ports", [])]

    with_ports = [s for s in services if ports(s)]
    for ns in NAMESPACES:
        docs.append(
            {
                "kind": "HTTPRouteGroup",
                "metadata": {"name": "routes", "namespace": ns},
                "spec": {
                    "matches": [
                        {"name": "read", "methods": ["GET"], "pathRegex": "/api"},
                        {"name": "all"},
                    ]
                },
            }
        )
        docs.append({"kind": "TCPRoute", "metadata": {"name": "tcp", "namespace": ns}, "spec": {}})
    # SMI access: TrafficTargets naming some services' accounts
    for i, dest in enumerate(draw(st.lists(st.sampled_from(services), max_size=3))):
        dns, dsa = account(dest)
        tt_ns = draw(st.sampled_from(NAMESPACES))
        sources = draw(st.lists(st.sampled_from(services), min_size=1, max_size=3))
        docs.append(
            {
                "kind": "TrafficTarget",
                "metadata": {"name": f"tt{i}", "namespace": tt_ns},
                "spec": {
                    "destination": {"kind": "ServiceAccount", "name": dsa, "namespace": dns},
                    "sources": [
                        {
                            "kind": "ServiceAccount",
                            "name": account(s)[1],
                            "namespace": account(s)[0],
                        }
                        for s in sources
                    ],
                    "rules": draw(
                        st.sampled_from(
                            [
                                [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["read"]}],
                                [{"kind": "TCPRoute", "name": "tcp"}],
                                [
                                    {"kind": "HTTPRouteGroup", "name": "routes"},
                                    {"kind": "TCPRoute", "name": "tcp"},
                                ],
                            ]
                        )
                    ),
                },
            }
        )
    # TrafficSplits: at most one per root, backends in the root's namespace
    for i, root in enumerate(draw(st.lists(st.sampled_from(services), max_size=2, unique_by=ref))):
        ns, name = ref(root)
        same_ns = [s for s in services if ref(s)[0] == ns]
        backends = draw(st.lists(st.sampled_from(same_ns), min_size=1, max_size=3, unique_by=ref))
        spec: dict[str, Any] = {
            "service": name,
            "backends": [{"service": ref(b)[1], "weight": 1 + j} for j, b in enumerate(backends)],
        }
        if draw(st.booleans()):
            spec["matches"] = [{"kind": "HTTPRouteGroup", "name": "routes"}]
        docs.append(
            {"kind": "TrafficSplit", "metadata": {"name": f"ts{i}", "namespace": ns}, "spec": spec}
        )
    # Gateway API routes: each with its own path (or gRPC method), so they never conflict
    routes: list[tuple[str, str, str]] = []
    if with_ports:
        for i in range(draw(st.integers(0, 3))):
            grpc = draw(st.booleans())
            kind = "GRPCRoute" if grpc else "HTTPRoute"
            ns = draw(st.sampled_from(NAMESPACES))
            parents = draw(
                st.lists(st.sampled_from(services), min_size=1, max_size=2, unique_by=ref)
            )
            backend = draw(st.sampled_from(with_ports))
            parent_refs = []
            for p in parents:
                entry: dict[str, Any] = {
                    "kind": "Service",
                    "name": ref(p)[1],
                    "namespace": ref(p)[0],
                }
                if len(ports(p)) > 0 and draw(st.booleans()):
                    entry["port"] = draw(st.sampled_from(ports(p)))
                parent_refs.append(entry)
            backend_ref = {
                "name": ref(backend)[1],
                "namespace": ref(backend)[0],
                "port": ports(backend)[0],
            }
            rule: dict[str, Any] = {
                "name": f"rule{i}",
                "matches": (
                    [{"method": {"service": "gen.Svc", "method": f"M{i}"}}]
                    if grpc
                    else [{"path": {"type": "PathPrefix", "value": f"/r{i}"}}]
                ),
                "backendRefs": [backend_ref],
            }
            if draw(st.booleans()):
                mirror = draw(st.sampled_from(with_ports))
                rule["filters"] = [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {
                            "backendRef": {
                                "name": ref(mirror)[1],
                                "namespace": ref(mirror)[0],
                                "port": ports(mirror)[0],
                            }
                        },
                    }
                ]
            docs.append(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": kind,
                    "metadata": {"name": f"route{i}", "namespace": ns},
                    "spec": {"parentRefs": parent_refs, "rules": [rule]},
                }
            )
            routes.append((kind, ns, f"route{i}"))
    # TrafficPolicies: one per target, on services or routes, sometimes mirroring
    targets = [("Service", *ref(s)) for s in services] + routes
    for i, (kind, ns, name) in enumerate(
        draw(st.lists(st.sampled_from(targets), max_size=3, unique_by=lambda t: t))
    ):
        spec = {
            "targetRef": {"kind": kind, "name": name},
            "timeouts": {"request": draw(durations().filter(lambda d: d[1] > 0))[0]},
        }
        if kind == "Service" and draw(st.booleans()):
            spec["loadBalancer"] = {"policy": "LEAST_REQUEST"}
        if len(with_ports) > 0 and draw(st.booleans()):
            mirror = draw(st.sampled_from(with_ports))
            spec["mirror"] = {"service": ref(mirror)[1], "namespace": ref(mirror)[0], "percent": 10}
            if len(ports(mirror)) > 1:
                spec["mirror"]["port"] = ports(mirror)[0]
        docs.append(
            {"kind": "TrafficPolicy", "metadata": {"name": f"tp{i}", "namespace": ns}, "spec": spec}
        )
    return docs


def identity(r: Resource) -> tuple[str, str, str, str, Any]:
    return (r.api_version, r.kind, r.namespace, r.name, r.spec)


@PROPS
@given(meshes())
def test_generated_meshes_round_trip_and_every_view_stands_alone(
    docs: list[dict[str, Any]],
) -> None:
    resources = load_text(yaml.safe_dump_all(docs, sort_keys=False), "gen.yaml")
    text = to_yaml(resources)
    back = load_text(text, "dumped.yaml")
    assert [identity(r) for r in back] == [identity(r) for r in resources]
    mesh = Mesh(resources)
    assert conflicts(mesh) == []
    registry = Registry()
    snap = registry.apply(resources)
    assert registry.apply_text(text) is snap  # the same content: the same version
    accounts_allowed: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for tt in mesh.of_kind("TrafficTarget"):
        d = tt.spec.destination
        accounts_allowed.setdefault((d.namespace, d.name), set()).update(
            (s.namespace, s.name) for s in tt.spec.sources
        )
    for (ns, name), svc in mesh.services.items():
        view = view_for(mesh, f"{ns}/{name}")
        reloaded = Mesh.from_yaml(to_yaml(view.resources), "view.yaml")
        assert reloaded.version == view.version
        assert (
            InboundAuthz.compile(view, svc).to_dict() == InboundAuthz.compile(mesh, svc).to_dict()
        )
        me = (ns, svc.spec.service_account)
        in_view = set(view.services)
        for key, other in mesh.services.items():
            dest = (other.namespace, other.spec.service_account)
            mode = other.spec.authorization or mesh.spec.authorization
            callable_ = (
                mode == "audit" or dest not in accounts_allowed or me in accounts_allowed[dest]
            )
            if callable_ or key == (ns, name):
                assert key in in_view, (key, "callable but not in the view")
        own_targets = {
            tt.name
            for tt in mesh.of_kind("TrafficTarget")
            if (tt.spec.destination.namespace, tt.spec.destination.name) == me
        }
        assert {tt.name for tt in view.of_kind("TrafficTarget")} == own_targets
