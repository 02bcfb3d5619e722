"""The SMI spec's own examples as test data (../shared/smi-examples and the project's copies).

Rules under test (docs/config.md "SMI documents"): a document without `apiVersion` gets the
one apiVersion of its kind; 05's HTTPRouteGroup without `spec` is an error (two lines); the
kinds pymesh does not support (TrafficMetrics, IdentityBinding) are one error each.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import re2

from pymesh.errors import ConfigError, FieldError
from pymesh.policy import SUPPORTED_KINDS, Resource, load_paths, load_text
from pymesh.policy import kinds as k

SHARED = Path(__file__).parents[2].parent / "shared" / "smi-examples"
OWN = Path(__file__).parents[1] / "fixtures" / "config" / "smi"

F01 = "01-traffic-access-v1alpha3-l7-example.yaml"
F02 = "02-traffic-access-v1alpha3-l4-example.yaml"
F03 = "03-traffic-specs-v1alpha4-header-filters.yaml"
F04 = "04-traffic-split-v1alpha4-canary.yaml"
F05 = "05-traffic-split-v1alpha4-ab-test.yaml"
F06 = "06-traffic-metrics-v1alpha1-trafficmetrics.yaml"
F07 = "07-traffic-access-v1alpha4-draft-identitybinding.yaml"
ALL = (F01, F02, F03, F04, F05, F06, F07)


@pytest.fixture(params=["shared", "own"])
def examples(request: pytest.FixtureRequest) -> Path:
    """The directory of examples: ../shared/smi-examples, then the project's own copies."""
    if request.param == "shared":
        if not SHARED.is_dir():
            pytest.skip(f"{SHARED} does not exist (the shared SMI examples are not checked out)")
        return SHARED
    return OWN


def load(path: Path) -> tuple[Resource, ...]:
    return load_paths([path])


def failures(path: Path) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        load_paths([path])
    return list(info.value.errors)


def test_own_copies_are_identical_to_the_shared_examples() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} does not exist")
    for name in ALL:
        assert (OWN / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_examples_without_api_version_get_the_kinds_one(examples: Path) -> None:
    for name in ALL[:6]:
        assert "apiVersion" not in (examples / name).read_text(), name
    resources = [r for name in (F01, F02, F03, F04) for r in load(examples / name)]
    assert {(r.kind, r.api_version) for r in resources} == {
        ("TCPRoute", "specs.smi-spec.io/v1alpha4"),
        ("UDPRoute", "specs.smi-spec.io/v1alpha4"),
        ("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4"),
        ("TrafficTarget", "access.smi-spec.io/v1alpha3"),
        ("TrafficSplit", "split.smi-spec.io/v1alpha4"),
    }


def test_a_given_api_version_must_be_the_supported_one(examples: Path) -> None:
    original = (examples / F01).read_text()
    text = re.sub(
        "^kind: TrafficTarget",
        "apiVersion: access.smi-spec.io/v1alpha2\nkind: TrafficTarget",
        original,
        flags=re.M,
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, F01)
    assert [(e.line, e.path) for e in info.value.errors] == [(21, "apiVersion"), (43, "apiVersion")]
    assert info.value.errors[0].message == (
        'unsupported apiVersion "access.smi-spec.io/v1alpha2" for kind TrafficTarget '
        "(expected access.smi-spec.io/v1alpha3, or no apiVersion)"
    )
    text = re.sub(
        "^kind: TCPRoute",
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute",
        original,
        flags=re.M,
    )
    assert len(load_text(text, F01)) == 4


def test_01_l7(examples: Path) -> None:
    port, routes, metrics, api = load(examples / F01)
    assert (port.kind, port.name, port.namespace, port.source.line) == (
        "TCPRoute",
        "api-service-port",
        "default",
        1,
    )
    assert port.spec == k.TCPRouteSpec(matches=k.PortMatch(ports=(8080,)))
    assert routes.spec == k.HTTPRouteGroupSpec(
        matches=(
            k.HTTPMatch(name="api", path_regex="/api", methods=("*",)),
            k.HTTPMatch(name="metrics", path_regex="/metrics", methods=("GET",)),
        )
    )
    assert metrics.spec == k.TrafficTargetSpec(
        destination=k.IdentitySubject(
            kind="ServiceAccount", name="api-service", namespace="default"
        ),
        rules=(
            k.TrafficTargetRule(kind="TCPRoute", name="api-service-port"),
            k.TrafficTargetRule(
                kind="HTTPRouteGroup", name="api-service-routes", matches=("metrics",)
            ),
        ),
        sources=(k.IdentitySubject(kind="ServiceAccount", name="prometheus", namespace="default"),),
    )
    assert [s.name for s in api.spec.sources] == ["website-service", "payments-service"]
    assert api.spec.rules[1].matches == ("api",)
    assert (api.source.line, metrics.source.line) == (42, 21)


def test_02_l4_tcp_8300_allowed_udp_8300_not(examples: Path) -> None:
    tcp, udp, target = load(examples / F02)
    assert target.namespace == "default"  # no metadata.namespace
    assert target.spec.destination.namespace == "default"
    assert [(r.kind, r.name) for r in target.spec.rules] == [
        ("TCPRoute", "tcp-ports"),
        ("UDPRoute", "udp-ports"),
    ]
    assert 8300 in tcp.spec.matches.ports and 8300 not in udp.spec.matches.ports
    assert tcp.spec.matches.ports == (8301, 8302, 8300)
    assert udp.spec == k.UDPRouteSpec(matches=k.PortMatch(ports=(8301, 8302)))


def test_03_header_regexes_are_re2_and_match_whole_values(examples: Path) -> None:
    (group,) = load(examples / F03)
    android, firefox = group.spec.matches
    headers = dict(android.headers)
    assert headers == {"user-agent": ".*Android.*", "cookie": "^(.*?;)?(type=insider)(;.*)?$"}
    assert firefox.headers == (("user-agent", ".*Firefox.*"),)
    assert re2.fullmatch(headers["user-agent"], "Mozilla/5.0 (Linux; Android 14)")
    assert not re2.fullmatch(headers["user-agent"], "Mozilla/5.0 (X11; Linux x86_64)")
    assert re2.fullmatch(headers["cookie"], "session=1;type=insider;theme=dark")
    assert not re2.fullmatch(headers["cookie"], "type=outsider")


def test_04_canary_split(examples: Path) -> None:
    (split,) = load(examples / F04)
    assert split.spec == k.TrafficSplitSpec(
        service="website",
        backends=(
            k.TrafficSplitBackend(service="website-v1", weight=90),
            k.TrafficSplitBackend(service="website-v2", weight=10),
        ),
    )


def test_05_route_group_without_spec_is_an_error(examples: Path) -> None:
    errors = failures(examples / F05)
    assert [(e.file, e.line, e.resource, e.path) for e in errors] == [
        (str(examples / F05), 15, "HTTPRouteGroup/default/ab-test", "spec"),
        (str(examples / F05), 18, "HTTPRouteGroup/default/ab-test", "matches"),
    ]
    assert (
        errors[0].message
        == "missing required field (expected a mapping with the HTTPRouteGroup fields: matches)"
    )
    assert errors[1].message == "unknown field (did you mean spec.matches?)"
    # with the `spec:` that the SMI CRD requires, the document is valid (the split's match too)
    fixed = (examples / F05).read_text().replace("ab-test\nmatches:", "ab-test\nspec:\n  matches:")
    fixed = fixed.replace(
        "\n- name: firefox-users\n  headers:\n    user-agent:",
        "\n  - name: firefox-users\n    headers:\n      user-agent:",
    )
    split, group = load_text(fixed, F05)
    assert split.spec.matches == (k.RouteGroupRef(kind="HTTPRouteGroup", name="ab-test"),)
    assert [b.weight for b in split.spec.backends] == [0, 100]
    assert group.spec.matches[0].headers == (("user-agent", ".*Firefox.*"),)


def test_06_traffic_metrics_is_not_a_config_kind(examples: Path) -> None:
    (e,) = failures(examples / F06)
    assert (e.line, e.resource, e.path) == (1, "TrafficMetrics/default/-", "kind")
    assert e.message.startswith('unsupported kind "TrafficMetrics"')
    assert e.message.endswith(f"(expected one of: {', '.join(SUPPORTED_KINDS)})")


def test_07_identity_binding_draft_is_not_supported(examples: Path) -> None:
    (e,) = failures(examples / F07)
    assert (e.line, e.resource, e.path) == (2, "IdentityBinding/default/service-a", "kind")
    assert e.message.startswith('unsupported kind "IdentityBinding"')
    assert "TrafficTarget" in e.message


def test_whole_directory_reports_every_error_at_once(examples: Path) -> None:
    errors = failures(examples)
    assert [(Path(e.file).name, e.line, e.path) for e in errors] == [
        (F05, 15, "spec"),
        (F05, 18, "matches"),
        (F06, 1, "kind"),
        (F07, 2, "kind"),
    ]
    assert len(load_paths([examples / name for name in (F01, F02, F03, F04)])) == 9
