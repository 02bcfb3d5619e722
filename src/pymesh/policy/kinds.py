"""The spec classes of every config kind (DESIGN.md §3), and the table of kinds.

Each kind's `spec` becomes one frozen dataclass below (Mesh and Service use `MeshSpec` and
`ServiceSpec` from `model.py`). The type hints are the schema: `pymesh.policy._schema` reads
them to convert and validate YAML, so a field's type, its `Annotated` markers and its default
*are* the config reference (docs/config.md describes the same fields for humans).

YAML names are the camelCase of the attribute names (`path_regex` → `pathRegex`); a duration
attribute carries the unit suffix `_s` (float seconds) that its YAML name drops
(`per_try_timeout_s` → `perTryTimeout`). Fields named `namespace` default to "" in the class
and the loader fills in the namespace of the resource that holds them, so a loaded spec never
has an empty namespace.

Enforcement of these kinds arrives issue by issue; the loader knows and validates them all now.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, TypeAlias

from pymesh.policy._schema import (
    Check,
    Duration,
    Len,
    Pattern,
    Problem,
    Range,
    Re2,
    StrMap,
    Unique,
    Yaml,
    add_check,
    annotate,
    quote,
    re2_problem,
)
from pymesh.policy.model import DEFAULT_NAMESPACE, Endpoint, MeshSpec, ServicePort, ServiceSpec

__all__ = [
    "KINDS",
    "BackendObjectRef",
    "CircuitBreaker",
    "ConsistentHash",
    "FaultAbort",
    "FaultDelay",
    "FaultInjection",
    "GRPCBackendRef",
    "GRPCMethodMatch",
    "GRPCRouteFilter",
    "GRPCRouteMatch",
    "GRPCRouteRule",
    "GRPCRouteSpec",
    "HTTPBackendRef",
    "HTTPHeader",
    "HTTPHeaderFilter",
    "HTTPHeaderMatch",
    "HTTPMatch",
    "HTTPPathMatch",
    "HTTPPathModifier",
    "HTTPQueryParamMatch",
    "HTTPRequestMirrorFilter",
    "HTTPRequestRedirectFilter",
    "HTTPRouteFilter",
    "HTTPRouteGroupSpec",
    "HTTPRouteMatch",
    "HTTPRouteRule",
    "HTTPRouteSpec",
    "HTTPRouteTimeouts",
    "HTTPURLRewriteFilter",
    "IdentitySubject",
    "KindInfo",
    "LoadBalancer",
    "MirrorFraction",
    "MirrorPolicy",
    "ObjectMeta",
    "OutlierDetection",
    "ParentRef",
    "PolicyTargetRef",
    "PortMatch",
    "RateLimit",
    "RetryBackoff",
    "RetryBudget",
    "RetryPolicy",
    "RouteGroupRef",
    "TCPRouteSpec",
    "TimeoutPolicy",
    "TrafficPolicySpec",
    "TrafficSplitBackend",
    "TrafficSplitSpec",
    "TrafficTargetRule",
    "TrafficTargetSpec",
    "UDPRouteSpec",
]

# -- value syntax ---------------------------------------------------------------------------------
_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL: Final = Pattern(
    _LABEL_RE,
    "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    max_len=63,
)
DNS_SUBDOMAIN: Final = Pattern(
    rf"{_LABEL_RE}(\.{_LABEL_RE})*",
    "a DNS name: lowercase letters, digits, '-' and '.'",
    max_len=253,
)
HOSTNAME: Final = Pattern(
    rf"(\*\.)?{_LABEL_RE}(\.{_LABEL_RE})*",
    "a hostname such as api.example.com or *.example.com",
    max_len=253,
)
PRECISE_HOSTNAME: Final = Pattern(
    rf"{_LABEL_RE}(\.{_LABEL_RE})*", "a hostname such as api.example.com", max_len=253
)
TRUST_DOMAIN: Final = Pattern(
    r"[a-z0-9._-]+",
    "a SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_'",
    max_len=255,
)
HEADER_NAME: Final = Pattern(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "an HTTP header name (RFC 9110 token)", max_len=256
)
COOKIE_NAME: Final = Pattern(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "a cookie name (RFC 6265 token)", max_len=256
)
ENV_NAME: Final = Pattern(
    r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name: letters, digits and '_'", max_len=1024
)
LABEL_KEY: Final = Pattern(
    rf"({_LABEL_RE}(\.{_LABEL_RE})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
    "a Kubernetes label key such as app or example.com/tier",
    max_len=317,
)
LABEL_VALUE: Final = Pattern(
    r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?",
    "a label value: letters, digits, '-', '_' and '.'",
    max_len=63,
)
_HOST_RE = Pattern(
    r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*"
    r"[A-Za-z0-9])?)*",
    "an IP address or a hostname",
    max_len=253,
)
_GRPC_SERVICE = Pattern(
    r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", "a gRPC service name such as pkg.Service"
)
_GRPC_METHOD = Pattern(r"[A-Za-z_][A-Za-z_0-9]*", "a gRPC method name such as GetOrder")

Name: TypeAlias = Annotated[str, DNS_SUBDOMAIN]
Label: TypeAlias = Annotated[str, DNS_LABEL]
HeaderName: TypeAlias = Annotated[str, HEADER_NAME]
Port: TypeAlias = Annotated[int, Range(1, 65535)]
Percent: TypeAlias = Annotated[float, Range(0, 100)]
Seconds: TypeAlias = Annotated[float, Duration()]
GatewaySeconds: TypeAlias = Annotated[float, Duration(allow_zero=True)]  # "0s" disables
Regex: TypeAlias = Annotated[str, Re2()]
Weight: TypeAlias = Annotated[int, Range(0, 1_000_000)]
StrPairs: TypeAlias = tuple[tuple[str, str], ...]

# -- metadata -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectMeta:
    """`metadata` of every kind. Labels and annotations are validated, then not used."""

    name: Name
    namespace: Label = DEFAULT_NAMESPACE
    labels: Annotated[StrPairs, StrMap(key=LABEL_KEY, value=LABEL_VALUE, what="label")] = ()
    annotations: Annotated[StrPairs, StrMap(key=LABEL_KEY, what="annotation")] = ()


# -- pymesh.io/v1alpha1 Mesh and Service (classes in model.py) ------------------------------------


def _address_problem(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return _HOST_RE.problem(address)
    return None


annotate(MeshSpec, "trust_domain", TRUST_DOMAIN)
annotate(MeshSpec, "certificate_ttl_s", Yaml("certificateTTL"), Duration())
annotate(ServicePort, "name", DNS_LABEL)
annotate(ServicePort, "port", Range(1, 65535))
annotate(Endpoint, "port", Range(1, 65535))
annotate(Endpoint, "address", Check(_address_problem, "an IP address or a hostname"))
annotate(ServiceSpec, "service_account", DNS_SUBDOMAIN)
annotate(ServiceSpec, "command", Len(1))
annotate(ServiceSpec, "env", StrMap(key=ENV_NAME, what="variable name"))


def _check_service(spec: ServiceSpec) -> Iterator[Problem]:
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    for i, p in enumerate(spec.ports):
        if p.name is not None:
            if p.name in names:
                yield (
                    ("ports", i, "name"),
                    f"duplicate port name {quote(p.name)}, first at "
                    f"ports[{names[p.name]}] (expected unique port names)",
                )
            names.setdefault(p.name, i)
        if p.port in numbers:
            yield (
                ("ports", i, "port"),
                f"duplicate port {p.port}, first at "
                f"ports[{numbers[p.port]}] (expected unique ports)",
            )
        numbers.setdefault(p.port, i)
    seen: dict[tuple[str, int], int] = {}
    for i, ep in enumerate(spec.endpoints):
        key = (ep.address, ep.port)
        if key in seen:
            yield (
                ("endpoints", i),
                f"duplicate endpoint {ep.address}:{ep.port}, first at "
                f"endpoints[{seen[key]}] (expected unique endpoints)",
            )
        seen.setdefault(key, i)


add_check(ServiceSpec, _check_service)

# -- access.smi-spec.io/v1alpha3 TrafficTarget ----------------------------------------------------

RouteKind: TypeAlias = Literal["HTTPRouteGroup", "TCPRoute", "UDPRoute"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySubject:
    """An SMI subject: the ServiceAccount `spiffe://<trustDomain>/ns/<namespace>/sa/<name>`."""

    kind: Literal["ServiceAccount"]
    name: Name
    namespace: Label = ""  # "" in YAML: the TrafficTarget's namespace (filled in by the loader)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficTargetRule:
    """A route group (or TCP/UDP route) that the sources may use; `matches` narrows a group."""

    kind: RouteKind
    name: Name
    matches: Annotated[tuple[Annotated[str, Len(1, 253)], ...], Unique()] = ()

    def _check(self) -> Iterator[Problem]:
        if self.matches and self.kind != "HTTPRouteGroup":
            yield (
                ("matches",),
                f"a {self.kind} rule allows all its ports; matches names "
                "HTTPRouteGroup matches (expected no matches here)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficTargetSpec:
    """Allow `sources` to reach `destination` on `rules` (default deny, enforced server-side)."""

    destination: IdentitySubject
    sources: Annotated[tuple[IdentitySubject, ...], Len(1)]
    rules: Annotated[tuple[TrafficTargetRule, ...], Len(1)]


# -- specs.smi-spec.io/v1alpha4 HTTPRouteGroup, TCPRoute, UDPRoute ---------------------------------

SmiMethod: TypeAlias = Literal[
    "*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"
]
HttpMethod: TypeAlias = Literal[
    "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPMatch:
    """One named match of an HTTPRouteGroup; every given condition must hold.

    `pathRegex` (RE2) matches from the start of the path, query excluded; each `headers` value
    is an RE2 regex that must match the whole header value (names are case-insensitive).
    """

    name: Annotated[str, Len(1, 253)]
    methods: Annotated[tuple[SmiMethod, ...], Unique()] = ()
    path_regex: Regex | None = None
    headers: Annotated[
        StrPairs, StrMap(key=HEADER_NAME, value=Re2(), casefold_keys=True, what="header name")
    ] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteGroupSpec:
    """`HTTPRouteGroup.spec`: the named HTTP matches that TrafficTargets and splits refer to."""

    matches: Annotated[tuple[HTTPMatch, ...], Len(1), Unique("name")]


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMatch:
    """`TCPRoute.spec.matches` / `UDPRoute.spec.matches`: an object, not a list (SMI)."""

    name: str | None = None
    ports: Annotated[tuple[Port, ...], Unique()] = ()  # empty: every port


@dataclass(frozen=True, slots=True, kw_only=True)
class TCPRouteSpec:
    """`TCPRoute.spec`."""

    matches: PortMatch = PortMatch()


@dataclass(frozen=True, slots=True, kw_only=True)
class UDPRouteSpec:
    """`UDPRoute.spec`."""

    matches: PortMatch = PortMatch()


# -- split.smi-spec.io/v1alpha4 TrafficSplit ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSplitBackend:
    """A Service in the TrafficSplit's namespace and its relative weight."""

    service: Label
    weight: Annotated[int, Range(0)]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteGroupRef:
    """A TrafficSplit match: an HTTPRouteGroup in the same namespace."""

    kind: Literal["HTTPRouteGroup"]
    name: Name
    api_group: Literal["specs.smi-spec.io"] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSplitSpec:
    """Split traffic for the root `service` among `backends` by weight."""

    service: Label
    backends: Annotated[tuple[TrafficSplitBackend, ...], Len(1), Unique("service")]
    matches: tuple[RouteGroupRef, ...] = ()

    def _check(self) -> Iterator[Problem]:
        if sum(b.weight for b in self.backends) == 0:
            yield ("backends",), "every weight is 0 (expected at least one backend with weight > 0)"


# -- gateway.networking.k8s.io/v1 HTTPRoute, GRPCRoute (GAMMA: Service parentRefs) ----------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ParentRef:
    """The Service whose traffic a route governs (GAMMA); `sectionName` names one port."""

    group: Literal[""] = ""
    kind: Literal["Service"]
    name: Label
    namespace: Label = ""  # "": the route's namespace
    port: Port | None = None
    section_name: Name | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendObjectRef:
    """A Service and port to send to (a mirror target)."""

    group: Literal[""] = ""
    kind: Literal["Service"] = "Service"
    name: Label
    namespace: Label = ""
    port: Port


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPPathMatch:
    """`Exact` and `PathPrefix` values start with "/"; `RegularExpression` is RE2."""

    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, Len(1, 1024)] = "/"

    def _check(self) -> Iterator[Problem]:
        if self.type == "RegularExpression":
            problem = re2_problem(self.value)
            if problem is not None:
                yield ("value",), problem
        elif not self.value.startswith("/"):
            yield (
                ("value",),
                f"{self.type} path {quote(self.value)} does not start with "
                "'/' (expected an absolute path)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeaderMatch:
    """A header condition (also GRPCRoute's); a RegularExpression must match the whole value."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Len(0, 4096)]

    def _check(self) -> Iterator[Problem]:
        if self.type == "RegularExpression":
            problem = re2_problem(self.value)
            if problem is not None:
                yield ("value",), problem


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPQueryParamMatch:
    """A query parameter condition."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, Len(1, 256)]
    value: Annotated[str, Len(0, 1024)]

    def _check(self) -> Iterator[Problem]:
        if self.type == "RegularExpression":
            problem = re2_problem(self.value)
            if problem is not None:
                yield ("value",), problem


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteMatch:
    """All given conditions must hold; no `path` means prefix "/"."""

    path: HTTPPathMatch | None = None
    headers: Annotated[tuple[HTTPHeaderMatch, ...], Len(0, 16), Unique("name", casefold=True)] = ()
    query_params: Annotated[tuple[HTTPQueryParamMatch, ...], Len(0, 16), Unique("name")] = ()
    method: HttpMethod | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeader:
    """A header to set or add."""

    name: HeaderName
    value: Annotated[str, Len(0, 4096)]


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeaderFilter:
    """RequestHeaderModifier / ResponseHeaderModifier."""

    set: Annotated[tuple[HTTPHeader, ...], Len(0, 16), Unique("name", casefold=True)] = ()
    add: Annotated[tuple[HTTPHeader, ...], Len(0, 16), Unique("name", casefold=True)] = ()
    remove: Annotated[tuple[HeaderName, ...], Len(0, 16), Unique(casefold=True)] = ()

    def _check(self) -> Iterator[Problem]:
        if not (self.set or self.add or self.remove):
            yield (), "changes nothing (expected at least one of set, add, remove)"


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPPathModifier:
    """A path rewrite: the whole path, or the prefix that the rule's PathPrefix match matched."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: Annotated[str, Len(1, 1024)] | None = None
    replace_prefix_match: Annotated[str, Len(1, 1024)] | None = None

    def _check(self) -> Iterator[Problem]:
        want, other = ("replaceFullPath", "replacePrefixMatch")
        value, extra = self.replace_full_path, self.replace_prefix_match
        if self.type == "ReplacePrefixMatch":
            want, other = other, want
            value, extra = extra, value
        if value is None:
            yield (want,), f"missing required field for type {self.type} (expected a path)"
        elif not value.startswith("/"):
            yield (want,), f"{quote(value)} does not start with '/' (expected an absolute path)"
        if extra is not None:
            yield (other,), f"not allowed with type {self.type} (expected only {want})"


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequestRedirectFilter:
    """RequestRedirect: answer with a redirect instead of forwarding."""

    scheme: Literal["http", "https"] | None = None
    hostname: Annotated[str, PRECISE_HOSTNAME] | None = None
    path: HTTPPathModifier | None = None
    port: Port | None = None
    status_code: Literal[301, 302] = 302


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPURLRewriteFilter:
    """URLRewrite: change the host and/or path before forwarding."""

    hostname: Annotated[str, PRECISE_HOSTNAME] | None = None
    path: HTTPPathModifier | None = None

    def _check(self) -> Iterator[Problem]:
        if self.hostname is None and self.path is None:
            yield (), "rewrites nothing (expected hostname or path)"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorFraction:
    """The share of requests mirrored: numerator/denominator."""

    numerator: Annotated[int, Range(0)]
    denominator: Annotated[int, Range(1)] = 100

    def _check(self) -> Iterator[Problem]:
        if self.numerator > self.denominator:
            yield (
                ("numerator",),
                f"{self.numerator} is more than the denominator "
                f"{self.denominator} (expected a fraction <= 1)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequestMirrorFilter:
    """RequestMirror: also send (fire-and-forget) a copy of each request to `backendRef`."""

    backend_ref: BackendObjectRef
    percent: Annotated[int, Range(0, 100)] | None = None
    fraction: MirrorFraction | None = None

    def _check(self) -> Iterator[Problem]:
        if self.percent is not None and self.fraction is not None:
            yield ("fraction",), "percent and fraction are exclusive (expected one of them)"


_FILTER_FIELDS: Final[Mapping[str, tuple[str, str]]] = {
    "RequestHeaderModifier": ("request_header_modifier", "requestHeaderModifier"),
    "ResponseHeaderModifier": ("response_header_modifier", "responseHeaderModifier"),
    "RequestRedirect": ("request_redirect", "requestRedirect"),
    "URLRewrite": ("url_rewrite", "urlRewrite"),
    "RequestMirror": ("request_mirror", "requestMirror"),
}


def _filter_problems(f: Any, kinds: tuple[str, ...]) -> Iterator[Problem]:
    attr, yaml_name = _FILTER_FIELDS[f.type]
    if getattr(f, attr) is None:
        yield (yaml_name,), f"missing required field for type {f.type} (expected a mapping)"
    for other in kinds:
        other_attr, other_yaml = _FILTER_FIELDS[other]
        if other != f.type and getattr(f, other_attr) is not None:
            yield (other_yaml,), f"not allowed with type {f.type} (expected only {yaml_name})"


def _filters_problems(filters: tuple[Any, ...], path: tuple[str | int, ...]) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, f in enumerate(filters):
        if f.type in first and f.type != "RequestMirror":
            yield (
                (*path, i, "type"),
                f"second {f.type} filter, first at "
                f"filters[{first[f.type]}] (expected each filter type once, except "
                "RequestMirror)",
            )
        first.setdefault(f.type, i)
    if "RequestRedirect" in first and "URLRewrite" in first:
        yield (
            (*path, first["URLRewrite"], "type"),
            "URLRewrite together with RequestRedirect (expected one of them)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteFilter:
    """One filter; `type` names the one field that configures it."""

    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "RequestMirror",
    ]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None

    def _check(self) -> Iterator[Problem]:
        yield from _filter_problems(self, tuple(_FILTER_FIELDS))


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPBackendRef:
    """A Service and port that a rule forwards to, with its weight and own filters."""

    group: Literal[""] = ""
    kind: Literal["Service"] = "Service"
    name: Label
    namespace: Label = ""
    port: Port
    weight: Weight = 1
    filters: Annotated[tuple[HTTPRouteFilter, ...], Len(0, 16)] = ()

    def _check(self) -> Iterator[Problem]:
        yield from _filters_problems(self.filters, ("filters",))


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteTimeouts:
    """`request`: the whole request incl. retries; `backendRequest`: one try. "0s" disables."""

    request_s: GatewaySeconds | None = None
    backend_request_s: GatewaySeconds | None = None

    def _check(self) -> Iterator[Problem]:
        r, b = self.request_s, self.backend_request_s
        if r and b and b > r:
            yield (
                ("backendRequest",),
                f"{b:g}s is longer than request {r:g}s (expected backendRequest <= request)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteRule:
    """Requests matching any of `matches` go through `filters` to `backendRefs`."""

    name: Name | None = None
    matches: Annotated[tuple[HTTPRouteMatch, ...], Len(0, 64)] = ()
    filters: Annotated[tuple[HTTPRouteFilter, ...], Len(0, 16)] = ()
    backend_refs: Annotated[tuple[HTTPBackendRef, ...], Len(0, 16)] = ()
    timeouts: HTTPRouteTimeouts | None = None

    def _check(self) -> Iterator[Problem]:
        yield from _filters_problems(self.filters, ("filters",))
        if self.backend_refs and any(f.type == "RequestRedirect" for f in self.filters):
            yield (
                ("backendRefs",),
                "backendRefs together with a RequestRedirect filter (expected one of them)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteSpec:
    """`HTTPRoute.spec` (GAMMA): routes for traffic addressed to the parent Services."""

    parent_refs: Annotated[tuple[ParentRef, ...], Len(1, 32)]
    hostnames: Annotated[tuple[Annotated[str, HOSTNAME], ...], Len(0, 16), Unique()] = ()
    rules: Annotated[tuple[HTTPRouteRule, ...], Len(1, 16), Unique("name")]


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCMethodMatch:
    """`service` and/or `method`; with `RegularExpression` each is an RE2 regex."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: Annotated[str, Len(1, 1024)] | None = None
    method: Annotated[str, Len(1, 1024)] | None = None

    def _check(self) -> Iterator[Problem]:
        if self.service is None and self.method is None:
            yield (), "matches nothing (expected service and/or method)"
        for key, value, pattern in (
            ("service", self.service, _GRPC_SERVICE),
            ("method", self.method, _GRPC_METHOD),
        ):
            if value is None:
                continue
            problem = (
                re2_problem(value) if self.type == "RegularExpression" else pattern.problem(value)
            )
            if problem is not None:
                yield (key,), problem


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteMatch:
    """A gRPC method and header conditions."""

    method: GRPCMethodMatch | None = None
    headers: Annotated[tuple[HTTPHeaderMatch, ...], Len(0, 16), Unique("name", casefold=True)] = ()


_GRPC_FILTERS: Final = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteFilter:
    """One filter of a GRPCRoute rule (header modifiers and mirroring)."""

    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None

    def _check(self) -> Iterator[Problem]:
        yield from _filter_problems(self, _GRPC_FILTERS)


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCBackendRef:
    """A Service and port that a gRPC rule forwards to."""

    group: Literal[""] = ""
    kind: Literal["Service"] = "Service"
    name: Label
    namespace: Label = ""
    port: Port
    weight: Weight = 1
    filters: Annotated[tuple[GRPCRouteFilter, ...], Len(0, 16)] = ()

    def _check(self) -> Iterator[Problem]:
        yield from _filters_problems(self.filters, ("filters",))


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteRule:
    """Calls matching any of `matches` go through `filters` to `backendRefs`."""

    name: Name | None = None
    matches: Annotated[tuple[GRPCRouteMatch, ...], Len(0, 8)] = ()
    filters: Annotated[tuple[GRPCRouteFilter, ...], Len(0, 16)] = ()
    backend_refs: Annotated[tuple[GRPCBackendRef, ...], Len(0, 16)] = ()

    def _check(self) -> Iterator[Problem]:
        yield from _filters_problems(self.filters, ("filters",))


@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteSpec:
    """`GRPCRoute.spec` (GAMMA)."""

    parent_refs: Annotated[tuple[ParentRef, ...], Len(1, 32)]
    hostnames: Annotated[tuple[Annotated[str, HOSTNAME], ...], Len(0, 16), Unique()] = ()
    rules: Annotated[tuple[GRPCRouteRule, ...], Len(1, 16), Unique("name")]


# -- pymesh.io/v1alpha1 TrafficPolicy ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTargetRef:
    """What a TrafficPolicy applies to, in its own namespace: a Service (optionally one port,
    by port name) or a route (optionally one rule, by rule name)."""

    group: Literal["", "gateway.networking.k8s.io"] | None = None
    kind: Literal["Service", "HTTPRoute", "GRPCRoute"]
    name: Name
    section_name: Name | None = None

    def _check(self) -> Iterator[Problem]:
        want = "" if self.kind == "Service" else "gateway.networking.k8s.io"
        if self.group is not None and self.group != want:
            yield (
                ("group",),
                f"group {quote(self.group)} does not fit kind {self.kind} (expected {quote(want)})",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutPolicy:
    """`request`: a whole request, retries included; `connect`: one upstream connect;
    `idle`: a connection or stream with no traffic."""

    request_s: Seconds | None = None
    connect_s: Seconds | None = None
    idle_s: Seconds | None = None

    def _check(self) -> Iterator[Problem]:
        if self.request_s is None and self.connect_s is None and self.idle_s is None:
            yield (), "sets no timeout (expected at least one of request, connect, idle)"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBackoff:
    """Exponential backoff with full jitter between tries (Envoy's)."""

    base_interval_s: Seconds = 0.025
    max_interval_s: Seconds | None = None  # None: 10 x baseInterval

    def _check(self) -> Iterator[Problem]:
        if self.max_interval_s is not None and self.max_interval_s < self.base_interval_s:
            yield (
                ("maxInterval",),
                f"{self.max_interval_s:g}s is shorter than baseInterval "
                f"{self.base_interval_s:g}s (expected maxInterval >= baseInterval)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Retries in flight may be at most `percent` of active requests (but always
    `minRetriesPerSecond`), so retries cannot multiply an overload."""

    percent: Percent = 20.0
    min_retries_per_second: Annotated[int, Range(0)] = 3


RetryOn: TypeAlias = Literal[
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries: `attempts` more tries after the first, on the `retryOn` conditions."""

    attempts: Annotated[int, Range(0, 10)] = 2
    per_try_timeout_s: Seconds | None = None
    retry_on: Annotated[tuple[RetryOn, ...], Len(1), Unique()] = (
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
    )
    retriable_status_codes: Annotated[tuple[Annotated[int, Range(100, 599)], ...], Unique()] = ()
    backoff: RetryBackoff = RetryBackoff()
    budget: RetryBudget = RetryBudget()
    max_body_bytes: Annotated[int, Range(0, 64 * 1024 * 1024)] = 64 * 1024

    def _check(self) -> Iterator[Problem]:
        listed = "retriable-status-codes" in self.retry_on
        if listed and not self.retriable_status_codes:
            yield (
                ("retriableStatusCodes",),
                "missing: retryOn lists retriable-status-codes "
                "(expected a list of status codes such as [503])",
            )
        if self.retriable_status_codes and not listed:
            yield (
                ("retriableStatusCodes",),
                "has no effect: retryOn does not list "
                "retriable-status-codes (expected retriable-status-codes in retryOn)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """Per-destination limits (Envoy thresholds); over a limit → 503 `overflow`."""

    max_connections: Annotated[int, Range(1)] = 1024
    max_pending_requests: Annotated[int, Range(1)] = 1024
    max_requests: Annotated[int, Range(1)] = 1024
    max_retries: Annotated[int, Range(0)] = 3
    max_requests_per_connection: Annotated[int, Range(1)] | None = None  # None: unlimited


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """Eject an endpoint after consecutive errors for `baseEjectionTime` x times ejected."""

    consecutive_5xx_errors: Annotated[int, Range(0)] = 5  # 0 disables
    consecutive_gateway_errors: Annotated[int, Range(0)] = 0  # 502/503/504 and connect failures
    interval_s: Seconds = 10.0
    base_ejection_time_s: Seconds = 30.0
    max_ejection_percent: Percent = 10.0

    def _check(self) -> Iterator[Problem]:
        if self.consecutive_5xx_errors == 0 and self.consecutive_gateway_errors == 0:
            yield (), "never ejects (expected consecutive5xxErrors or consecutiveGatewayErrors > 0)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistentHash:
    """The RING_HASH key: exactly one of a header, a cookie or the source IP."""

    header: HeaderName | None = None
    cookie: Annotated[str, COOKIE_NAME] | None = None
    use_source_ip: bool = False

    def _check(self) -> Iterator[Problem]:
        given = [
            k
            for k, v in (
                ("header", self.header),
                ("cookie", self.cookie),
                ("useSourceIp", self.use_source_ip or None),
            )
            if v is not None
        ]
        if len(given) != 1:
            yield (
                (),
                f"{len(given)} hash keys given (expected exactly one of header, cookie, "
                "useSourceIp)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancer:
    """How an endpoint is picked; LEAST_REQUEST uses power of `choiceCount` choices."""

    policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH"] = "ROUND_ROBIN"
    choice_count: Annotated[int, Range(2, 16)] = 2
    consistent_hash: ConsistentHash | None = None

    def _check(self) -> Iterator[Problem]:
        if self.policy == "RING_HASH" and self.consistent_hash is None:
            yield (
                ("consistentHash",),
                "missing: policy RING_HASH needs a hash key (expected "
                "consistentHash: {header: ...}, {cookie: ...} or {useSourceIp: true})",
            )
        if self.policy != "RING_HASH" and self.consistent_hash is not None:
            yield (
                ("consistentHash",),
                f"has no effect with policy {self.policy} (expected policy: RING_HASH)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A local token bucket per sidecar: `requestsPerSecond` refill, `burst` capacity; 429."""

    requests_per_second: Annotated[float, Range(0, lo_open=True)]
    burst: Annotated[int, Range(1)] | None = None  # None: ceil(requestsPerSecond)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultDelay:
    """Delay `percent` of requests by `fixedDelay`."""

    percent: Percent = 100.0
    fixed_delay_s: Seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultAbort:
    """Answer `percent` of requests with `httpStatus` (or, for gRPC, `grpcStatus`)."""

    percent: Percent = 100.0
    http_status: Annotated[int, Range(200, 599)] | None = None
    grpc_status: Annotated[int, Range(1, 16)] | None = None

    def _check(self) -> Iterator[Problem]:
        if self.http_status is None and self.grpc_status is None:
            yield (), "aborts with no status (expected httpStatus or grpcStatus)"
        elif self.http_status is not None and self.grpc_status is not None:
            yield ("grpcStatus",), "both httpStatus and grpcStatus given (expected one of them)"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultInjection:
    """Chaos testing: delays and/or aborts."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    def _check(self) -> Iterator[Problem]:
        if self.delay is None and self.abort is None:
            yield (), "injects nothing (expected delay and/or abort)"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    """Send a copy of `percent` of requests to another Service (responses are discarded)."""

    service: Label
    namespace: Label = ""
    port: Port | None = None  # None: the Service's only port
    percent: Percent = 100.0


_CLUSTER_SECTIONS: Final = (
    ("circuit_breaker", "circuitBreaker"),
    ("outlier_detection", "outlierDetection"),
    ("load_balancer", "loadBalancer"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicySpec:
    """`TrafficPolicy.spec`: client-side traffic management for one destination or route."""

    target_ref: PolicyTargetRef
    timeouts: TimeoutPolicy | None = None
    retries: RetryPolicy | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    load_balancer: LoadBalancer | None = None
    rate_limit: RateLimit | None = None
    faults: FaultInjection | None = None
    mirror: MirrorPolicy | None = None

    def _check(self) -> Iterator[Problem]:
        if all(
            getattr(self, a) is None
            for a in (
                "timeouts",
                "retries",
                "circuit_breaker",
                "outlier_detection",
                "load_balancer",
                "rate_limit",
                "faults",
                "mirror",
            )
        ):
            yield (
                (),
                "sets nothing (expected at least one of timeouts, retries, "
                "circuitBreaker, outlierDetection, loadBalancer, rateLimit, faults, mirror)",
            )
        if self.target_ref.kind != "Service":
            for attr, yaml_name in _CLUSTER_SECTIONS:
                if getattr(self, attr) is not None:
                    yield (
                        (yaml_name,),
                        f"applies to a destination Service, not a "
                        f"{self.target_ref.kind} (expected targetRef.kind: Service)",
                    )


# -- the table of kinds ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindInfo:
    """A supported kind: its one apiVersion and its spec class."""

    kind: str
    api_version: str
    spec: type


def _kinds(*infos: KindInfo) -> Mapping[str, KindInfo]:
    return MappingProxyType({i.kind: i for i in sorted(infos, key=lambda i: i.kind)})


KINDS: Final[Mapping[str, KindInfo]] = _kinds(
    KindInfo("Mesh", "pymesh.io/v1alpha1", MeshSpec),
    KindInfo("Service", "pymesh.io/v1alpha1", ServiceSpec),
    KindInfo("TrafficPolicy", "pymesh.io/v1alpha1", TrafficPolicySpec),
    KindInfo("TrafficTarget", "access.smi-spec.io/v1alpha3", TrafficTargetSpec),
    KindInfo("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4", HTTPRouteGroupSpec),
    KindInfo("TCPRoute", "specs.smi-spec.io/v1alpha4", TCPRouteSpec),
    KindInfo("UDPRoute", "specs.smi-spec.io/v1alpha4", UDPRouteSpec),
    KindInfo("TrafficSplit", "split.smi-spec.io/v1alpha4", TrafficSplitSpec),
    KindInfo("HTTPRoute", "gateway.networking.k8s.io/v1", HTTPRouteSpec),
    KindInfo("GRPCRoute", "gateway.networking.k8s.io/v1", GRPCRouteSpec),
)
"""Every supported kind by name, sorted. Any other kind is a config error."""
