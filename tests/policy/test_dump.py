"""Writing config back out (`pymesh.policy.dump`): documents, YAML, durations, the text cache."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pymesh.policy import (
    KINDS,
    Endpoint,
    Mesh,
    MeshSpec,
    Resource,
    ServicePort,
    ServiceSpec,
    Source,
    load_paths,
    load_text,
    parse_duration,
)
from pymesh.policy import dump as dump_module
from pymesh.policy.dump import format_duration, to_document, to_yaml

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "config"
SMI = FIXTURES / "smi"

# every valid config of the repository, as the sets of paths it is loaded from
VALID_SETS: dict[str, list[Path]] = {
    "good": [FIXTURES / "good"],
    "authz+smi01": [
        FIXTURES / "authz" / "mesh.yaml",
        SMI / "01-traffic-access-v1alpha3-l7-example.yaml",
    ],
    "smi01": [SMI / "01-traffic-access-v1alpha3-l7-example.yaml"],
    "smi02": [SMI / "02-traffic-access-v1alpha3-l4-example.yaml"],
    "smi03": [SMI / "03-traffic-specs-v1alpha4-header-filters.yaml"],
    "smi04": [SMI / "04-traffic-split-v1alpha4-canary.yaml"],
    "shop": [ROOT / "examples" / "shop" / "mesh.yaml"],
    "example": [ROOT / "examples" / "config" / "mesh.yaml"],
    "example-dir": [ROOT / "examples" / "config"],
}


def identity(r: Resource) -> tuple[str, str, str, str, Any]:
    """A resource without its Source."""
    return (r.api_version, r.kind, r.namespace, r.name, r.spec)


@pytest.mark.parametrize("name", sorted(VALID_SETS))
def test_every_valid_config_round_trips(name: str) -> None:
    resources = load_paths(VALID_SETS[name])
    assert resources
    text = to_yaml(resources)
    back = load_text(text, "dumped.yaml")
    assert [identity(r) for r in back] == [identity(r) for r in resources]
    assert Mesh(back).version == Mesh(resources).version
    # and once more: the dump of the dump is the same text
    assert to_yaml(back) == text


def test_the_example_covers_every_kind() -> None:
    kinds = {r.kind for r in load_paths(VALID_SETS["example"])}
    assert kinds == set(KINDS)


def test_document_shape_and_yaml_names() -> None:
    docs = {(r.kind, r.name): to_document(r) for r in load_paths(VALID_SETS["example"])}
    mesh = docs[("Mesh", "shop")]
    assert list(mesh) == ["apiVersion", "kind", "metadata", "spec"]
    assert mesh["apiVersion"] == "pymesh.io/v1alpha1"
    assert mesh["metadata"] == {"name": "shop", "namespace": "default"}
    assert mesh["spec"] == {"trustDomain": "shop.local"}  # STRICT, enforce, 24h: defaults
    orders = docs[("Service", "orders")]["spec"]
    assert orders == {
        "serviceAccount": "orders",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "http"},
            {"name": "grpc", "port": 9090, "protocol": "grpc"},
        ],
        "endpoints": [
            {"address": "127.0.0.1", "port": 9201},
            {"address": "127.0.0.1", "port": 9202},
        ],
    }
    web = docs[("Service", "web")]["spec"]
    assert web["command"] == ["python", "-m", "http.server"]
    assert web["env"] == {"LOG_LEVEL": "info"}
    group = docs[("HTTPRouteGroup", "orders-routes")]["spec"]
    assert group["matches"][0] == {
        "name": "read",
        "methods": ["GET", "HEAD"],
        "pathRegex": "/orders(/[0-9]+)?",
    }
    assert group["matches"][1]["headers"] == {"content-type": "application/json(;.*)?"}
    assert docs[("TCPRoute", "postgres")]["spec"] == {"matches": {"ports": [5432]}}
    route = docs[("HTTPRoute", "orders-beta")]["spec"]
    assert route["parentRefs"] == [
        {"kind": "Service", "name": "orders", "namespace": "default", "port": 8080}
    ]
    assert route["rules"][0]["timeouts"] == {"request": "10s", "backendRequest": "2s"}
    assert route["rules"][0]["backendRefs"] == [
        {"name": "orders-v2", "namespace": "default", "port": 8080}
    ]
    policy = docs[("TrafficPolicy", "orders")]["spec"]
    assert policy["targetRef"] == {"kind": "Service", "name": "orders"}
    assert policy["retries"]["perTryTimeout"] == "3s"
    assert policy["retries"]["retriableStatusCodes"] == [503]
    assert policy["outlierDetection"] == {}  # present, every field at its default
    chaos = docs[("TrafficPolicy", "orders-beta-chaos")]["spec"]
    assert chaos["faults"]["delay"] == {"percent": 5.0, "fixedDelay": "250ms"}
    assert chaos["rateLimit"] == {"requestsPerSecond": 50.0, "burst": 100}


def test_non_default_mesh_fields_are_written() -> None:
    (mesh, api) = load_paths([FIXTURES / "good" / "mesh.yaml"])
    assert to_document(mesh)["spec"] == {
        "trustDomain": "fixture.local",
        "mtls": "PERMISSIVE",
        "authorization": "audit",
        "certificateTTL": "90m",
    }
    spec = to_document(api)["spec"]
    assert spec["serviceAccount"] == "api-sa"
    assert spec["mtls"] == "STRICT"
    assert spec["ports"][3] == {"port": 9100}  # no name, no protocol: omitted
    assert spec["endpoints"][1] == {"address": "::1", "port": 15006}
    assert spec["env"] == {"MODE": "prod", "WORKERS": "4"}
    assert "meshed" not in spec  # true is the default


def test_every_document_is_plain_yaml_data() -> None:
    text = to_yaml(load_paths(VALID_SETS["example"]))
    assert text.startswith("---\n")
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 14
    for doc in docs:
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc["metadata"]) == {"name", "namespace"}


def test_resources_built_in_code_round_trip() -> None:
    mesh = Mesh.build(
        name="code",
        spec=MeshSpec(trust_domain="code.local", certificate_ttl_s=0.25),
        services={
            "web": ServiceSpec(
                service_account="web",
                ports=(ServicePort(name="http", port=80, protocol="http"),),
                endpoints=(Endpoint(address="127.0.0.1", port=8080),),
                command=("python", "-c", "print('yes: no')"),
                env=(("A", "true"), ("B", "1"), ("C", "null"), ("D", "")),
            ),
            "prod/db": ServiceSpec(service_account="db", meshed=False),
        },
    )
    back = Mesh.from_yaml(to_yaml(mesh.resources))
    assert back.version == mesh.version
    assert back.spec.certificate_ttl_s == 0.25
    assert back.service_spec("web").env == (("A", "true"), ("B", "1"), ("C", "null"), ("D", ""))
    assert back.service_spec("db", "prod").meshed is False


def test_strings_that_look_like_other_types_stay_strings() -> None:
    tricky = ["yes", "no", "on", "~", "null", "1e3", "0x1F", "2001-01-01", "- a", "a: b", "#", ""]
    spec = ServiceSpec(service_account="s", command=tuple(tricky) or None)
    r = Resource(
        api_version="pymesh.io/v1alpha1",
        kind="Service",
        name="s",
        spec=spec,
        source=Source(file="<t>", line=1),
    )
    (back,) = load_text(to_yaml([r]))
    assert back.spec == spec


def test_unknown_kind_or_wrong_spec_is_a_value_error() -> None:
    src = Source(file="<t>", line=1)
    with pytest.raises(ValueError, match="unsupported kind 'Gateway'"):
        to_document(Resource(api_version="x/v1", kind="Gateway", name="g", spec=None, source=src))
    with pytest.raises(ValueError, match=r"spec is a MeshSpec \(expected ServiceSpec\)"):
        to_document(
            Resource(
                api_version="pymesh.io/v1alpha1",
                kind="Service",
                name="s",
                spec=MeshSpec(),
                source=src,
            )
        )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (3600.0, "1h"),
        (86400.0, "24h"),
        (5400.0, "90m"),
        (1.0, "1s"),
        (2.5, "2500ms"),
        (0.25, "250ms"),
        (1e-3, "1ms"),
        (15 * 1e-6, "15us"),
        (1.5e-5, "15000ns"),  # 15us is 1.4999999999999999e-05
        (1e-9, "1ns"),
        (90061.0, "90061s"),
    ],
)
def test_durations_are_written_in_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [0.1 + 0.2, 1 / 3, 1e-12, 5e-324, 1e300, 12345.678901234])
def test_awkward_durations_are_exact(seconds: float) -> None:
    text = format_duration(seconds)
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns)", text), text  # no exponent
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan, -0.001])
def test_invalid_durations_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        format_duration(seconds)


def test_text_cache_is_per_object_and_bounded() -> None:
    cache = dump_module._TextCache(2)
    a, b, c = load_paths(VALID_SETS["shop"])[:3]
    assert cache.text(a) == to_yaml([a])[len("---\n") :]
    assert cache.text(a) is cache.text(a)
    cache.text(b)
    cache.text(c)
    assert len(cache._items) == 2 and id(a) not in cache._items  # the oldest went first
    # an equal but different object is written on its own (identity, not equality)
    (a2,) = load_text(to_yaml([a]))
    assert cache.text(a2) == cache.text(a)


def test_to_yaml_of_nothing_is_empty() -> None:
    assert to_yaml([]) == ""
    assert load_text(to_yaml([])) == ()


@pytest.mark.parametrize("text", ["\x85", "a\u2028b", "\u2029", "é+", "tab\there", "ünïcödé"])
def test_strings_yaml_reads_as_line_breaks_round_trip(text: str) -> None:
    """NEL and the Unicode line/paragraph separators are line breaks to a YAML reader: the
    writer must escape them (found by hypothesis: '\\x85' came back as ' ')."""
    doc = {"spec": {"matches": [{"name": text}]}}
    assert yaml.safe_load(dump_module._dump(doc)) == doc
