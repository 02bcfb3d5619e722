"""Property tests for the config loader (hypothesis, derandomized so CI runs are reproducible).

- generated valid Mesh and Service documents load to objects with exactly the written values;
- Go-style durations round-trip;
- a wrong type, an unknown field or an out-of-range port in a valid document gives a
  ConfigError naming that field's path and line, in the DESIGN.md §3 format;
- every key and every integer of the example config, mutated one at a time, is reported at
  its own line and path;
- arbitrary text, random YAML structures and damaged documents never raise anything but
  ConfigError.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pymesh.errors import ConfigError, FieldError
from pymesh.policy import Endpoint, MeshSpec, ServicePort, ServiceSpec, load_text, parse_duration

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "config" / "mesh.yaml"

FORMAT = re.compile(
    r"(?P<file>.+?):(?P<line>[1-9][0-9]*): (?P<resource>\S+): (?P<path>\S+): (?P<message>.+)"
)

PROPS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

labels = st.from_regex(r"[a-z]([-a-z0-9]{0,12}[a-z0-9])?", fullmatch=True)
subdomains = st.builds(".".join, st.lists(labels, min_size=1, max_size=3)).filter(
    lambda s: len(s) <= 253
)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
# letters only: generated values never contain the markers the mutation tests look for
plain_text = st.text(alphabet="abcdefghij klmnop-_./:", max_size=12)
any_text = st.text(max_size=12)


def check_format(errors: tuple[FieldError, ...], filename: str = "t.yaml") -> None:
    for e in errors:
        line = str(e)
        assert len(line.splitlines()) == 1, line
        m = FORMAT.fullmatch(line)
        assert m is not None, line
        assert m["file"] == filename and int(m["line"]) == e.line >= 1


# -- valid documents round-trip --------------------------------------------------------------------


@st.composite
def service_docs(
    draw: st.DrawFn, text: st.SearchStrategy[str] = any_text
) -> tuple[dict[str, Any], ServiceSpec]:
    """A valid Service document (as data) and the spec it must load to."""
    name = draw(labels)
    doc: dict[str, Any] = {"kind": "Service", "metadata": {"name": name}, "spec": {}}
    if draw(st.booleans()):
        doc["apiVersion"] = "pymesh.io/v1alpha1"
    if draw(st.booleans()):
        doc["metadata"]["namespace"] = draw(labels)
    spec: dict[str, Any] = doc["spec"]
    kwargs: dict[str, Any] = {"service_account": name}
    if draw(st.booleans()):
        kwargs["service_account"] = spec["serviceAccount"] = draw(subdomains)
    if draw(st.booleans()):
        kwargs["meshed"] = spec["meshed"] = draw(st.booleans())
    for key in ("mtls", "authorization"):
        if draw(st.booleans()):
            choices = ("STRICT", "PERMISSIVE", "DISABLE") if key == "mtls" else ("enforce", "audit")
            kwargs[key] = spec[key] = draw(st.sampled_from(choices))
    numbers = draw(st.lists(st.integers(1, 65535), unique=True, max_size=4))
    names = draw(st.lists(labels, unique=True, min_size=len(numbers), max_size=len(numbers)))
    ports = []
    for number, port_name in zip(numbers, names, strict=True):
        entry: dict[str, Any] = {"port": number}
        port = ServicePort(port=number)
        if draw(st.booleans()):
            entry["name"] = port_name
            port = ServicePort(name=port_name, port=number)
        if draw(st.booleans()):
            entry["protocol"] = draw(st.sampled_from(("tcp", "http", "http2", "grpc")))
            port = ServicePort(name=port.name, port=number, protocol=entry["protocol"])
        ports.append(port)
        spec.setdefault("ports", []).append(entry)
    kwargs["ports"] = tuple(ports)
    addresses = st.ip_addresses().map(str) | subdomains
    endpoints = draw(st.lists(st.tuples(addresses, st.integers(1, 65535)), unique=True, max_size=3))
    if endpoints:
        spec["endpoints"] = [{"address": a, "port": p} for a, p in endpoints]
    kwargs["endpoints"] = tuple(Endpoint(address=a, port=p) for a, p in endpoints)
    if draw(st.booleans()):
        command = draw(st.lists(text, min_size=1, max_size=4))
        spec["command"] = command
        kwargs["command"] = tuple(command)
    if draw(st.booleans()):
        env = draw(st.dictionaries(env_names, text, max_size=4))
        spec["env"] = env
        kwargs["env"] = tuple(env.items())
    return doc, ServiceSpec(**kwargs)


@st.composite
def durations(draw: st.DrawFn) -> tuple[str, float]:
    """A Go-style duration string and its value in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = draw(
        st.lists(
            st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(units))),
            min_size=1,
            max_size=4,
        )
    )
    frac = draw(st.booleans())
    text = "".join(f"{n}.5{u}" if frac and i == 0 else f"{n}{u}" for i, (n, u) in enumerate(parts))
    seconds = sum(
        (n + (0.5 if frac and i == 0 else 0)) * units[u] for i, (n, u) in enumerate(parts)
    )
    return text, seconds


@PROPS
@given(service_docs())
def test_valid_services_round_trip(case: tuple[dict[str, Any], ServiceSpec]) -> None:
    doc, expected = case
    (r,) = load_text(yaml.safe_dump(doc, sort_keys=False), "t.yaml")
    assert (r.kind, r.api_version, r.name) == (
        "Service",
        "pymesh.io/v1alpha1",
        doc["metadata"]["name"],
    )
    assert r.namespace == doc["metadata"].get("namespace", "default")
    assert r.spec == expected


@PROPS
@given(
    trust=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True),
    mtls=st.sampled_from(("STRICT", "PERMISSIVE", "DISABLE")),
    authz=st.sampled_from(("enforce", "audit")),
    ttl=durations().filter(lambda d: d[1] > 0),
    flow=st.booleans(),
)
def test_valid_mesh_round_trips(
    trust: str, mtls: str, authz: str, ttl: tuple[str, float], flow: bool
) -> None:
    doc = {
        "apiVersion": "pymesh.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "m"},
        "spec": {
            "trustDomain": trust,
            "mtls": mtls,
            "authorization": authz,
            "certificateTTL": ttl[0],
        },
    }
    (r,) = load_text(yaml.safe_dump(doc, default_flow_style=flow), "t.yaml")
    spec: MeshSpec = r.spec
    assert (spec.trust_domain, spec.mtls, spec.authorization) == (trust, mtls, authz)
    assert spec.certificate_ttl_s == pytest.approx(ttl[1])


@PROPS
@given(durations())
def test_durations_round_trip(case: tuple[str, float]) -> None:
    text, seconds = case
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(text + "x") is None
    assert parse_duration("-" + text) is None


# -- one mistake in a valid document ---------------------------------------------------------------


def _paths(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, container, key) of every scalar in a data tree, with the loader's path syntax."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from (
                _paths(value, f"{prefix}.{key}" if prefix else key)
                if isinstance(value, dict | list)
                else ((f"{prefix}.{key}" if prefix else key, doc, key),)
            )
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from (
                _paths(value, f"{prefix}[{i}]")
                if isinstance(value, dict | list)
                else ((f"{prefix}[{i}]", doc, i),)
            )


def _containers(doc: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, mapping) of every mapping in a data tree."""
    if isinstance(doc, dict):
        yield prefix, doc
        for key, value in doc.items():
            yield from _containers(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _containers(value, f"{prefix}[{i}]")


MARK = "QQ"  # never in generated values (plain_text has no Q)


def _line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, text)
    return hits[0]


def _only_error(text: str) -> FieldError:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.yaml")
    check_format(info.value.errors)
    assert len(info.value.errors) == 1, str(info.value)
    return info.value.errors[0]


@PROPS
@given(service_docs(text=plain_text), st.data())
def test_wrong_type_names_the_field(
    case: tuple[dict[str, Any], ServiceSpec], data: st.DataObject
) -> None:
    doc, _ = case
    fields = [p for p in _paths(doc) if p[0] not in ("kind", "apiVersion")]
    path, container, key = data.draw(st.sampled_from(fields))
    old = container[key]
    if isinstance(old, str):
        container[key] = new = 9_000_000_000 + data.draw(st.integers(0, 999))  # an int for a string
        needle = str(new)
    else:  # int or bool: a string
        container[key] = MARK + str(data.draw(st.integers(0, 999)))
        needle = container[key]
    text = yaml.safe_dump(doc, sort_keys=False)
    e = _only_error(text)
    assert (e.path, e.line) == (path, _line_of(text, needle))
    assert "(expected" in e.message


@PROPS
@given(service_docs(text=plain_text), st.data())
def test_unknown_field_names_the_field(
    case: tuple[dict[str, Any], ServiceSpec], data: st.DataObject
) -> None:
    doc, _ = case
    targets = [c for c in _containers(doc) if not c[0].startswith("spec.env")]
    prefix, mapping = data.draw(st.sampled_from(targets))
    key = f"{MARK}{data.draw(st.integers(0, 999))}"
    mapping[key] = data.draw(st.integers() | plain_text | st.booleans())
    text = yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=data.draw(st.sampled_from([False, None]))
    )
    e = _only_error(text)
    assert (e.path, e.line) == (f"{prefix}.{key}" if prefix else key, _line_of(text, key))
    assert e.message.startswith("unknown field (expected one of: ")


@PROPS
@given(service_docs(text=plain_text), st.data())
def test_out_of_range_port(case: tuple[dict[str, Any], ServiceSpec], data: st.DataObject) -> None:
    doc, _ = case
    spec = doc["spec"]
    where = data.draw(
        st.sampled_from([k for k in ("ports", "endpoints") if spec.get(k)] or ["ports"])
    )
    items = spec.setdefault(where, [])
    if not items:
        items.append({"port": 80} if where == "ports" else {"address": "a", "port": 80})
    i = data.draw(st.integers(0, len(items) - 1))
    bad = data.draw(st.integers(65536, 10**12) | st.integers(-(10**12), 0))
    items[i]["port"] = bad
    text = yaml.safe_dump(doc, sort_keys=False)
    e = _only_error(text)
    assert (e.path, e.line) == (f"spec.{where}[{i}].port", _line_of(text, f"port: {bad}"))
    assert e.message == f"{bad} is out of range (expected an integer 1-65535)"


# -- every key and integer of the example config ---------------------------------------------------


def _nodes(node: Node, path: str) -> Iterator[tuple[str, Node, Node | None]]:
    """(path, value node, key node or None) for every node under `node`."""
    if isinstance(node, MappingNode):
        for k, v in node.value:
            sub = f"{path}.{k.value}" if path else str(k.value)
            yield sub, v, k
            yield from _nodes(v, sub)
    elif isinstance(node, SequenceNode):
        for i, v in enumerate(node.value):
            sub = f"{path}[{i}]"
            yield sub, v, None
            yield from _nodes(v, sub)


def _example_sites() -> list[tuple[str, int, int, str, int, str]]:
    """(kind of mutation, start, end, path, line, replacement) for the example config."""
    text = EXAMPLE.read_text()
    sites = []
    for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
        for path, value, key in _nodes(doc, ""):
            parent = path.rsplit(".", 1)[0]
            free_map = parent.endswith((".headers", ".labels", ".annotations", ".env"))
            if key is not None and "." in path and not free_map:
                sites.append(
                    (
                        "key",
                        key.start_mark.index,
                        key.end_mark.index,
                        f"{parent}.{MARK}key",
                        key.start_mark.line + 1,
                        f"{MARK}key",
                    )
                )
            if isinstance(value, ScalarNode) and value.tag == "tag:yaml.org,2002:int":
                sites.append(
                    (
                        "int",
                        value.start_mark.index,
                        value.end_mark.index,
                        path,
                        value.start_mark.line + 1,
                        f'"{MARK}{value.value}"',
                    )
                )
    return sites


SITES = _example_sites()


def test_example_mutation_sites_cover_the_config() -> None:
    assert len([s for s in SITES if s[0] == "key"]) > 100
    assert len([s for s in SITES if s[0] == "int"]) > 30


@pytest.mark.parametrize("site", SITES, ids=[f"{s[0]}-{s[3]}-L{s[4]}" for s in SITES])
def test_every_example_key_and_int_is_reported_where_it_is(
    site: tuple[str, int, int, str, int, str],
) -> None:
    kind, start, end, path, line, replacement = site
    text = EXAMPLE.read_text()
    mutated = text[:start] + replacement + text[end:]
    with pytest.raises(ConfigError) as info:
        load_text(mutated, "t.yaml")
    check_format(info.value.errors)
    hits = [e for e in info.value.errors if (e.path, e.line) == (path, line)]
    assert hits, f"{path}:{line} not in\n{info.value}"
    if kind == "key":
        assert hits[0].message.startswith("unknown field (")
    else:
        assert hits[0].message.startswith(("got string ", "invalid value ")), hits[0].message


# -- nothing but ConfigError -----------------------------------------------------------------------


def _load_never_crashes(text: str) -> None:
    try:
        load_text(text, "t.yaml")
    except ConfigError as exc:
        assert exc.errors
        check_format(exc.errors)
        assert max(e.line for e in exc.errors) <= text.count("\n") + len(text.splitlines()) + 2


@PROPS
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load_never_crashes(text)


VOCAB = [
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "name",
    "namespace",
    "ports",
    "port",
    "matches",
    "rules",
    "backendRefs",
    "parentRefs",
    "headers",
    "pathRegex",
    "targetRef",
    "retries",
    "service",
    "backends",
    "weight",
    "Service",
    "Mesh",
    "HTTPRoute",
    "TrafficTarget",
    "TrafficSplit",
    "TrafficPolicy",
    "HTTPRouteGroup",
    "TCPRoute",
    "GRPCRoute",
    "destination",
    "sources",
    "ServiceAccount",
    "type",
    "value",
    "timeouts",
    "request",
    "1s",
    "x",
    "orders",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=True)
    | st.sampled_from(VOCAB)
    | st.text(max_size=8)
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(VOCAB) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=40,
)


@PROPS
@given(
    st.lists(
        st.fixed_dictionaries(
            {"kind": st.sampled_from(VOCAB[18:28])},
            optional={"apiVersion": scalars, "metadata": trees, "spec": trees, "extra": trees},
        )
        | trees,
        max_size=4,
    )
)
def test_random_yaml_structures(docs: list[Any]) -> None:
    _load_never_crashes(yaml.safe_dump_all(docs))


@PROPS
@given(st.data())
def test_damaged_example(data: st.DataObject) -> None:
    text = EXAMPLE.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 40)))
        text = (
            text[:i]
            + data.draw(
                st.sampled_from(
                    ["", ":", "- ", "{", "]", "\n", "  ", "'", "&a ", "*a", "!!int ", "<<: "]
                )
                | st.text(max_size=4)
            )
            + text[j:]
        )
    _load_never_crashes(text)


def test_deep_and_cyclic_structures() -> None:
    _load_never_crashes("[" * 5000 + "]" * 5000)
    _load_never_crashes("kind: HTTPRouteGroup\nmetadata: {name: g}\nspec: &s {matches: [*s]}\n")
    _load_never_crashes(
        textwrap.dedent("""\
        kind: HTTPRouteGroup
        metadata: {name: g}
        spec:
          matches: &m
          - {name: a, methods: *m}
        """)
    )
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    _load_never_crashes(laughs + "kind: Service\nmetadata: {name: s}\nspec: {command: *h}\n")
