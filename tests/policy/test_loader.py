"""The config loader: every kind, strict validation, error format and lines, references."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pymesh.errors import ConfigError, FieldError
from pymesh.policy import (
    KINDS,
    SUPPORTED_KINDS,
    Endpoint,
    Mesh,
    MeshSpec,
    Resource,
    ServicePort,
    ServiceSpec,
    load_paths,
    load_text,
    parse_duration,
    validate_main,
)
from pymesh.policy import kinds as k

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "config"
EXAMPLE = ROOT / "examples" / "config" / "mesh.yaml"

# FILE:LINE: KIND/NAMESPACE/NAME: spec.path.to.field: what is wrong (expected ...)
FORMAT = re.compile(
    r"(?P<file>.+?):(?P<line>[1-9][0-9]*): (?P<resource>-|[A-Za-z0-9-]+/[a-z0-9-]+/[a-z0-9.-]+"
    r"|[A-Za-z0-9]+/-/[a-z0-9.-]+|[A-Za-z0-9-]+/[a-z0-9-]+/-): (?P<path>\S+): (?P<message>.+)"
)


def errors_of(text: str, filename: str = "t.yaml") -> list[FieldError]:
    """The errors of a config that must fail; every line is checked against the format."""
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), filename)
    errors = list(info.value.errors)
    assert errors
    for e in errors:
        assert FORMAT.fullmatch(str(e)), str(e)
        assert "\n" not in str(e)
    assert str(info.value) == "\n".join(str(e) for e in errors)
    return errors


def where(errors: list[FieldError]) -> list[tuple[int, str, str]]:
    """(line, resource, path) of each error, in order."""
    return [(e.line, e.resource, e.path) for e in errors]


def one_error(text: str) -> FieldError:
    errors = errors_of(text)
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


def service(spec: str, name: str = "orders") -> str:
    """A Service document with the given (indented) spec body."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    head = f"apiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n"
    return f"{head}spec:\n{body}\n"


# -- valid configs -------------------------------------------------------------------------------


def test_example_config_loads_every_kind() -> None:
    resources = load_paths([EXAMPLE])
    assert {r.kind for r in resources} == set(KINDS)
    assert len(resources) == 14
    assert all(r.api_version == KINDS[r.kind].api_version for r in resources)
    assert all(isinstance(r.spec, KINDS[r.kind].spec) for r in resources)
    assert all(r.source.file == str(EXAMPLE) and r.source.line >= 1 for r in resources)


def test_mesh_and_service_fields() -> None:
    mesh, api = load_paths([FIXTURES / "good" / "mesh.yaml"])
    assert mesh.spec == MeshSpec(
        trust_domain="fixture.local",
        mtls="PERMISSIVE",
        authorization="audit",
        certificate_ttl_s=5400.0,
    )
    assert (mesh.name, mesh.namespace, mesh.source.line) == ("fixture", "default", 2)
    assert (api.name, api.namespace, api.source.line) == ("api", "prod", 13)
    assert api.ref == "Service/prod/api"
    assert api.spec == ServiceSpec(
        service_account="api-sa",
        meshed=True,
        mtls="STRICT",
        authorization="enforce",
        ports=(
            ServicePort(name="http", port=8080, protocol="http"),
            ServicePort(name="h2", port=8443, protocol="http2"),
            ServicePort(name="raw", port=9000, protocol="tcp"),
            ServicePort(port=9100),
        ),
        endpoints=(
            Endpoint(address="127.0.0.1", port=15006),
            Endpoint(address="::1", port=15006),
            Endpoint(address="api-1.internal", port=15006),
        ),
        command=("python", "-m", "api"),
        env=(("MODE", "prod"), ("WORKERS", "4")),
    )


def test_service_defaults() -> None:
    (r,) = load_text("kind: Service\nmetadata: {name: web}\nspec: {}\n")
    assert r.api_version == "pymesh.io/v1alpha1"  # inferred
    assert r.namespace == "default"
    assert r.spec == ServiceSpec(service_account="web")
    assert r.spec.meshed is True and r.spec.mtls is None and r.spec.command is None


def test_directory_loads_yaml_and_yml_sorted(tmp_path: Path) -> None:
    for name in ("b.yml", "a.yaml", ".hidden.yaml", "notes.txt"):
        svc = name.split(".")[0] or "hidden"
        (tmp_path / name).write_text(f"kind: Service\nmetadata: {{name: {svc}}}\nspec: {{}}\n")
    (tmp_path / "sub.yaml").mkdir()
    assert [r.name for r in load_paths([tmp_path])] == ["a", "b"]
    resources = load_paths([str(FIXTURES / "good")])
    assert [r.source.file.rsplit("/", 1)[-1] for r in resources] == (
        ["mesh.yaml"] * 2 + ["policy.yaml"] * 5 + ["services.yml"] * 3
    )


def test_references_resolve_across_files_and_namespaces_are_filled() -> None:
    resources = {r.name: r for r in load_paths([FIXTURES / "good"])}
    tt = resources["client-to-api"].spec
    assert tt.destination == k.IdentitySubject(
        kind="ServiceAccount", name="api-sa", namespace="prod"
    )
    assert [s.namespace for s in tt.sources] == ["prod", "tools"]
    policy = resources["api"].spec
    assert isinstance(policy, k.TrafficPolicySpec)
    assert policy.mirror == k.MirrorPolicy(
        service="api-shadow", namespace="prod", port=8080, percent=12.5
    )
    assert policy.retries == k.RetryPolicy(
        attempts=3,
        retry_on=("5xx",),
        backoff=k.RetryBackoff(base_interval_s=0.01, max_interval_s=1.0),
    )
    assert policy.timeouts == k.TimeoutPolicy(request_s=2.5)
    assert policy.load_balancer == k.LoadBalancer(
        policy="RING_HASH", consistent_hash=k.ConsistentHash(header="x-user")
    )


def test_empty_documents_and_files() -> None:
    assert load_text("") == ()
    assert load_text("# just a comment\n---\n---\n") == ()
    (r,) = load_text("---\n---\nkind: TCPRoute\nmetadata: {name: t}\nspec: {}\n---\n")
    assert r.spec == k.TCPRouteSpec() and r.source.line == 3


def test_mesh_snapshot_uses_the_loader(tmp_path: Path) -> None:
    mesh = Mesh.load(EXAMPLE)
    assert mesh.name == "shop" and mesh.spec.trust_domain == "shop.local"
    assert mesh.service_spec("orders").ports[1].protocol == "grpc"
    assert Mesh.from_yaml(EXAMPLE.read_text()).version == mesh.version
    with pytest.raises(ConfigError):
        Mesh.from_yaml("kind: Nope\n")


def test_gateway_and_policy_values() -> None:
    by_name = {r.name: r for r in load_paths([EXAMPLE])}
    route = by_name["orders-beta"].spec
    assert isinstance(route, k.HTTPRouteSpec)
    assert route.parent_refs == (
        k.ParentRef(kind="Service", name="orders", namespace="default", port=8080),
    )
    rule = route.rules[0]
    assert rule.name == "beta-testers"
    assert rule.matches[0].path == k.HTTPPathMatch(type="PathPrefix", value="/orders")
    assert rule.matches[0].headers == (k.HTTPHeaderMatch(name="x-beta", value="true"),)
    assert rule.backend_refs == (
        k.HTTPBackendRef(name="orders-v2", namespace="default", port=8080),
    )
    assert rule.timeouts == k.HTTPRouteTimeouts(request_s=10.0, backend_request_s=2.0)
    grpc = by_name["orders-grpc"].spec
    assert grpc.rules[0].matches[0].method == k.GRPCMethodMatch(service="shop.Orders", method="Get")
    chaos = by_name["orders-beta-chaos"].spec
    assert chaos.faults == k.FaultInjection(
        delay=k.FaultDelay(percent=5.0, fixed_delay_s=0.25),
        abort=k.FaultAbort(percent=1.0, http_status=503),
    )
    assert chaos.rate_limit == k.RateLimit(requests_per_second=50.0, burst=100)
    group = by_name["orders-routes"].spec
    assert group.matches[1].headers == (("content-type", "application/json(;.*)?"),)


# -- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("2m3s4ms", 123.004),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("7ns", 7e-9),
        (".5s", 0.5),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "5 m", "-5s", "+5s", "5M", "1d", "s", "1h 30m", "1.s5", "5sec"]
)
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


# -- strict fields, one error each ---------------------------------------------------------------

MESH = "apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  "


@pytest.mark.parametrize(
    ("field", "path", "message"),
    [
        ("trustDomain: Shop", "spec.trustDomain", 'invalid value "Shop" (expected a SPIFFE trust'),
        ("trustDomain: 5", "spec.trustDomain", "got integer 5 (expected a SPIFFE trust"),
        (
            "mtls: strict",
            "spec.mtls",
            'invalid value "strict" (expected one of: STRICT, PERMISSIVE, DISABLE)',
        ),
        ("mtls: true", "spec.mtls", "got boolean true (expected one of: STRICT"),
        ("authorization: deny", "spec.authorization", "(expected one of: enforce, audit)"),
        (
            "certificateTTL: 24",
            "spec.certificateTTL",
            "got integer 24 without a unit (expected a positive",
        ),
        (
            "certificateTTL: 0s",
            "spec.certificateTTL",
            'duration "0s" is not positive (expected a positive',
        ),
        ("certificateTTL: 1 day", "spec.certificateTTL", 'invalid duration "1 day" (expected'),
        ("trustDomian: x", "spec.trustDomian", "unknown field (did you mean trustDomain?)"),
        ("MTLS: STRICT", "spec.MTLS", "unknown field (did you mean mtls?)"),
        (
            "foo: 1",
            "spec.foo",
            "unknown field (expected one of: trustDomain, mtls, authorization, certificateTTL)",
        ),
    ],
)
def test_mesh_field_errors(field: str, path: str, message: str) -> None:
    e = one_error(MESH + field + "\n")
    assert (e.file, e.line, e.resource, e.path) == ("t.yaml", 5, "Mesh/default/m", path)
    assert message in e.message, e.message


@pytest.mark.parametrize(
    ("spec", "line", "path", "message"),
    [
        (
            'ports: [{port: "80"}]',
            5,
            "spec.ports[0].port",
            'got string "80" (expected an integer 1-65535)',
        ),
        (
            "ports: [{port: 0}]",
            5,
            "spec.ports[0].port",
            "0 is out of range (expected an integer 1-65535)",
        ),
        ("ports: [{port: 65536}]", 5, "spec.ports[0].port", "65536 is out of range"),
        ("ports: [{port: 80.0}]", 5, "spec.ports[0].port", "got number 80.0 (expected an integer"),
        ("ports: [{port: true}]", 5, "spec.ports[0].port", "got boolean true (expected an integer"),
        (
            "ports: [{port: 80, protocol: h3}]",
            5,
            "spec.ports[0].protocol",
            "(expected one of: tcp, http, http2, grpc)",
        ),
        (
            "ports: [{port: 80, name: HTTP}]",
            5,
            "spec.ports[0].name",
            'invalid value "HTTP" (expected a DNS label',
        ),
        ("ports: {port: 80}", 5, "spec.ports", "got a mapping (expected a list of mappings"),
        (
            "ports:\n- port: 80\n- port: 80",
            7,
            "spec.ports[1].port",
            "duplicate port 80, first at ports[0]",
        ),
        (
            "ports:\n- {name: a, port: 1}\n- {name: a, port: 2}",
            7,
            "spec.ports[1].name",
            'duplicate port name "a"',
        ),
        ('meshed: "true"', 5, "spec.meshed", 'got string "true" (expected true or false)'),
        ("meshed: 1", 5, "spec.meshed", "got integer 1 (expected true or false)"),
        ("mtls: OFF", 5, "spec.mtls", "got boolean OFF (YAML 1.1 reads OFF as a boolean; quote it"),
        (
            "serviceAccount: Orders",
            5,
            "spec.serviceAccount",
            'invalid value "Orders" (expected a DNS name',
        ),
        (
            "endpoints: [{address: 127.0.0.1}]",
            5,
            "spec.endpoints[0].port",
            "missing required field (expected an integer 1-65535)",
        ),
        (
            "endpoints: [{address: '10.0.0.1 ', port: 1}]",
            5,
            "spec.endpoints[0].address",
            "(expected an IP address or a hostname)",
        ),
        (
            "endpoints: [{address: x_y, port: 1}]",
            5,
            "spec.endpoints[0].address",
            'invalid value "x_y"',
        ),
        (
            "endpoints:\n- {address: a, port: 1}\n- {address: a, port: 1}",
            7,
            "spec.endpoints[1]",
            "duplicate endpoint a:1",
        ),
        (
            "command: python app.py",
            5,
            "spec.command",
            'got string "python app.py" (expected a non-empty list of strings)',
        ),
        ("command: []", 5, "spec.command", "0 items (expected at least 1 item)"),
        ("command: [python, 3]", 5, "spec.command[1]", "got integer 3 (expected a string)"),
        ("env: {PORT: 80}", 5, "spec.env.PORT", "got integer 80 (expected a string)"),
        (
            "env: {1X: a}",
            5,
            "spec.env.1X",
            'invalid variable name "1X" (expected an environment variable name',
        ),
        (
            "env: [A=b]",
            5,
            "spec.env",
            "got a list (expected a mapping of variable name to a string)",
        ),
        (
            "replicas: 3",
            5,
            "spec.replicas",
            "unknown field (expected one of: serviceAccount, meshed, mtls,",
        ),
        ("port: 80", 5, "spec.port", "unknown field (did you mean ports?)"),
    ],
)
def test_service_field_errors(spec: str, line: int, path: str, message: str) -> None:
    e = one_error(service(spec))
    assert (e.line, e.resource, e.path) == (line, "Service/default/orders", path)
    assert message in e.message, e.message
    assert "(expected" in e.message or "did you mean" in e.message


def test_every_error_of_a_document_at_once() -> None:
    errors = errors_of(
        service(
            """
            meshed: "yes"
            ports:
            - {port: "80", protocol: h3}
            - {port: 99999}
            command: []
            bogus: 1
            """
        )
    )
    assert where(errors) == [
        (5, "Service/default/orders", "spec.meshed"),
        (7, "Service/default/orders", "spec.ports[0].port"),
        (7, "Service/default/orders", "spec.ports[0].protocol"),
        (8, "Service/default/orders", "spec.ports[1].port"),
        (9, "Service/default/orders", "spec.command"),
        (10, "Service/default/orders", "spec.bogus"),
    ]


def test_broken_fixture_types() -> None:
    with pytest.raises(ConfigError) as info:
        load_paths([FIXTURES / "broken" / "types.yaml"])
    f = str(FIXTURES / "broken" / "types.yaml")
    assert all(e.file == f for e in info.value.errors)
    assert where(list(info.value.errors)) == [
        (5, "Mesh/default/m", "spec.trustDomain"),
        (6, "Mesh/default/m", "spec.mtls"),
        (7, "Mesh/default/m", "spec.authorization"),
        (8, "Mesh/default/m", "spec.certificateTTL"),
        (14, "Service/default/orders", "spec.meshed"),
        (17, "Service/default/orders", "spec.ports[0].port"),
        (18, "Service/default/orders", "spec.ports[1].port"),
        (18, "Service/default/orders", "spec.ports[1].protocol"),
        (20, "Service/default/orders", "spec.endpoints[0].address"),
        (21, "Service/default/orders", "spec.command"),
        (22, "Service/default/orders", "spec.env.PORT"),
        (23, "Service/default/orders", "spec.replicas"),
        (27, "Service/default/bad.name", "metadata.name"),
        (29, "Service/default/bad.name", "status"),
    ]


# -- document shape: kind, apiVersion, metadata, spec ---------------------------------------------


def test_unknown_kind_lists_supported_kinds() -> None:
    e = one_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\n")
    assert (e.line, e.resource, e.path) == (2, "ConfigMap/default/x", "kind")
    assert e.message.startswith('unsupported kind "ConfigMap" (expected one of: ')
    assert e.message.endswith(", ".join(SUPPORTED_KINDS) + ")")
    assert list(SUPPORTED_KINDS) == sorted(SUPPORTED_KINDS)


@pytest.mark.parametrize(
    ("doc", "line", "message"),
    [
        (
            "metadata: {name: x}\nspec: {}\n",
            1,
            "missing required field (expected one of: GRPCRoute",
        ),
        ("kind: [Service]\n", 1, "got a list (expected one of: GRPCRoute"),
        ("kind: 7\n", 1, "got integer 7 (expected one of:"),
    ],
)
def test_kind_missing_or_wrong_type(doc: str, line: int, message: str) -> None:
    e = one_error(doc)
    assert (e.line, e.path) == (line, "kind")
    assert e.message.startswith(message)


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [(kind, info.api_version) for kind, info in KINDS.items()],
)
def test_api_version_inferred_or_exact(kind: str, api_version: str) -> None:
    body = {
        "Mesh": "{}",
        "Service": "{}",
        "TCPRoute": "{}",
        "UDPRoute": "{}",
    }
    if kind not in body:
        # not a valid spec, but the apiVersion rule is checked before the spec
        errors = errors_of(f"kind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n")
        assert all(e.path.startswith("spec") for e in errors)
        wrong = errors_of(
            f"apiVersion: {api_version}x\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n"
        )
        assert wrong[0].path == "apiVersion"
        return
    doc = f"kind: {kind}\nmetadata: {{name: x}}\nspec: {body[kind]}\n"
    (inferred,) = load_text(doc)
    (explicit,) = load_text(f"apiVersion: {api_version}\n{doc}")
    assert inferred.api_version == explicit.api_version == api_version
    assert inferred.spec == explicit.spec


def test_api_version_must_match_the_kind() -> None:
    e = one_error(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\n"
        "kind: TCPRoute\nmetadata: {name: t}\nspec: {}\n"
    )
    assert (e.line, e.resource, e.path) == (1, "TCPRoute/default/t", "apiVersion")
    assert e.message == (
        'unsupported apiVersion "gateway.networking.k8s.io/v1alpha2" for kind TCPRoute '
        "(expected specs.smi-spec.io/v1alpha4, or no apiVersion)"
    )
    e = one_error("apiVersion: 1\nkind: TCPRoute\nmetadata: {name: t}\nspec: {}\n")
    assert e.message == "got integer 1 (expected specs.smi-spec.io/v1alpha4)"


def test_top_level_and_metadata_errors() -> None:
    errors = errors_of(
        """\
        kind: TCPRoute
        metadata:
          name: Bad_Name
          namespace: prod
          uid: 123
          labels: {app: x, version: 2, "bad key!": x}
          annotations: {note: [1]}
        spec: {}
        matches: {ports: [1]}
        extra: 1
        """
    )
    assert where(errors) == [
        (3, "TCPRoute/prod/-", "metadata.name"),
        (5, "TCPRoute/prod/-", "metadata.uid"),
        (6, "TCPRoute/prod/-", "metadata.labels.version"),
        (6, "TCPRoute/prod/-", 'metadata.labels."bad\\u0020key!"'),
        (7, "TCPRoute/prod/-", "metadata.annotations.note"),
        (9, "TCPRoute/prod/-", "matches"),
        (10, "TCPRoute/prod/-", "extra"),
    ]
    assert errors[5].message == "unknown field (did you mean spec.matches?)"
    assert errors[6].message == "unknown field (expected one of: apiVersion, kind, metadata, spec)"


def test_metadata_and_spec_missing() -> None:
    errors = errors_of("kind: Mesh\n")
    assert [(e.line, e.resource, e.path) for e in errors] == [
        (1, "Mesh/default/-", "metadata"),
        (1, "Mesh/default/-", "spec"),
    ]
    assert errors[1].message == (
        "missing required field (expected a mapping with the Mesh fields: trustDomain, mtls, "
        "authorization, certificateTTL)"
    )
    e = one_error("kind: Mesh\nmetadata: {name: m}\nspec: [1]\n")
    assert (e.line, e.path, e.message.split(" (")[0]) == (3, "spec", "got a list")
    e = one_error("kind: Mesh\nmetadata: {namespace: x}\nspec: {}\n")
    assert (e.line, e.resource, e.path) == (2, "Mesh/x/-", "metadata.name")


def test_document_that_is_not_a_mapping() -> None:
    errors = errors_of("- a\n- b\n---\njust text\n---\n!custom {kind: Mesh}\n")
    assert [(e.line, e.resource, e.path) for e in errors] == [
        (1, "-", "-"),
        (4, "-", "-"),
        (6, "-", "-"),
    ]
    assert (
        errors[0].message
        == "document is a list (expected a mapping with apiVersion, kind, metadata and spec)"
    )


def test_yaml_syntax_error_keeps_earlier_documents_errors() -> None:
    errors = errors_of("kind: Nope\nmetadata: {name: a}\n---\nkind: Mesh\nmetadata: {name: [x\n")
    assert [(e.line, e.path) for e in errors] == [(1, "kind"), (6, "-")]
    assert errors[1].message.startswith("invalid YAML: ")
    assert errors[1].message.endswith("(expected valid YAML syntax)")
    e = one_error("a: b\n\tc: d\n")
    assert (e.line, e.resource, e.path) == (2, "-", "-")


def test_yaml_oddities() -> None:
    errors = errors_of(
        """\
        base: &b {port: 80}
        kind: Service
        metadata: {name: a}
        spec:
          ports:
          - <<: *b
          meshed: true
          meshed: false
          ? [complex]
          : key
          1: 2
          command: [!!binary aGk=]
          serviceAccount: 2024-01-01
        """
    )
    assert [(e.line, e.path) for e in errors] == [
        (1, "base"),
        (6, "spec.ports[0].<<"),
        (6, "spec.ports[0].port"),  # the merged key is not there
        (8, "spec.meshed"),
        (9, "spec.?"),
        (11, "spec.1"),
        (12, "spec.command[0]"),
        (13, "spec.serviceAccount"),
    ]
    assert (
        errors[1].message == "YAML merge keys are not supported (expected the fields written out)"
    )
    assert errors[3].message == "repeated field, first at line 7 (expected each field once)"
    assert "timestamp 2024-01-01 (quote it to make it a string)" in errors[7].message


def test_null_means_omitted_except_for_required_fields() -> None:
    (r,) = load_text(service("meshed: ~\nmtls:\ncommand: null"))
    assert r.spec.meshed is True and r.spec.mtls is None and r.spec.command is None
    e = one_error(service("ports: [{port: ~}]"))
    assert (e.path, e.message) == (
        "spec.ports[0].port",
        "missing required field (expected an integer 1-65535)",
    )


# -- across documents and files --------------------------------------------------------------------


def test_duplicates_and_second_mesh() -> None:
    path = FIXTURES / "broken" / "duplicates.yaml"
    with pytest.raises(ConfigError) as info:
        load_paths([path])
    errors = list(info.value.errors)
    assert where(errors) == [
        (7, "Mesh/default/two", "kind"),
        (17, "Service/default/orders", "metadata.name"),
    ]
    assert (
        errors[0].message
        == f"a second Mesh; Mesh/default/one is defined at {path}:1 (expected exactly one Mesh)"
    )
    assert errors[1].message == (
        f"duplicate Service/default/orders, first defined at {path}:11 "
        "(expected unique kind, namespace and name)"
    )


def test_duplicate_across_files_and_all_files_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("kind: TCPRoute\nmetadata: {name: t}\nspec: {matches: {ports: [0]}}\n")
    b.write_text("---\nkind: TCPRoute\nmetadata: {name: t}\nspec: {}\n")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_paths([b, missing, a])
    assert [(e.file, e.line, e.path) for e in info.value.errors] == [
        (str(missing), 1, "-"),
        (str(a), 2, "metadata.name"),
        (str(a), 3, "spec.matches.ports[0]"),
    ]
    assert info.value.errors[1].message.endswith(
        f"first defined at {b}:2 (expected unique kind, namespace and name)"
    )
    assert info.value.errors[0].message == (
        "cannot read: No such file or directory (expected a readable YAML file or directory)"
    )


def test_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"kind: Mesh\nmetadata: {name: \xff}\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "nul.yaml").write_text("kind: Mesh\n\x00\n")
    with pytest.raises(ConfigError) as info:
        load_paths([tmp_path / "bad.yaml", tmp_path / "empty", tmp_path / "nul.yaml"])
    errors = list(info.value.errors)
    assert [(e.line, e.resource, e.path) for e in errors] == [
        (2, "-", "-"),
        (1, "-", "-"),
        (2, "-", "-"),
    ]
    assert errors[0].message == "not UTF-8 text: byte 0xff (expected a UTF-8 YAML file)"
    assert errors[1].message.startswith("no *.yaml or *.yml files in this directory")
    assert errors[2].message.startswith("invalid YAML: ")


def test_dangling_references() -> None:
    path = FIXTURES / "broken" / "refs.yaml"
    with pytest.raises(ConfigError) as info:
        load_paths([path])
    errors = list(info.value.errors)
    assert where(errors) == [
        (15, "TrafficTarget/default/tt", "spec.destination.name"),
        (18, "TrafficTarget/default/tt", "spec.rules[0].matches[1]"),
        (19, "TrafficTarget/default/tt", "spec.rules[1].name"),
        (25, "TrafficSplit/default/split", "spec.backends[1].service"),
        (26, "TrafficSplit/default/split", "spec.matches[1].name"),
        (32, "HTTPRoute/default/route", "spec.parentRefs[0].port"),
        (32, "HTTPRoute/default/route", "spec.parentRefs[0].sectionName"),
        (34, "HTTPRoute/default/route", "spec.rules[0].backendRefs[1].port"),
        (34, "HTTPRoute/default/route", "spec.rules[0].backendRefs[2].name"),
        (40, "TrafficPolicy/default/p1", "spec.targetRef.sectionName"),
        (47, "TrafficPolicy/default/p2", "spec.targetRef.sectionName"),
        (47, "TrafficPolicy/default/p2", "spec.targetRef"),
    ]
    messages = [e.message for e in errors]
    assert (
        messages[0]
        == 'no Service in namespace default has serviceAccount "ordrs" (did you mean orders?)'
    )
    assert (
        messages[1]
        == 'no match "write" in HTTPRouteGroup default/orders-routes (expected one of: read)'
    )
    assert messages[2] == (
        'no TCPRoute "tcp" in namespace default (expected a TCPRoute defined in the config; '
        "namespace default has none)"
    )
    assert messages[3] == 'no Service "orders-v2" in namespace default (did you mean orders?)'
    assert messages[5] == "Service default/orders has no port 80 (expected one of: 8080)"
    assert messages[11] == (
        f"same target as TrafficPolicy default/p1 at {path}:36 "
        "(expected one TrafficPolicy per target)"
    )


def test_service_references_checked_only_when_services_exist() -> None:
    split = (
        "kind: TrafficSplit\nmetadata: {name: s}\nspec:\n  service: web\n"
        "  backends: [{service: web-v2, weight: 1}]\n"
    )
    target = (
        "kind: TrafficTarget\nmetadata: {name: t}\nspec:\n"
        "  destination: {kind: ServiceAccount, name: web}\n"
        "  sources: [{kind: ServiceAccount, name: x}]\n  rules: [{kind: TCPRoute, name: r}]\n"
        "---\nkind: TCPRoute\nmetadata: {name: r}\nspec: {}\n"
    )
    assert len(load_text(split + "---\n" + target)) == 3  # SMI only: no Services to check against
    errors = errors_of(split + "---\n" + target + "---\n" + service("{}", name="api"))
    assert [(e.line, e.path) for e in errors] == [
        (4, "spec.service"),
        (5, "spec.backends[0].service"),
        (10, "spec.destination.name"),
    ]
    # an invalid Service makes its namespace's ServiceAccounts unknown: no cascading error
    errors = errors_of(target + "---\n" + service("meshed: 1", name="web"))
    assert [e.path for e in errors] == ["spec.meshed"]


def test_namespaces_scope_references() -> None:
    text = """\
    kind: HTTPRouteGroup
    metadata: {name: g, namespace: a}
    spec: {matches: [{name: m}]}
    ---
    kind: TrafficTarget
    metadata: {name: t, namespace: b}
    spec:
      destination: {kind: ServiceAccount, name: x}
      sources: [{kind: ServiceAccount, name: y}]
      rules: [{kind: HTTPRouteGroup, name: g}]
    """
    e = one_error(text)
    assert (e.line, e.resource, e.path) == (10, "TrafficTarget/b/t", "spec.rules[0].name")
    assert e.message.startswith('no HTTPRouteGroup "g" in namespace b')
    assert len(load_text(textwrap.dedent(text).replace("namespace: b", "namespace: a"))) == 2


# -- SMI, Gateway API and TrafficPolicy specifics --------------------------------------------------


def test_invalid_regexes_are_named() -> None:
    path = FIXTURES / "broken" / "regex.yaml"
    with pytest.raises(ConfigError) as info:
        load_paths([path])
    errors = list(info.value.errors)
    assert [(e.line, e.path) for e in errors] == [
        (6, "spec.matches[0].pathRegex"),
        (8, "spec.matches[0].headers.user-agent"),
        (17, "spec.rules[0].matches[0].path.value"),
        (19, "spec.rules[0].matches[0].headers[0].value"),
        (21, "spec.rules[0].matches[0].queryParams[0].value"),
        (30, "spec.rules[0].matches[0].method.service"),
    ]
    assert errors[0].message.startswith(
        'invalid RE2 regex "/api/(v1": missing ) (expected RE2 syntax'
    )
    assert errors[1].message.startswith('invalid RE2 regex "(?=lookahead)": invalid perl operator')


def test_regex_strings_are_stored_not_compiled() -> None:
    (g,) = load_text(
        "kind: HTTPRouteGroup\nmetadata: {name: g}\n"
        'spec: {matches: [{name: a, pathRegex: "/a.*"}]}\n'
    )
    assert g.spec.matches[0].path_regex == "/a.*"


def test_tcp_and_http_matches_have_different_shapes() -> None:
    e = one_error("kind: TCPRoute\nmetadata: {name: t}\nspec:\n  matches:\n  - ports: [80]\n")
    assert (e.line, e.path, e.message) == (
        5,
        "spec.matches",
        "got a list (expected a mapping with fields name, ports)",
    )
    e = one_error("kind: HTTPRouteGroup\nmetadata: {name: g}\nspec:\n  matches: {ports: [80]}\n")
    assert (e.line, e.path) == (4, "spec.matches")
    assert e.message.startswith("got a mapping (expected a non-empty list of mappings")


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ("matches: []", "spec.matches", "0 items (expected at least 1 item)"),
        ("matches: [{methods: [GET]}]", "spec.matches[0].name", "missing required field"),
        (
            "matches: [{name: a}, {name: a}]",
            "spec.matches[1].name",
            'duplicate name "a", first at line 4',
        ),
        (
            "matches: [{name: a, methods: [get]}]",
            "spec.matches[0].methods[0]",
            'invalid value "get" (expected one of: *, GET',
        ),
        (
            "matches: [{name: a, headers: {x: 1}}]",
            "spec.matches[0].headers.x",
            "got integer 1 (expected an RE2",
        ),
        (
            "matches: [{name: a, headers: {'a b': x}}]",
            'spec.matches[0].headers."a\\u0020b"',
            'invalid header name "a b"',
        ),
        (
            "matches: [{name: a, headers: {X-A: x, x-a: y}}]",
            "spec.matches[0].headers.x-a",
            "repeated header name (case-insensitive)",
        ),
    ],
)
def test_http_route_group_errors(spec: str, path: str, message: str) -> None:
    e = one_error(f"kind: HTTPRouteGroup\nmetadata: {{name: g}}\nspec:\n  {spec}\n")
    assert (e.line, e.path) == (4, path)
    assert e.message.startswith(message), e.message


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            "destination: {kind: Group, name: a}",
            "spec.destination.kind",
            'invalid value "Group" (expected ServiceAccount)',
        ),
        (
            "rules: [{kind: HTTPRoute, name: r}]",
            "spec.rules[0].kind",
            "(expected one of: HTTPRouteGroup, TCPRoute, UDPRoute)",
        ),
        (
            "rules: [{kind: TCPRoute, name: r, matches: [a]}]",
            "spec.rules[0].matches",
            "a TCPRoute rule allows all its ports",
        ),
        ("sources: []", "spec.sources", "0 items (expected at least 1 item)"),
    ],
)
def test_traffic_target_errors(spec: str, path: str, message: str) -> None:
    fields = {
        "destination": "{kind: ServiceAccount, name: a}",
        "sources": "[{kind: ServiceAccount, name: b}]",
        "rules": "[{kind: TCPRoute, name: r}]",
    }
    key, _, value = spec.partition(": ")
    fields[key] = value
    body = "".join(f"  {name}: {v}\n" for name, v in fields.items())
    text = f"kind: TrafficTarget\nmetadata: {{name: t}}\nspec:\n{body}"
    text += "---\nkind: TCPRoute\nmetadata: {name: r}\nspec: {}\n"
    e = one_error(text)
    assert e.path == path and e.line == 4 + list(fields).index(key)
    assert message in e.message, e.message


@pytest.mark.parametrize(
    ("backends", "path", "message"),
    [
        ("[]", "spec.backends", "0 items (expected at least 1 item)"),
        (
            "[{service: a, weight: -1}]",
            "spec.backends[0].weight",
            "-1 is out of range (expected an integer >= 0)",
        ),
        (
            "[{service: a, weight: '1'}]",
            "spec.backends[0].weight",
            'got string "1" (expected an integer >= 0)',
        ),
        (
            "[{service: a, weight: 0}]",
            "spec.backends",
            "every weight is 0 (expected at least one backend with weight > 0)",
        ),
        (
            "[{service: a, weight: 1}, {service: a, weight: 2}]",
            "spec.backends[1].service",
            'duplicate service "a"',
        ),
        (
            "[{service: a}]",
            "spec.backends[0].weight",
            "missing required field (expected an integer >= 0)",
        ),
    ],
)
def test_traffic_split_errors(backends: str, path: str, message: str) -> None:
    e = one_error(
        f"kind: TrafficSplit\nmetadata: {{name: s}}\n"
        f"spec:\n  service: root\n  backends: {backends}\n"
    )
    assert (e.line, e.path) == (5, path)
    assert e.message.startswith(message), e.message


ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - RULE
"""


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        (
            "matches: [{path: {type: Exact, value: api}}]",
            "spec.rules[0].matches[0].path.value",
            'Exact path "api" does not start with',
        ),
        (
            "matches: [{path: {type: Regex, value: /}}]",
            "spec.rules[0].matches[0].path.type",
            "(expected one of: Exact, PathPrefix, RegularExpression)",
        ),
        (
            "matches: [{method: get}]",
            "spec.rules[0].matches[0].method",
            'invalid value "get" (expected one of: GET,',
        ),
        (
            "matches: [{headers: [{name: a, value: x}, {name: A, value: y}]}]",
            "spec.rules[0].matches[0].headers[1].name",
            'duplicate name "A"',
        ),
        (
            "filters: [{type: RequestHeaderModifier}]",
            "spec.rules[0].filters[0].requestHeaderModifier",
            "missing required field for type RequestHeaderModifier",
        ),
        (
            "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}]",
            "spec.rules[0].filters[0].requestHeaderModifier",
            "changes nothing (expected at least one of set, add, remove)",
        ),
        (
            "filters: [{type: URLRewrite, urlRewrite: {hostname: a.b},"
            " requestMirror: {backendRef: {name: x, port: 1}}}]",
            "spec.rules[0].filters[0].requestMirror",
            "not allowed with type URLRewrite",
        ),
        (
            "filters: [{type: ExtensionRef}]",
            "spec.rules[0].filters[0].type",
            'invalid value "ExtensionRef"',
        ),
        (
            "filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]",
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "invalid value 307 (expected one of: 301, 302)",
        ),
        (
            "filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath}}}]",
            "spec.rules[0].filters[0].requestRedirect.path.replaceFullPath",
            "missing required field for type ReplaceFullPath",
        ),
        (
            "filters: [{type: RequestRedirect, requestRedirect: {}}]\n"
            "    backendRefs: [{name: orders, port: 1}]",
            "spec.rules[0].backendRefs",
            "backendRefs together with a RequestRedirect filter",
        ),
        (
            "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: x, port: 1},"
            " percent: 5, fraction: {numerator: 1}}}]",
            "spec.rules[0].filters[0].requestMirror.fraction",
            "percent and fraction are exclusive",
        ),
        (
            "backendRefs: [{name: orders}]",
            "spec.rules[0].backendRefs[0].port",
            "missing required field (expected an integer 1-65535)",
        ),
        (
            "backendRefs: [{name: orders, port: 1, weight: 1000001}]",
            "spec.rules[0].backendRefs[0].weight",
            "1000001 is out of range (expected an integer 0-1000000)",
        ),
        (
            "backendRefs: [{kind: Pod, name: orders, port: 1}]",
            "spec.rules[0].backendRefs[0].kind",
            'invalid value "Pod" (expected Service)',
        ),
        (
            "timeouts: {request: 1s, backendRequest: 2s}",
            "spec.rules[0].timeouts.backendRequest",
            "2s is longer than request 1s",
        ),
        ("timeouts: {request: -1s}", "spec.rules[0].timeouts.request", 'invalid duration "-1s"'),
    ],
)
def test_http_route_errors(rule: str, path: str, message: str) -> None:
    e = one_error(ROUTE.replace("RULE", rule))
    assert e.path == path
    assert message in e.message, e.message


def test_http_route_needs_service_parent_refs() -> None:
    e = one_error(
        ROUTE.replace("[{kind: Service, name: orders}]", "[{name: gw}]").replace("RULE", "{}")
    )
    assert (e.line, e.path, e.message) == (
        5,
        "spec.parentRefs[0].kind",
        "missing required field (expected Service)",
    )
    e = one_error(ROUTE.replace("[{kind: Service, name: orders}]", "[]").replace("RULE", "{}"))
    assert (e.path, e.message) == ("spec.parentRefs", "0 items (expected at least 1 item)")
    (r,) = load_text(ROUTE.replace("RULE", "timeouts: {request: 0s}"))
    assert r.spec.rules[0].timeouts.request_s == 0.0  # Gateway API: 0s disables


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            "targetRef: {kind: Service, name: orders}",
            "spec",
            "sets nothing (expected at least one of timeouts, retries",
        ),
        (
            "retries: {attempts: 11}",
            "spec.retries.attempts",
            "11 is out of range (expected an integer 0-10)",
        ),
        (
            "retries: {retryOn: [5xx, 503]}",
            "spec.retries.retryOn[1]",
            "invalid value 503 (expected one of: connect-failure",
        ),
        (
            "retries: {retryOn: [retriable-status-codes]}",
            "spec.retries.retriableStatusCodes",
            "missing: retryOn lists retriable-status-codes",
        ),
        (
            "retries: {retriableStatusCodes: [503]}",
            "spec.retries.retriableStatusCodes",
            "has no effect: retryOn does not list",
        ),
        (
            "retries: {retryOn: [reset], retriableStatusCodes: [99]}",
            "spec.retries.retriableStatusCodes[0]",
            "99 is out of range (expected an integer 100-599)",
        ),
        (
            "retries: {backoff: {baseInterval: 1s, maxInterval: 100ms}}",
            "spec.retries.backoff.maxInterval",
            "0.1s is shorter than baseInterval 1s",
        ),
        (
            "retries: {budget: {percent: 101}}",
            "spec.retries.budget.percent",
            "101 is out of range (expected a number 0-100)",
        ),
        ("timeouts: {request: 10}", "spec.timeouts.request", "got integer 10 without a unit"),
        ("timeouts: {}", "spec.timeouts", "sets no timeout"),
        (
            "circuitBreaker: {maxConnections: 0}",
            "spec.circuitBreaker.maxConnections",
            "0 is out of range (expected an integer >= 1)",
        ),
        ("outlierDetection: {consecutive5xxErrors: 0}", "spec.outlierDetection", "never ejects"),
        (
            "outlierDetection: {maxEjectionPercent: -1}",
            "spec.outlierDetection.maxEjectionPercent",
            "-1 is out of range (expected a number 0-100)",
        ),
        (
            "loadBalancer: {policy: RING_HASH}",
            "spec.loadBalancer.consistentHash",
            "missing: policy RING_HASH needs a hash key",
        ),
        (
            "loadBalancer: {policy: RANDOM, consistentHash: {header: x}}",
            "spec.loadBalancer.consistentHash",
            "has no effect with policy RANDOM",
        ),
        (
            "loadBalancer: {policy: RING_HASH, consistentHash: {header: x, useSourceIp: true}}",
            "spec.loadBalancer.consistentHash",
            "2 hash keys given",
        ),
        (
            "rateLimit: {requestsPerSecond: 0}",
            "spec.rateLimit.requestsPerSecond",
            "0 is out of range (expected a number > 0)",
        ),
        (
            "rateLimit: {burst: 5}",
            "spec.rateLimit.requestsPerSecond",
            "missing required field (expected a number > 0)",
        ),
        ("faults: {}", "spec.faults", "injects nothing"),
        (
            "faults: {delay: {percent: 50}}",
            "spec.faults.delay.fixedDelay",
            "missing required field (expected a positive duration",
        ),
        (
            "faults: {abort: {grpcStatus: 0}}",
            "spec.faults.abort.grpcStatus",
            "0 is out of range (expected an integer 1-16)",
        ),
        ("faults: {abort: {percent: 10}}", "spec.faults.abort", "aborts with no status"),
        (
            "mirror: {service: orders, percent: 100.5}",
            "spec.mirror.percent",
            "100.5 is out of range",
        ),
        (
            "mirror: {service: orders, port: 8080, percent: .nan}",
            "spec.mirror.percent",
            'invalid number ".nan"',
        ),
        (
            "retries: {perTryTimout: 1s}",
            "spec.retries.perTryTimout",
            "unknown field (did you mean perTryTimeout?)",
        ),
    ],
)
def test_traffic_policy_errors(fields: str, path: str, message: str) -> None:
    body = "\n  ".join(f for f in (fields,) if not f.startswith("targetRef"))
    text = "apiVersion: pymesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n"
    text += "  targetRef: {kind: Service, name: orders}\n"
    if body:
        text += f"  {body}\n"
    e = one_error(text)
    assert e.path == path
    assert e.message.startswith(message), e.message


def test_traffic_policy_cluster_sections_need_a_service_target() -> None:
    text = (
        ROUTE.replace("RULE", "{name: fast}")
        + "---\napiVersion: pymesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n"
        "  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r,"
        " sectionName: fast}\n"
        "  circuitBreaker: {}\n  timeouts: {request: 1s}\n"
    )
    e = one_error(text)
    assert (e.line, e.path) == (14, "spec.circuitBreaker")
    assert (
        e.message
        == "applies to a destination Service, not a HTTPRoute (expected targetRef.kind: Service)"
    )
    assert len(load_text(text.replace("  circuitBreaker: {}\n", ""))) == 2
    e = one_error(
        text.replace("group: gateway.networking.k8s.io", 'group: ""').replace(
            "  circuitBreaker: {}\n", ""
        )
    )
    assert (e.path, e.message) == (
        "spec.targetRef.group",
        'group "" does not fit kind HTTPRoute (expected "gateway.networking.k8s.io")',
    )


# -- pymesh validate -------------------------------------------------------------------------------


def test_validate_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "ok: 14 resources\n"
    assert validate_main([str(FIXTURES / "broken" / "duplicates.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(FORMAT.fullmatch(line) for line in out)


def _run_validate(*paths: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "pymesh", "validate", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_cli_validate_subprocess() -> None:
    good = _run_validate("tests/fixtures/config/good/mesh.yaml", "tests/fixtures/config/good/")
    assert (good.returncode, good.stderr) == (1, "")  # the same file twice: duplicates
    good = _run_validate("examples/config/mesh.yaml")
    assert (good.returncode, good.stdout, good.stderr) == (0, "ok: 14 resources\n", "")
    good = _run_validate("tests/fixtures/config/good/")
    assert (good.returncode, good.stdout, good.stderr) == (0, "ok: 10 resources\n", "")
    broken = "tests/fixtures/config/broken/types.yaml"
    bad = _run_validate(broken)
    assert bad.returncode == 1
    assert bad.stderr == ""  # RE2 must not log to stderr either
    lines = bad.stdout.splitlines()
    assert len(lines) == 14
    text = (ROOT / broken).read_text().splitlines()
    for line in lines:
        m = FORMAT.fullmatch(line)
        assert m, line
        assert m["file"] == broken
        assert m["message"].endswith(")"), line  # "(expected ...)" or "(did you mean ...?)"
        # the reported line holds the offending field (its last path component)
        key = re.sub(r"\[\d+\]$", "", m["path"]).rsplit(".", 1)[-1]
        assert key in text[int(m["line"]) - 1], (line, text[int(m["line"]) - 1])
    regex = _run_validate("tests/fixtures/config/broken/regex.yaml")
    assert (regex.returncode, regex.stderr) == (1, "")
    assert len(regex.stdout.splitlines()) == 6


# -- performance -----------------------------------------------------------------------------------


def test_thousand_resources_load_fast() -> None:
    docs = []
    for i in range(250):
        ns = f"ns{i % 10}"
        docs += [
            service(
                f"ports: [{{name: http, port: 8080}}]\n"
                f"endpoints: [{{address: 10.0.0.{i % 250}, port: 15006}}]",
                name=f"s{i}",
            ).replace(f"{{name: s{i}}}", f"{{name: s{i}, namespace: {ns}}}"),
            f"kind: HTTPRouteGroup\nmetadata: {{name: g{i}, namespace: {ns}}}\nspec:\n  matches:\n"
            f"  - {{name: read, pathRegex: '/api/v[0-9]+/{i}', methods: [GET],"
            " headers: {x-id: '[a-z]+'}}\n",
            f"kind: TrafficTarget\nmetadata: {{name: t{i}, namespace: {ns}}}\nspec:\n"
            f"  destination: {{kind: ServiceAccount, name: s{i}}}\n"
            f"  sources: [{{kind: ServiceAccount, name: s{(i + 10) % 250}}}]\n"
            f"  rules: [{{kind: HTTPRouteGroup, name: g{i}, matches: [read]}}]\n",
            f"kind: TrafficPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n"
            f"  targetRef: {{kind: Service, name: s{i}}}\n"
            f"  retries: {{attempts: 2, perTryTimeout: 1s}}\n",
        ]
    text = "---\n".join(docs)
    start = time.perf_counter()
    resources = load_text(text, "big.yaml")
    elapsed = time.perf_counter() - start
    assert len(resources) == 1000
    assert elapsed < 1.0, f"{elapsed:.3f}s for 1000 resources"


def test_resource_type_is_the_model_class() -> None:
    (r,) = load_text("kind: UDPRoute\nmetadata: {name: u}\nspec: {matches: {ports: [53, 5353]}}\n")
    assert isinstance(r, Resource)
    assert r.spec == k.UDPRouteSpec(matches=k.PortMatch(ports=(53, 5353)))


# -- docs/config.md stays true --------------------------------------------------------------------


def _spec_classes() -> list[type]:
    from pymesh.policy._schema import DataclassConv, ListConv, OptionalConv, converter

    seen: list[type] = []

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for f in converter(cls).fields:
            conv = f.conv
            while isinstance(conv, OptionalConv | ListConv):
                conv = conv.inner if isinstance(conv, OptionalConv) else conv.item
            if isinstance(conv, DataclassConv):
                walk(conv.cls)

    walk(k.ObjectMeta)
    for info in KINDS.values():
        walk(info.spec)
    return seen


def test_docs_name_every_field_of_every_kind() -> None:
    from pymesh.policy._schema import converter

    doc = re.sub(r"```.*?```", "", (ROOT / "docs" / "config.md").read_text(), flags=re.S)
    words = {w for code in re.findall(r"`([^`\n]+)`", doc) for w in re.findall(r"\w+", code)}
    missing = [
        f"{cls.__name__}.{f.yaml}"
        for cls in _spec_classes()
        for f in converter(cls).fields
        if f.yaml not in words
    ]
    assert not missing
    assert all(f"`{kind}`" in doc for kind in KINDS)


def test_docs_show_the_current_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    monkeypatch.chdir(ROOT)
    assert validate_main(["examples/config/broken/"]) == 1
    broken = capsys.readouterr().out.splitlines()
    assert validate_main(["examples/config/mesh.yaml"]) == 0
    ok = capsys.readouterr().out.splitlines()
    assert len(broken) == 9
    for line in broken + ok:
        assert f"\n{line}\n" in doc, line
