"""SMI TrafficTarget authorization: `decide()`, its compiled form `InboundAuthz`, `pymesh explain`.

The model (SMI traffic-access v1alpha3, enforced on the inbound side; docs/authorization.md):

- A TrafficTarget names a destination ServiceAccount. Once any TrafficTarget names the
  ServiceAccount of a Service, the Service's allow-list is active: everything not allowed is
  denied. With none, everything is allowed (and the decision says so).
- A source is a SPIFFE ID (`spiffe://<trustDomain>/ns/<ns>/sa/<sa>`, from the peer's mTLS
  certificate) or None (plaintext). An SMI `ServiceAccount` subject is exactly that ID; None
  never matches.
- TrafficTargets are OR. Inside one, TCPRoute rules (ports) and HTTPRouteGroup rules
  (requests) both constrain: an HTTP request needs a port of some TCPRoute (if the target has
  TCPRoute rules) AND a match of some HTTPRouteGroup (if it has HTTPRouteGroup rules). Rules
  of one kind are OR (union of ports, union of matches); a rule's `matches` narrows its group
  to those matches; a TCPRoute without ports allows every port. A TCP connection (no HTTP) is
  allowed only by a TCPRoute rule: HTTPRouteGroups describe requests, not connections.
  UDPRoute rules allow nothing here (pymesh does not proxy UDP).
- An HTTPRouteGroup match holds when every condition given holds: `methods` (empty or `*`:
  any), `pathRegex` (RE2, anchored at the start of the path, query excluded) and `headers`
  (RE2 per header, matching the whole value; names case-insensitive; repeated headers are
  joined with ", ", cookies with "; "; a missing header does not match).

Two implementations of that model, which the property tests hold to the same answers:
`decide()` is the plain reference (walks the targets, explains a denial in detail); the
compiled `InboundAuthz` answers the proxy per request from tables built once per config
version: a dict lookup by source, then by port, then a short list of pre-built allow
decisions guarded by precompiled matchers (literal path regexes become `startswith`). Its
denials are rare, so they are explained by the reference (slower, allocation is fine there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, final

from pymesh.errors import ConfigError
from pymesh.policy.model import DEFAULT_NAMESPACE, Resource
from pymesh.policy.snapshot import Mesh

__all__ = ["Decision", "InboundAuthz", "decide", "explain_main"]

AuthzMode = Literal["enforce", "audit"]

_ANY_PORT: Final = -1  # table key for every port that no TCPRoute of the destination lists
_REGEX_CHARS: Final = frozenset(".^$*+?()[]{}|\\")
_MATCH_ALL_PATHS: Final = ("", ".*")  # pathRegexes that match every path from its start
_LONG: Final = 80  # longest value quoted in a reason


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization verdict: allowed or not, the rule that allowed it, and why."""

    allowed: bool
    rule: str | None  # e.g. "TrafficTarget/ns/tt HTTPRouteGroup/ns/g:match TCPRoute/ns/r:8080"
    reason: str  # one human line: why allowed, or why denied (which rule is missing)


# -- the compiled policy of one destination (shared by decide() and InboundAuthz) --------------


@dataclass(frozen=True, slots=True)
class _Regex:
    """An RE2 regex from config, compiled once."""

    text: str
    compiled: Any  # re2._Regexp; str patterns are UTF-8, and match str or bytes alike


@dataclass(frozen=True, slots=True)
class _HttpMatch:
    """One named match of an HTTPRouteGroup, as a TrafficTarget rule allows it."""

    group: str  # HTTPRouteGroup/NS/NAME
    name: str
    methods: frozenset[str] | None  # None: any method
    path: _Regex | None  # None: any path
    headers: tuple[tuple[str, _Regex], ...]  # (lowercase name, regex on the whole value)


@dataclass(frozen=True, slots=True)
class _PortRule:
    """A TCPRoute rule of a TrafficTarget."""

    route: str  # TCPRoute/NS/NAME
    ports: frozenset[int] | None  # None: every port; empty: none (the route does not exist)

    def allows(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def tag(self, port: int) -> str:
        return f"{self.route}:*" if self.ports is None else f"{self.route}:{port}"

    def text(self, port: int) -> str:
        return f"{self.route} (every port)" if self.ports is None else f"{self.route} port {port}"


@dataclass(frozen=True, slots=True)
class _Target:
    """One TrafficTarget that names the destination, with its routes resolved."""

    ref: str  # TrafficTarget/NS/NAME
    sources: tuple[str, ...]  # SPIFFE IDs, in config order
    source_set: frozenset[str]
    tcp: tuple[_PortRule, ...] | None  # None: no TCPRoute rule (ports unconstrained for HTTP)
    http: tuple[_HttpMatch, ...] | None  # None: no HTTPRouteGroup rule (any request)
    udp: tuple[str, ...]  # UDPRoute rules (never allow TCP or HTTP)
    missing: tuple[str, ...]  # rules naming routes or matches that do not exist

    def port_rule(self, port: int) -> _PortRule | None:
        """The first TCPRoute rule allowing `port` (None if none does, or there are none)."""
        for r in self.tcp or ():
            if r.allows(port):
                return r
        return None


@dataclass(frozen=True, slots=True)
class _View:
    """Everything about one destination Service that authorization needs."""

    label: str  # NS/NAME of the Service
    account: str  # NS/SERVICEACCOUNT
    spiffe: str
    trust_domain: str
    mode: AuthzMode
    targets: tuple[_Target, ...]


def _compile_regex(text: str, where: str) -> _Regex:
    import re2  # imported on first use, as the loader does

    options = re2.Options()
    options.log_errors = False
    try:
        compiled = re2.compile(text, options)
    except re2.error as exc:  # only for meshes built in code: the loader checked these
        raise ValueError(f"{where}: invalid RE2 regex {text!r}: {exc}") from exc
    return _Regex(text, compiled)


def _subject_id(trust_domain: str, subject: Any, default_namespace: str) -> str:
    namespace = subject.namespace or default_namespace
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{subject.name}"


def _compile_match(group: str, m: Any) -> _HttpMatch:
    where = f"{group} match {m.name!r}"
    return _HttpMatch(
        group=group,
        name=m.name,
        methods=None if not m.methods or "*" in m.methods else frozenset(m.methods),
        path=None if m.path_regex is None else _compile_regex(m.path_regex, where),
        headers=tuple((n.lower(), _compile_regex(v, f"{where} header {n}")) for n, v in m.headers),
    )


def _resolve_target(
    tt: Resource, routes: Mapping[tuple[str, str, str], Resource], trust_domain: str
) -> _Target:
    """A TrafficTarget with its routes looked up; a missing route allows nothing."""
    sources = tuple(
        dict.fromkeys(_subject_id(trust_domain, s, tt.namespace) for s in tt.spec.sources)
    )
    tcp: list[_PortRule] | None = None
    http: list[_HttpMatch] | None = None
    seen: set[tuple[str, str]] = set()
    udp: list[str] = []
    missing: list[str] = []
    for rule in tt.spec.rules:
        ref = f"{rule.kind}/{tt.namespace}/{rule.name}"
        route = routes.get((rule.kind, tt.namespace, rule.name))
        if rule.kind == "UDPRoute":
            udp.append(ref)
        elif rule.kind == "TCPRoute":
            tcp = [] if tcp is None else tcp
            if route is None:
                missing.append(ref)
                tcp.append(_PortRule(ref, frozenset()))  # fail closed
            else:
                ports = route.spec.matches.ports
                tcp.append(_PortRule(ref, frozenset(ports) if ports else None))
        else:
            http = [] if http is None else http
            if route is None:
                missing.append(ref)
                continue
            names = {m.name for m in route.spec.matches}
            missing.extend(f"{ref}:{n}" for n in rule.matches if n not in names)
            for m in route.spec.matches:
                if (rule.matches and m.name not in rule.matches) or (ref, m.name) in seen:
                    continue
                seen.add((ref, m.name))
                http.append(_compile_match(ref, m))
    return _Target(
        ref=tt.ref,
        sources=sources,
        source_set=frozenset(sources),
        tcp=None if tcp is None else tuple(tcp),
        http=None if http is None else tuple(http),
        udp=tuple(udp),
        missing=tuple(missing),
    )


def _resolve_view(mesh: Mesh, service: Resource) -> _View:
    """Resolve the TrafficTargets that name `service`'s ServiceAccount (no I/O)."""
    account = service.spec.service_account
    trust_domain = mesh.spec.trust_domain
    routes = {
        (r.kind, r.namespace, r.name): r
        for kind in ("HTTPRouteGroup", "TCPRoute", "UDPRoute")
        for r in mesh.of_kind(kind)
    }
    targets = tuple(
        _resolve_target(tt, routes, trust_domain)
        for tt in mesh.of_kind("TrafficTarget")
        if (tt.spec.destination.namespace or tt.namespace, tt.spec.destination.name)
        == (service.namespace, account)
    )
    mode: AuthzMode = service.spec.authorization or mesh.spec.authorization
    return _View(
        label=f"{service.namespace}/{service.name}",
        account=f"{service.namespace}/{account}",
        spiffe=mesh.spiffe_id(service),
        trust_domain=trust_domain,
        mode=mode,
        targets=targets,
    )


# -- the reference evaluation and its explanations ------------------------------------------------


def _q(value: str) -> str:
    """A config or request value in a message: quoted, escaped, shortened."""
    if len(value) > _LONG:
        value = value[: _LONG - 3] + "..."
    return repr(value)


def _join_header(name: str, old: str, new: str) -> str:
    return f"{old}; {new}" if name == "cookie" else f"{old}, {new}"


def _headers_by_name(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, str]:
    """Lowercase name → value; repeated headers joined (", ", or "; " for cookie)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        n = name.lower()
        v = value.strip(" \t")
        old = out.get(n)
        out[n] = v if old is None else _join_header(n, old, v)
    return out


def _why_not(m: _HttpMatch, method: str, path: str, headers: Mapping[str, str]) -> str | None:
    """Why a request does not satisfy a match (None: it does). `path` has no query."""
    if m.methods is not None and method not in m.methods:
        return f"method {method} is not {' or '.join(sorted(m.methods))}"
    if m.path is not None and m.path.compiled.match(path) is None:
        return f"path {_q(path)} does not match pathRegex {_q(m.path.text)} (from its start)"
    for name, regex in m.headers:
        value = headers.get(name)
        if value is None:
            return f"header {name} is missing (pattern {_q(regex.text)})"
        if regex.compiled.fullmatch(value) is None:
            return (
                f"header {name} value {_q(value)} does not match {_q(regex.text)} (the whole value)"
            )
    return None


def _request(method: str | None, path: str, port: int) -> str:
    if method is None:
        return f"a TCP connection on port {port}"
    return f"{method} {path} on port {port}"


def _refs(view: _View) -> str:
    return ", ".join(t.ref for t in view.targets)


def _inactive_reason(view: _View) -> str:
    return (
        f"no TrafficTarget names {view.label} (ServiceAccount {view.account}): "
        "allow-list not active"
    )


def _unauthenticated_reason(view: _View) -> str:
    return (
        f"unauthenticated source (plaintext): allow-list active for {view.label} "
        f"({_refs(view)}); only mTLS identities can be allowed"
    )


def _unlisted_reason(view: _View, source: str) -> str:
    note = ""
    rest = source.removeprefix("spiffe://")
    td, _, tail = rest.partition("/")
    parts = tail.split("/")
    if rest == source or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        note = " (not a SPIFFE ID of the form spiffe://<trustDomain>/ns/<namespace>/sa/<name>)"
    elif td != view.trust_domain:
        note = f" (its trust domain {td} is not the mesh's {view.trust_domain})"
    return (
        f"no TrafficTarget allows source {source} to {view.label}: it is not a source of "
        f"{_refs(view)}{note}"
    )


def _ports_text(rules: Sequence[_PortRule]) -> str:
    ports: set[int] = set()
    for r in rules:
        if r.ports is None:
            return "every port"
        ports |= r.ports
    if not ports:
        return "no port"
    listed = ", ".join(str(p) for p in sorted(ports))
    return f"port {listed}" if len(ports) == 1 else f"ports {listed}"


def _matches_text(matches: Sequence[_HttpMatch]) -> str:
    if not matches:
        return "no request (its HTTPRouteGroup rules resolve to no match)"
    by_group: dict[str, list[str]] = {}
    for m in matches:
        by_group.setdefault(m.group, []).append(repr(m.name))
    return " or ".join(
        f"{g} match {names[0]}" if len(names) == 1 else f"{g} matches {', '.join(names)}"
        for g, names in by_group.items()
    )


def _allows_only(t: _Target, method: str | None, port: int) -> str:
    """What `t` would allow instead, for a request it does not allow."""
    missing = f" (it names routes that do not exist: {', '.join(t.missing)})" if t.missing else ""
    if method is None:
        if t.tcp is None:
            kinds = "HTTPRouteGroup rules allow HTTP requests only" if t.http is not None else ""
            kinds = kinds or "only UDPRoute rules, and pymesh does not proxy UDP"
            return f"{t.ref} has no TCPRoute rule ({kinds}){missing}"
        return f"{t.ref} allows TCP only on {_ports_text(t.tcp)}{missing}"
    if t.tcp is None and t.http is None:
        return f"{t.ref} has only UDPRoute rules (pymesh does not proxy UDP){missing}"
    if t.tcp is not None and t.port_rule(port) is None:
        routes = ", ".join(r.route for r in t.tcp)
        return f"{t.ref} allows it only on {_ports_text(t.tcp)} ({routes}){missing}"
    on = f" on {_ports_text(t.tcp)}" if t.tcp is not None else ""
    return f"{t.ref} allows it only {_matches_text(t.http or ())}{on}{missing}"


def _allow(
    view: _View, t: _Target, source: str, m: _HttpMatch | None, r: _PortRule | None, port: int
) -> Decision:
    """The decision for traffic that `t` allows through match `m` and port rule `r`."""
    tags = [t.ref]
    what: list[str] = []
    if m is not None:
        tags.append(f"{m.group}:{m.name}")
        what.append(f"{m.group} match {m.name!r}")
    if r is not None:
        tags.append(r.tag(port))
        what.append(r.text(port))
    else:
        what.append("any port (no TCPRoute rule)")
    return Decision(
        allowed=True,
        rule=" ".join(tags),
        reason=f"{t.ref} allows {source} to {view.label}: {', '.join(what)}",
    )


def _evaluate(
    view: _View,
    source: str | None,
    port: int,
    method: str | None,
    path: str,
    headers: Mapping[str, str],
) -> Decision:
    """The reference decision. `path` has no query; `headers` come from `_headers_by_name`."""
    if not view.targets:
        return Decision(allowed=True, rule=None, reason=_inactive_reason(view))
    if source is None:
        return Decision(allowed=False, rule=None, reason=_unauthenticated_reason(view))
    mine = [t for t in view.targets if source in t.source_set]
    if not mine:
        return Decision(allowed=False, rule=None, reason=_unlisted_reason(view, source))
    for t in mine:
        r = t.port_rule(port)
        if method is None:
            if r is not None:
                return _allow(view, t, source, None, r, port)
            continue
        if t.tcp is None and t.http is None:
            continue  # UDPRoute rules only
        if t.tcp is not None and r is None:
            continue
        if t.http is None:
            return _allow(view, t, source, None, r, port)
        for m in t.http:
            if _why_not(m, method, path, headers) is None:
                return _allow(view, t, source, m, r, port)
    # Denied: say what each target of this source allows instead.
    detail = ""
    if method is not None:
        candidates = [
            m
            for t in mine
            if (t.tcp is None or t.port_rule(port) is not None) and t.http
            for m in t.http
        ]
        if len(candidates) == 1:
            detail = f": {_why_not(candidates[0], method, path, headers)}"
    others = "; ".join(_allows_only(t, method, port) for t in mine)
    return Decision(
        allowed=False,
        rule=None,
        reason=(
            f"no TrafficTarget allows source {source} to {view.label} ({others}; "
            f"{_request(method, path, port)} does not match{detail})"
        ),
    )


def _resolve_destination(mesh: Mesh, destination: Resource | str) -> Resource:
    if isinstance(destination, Resource):
        if destination.kind != "Service":
            raise ValueError(f"destination {destination.ref} is not a Service")
        return destination
    namespace, _, name = destination.rpartition("/")
    service = mesh.service(name, namespace or DEFAULT_NAMESPACE)
    if service is None:
        raise KeyError(f"no Service {namespace or DEFAULT_NAMESPACE}/{name} in mesh {mesh.name!r}")
    return service


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = b"0123456789abcdefABCDEF"


def normalize_path(target: bytes) -> bytes:
    """A request target's path normalised as RFC 3986 §6 says, the query kept as is.

    Percent-encoded unreserved characters are decoded (`%2E` → `.`; an encoded `/`, `%2F`,
    stays encoded: it is data, not a separator), runs of `/` are merged, and `.` / `..`
    segments are removed (never above the root). Authorization matches the normalised path
    and the request goes on with it, so `/api/../admin` is `/admin` for both the policy and
    the application (Envoy's `normalize_path` + `merge_slashes`, on in Istio). Fast when there
    is nothing to do (the common case): the bytes come back unchanged.
    """
    if not target.startswith(b"/"):
        return target  # "*" (OPTIONS) or another form: nothing to normalise
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q:])
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return target
    if b"%" in path:
        out = bytearray()
        i, n = 0, len(path)
        while i < n:
            c = path[i]
            if c == 0x25 and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
                v = int(path[i + 1 : i + 3], 16)
                if v in _UNRESERVED:
                    out.append(v)
                else:
                    out += path[i : i + 3].upper()  # case-normalised escape
                i += 3
                continue
            out.append(c)
            i += 1
        path = bytes(out)
    segments: list[bytes] = []
    for seg in path.split(b"/")[1:]:
        if seg == b"..":
            if segments:
                segments.pop()
        elif seg not in (b".", b""):
            segments.append(seg)
    trailing = path.endswith((b"/", b"/.", b"/..")) and bool(segments)
    normal = b"/" + b"/".join(segments) + (b"/" if trailing else b"")
    return normal + query


def decide(
    mesh: Mesh,
    source: str | None,
    destination: Resource | str,
    *,
    port: int,
    method: str | None = None,
    path: str | None = None,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
) -> Decision:
    """Would `source` be allowed to reach `destination` on `port`? Pure: no I/O.

    `source` is the peer's SPIFFE ID, or None for an unauthenticated (plaintext) peer.
    `destination` is a Service resource, or its name as "NAME" or "NS/NAME" (KeyError if the
    mesh has no such Service). `method` None means a TCP connection; otherwise an HTTP request
    with `path` ("/" if None; a "?query" is ignored) and `headers` (names in any case).
    This is the reference the compiled `InboundAuthz` agrees with; the proxy uses that.
    """
    service = _resolve_destination(mesh, destination)
    view = _resolve_view(mesh, service)
    target = "/" if path is None else path.partition("?")[0]
    target = normalize_path(target.encode("utf-8", "surrogateescape")).decode(
        "utf-8", "surrogateescape"
    )
    return _evaluate(view, source, port, method, target, _headers_by_name(headers))


# -- the compiled form: per request on the proxy's hot path ---------------------------------------

# One candidate allow: (methods, literal path prefix, path regex, header checks, decision).
_Entry = tuple[
    frozenset[bytes] | None,
    bytes | None,
    Any,
    tuple[tuple[bytes, Any], ...],
    Decision,
]


def _literal_prefix(regex: _Regex | None) -> bytes | None:
    """The bytes a pathRegex must start with, when the regex is just that literal."""
    if regex is None or regex.text in _MATCH_ALL_PATHS:
        return b""
    if any(c in _REGEX_CHARS for c in regex.text):
        return None
    return regex.text.encode()


def _entry(m: _HttpMatch | None, decision: Decision) -> _Entry:
    if m is None:
        return (None, b"", None, (), decision)
    methods = None if m.methods is None else frozenset(x.encode("latin-1") for x in m.methods)
    prefix = _literal_prefix(m.path)
    regex = m.path.compiled if prefix is None and m.path is not None else None
    headers = tuple((n.encode("latin-1"), r.compiled) for n, r in m.headers)
    return (methods, prefix, regex, headers, decision)


@final
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class InboundAuthz:
    """One destination Service's authorization, compiled once per config version. Immutable.

    `mode` is "audit" when denials should be logged but not enforced (the proxy acts on it);
    `active` is whether some TrafficTarget names the Service (if not, everything is allowed).
    """

    mode: AuthzMode
    active: bool
    destination: str  # the Service's SPIFFE ID
    service: str  # NS/NAME
    _view: _View = field(repr=False)
    _http: dict[str, dict[int, tuple[_Entry, ...]]] = field(repr=False)
    _tcp: dict[str, dict[int, Decision | None]] = field(repr=False)
    _l7: dict[int, bool] = field(repr=False)  # listed ports and _ANY_PORT → http_rules_on
    _header_names: frozenset[bytes] = field(repr=False)
    _allow_inactive: Decision = field(repr=False)
    _deny_unauthenticated: Decision = field(repr=False)

    @classmethod
    def compile(cls, mesh: Mesh, service: Resource) -> InboundAuthz:
        """Build the lookup tables for `service` (a Service resource of `mesh`)."""
        view = _resolve_view(mesh, service)
        listed = sorted({p for t in view.targets for r in t.tcp or () for p in r.ports or ()})
        keys = (*listed, _ANY_PORT)
        http: dict[str, dict[int, tuple[_Entry, ...]]] = {}
        tcp: dict[str, dict[int, Decision | None]] = {}
        for source in dict.fromkeys(s for t in view.targets for s in t.sources):
            mine = [t for t in view.targets if source in t.source_set]
            by_port: dict[int, tuple[_Entry, ...]] = {}
            tcp_by_port: dict[int, Decision | None] = {}
            for key in keys:
                # a port no TCPRoute lists behaves as _ANY_PORT: only "every port" rules apply
                entries: list[_Entry] = []
                tcp_decision: Decision | None = None
                for t in mine:
                    r = t.port_rule(key)
                    if r is not None and tcp_decision is None:
                        tcp_decision = _allow(view, t, source, None, r, key)
                    if (t.tcp is None and t.http is None) or (t.tcp is not None and r is None):
                        continue
                    if t.http is None:
                        entries.append(_entry(None, _allow(view, t, source, None, r, key)))
                    else:
                        entries.extend(
                            _entry(m, _allow(view, t, source, m, r, key)) for m in t.http
                        )
                by_port[key] = tuple(entries)
                tcp_by_port[key] = tcp_decision
            http[source] = by_port
            tcp[source] = tcp_by_port

        def constrains(key: int) -> bool:
            return any(
                t.http is not None and (t.tcp is None or t.port_rule(key) is not None)
                for t in view.targets
            )

        return cls(
            mode=view.mode,
            active=bool(view.targets),
            destination=view.spiffe,
            service=view.label,
            _view=view,
            _http=http,
            _tcp=tcp,
            _l7={key: constrains(key) for key in keys},
            _header_names=frozenset(
                n.encode("latin-1")
                for t in view.targets
                for m in t.http or ()
                for n, _ in m.headers
            ),
            _allow_inactive=Decision(allowed=True, rule=None, reason=_inactive_reason(view)),
            _deny_unauthenticated=Decision(
                allowed=False, rule=None, reason=_unauthenticated_reason(view)
            ),
        )

    def http_rules_on(self, port: int) -> bool:
        """Does any HTTPRouteGroup constrain requests on `port`?

        When False, every HTTP request on the port gets `check_tcp`'s answer, so the proxy
        may decide once per connection and relay at L4.
        """
        return self._l7.get(port, self._l7[_ANY_PORT])

    def check_tcp(self, source: str | None, port: int) -> Decision:
        """A TCP connection (not inspected as HTTP) from `source` to service port `port`."""
        if not self.active:
            return self._allow_inactive
        if source is None:
            return self._deny_unauthenticated
        table = self._tcp.get(source)
        if table is not None:
            decision = table.get(port, table[_ANY_PORT])
            if decision is not None:
                return decision
        return _evaluate(self._view, source, port, None, "", {})

    def check_http(
        self,
        source: str | None,
        port: int,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> Decision:
        """One HTTP request, in the codec's raw shapes (the path may carry "?query")."""
        if not self.active:
            return self._allow_inactive
        if source is None:
            return self._deny_unauthenticated
        table = self._http.get(source)
        if table is not None:
            entries = table.get(port)
            if entries is None:
                entries = table[_ANY_PORT]
            if entries:
                q = path.find(b"?")
                target = path if q < 0 else path[:q]
                values: dict[bytes, bytes] | None = None
                for methods, prefix, regex, checks, decision in entries:
                    if methods is not None and method not in methods:
                        continue
                    if prefix is not None:
                        if not target.startswith(prefix):
                            continue
                    elif regex.match(target) is None:
                        continue
                    if checks:
                        if values is None:
                            values = self._header_values(headers)
                        for name, rx in checks:
                            value = values.get(name)
                            if value is None or rx.fullmatch(value) is None:
                                break
                        else:
                            return decision
                        continue
                    return decision
        return self._explain_denial(source, port, method, path, headers)

    def _header_values(self, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        wanted = self._header_names
        out: dict[bytes, bytes] = {}
        for name, value in headers:
            n = name.lower()
            if n in wanted:
                v = value.strip(b" \t")
                old = out.get(n)
                out[n] = v if old is None else old + (b"; " if n == b"cookie" else b", ") + v
        return out

    def _explain_denial(
        self,
        source: str,
        port: int,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> Decision:
        """A denial with the reference's reason (the slow path: denials are rare)."""
        text = path.decode("utf-8", "replace").partition("?")[0]
        pairs = [
            (n.decode("latin-1"), v.decode("utf-8", "replace"))
            for n, v in headers
            if n.lower() in self._header_names
        ]
        ref = _evaluate(
            self._view, source, port, method.decode("latin-1"), text, _headers_by_name(pairs)
        )
        if ref.allowed:  # only when invalid UTF-8 was replaced for the message
            return Decision(
                allowed=False,
                rule=None,
                reason=f"no TrafficTarget allows source {source} to {self.service}: the "
                "request's path or headers are not valid UTF-8 where a rule's regex applies",
            )
        return ref

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary for /config_dump."""
        view = self._view
        return {
            "service": view.label,
            "destination": view.spiffe,
            "mode": view.mode,
            "active": bool(view.targets),
            "trafficTargets": [
                {
                    "name": t.ref,
                    "sources": list(t.sources),
                    "tcpRoutes": None
                    if t.tcp is None
                    else [
                        {"route": r.route, "ports": "*" if r.ports is None else sorted(r.ports)}
                        for r in t.tcp
                    ],
                    "httpMatches": None
                    if t.http is None
                    else [
                        {
                            "group": m.group,
                            "name": m.name,
                            "methods": "*" if m.methods is None else sorted(m.methods),
                            "pathRegex": None if m.path is None else m.path.text,
                            "headers": {n: r.text for n, r in m.headers},
                        }
                        for m in t.http
                    ],
                    "udpRoutes": list(t.udp),
                    "missing": list(t.missing),
                }
                for t in view.targets
            ],
        }


# -- pymesh explain -------------------------------------------------------------------------------


def _trace(
    view: _View,
    source: str | None,
    port: int,
    method: str | None,
    path: str,
    headers: Mapping[str, str],
) -> list[str]:
    """How each TrafficTarget of the destination treats this traffic (for `pymesh explain`)."""
    lines: list[str] = []
    for t in view.targets:
        if source is None or source not in t.source_set:
            lines.append(f"{t.ref}: source not listed (sources: {', '.join(t.sources)})")
            continue
        lines.append(f"{t.ref}: source listed")
        for r in t.tcp or ():
            ok = "matches" if r.allows(port) else "does not match"
            if r.ports is None:
                where = "every port"
            elif not r.ports:
                where = "no port: the route does not exist"
            else:
                where = _ports_text([r])
            lines.append(f"  {r.route} ({where}): port {port} {ok}")
        if t.tcp is None:
            lines.append(
                "  no TCPRoute rule: "
                + ("no TCP connection allowed" if method is None else "any port")
            )
        if method is None:
            if t.http is not None:
                lines.append("  HTTPRouteGroup rules describe HTTP requests, not TCP connections")
        elif t.http is None:
            if t.tcp is not None:
                lines.append("  no HTTPRouteGroup rule: any request")
        else:
            for m in t.http:
                why = _why_not(m, method, path, headers)
                lines.append(f"  {m.group} match {m.name!r}: {why or 'matches'}")
            if not t.http:
                lines.append("  its HTTPRouteGroup rules resolve to no match")
        lines.extend(f"  {u}: UDP (not proxied by pymesh)" for u in t.udp)
        lines.extend(f"  {x}: does not exist (allows nothing)" for x in t.missing)
    return lines


class _UsageError(Exception):
    """A bad `pymesh explain` argument: exit status 2."""


def _find_service(mesh: Mesh, text: str, flag: str) -> Resource:
    namespace, _, name = text.rpartition("/")
    service = mesh.service(name, namespace or DEFAULT_NAMESPACE)
    if service is None and not namespace:
        found = [r for (_, n), r in sorted(mesh.services.items()) if n == name]
        if len(found) == 1:
            service = found[0]
    if service is None:
        names = sorted(f"{ns}/{n}" for ns, n in mesh.services)
        known = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        raise _UsageError(
            f"{flag} {text}: no Service {text!r} in the config (expected NAME or NS/NAME of "
            f"one of: {known}{'' if flag == '--to' else '; or a spiffe:// ID'})"
        )
    return service


def _default_port(service: Resource, http: bool) -> int:
    ports = service.spec.ports
    if not ports:
        raise _UsageError(
            f"--port is required: Service {service.namespace}/{service.name} declares no ports"
        )
    if http:
        for p in ports:
            if p.protocol in (None, "http", "http2", "grpc"):
                return int(p.port)
        return int(ports[0].port)
    return int(ports[0].port)


def _parse_headers(items: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise _UsageError(f"--header {item!r}: expected NAME=VALUE")
        out.append((name.strip(), value))
    return out


def _explain(args: argparse.Namespace) -> list[str]:
    mesh = Mesh.load(*args.config)
    service = _find_service(mesh, args.destination, "--to")
    source_text: str = args.source
    source: str | None
    if source_text.startswith("spiffe://"):
        source = source_text
    elif source_text == "-":
        source = None  # an unauthenticated (plaintext) peer
    else:
        source = mesh.spiffe_id(_find_service(mesh, source_text, "--from"))
    method: str | None = args.method
    path: str = args.path or "/"
    if method is not None:
        if method.startswith("/"):
            raise _UsageError(f"{method}: give METHOD before PATH (e.g. GET {method})")
        method = method.upper()
    elif args.path is not None:
        raise _UsageError("a PATH needs a METHOD before it (e.g. GET /metrics)")
    headers = _parse_headers(args.header)
    if method is None and headers:
        raise _UsageError("--header applies to HTTP requests: give METHOD and PATH")
    port: int = args.port if args.port is not None else _default_port(service, method is not None)
    notes: list[str] = []
    declared = {p.port: p for p in service.spec.ports}
    if port not in declared and service.spec.ports:
        ports = ", ".join(str(p) for p in declared)
        notes.append(f"note: {service.namespace}/{service.name} declares no port {port} ({ports})")
    checked_method = method
    if method is not None and port in declared and declared[port].protocol == "tcp":
        notes.append(
            f"note: port {port} is a tcp port: the proxy relays it at L4 and never sees HTTP "
            "requests, so this is checked as a TCP connection"
        )
        checked_method = None
    mtls = service.spec.mtls or mesh.spec.mtls
    if mtls == "DISABLE" and source is not None:
        notes.append(
            f"note: mTLS is DISABLE for {service.namespace}/{service.name}: its sidecar sees "
            "every peer as unauthenticated plaintext, so an active allow-list denies everything"
        )
    view = _resolve_view(mesh, service)
    target = path.partition("?")[0]
    by_name = _headers_by_name(headers)
    decision = _evaluate(view, source, port, checked_method, target, by_name)
    what = "TCP connection" if method is None else f"{method} {path}"
    who = source or "unauthenticated (plaintext) peer"
    lines = [
        f"{'ALLOW' if decision.allowed else 'DENY'} {what} from {who} to {view.label}:{port}",
        *notes,
    ]
    if decision.rule is not None:
        lines.append(f"rule: {decision.rule}")
    lines.append(f"reason: {decision.reason}")
    lines.extend(_trace(view, source, port, checked_method, target, by_name))
    if decision.allowed:
        lines.append(f"mode: {view.mode}")
    elif view.mode == "audit":
        lines.append(
            "mode: audit (audit mode: would be denied, not enforced; logged as audit_deny)"
        )
    else:
        lines.append("mode: enforce: denied (403 authz_denied)")
    return lines


def explain_main(args: argparse.Namespace) -> int:
    """`pymesh explain`: print ALLOW or DENY and why; 0 either way, 1 bad config, 2 bad args."""
    try:
        lines = _explain(args)
    except ConfigError as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 1
    except _UsageError as exc:
        print(f"pymesh explain: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0
