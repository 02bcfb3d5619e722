"""The registry: the whole config as an immutable, versioned snapshot, and each sidecar's view.

    registry = Registry()
    snap = registry.apply_paths(["mesh/"])        # ConfigError (every problem) or a Snapshot
    async for snap in registry.subscribe():        # the current snapshot first, then each new one
        view = view_for(snap.mesh, "default/orders")
        send(to_yaml(view.resources))

- `apply()` validates the complete new set before anything changes: every resource and every
  reference across resources (the loader's rules, however the set was put together) and the
  conflicts that only a complete set shows (`conflicts()`). Then it swaps the snapshot in with
  one assignment, or raises `ConfigError` listing every problem and keeps the snapshot in force:
  a rejected set never reaches a subscriber. A config with the same content hash as the one in
  force is not a new version.
- `Snapshot.version` counts 1, 2, 3... per registry; `Snapshot.mesh.version` is the content hash.
- Dynamic endpoints (sidecars that registered) replace the static endpoints of their services in
  the snapshot (`set_endpoints`); the config as applied (`Registry.config`) keeps the static ones.
- Subscriptions coalesce: a slow subscriber gets only the latest snapshot, never a queue.
- `view_for()` is what one sidecar needs (its inbound policy, the services it may call and how);
  it loads and validates on its own. Views are computed once per snapshot and service.

The registry may be used from threads other than its subscribers' event loops (wake-ups then go
through `call_soon_threadsafe`); everything it hands out is immutable.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self, final

import structlog

from pymesh.errors import ConfigError, FieldError
from pymesh.policy.dump import to_yaml
from pymesh.policy.kinds import (
    GRPCRouteMatch,
    HTTPPathMatch,
    HTTPRouteMatch,
    _address_problem,
)
from pymesh.policy.loader import load_paths, load_text
from pymesh.policy.model import DEFAULT_NAMESPACE, Endpoint, Resource
from pymesh.policy.snapshot import Mesh

__all__ = ["Registry", "Snapshot", "Subscription", "conflicts", "view_for"]

_log = structlog.get_logger("pymesh.registry")

_CHECK_FILE: Final = "<pymesh-registry-check>"  # the file name of a re-validated set
_CHECK_REF: Final = re.compile(re.escape(_CHECK_FILE) + r":(\d+)")
_ROUTE_KINDS: Final = ("HTTPRoute", "GRPCRoute")
_GROUP_KINDS: Final = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")

ServiceKey = tuple[str, str]  # (namespace, name)
Account = tuple[str, str]  # (namespace, serviceAccount)


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """One version of the config in force: `version` counts per registry, `mesh` is the config."""

    version: int
    mesh: Mesh


# -- subscriptions --------------------------------------------------------------------------------


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@final
class Subscription:
    """An async iterator of snapshots: the current one first (if any), then each new version.

    Coalescing: at most one snapshot is pending (the latest), so a slow subscriber skips
    versions instead of queueing them. Ends when `close()` is called or the registry closes.
    One task at a time may wait on a subscription.
    """

    __slots__ = ("__weakref__", "_closed", "_pending", "_registry", "_waiter")

    def __init__(self, registry: Registry | None) -> None:
        self._registry = registry
        self._pending: Snapshot | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Snapshot:
        while True:
            if self._closed:
                raise StopAsyncIteration
            snap = self._pending
            if snap is not None:
                self._pending = None
                return snap
            if self._waiter is not None:
                raise RuntimeError("another task is already waiting on this subscription")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop receiving snapshots; a waiting `__anext__` ends the iteration."""
        self._end()
        registry, self._registry = self._registry, None
        if registry is not None:
            registry._discard(self)

    def _offer(self, snap: Snapshot) -> None:
        if not self._closed:
            self._pending = snap
            self._wake()

    def _end(self) -> None:
        self._closed = True
        self._pending = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            waiter.set_result(None)
        else:
            try:
                loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


# -- the registry ---------------------------------------------------------------------------------


@final
class Registry:
    """The config in force as a versioned `Snapshot`; validates and publishes new versions."""

    __slots__ = ("_closed", "_config", "_current", "_dynamic", "_lock", "_subs", "_version")

    def __init__(self, mesh: Mesh | None = None) -> None:
        self._lock = threading.RLock()
        self._config: Mesh | None = None
        self._current: Snapshot | None = None
        self._version = 0
        self._dynamic: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False
        if mesh is not None:
            self.apply(mesh)

    @property
    def current(self) -> Snapshot | None:
        """The snapshot in force (None until a config is applied)."""
        return self._current

    @property
    def config(self) -> Mesh | None:
        """The config as last applied: static endpoints, without the registered ones."""
        return self._config

    # -- config -----------------------------------------------------------------------------
    def apply(self, resources: Iterable[Resource] | Mesh) -> Snapshot:
        """Validate the complete set and make it the config in force.

        Every resource and reference is checked as the loader checks them (the set may come
        from several loads, a store or code), then `conflicts()`. Returns the new snapshot, or
        the current one if the config has the same content hash.

        Raises:
            ConfigError: every problem found; the snapshot in force is unchanged.
        """
        items = resources.resources if isinstance(resources, Mesh) else tuple(resources)
        errors = _check_set(items)
        if errors:
            try:
                errors += conflicts(resources if isinstance(resources, Mesh) else Mesh(items))
            except Exception:  # malformed resources (built in code): reported already
                pass
            raise ConfigError(_sorted(errors, items))
        return self._install(resources if isinstance(resources, Mesh) else Mesh(items))

    def apply_text(self, text: str, filename: str = "<string>") -> Snapshot:
        """Load YAML text (multi-document) and apply it; `ConfigError` lists every problem."""
        return self._install(Mesh(load_text(text, filename)))

    def apply_paths(self, paths: Sequence[str]) -> Snapshot:
        """Load files and directories and apply them; `ConfigError` lists every problem."""
        return self._install(Mesh(load_paths(paths)))

    def _install(self, config: Mesh) -> Snapshot:
        """Check the conflicts of a validated config, then swap it in (or keep the current)."""
        errors = conflicts(config)
        if errors:
            raise ConfigError(_sorted(errors, config.resources))
        with self._lock:
            previous = self._config
            self._config = config
            if previous is not None and previous.version == config.version:
                assert self._current is not None
                return self._current
            return self._publish(self._derive(config))

    # -- endpoints --------------------------------------------------------------------------
    def set_endpoints(self, endpoints: Mapping[tuple[str, str], Sequence[Endpoint]]) -> Snapshot:
        """Set the registered (dynamic) endpoints: `(namespace, name)` → endpoints.

        A service in the mapping gets exactly those endpoints in the snapshot (none, if the
        sequence is empty); every other service keeps its static ones from the config. Replaces
        the previous mapping. Endpoints that config cannot hold (an invalid address or port, a
        repeat) are left out and logged. A new version only if the snapshot changes.

        Raises:
            RuntimeError: no config has been applied yet (the endpoints are kept for it).
        """
        dynamic = {
            (str(ns), str(name)): _valid_endpoints(f"{ns}/{name}", eps)
            for (ns, name), eps in endpoints.items()
        }
        with self._lock:
            self._dynamic = dynamic
            if self._config is None:
                raise RuntimeError("no config applied yet (the endpoints will apply to it)")
            return self._publish(self._derive(self._config))

    def _derive(self, config: Mesh) -> Mesh:
        changes = {
            key: eps
            for key, eps in self._dynamic.items()
            if key in config.services and config.services[key].spec.endpoints != eps
        }
        return config.with_endpoints(changes) if changes else config

    def _publish(self, mesh: Mesh) -> Snapshot:
        current = self._current
        if current is not None and current.mesh.version == mesh.version:
            return current
        self._version += 1
        snap = Snapshot(self._version, mesh)
        self._current = snap
        for sub in list(self._subs):
            sub._offer(snap)
        return snap

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self) -> Subscription:
        """A subscription to every new snapshot, starting with the current one."""
        with self._lock:
            sub = Subscription(self)
            if self._closed:
                sub._end()
                return sub
            self._subs.add(sub)
            if self._current is not None:
                sub._offer(self._current)
            return sub

    def _discard(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self) -> None:
        """End every subscription (now and later ones); the config stays readable."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs = weakref.WeakSet()
        for sub in subs:
            sub._end()

    def __repr__(self) -> str:
        cur = self._current
        where = f"version={cur.version} mesh={cur.mesh.version}" if cur else "empty"
        return f"<Registry {where} subscribers={len(self._subs)}>"


def _valid_endpoints(service: str, endpoints: Iterable[Any]) -> tuple[Endpoint, ...]:
    """The endpoints that config can hold (valid address and port), each once, in order."""
    out: dict[tuple[str, int], Endpoint] = {}
    for ep in endpoints:
        address: Any = getattr(ep, "address", None)
        port: Any = getattr(ep, "port", None)
        ok = (
            isinstance(ep, Endpoint)
            and isinstance(address, str)
            and type(port) is int
            and 1 <= port <= 65535
            and _address_problem(address) is None
        )
        if not ok or (address, port) in out:
            _log.warning("endpoint_skipped", service=service, endpoint=repr(ep))
            continue
        out[(address, port)] = ep
    return tuple(out.values())


# -- validation of a complete set ----------------------------------------------------------------


def _check_set(resources: Sequence[Resource]) -> list[FieldError]:
    """The loader's verdict on a set of resources, at their own files and lines.

    The set is written out (`to_yaml`) and loaded back, which runs every check the loader
    has, across all the resources; each error is mapped back to the resource it is about.
    """
    errors: list[FieldError] = []
    starts: list[int] = []
    kept: list[Resource] = []
    chunks: list[str] = []
    line = 1
    for r in resources:
        try:
            chunk = to_yaml((r,))
        except Exception as exc:  # a resource built in code that config cannot express
            errors.append(_at(r, r.ref, "spec", f"cannot be written as config: {exc}"))
            continue
        starts.append(line)
        kept.append(r)
        chunks.append(chunk)
        line += chunk.count("\n")
    try:
        load_text("".join(chunks), _CHECK_FILE)
    except ConfigError as exc:

        def owner(at: int) -> Resource:
            return kept[max(0, bisect.bisect_right(starts, at) - 1)]

        def place(m: re.Match[str]) -> str:
            src = owner(int(m.group(1))).source
            return f"{src.file}:{max(1, src.line)}"

        for e in exc.errors:
            r = owner(e.line)
            errors.append(_at(r, e.resource, e.path, _CHECK_REF.sub(place, e.message)))
    return errors


def _at(r: Resource, label: str, path: str, message: str) -> FieldError:
    return FieldError(r.source.file, max(1, r.source.line), label, path, message)


def _sorted(errors: list[FieldError], resources: Sequence[Resource]) -> list[FieldError]:
    order: dict[str, int] = {}
    for r in resources:
        order.setdefault(r.source.file, len(order))
    return sorted(errors, key=lambda e: (order.get(e.file, len(order)), e.file, e.line))


# -- conflicts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claim:
    route: Resource
    path: str
    port: int | None  # None: every port of the Service
    hostnames: frozenset[str]  # empty: every hostname


def _http_match_key(m: Any) -> Any:
    path = m.path or HTTPPathMatch()
    return (
        (path.type, path.value),
        frozenset((h.type, h.name.lower(), h.value) for h in m.headers),
        frozenset((q.type, q.name, q.value) for q in m.query_params),
        m.method,
    )


def _grpc_match_key(m: Any) -> Any:
    method = None if m.method is None else (m.method.type, m.method.service, m.method.method)
    return (method, frozenset((h.type, h.name.lower(), h.value) for h in m.headers))


def _route_matches(route: Resource) -> Iterator[tuple[str, Any]]:
    """(field path, normalised match) of every match of a route; a rule without matches
    matches everything (HTTP: path prefix "/")."""
    grpc = route.kind == "GRPCRoute"
    key = _grpc_match_key if grpc else _http_match_key
    for i, rule in enumerate(route.spec.rules):
        if not rule.matches:
            yield f"spec.rules[{i}]", key(GRPCRouteMatch() if grpc else HTTPRouteMatch())
        for j, m in enumerate(rule.matches):
            yield f"spec.rules[{i}].matches[{j}]", key(m)


def _where(r: Resource) -> str:
    return f"{r.source.file}:{max(1, r.source.line)}"


def conflicts(mesh: Mesh) -> list[FieldError]:
    """Conflicts between resources that each validate on their own.

    - two HTTPRoutes (or two GRPCRoutes) attached to the same Service (and port, where given;
      overlapping hostnames) with an identical match;
    - more than one TrafficSplit for the same root service.

    Each error is at the later resource and names the earlier one. Services of the same name
    in different namespaces are different services (no conflict).
    """
    errors: list[FieldError] = []
    for kind in _ROUTE_KINDS:
        claims: dict[tuple[ServiceKey, Any], list[_Claim]] = {}
        for route in mesh.of_kind(kind):
            reported: set[tuple[str, str]] = set()
            matches = list(_route_matches(route))
            hostnames = frozenset(route.spec.hostnames)
            for p in route.spec.parent_refs:
                service = (p.namespace or route.namespace, p.name)
                port = _parent_port(mesh, service, p.port, p.section_name)
                if port == -1:
                    continue  # the sectionName and port disagree: attached to nothing
                for path, key in matches:
                    mine = _Claim(route, path, port, hostnames)
                    same = claims.setdefault((service, key), [])
                    for c in same:
                        if c.route is route or (path, c.route.ref) in reported:
                            continue
                        if not _overlap(c, mine):
                            continue
                        reported.add((path, c.route.ref))
                        on = f"Service {service[0]}/{service[1]}" + (
                            f" port {port if port is not None else c.port}"
                            if port is not None or c.port is not None
                            else ""
                        )
                        errors.append(
                            _at(
                                route,
                                route.ref,
                                path,
                                f"same match as {c.route.ref} {c.path} at {_where(c.route)} "
                                f"on {on} (expected each match of a Service's "
                                f"{kind}s in one route only)",
                            )
                        )
                    same.append(mine)
    roots: dict[ServiceKey, Resource] = {}
    for split in mesh.of_kind("TrafficSplit"):
        root = (split.namespace, split.spec.service)
        first = roots.setdefault(root, split)
        if first is not split:
            errors.append(
                _at(
                    split,
                    split.ref,
                    "spec.service",
                    f"Service {root[0]}/{root[1]} is already split by {first.ref} at "
                    f"{_where(first)} (expected one TrafficSplit per root service)",
                )
            )
    return errors


def _parent_port(
    mesh: Mesh, service: ServiceKey, port: int | None, section_name: str | None
) -> int | None:
    """The service port a parentRef attaches to (None: every port; -1: none)."""
    if section_name is None:
        return port
    svc = mesh.services.get(service)
    if svc is None:
        return port
    for sp in svc.spec.ports:
        if sp.name == section_name:
            return sp.port if port is None or port == sp.port else -1
    return -1


def _overlap(a: _Claim, b: _Claim) -> bool:
    ports = a.port is None or b.port is None or a.port == b.port
    hosts = not a.hostnames or not b.hostnames or bool(a.hostnames & b.hostnames)
    return ports and hosts


# -- views ----------------------------------------------------------------------------------------


class _Index:
    """One mesh's resources by the keys a view looks them up by; views cached per service."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.order = {id(r): i for i, r in enumerate(mesh.resources)}
        self.mesh_resources = mesh.of_kind("Mesh")
        self.services: Mapping[ServiceKey, Resource] = mesh.services
        self.groups: dict[tuple[str, str, str], Resource] = {
            (r.kind, r.namespace, r.name): r for k in _GROUP_KINDS for r in mesh.of_kind(k)
        }
        self.targets: dict[Account, list[Resource]] = {}
        self.allowed: dict[Account, set[Account]] = {}  # destination → sources
        for tt in mesh.of_kind("TrafficTarget"):
            d = tt.spec.destination
            dest = (d.namespace or tt.namespace, d.name)
            self.targets.setdefault(dest, []).append(tt)
            self.allowed.setdefault(dest, set()).update(
                (s.namespace or tt.namespace, s.name) for s in tt.spec.sources
            )
        self.routes: dict[ServiceKey, list[Resource]] = {}
        for kind in _ROUTE_KINDS:
            for r in mesh.of_kind(kind):
                for key in dict.fromkeys(
                    (p.namespace or r.namespace, p.name) for p in r.spec.parent_refs
                ):
                    self.routes.setdefault(key, []).append(r)
        self.splits: dict[ServiceKey, list[Resource]] = {}
        for r in mesh.of_kind("TrafficSplit"):
            self.splits.setdefault((r.namespace, r.spec.service), []).append(r)
        self.policies: dict[tuple[str, str, str], list[Resource]] = {}
        for r in mesh.of_kind("TrafficPolicy"):
            t = r.spec.target_ref
            self.policies.setdefault((t.kind, r.namespace, t.name), []).append(r)
        self.views: dict[ServiceKey, Mesh] = {}
        self.lock = threading.Lock()
        # Who may call what, once per index (not per view: that was O(services²) per change).
        self.open_services: list[ServiceKey] = []
        self.callable_by: dict[Account, list[ServiceKey]] = {}
        for k, svc in self.services.items():
            mode = svc.spec.authorization or mesh.spec.authorization
            sources = self.allowed.get((svc.namespace, svc.spec.service_account))
            if mode == "audit" or sources is None:
                self.open_services.append(k)
            else:
                for account in sources:
                    self.callable_by.setdefault(account, []).append(k)

    def may_call(self, caller: Account, service: Resource) -> bool:
        """Whether a workload with `caller`'s ServiceAccount may call `service` at all."""
        mode = service.spec.authorization or self.mesh.spec.authorization
        dest = (service.namespace, service.spec.service_account)
        sources = self.allowed.get(dest)
        return mode == "audit" or sources is None or caller in sources

    def view(self, key: ServiceKey) -> Mesh:
        with self.lock:
            cached = self.views.get(key)
        if cached is not None:
            return cached
        view = Mesh(self._collect(key))
        with self.lock:
            return self.views.setdefault(key, view)

    def _collect(self, key: ServiceKey) -> list[Resource]:
        own = self.services.get(key)
        if own is None:
            raise KeyError(f"no Service {key[0]}/{key[1]} in mesh {self.mesh.name!r}")
        me = (own.namespace, own.spec.service_account)
        out: dict[int, Resource] = {id(r): r for r in self.mesh_resources}
        services: set[ServiceKey] = set()
        pending: list[ServiceKey] = []

        def add_service(ns: str, name: str) -> None:
            k = (ns, name)
            svc = self.services.get(k)
            if svc is not None and k not in services:
                services.add(k)
                out[id(svc)] = svc
                pending.append(k)

        def add(r: Resource) -> bool:
            if id(r) in out:
                return False
            out[id(r)] = r
            return True

        # the services it may call (and itself), with the routes and splits that govern them
        routable = list(dict.fromkeys([key, *self.open_services, *self.callable_by.get(me, ())]))
        for ns, name in routable:
            add_service(ns, name)
        routes: list[Resource] = []
        for k in routable:
            for r in self.routes.get(k, ()):
                if add(r):
                    routes.append(r)
                    for ns, name in _route_services(r):
                        add_service(ns, name)
            for r in self.splits.get(k, ()):
                if add(r):
                    for b in r.spec.backends:
                        add_service(r.namespace, b.service)
                    for m in r.spec.matches:
                        group = self.groups.get((m.kind, r.namespace, m.name))
                        if group is not None:
                            add(group)
        # its inbound policy: the TrafficTargets naming its ServiceAccount, with their routes
        for tt in self.targets.get(me, ()):
            add(tt)
            for rule in tt.spec.rules:
                group = self.groups.get((rule.kind, tt.namespace, rule.name))
                if group is not None:
                    add(group)
        # the TrafficPolicies of every route and service in the view (their mirrors included)
        for r in routes:
            for tp in self.policies.get((r.kind, r.namespace, r.name), ()):
                if add(tp) and tp.spec.mirror is not None:
                    m = tp.spec.mirror
                    add_service(m.namespace or tp.namespace, m.service)
        while pending:
            ns, name = pending.pop()
            for tp in self.policies.get(("Service", ns, name), ()):
                if add(tp) and tp.spec.mirror is not None:
                    m = tp.spec.mirror
                    add_service(m.namespace or tp.namespace, m.service)
        return sorted(out.values(), key=lambda r: self.order[id(r)])


def _route_services(route: Resource) -> Iterator[ServiceKey]:
    """Every Service an HTTPRoute or GRPCRoute refers to: parents, backends, mirrors."""
    ns = route.namespace
    for p in route.spec.parent_refs:
        yield p.namespace or ns, p.name
    for rule in route.spec.rules:
        filters = [*rule.filters, *(f for b in rule.backend_refs for f in b.filters)]
        for b in rule.backend_refs:
            yield b.namespace or ns, b.name
        for f in filters:
            if f.request_mirror is not None:
                ref = f.request_mirror.backend_ref
                yield ref.namespace or ns, ref.name


@functools.lru_cache(maxsize=2)  # the snapshot in force and the one before it
def _index(mesh: Mesh) -> _Index:
    return _Index(mesh)


def view_for(mesh: Mesh, service: str) -> Mesh:
    """What the sidecar of `service` ("namespace/name", or "name" in `default`) needs.

    - the Mesh resource and the Service itself;
    - every Service it may call: those whose ServiceAccount no TrafficTarget names as
      destination, those whose TrafficTargets list its ServiceAccount as a source, and those
      whose authorization mode is audit (nothing is denied there);
    - the TrafficTargets whose destination is its own ServiceAccount, with the HTTPRouteGroups,
      TCPRoutes and UDPRoutes they use (its inbound policy);
    - the HTTPRoutes and GRPCRoutes attached to, and the TrafficSplits rooted at, those
      services, with every Service they refer to (parents, backends, mirrors) and the route
      groups of the splits' matches;
    - the TrafficPolicies of every Service and route in the view (and their mirror Services).

    The result references nothing outside itself, so it loads and validates on its own.
    Computed once per mesh and service (for the last two meshes asked about).

    Raises:
        KeyError: the mesh has no such Service.
    """
    ns, _, name = service.rpartition("/")
    return _index(mesh).view((ns or DEFAULT_NAMESPACE, name))
