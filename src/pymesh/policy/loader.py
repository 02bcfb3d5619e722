"""Load and validate config: multi-document YAML files and directories → `Resource`s.

Rules (DESIGN.md §3; docs/config.md is the user's reference):

- Every document is Kubernetes-shaped: `apiVersion`, `kind`, `metadata` {`name`, `namespace`
  (default `default`), `labels`, `annotations`} and `spec`. Empty documents are skipped.
- `kind` must be one of `kinds.KINDS`. A missing `apiVersion` is inferred from the kind (every
  supported kind has exactly one apiVersion; the SMI spec's own examples omit it); a given
  `apiVersion` must be exactly the supported one.
- Every field is validated strictly (types, ranges, enums, RE2 regexes); unknown fields are
  errors. A top-level key that belongs in `spec` (the SMI 05 example's `matches`) is reported
  as `unknown field (did you mean spec.matches?)`, next to `spec: missing required field`.
- Across documents: duplicate (kind, namespace, name), more than one Mesh, and dangling
  references (route groups, match names, routes; Services only when the config defines at
  least one Service, since SMI-only configs have none).
- Every error from every file is collected, sorted by file and line, and raised as one
  `ConfigError` whose lines read `FILE:LINE: KIND/NAMESPACE/NAME: path: problem (expected ...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from pymesh.errors import ConfigError, FieldError
from pymesh.policy._schema import (
    INVALID,
    TAG_MAP,
    TAG_STR,
    Cx,
    Problem,
    converter,
    describe,
    format_path,
    is_null,
    join,
    line_of,
    locate,
    mapping_items,
    quote,
)
from pymesh.policy.kinds import DNS_LABEL, DNS_SUBDOMAIN, KINDS, ObjectMeta
from pymesh.policy.model import DEFAULT_NAMESPACE, Resource, ServiceSpec, Source

__all__ = ["SUPPORTED_KINDS", "load_paths", "load_text", "validate_main"]

SUPPORTED_KINDS: Final = tuple(KINDS)
"""The names of every accepted kind, sorted."""

_TOP_LEVEL: Final = ("apiVersion", "kind", "metadata", "spec")
_KIND_LIST: Final = ", ".join(SUPPORTED_KINDS)
_UNSUPPORTED_HINTS: Final = {
    "TrafficMetrics": "SMI Traffic Metrics is a metrics API, not config; pymesh serves "
    "metrics on /metrics",
    "IdentityBinding": "an unreleased SMI access v1alpha4 draft",
}
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(slots=True)
class _Doc:
    """One document that got as far as a valid kind."""

    node: MappingNode
    file: str
    kind: str
    namespace: str | None  # None: metadata.namespace is invalid
    name: str | None  # None: metadata.name is invalid
    resource: Resource | None  # None: the document has errors


class _Loader:
    """Collects documents and errors across files; `finish()` cross-checks and returns."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.docs: list[_Doc] = []
        self.file_order: dict[str, int] = {}
        self.first: dict[tuple[str, str, str], _Doc] = {}
        self.mesh: _Doc | None = None

    # -- input --------------------------------------------------------------------------------
    def add_path(self, path: str) -> None:
        p = Path(path)
        if p.is_dir():
            try:
                files = sorted(
                    c
                    for c in p.iterdir()
                    if c.suffix in (".yaml", ".yml") and not c.name.startswith(".") and c.is_file()
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                self._file_error(path, 1, f"cannot list: {reason} (expected a readable directory)")
                return
            if not files:
                self._file_error(
                    path,
                    1,
                    "no *.yaml or *.yml files in this directory "
                    "(expected a directory of config files)",
                )
            for f in files:
                self.add_file(str(f))
        else:
            self.add_file(path)

    def add_file(self, path: str) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._file_error(
                path, 1, f"cannot read: {reason} (expected a readable YAML file or directory)"
            )
            return
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            self._file_error(
                path,
                line,
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} (expected a UTF-8 YAML file)",
            )
            return
        self.add_text(text, path)

    def add_text(self, text: str, filename: str) -> None:
        self.file_order.setdefault(filename, len(self.file_order))
        try:
            for node in yaml.compose_all(text, Loader=_YAML_LOADER):
                if node is not None:
                    self._add_document(node, filename)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = int(mark.line) + 1 if mark is not None else 1
            what = exc.problem or exc.context or "syntax error"
            self._file_error(filename, line, f"invalid YAML: {what} (expected valid YAML syntax)")
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            self._file_error(
                filename,
                line,
                f"invalid YAML: {exc.reason} #x{exc.character:04x} (expected printable characters)",
            )
        except yaml.YAMLError as exc:
            self._file_error(filename, 1, f"invalid YAML: {exc} (expected valid YAML syntax)")
        except (UnicodeError, RecursionError) as exc:
            self._file_error(
                filename, 1, f"invalid YAML: {type(exc).__name__} (expected valid YAML text)"
            )

    def _file_error(self, file: str, line: int, message: str) -> None:
        self.file_order.setdefault(file, len(self.file_order))
        Cx(file, "-", self.errors).error(line, "-", message)

    # -- one document -------------------------------------------------------------------------
    def _add_document(self, node: Node, file: str) -> None:
        if is_null(node):
            return  # an empty document: `---` with nothing, or only comments
        cx = Cx(file, "-", self.errors)
        if not (isinstance(node, MappingNode) and node.tag == TAG_MAP):
            cx.error(
                node,
                "-",
                f"document is {describe(node)} (expected a mapping with "
                "apiVersion, kind, metadata and spec)",
            )
            return
        kind, name, namespace = _identity(node)
        label_kind = kind if kind in KINDS or (kind and kind.isalnum() and kind.isascii()) else None
        label_ns = namespace if namespace is not None else "-"
        cx.resource = (
            "-"
            if label_kind is None and name is None
            else f"{label_kind or '-'}/{label_ns}/{name or '-'}"
        )
        errors_before = len(self.errors)
        items = mapping_items(node, "", cx)
        info = None
        kind_entry = items.get("kind")
        if kind_entry is None:
            cx.error(node, "kind", f"missing required field (expected one of: {_KIND_LIST})")
        elif not (isinstance(kind_entry[1], ScalarNode) and kind_entry[1].tag == TAG_STR):
            cx.error(
                kind_entry[1],
                "kind",
                f"got {describe(kind_entry[1])} (expected one of: {_KIND_LIST})",
            )
        else:
            info = KINDS.get(kind_entry[1].value)
            if info is None:
                hint = _UNSUPPORTED_HINTS.get(kind_entry[1].value)
                cx.error(
                    kind_entry[1],
                    "kind",
                    f"unsupported kind {quote(kind_entry[1].value)}"
                    f"{'; ' + hint if hint else ''} (expected one of: {_KIND_LIST})",
                )
        if info is None:
            return  # nothing else can be checked without a kind
        spec_conv = converter(info.spec)

        api_entry = items.get("apiVersion")
        if api_entry is not None and not is_null(api_entry[1]):
            api = api_entry[1]
            if not (isinstance(api, ScalarNode) and api.tag == TAG_STR):
                cx.error(api, "apiVersion", f"got {describe(api)} (expected {info.api_version})")
            elif api.value != info.api_version:
                cx.error(
                    api,
                    "apiVersion",
                    f"unsupported apiVersion {quote(api.value)} for "
                    f"kind {info.kind} (expected {info.api_version}, or no apiVersion)",
                )

        for key, (knode, _) in items.items():
            if key in _TOP_LEVEL:
                continue
            if key in spec_conv.by_yaml:
                message = f"unknown field (did you mean spec.{key}?)"
            elif key == "status":
                message = (
                    "unknown field: status is not config (expected apiVersion, kind, "
                    "metadata, spec)"
                )
            else:
                message = "unknown field (expected one of: apiVersion, kind, metadata, spec)"
            cx.error(knode, join("", key), message)

        meta: ObjectMeta | None = None
        meta_entry = items.get("metadata")
        if meta_entry is None or is_null(meta_entry[1]):
            where = meta_entry[1] if meta_entry is not None else node
            cx.error(
                where,
                "metadata",
                "missing required field (expected a mapping with name "
                "and optional namespace, labels, annotations)",
            )
        else:
            value = converter(ObjectMeta).convert(meta_entry[1], "metadata", cx)
            if value is not INVALID:
                meta = value
                if info.kind == "Service" and DNS_LABEL.problem(value.name) is not None:
                    cx.error(
                        locate(meta_entry[1], ("name",)),
                        "metadata.name",
                        f"invalid Service name {quote(value.name)} (expected "
                        f"{DNS_LABEL.expected}, at most 63 characters: it is part of "
                        "the service's hostname)",
                    )

        spec: Any = INVALID
        spec_entry = items.get("spec")
        expected_spec = f"a mapping with the {info.kind} fields: " + ", ".join(
            spec_conv.field_names()
        )
        if spec_entry is None or is_null(spec_entry[1]):
            where = spec_entry[1] if spec_entry is not None else node
            cx.error(where, "spec", f"missing required field (expected {expected_spec})")
        elif not isinstance(spec_entry[1], MappingNode):
            cx.error(
                spec_entry[1], "spec", f"got {describe(spec_entry[1])} (expected {expected_spec})"
            )
        else:
            defaults = None
            if info.spec is ServiceSpec:
                defaults = {"service_account": meta.name if meta is not None else "-"}
            spec = spec_conv.convert(spec_entry[1], "spec", cx, defaults)

        doc = _Doc(
            node=node, file=file, kind=info.kind, namespace=namespace, name=name, resource=None
        )
        self._register(doc, cx)
        if len(self.errors) == errors_before and meta is not None and spec is not INVALID:
            doc.resource = Resource(
                api_version=info.api_version,
                kind=info.kind,
                name=meta.name,
                namespace=meta.namespace,
                spec=_fill_namespaces(spec, meta.namespace),
                source=Source(file=file, line=line_of(node)),
            )

    def _register(self, doc: _Doc, cx: Cx) -> None:
        """Record a document; report duplicates and a second Mesh."""
        self.docs.append(doc)
        if doc.name is None or doc.namespace is None:
            return
        key = (doc.kind, doc.namespace, doc.name)
        first = self.first.get(key)
        if first is not None:
            cx.error(
                locate(doc.node, ("metadata", "name")),
                "metadata.name",
                f"duplicate {doc.kind}/{doc.namespace}/{doc.name}, first defined at "
                f"{first.file}:{line_of(first.node)} (expected unique kind, namespace "
                "and name)",
            )
            return
        self.first[key] = doc
        if doc.kind == "Mesh":
            if self.mesh is not None:
                m = self.mesh
                cx.error(
                    locate(doc.node, ("kind",)),
                    "kind",
                    f"a second Mesh; Mesh/{m.namespace}/{m.name} is defined at "
                    f"{m.file}:{line_of(m.node)} (expected exactly one Mesh)",
                )
            else:
                self.mesh = doc

    # -- across documents -----------------------------------------------------------------------
    def finish(self) -> tuple[Resource, ...]:
        """Check references, then return the resources or raise one ConfigError."""
        refs = _References(self)
        for doc in self.docs:
            if doc.resource is None:
                continue
            problems = refs.problems(doc.resource)
            if problems:
                label = doc.resource.ref
                cx = Cx(doc.file, label, self.errors)
                for sub, message in problems:
                    cx.error(locate(doc.node, sub), format_path("", sub), message)
        if self.errors:
            order = self.file_order
            errors = sorted(self.errors, key=lambda e: (order.get(e.file, len(order)), e.line))
            raise ConfigError(errors)
        return tuple(d.resource for d in self.docs if d.resource is not None)


def _identity(node: MappingNode) -> tuple[str | None, str | None, str | None]:
    """Kind, metadata.name and metadata.namespace, each None unless valid (for labels)."""
    kind = _peek_str(node, "kind")
    name = None
    namespace: str | None = DEFAULT_NAMESPACE
    meta = _peek(node, "metadata")
    if isinstance(meta, MappingNode):
        name = _peek_str(meta, "name")
        if name is not None and DNS_SUBDOMAIN.problem(name) is not None:
            name = None
        ns_node = _peek(meta, "namespace")
        if ns_node is not None and not is_null(ns_node):
            namespace = _peek_str(meta, "namespace")
            if namespace is not None and DNS_LABEL.problem(namespace) is not None:
                namespace = None
    return kind, name, namespace


def _peek(node: MappingNode, key: str) -> Node | None:
    """The value of the first `key` in a mapping node (as `mapping_items` keeps it)."""
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.tag == TAG_STR and k.value == key:
            value: Node = v
            return value
    return None


def _peek_str(node: MappingNode, key: str) -> str | None:
    v = _peek(node, key)
    if isinstance(v, ScalarNode) and v.tag == TAG_STR:
        return str(v.value)
    return None


def _fill_namespaces(obj: Any, namespace: str) -> Any:
    """A copy of a spec whose empty `namespace` fields are the resource's namespace."""
    if isinstance(obj, tuple):
        items = tuple(_fill_namespaces(v, namespace) for v in obj)
        return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return obj
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "namespace" and value == "":
            changes[f.name] = namespace
        elif isinstance(value, tuple) or dataclasses.is_dataclass(value):
            new = _fill_namespaces(value, namespace)
            if new is not value:
                changes[f.name] = new
    return dataclasses.replace(obj, **changes) if changes else obj


class _References:
    """Cross-resource checks over the valid resources (existence over every document)."""

    def __init__(self, loader: _Loader) -> None:
        self.known = set(loader.first)  # (kind, namespace, name) of every identified document
        self.has_services = any(d.kind == "Service" for d in loader.docs)
        self.valid: dict[tuple[str, str, str], Resource] = {}
        for d in loader.docs:
            if d.resource is not None:
                r = d.resource
                self.valid.setdefault((r.kind, r.namespace, r.name), r)
        services = [d for d in loader.docs if d.kind == "Service"]
        self.accounts: set[tuple[str, str]] = {
            (d.resource.namespace, d.resource.spec.service_account)
            for d in services
            if d.resource is not None
        }
        # a namespace with an invalid Service has unknown ServiceAccounts (no cascading errors)
        self.unsure_namespaces: set[str | None] = {
            d.namespace for d in services if d.resource is None
        }
        self.policy_targets: dict[tuple[str, str, str, str | None], Resource] = {}

    def problems(self, r: Resource) -> list[Problem]:
        check = getattr(self, f"_check_{r.kind}", None)
        return list(check(r)) if check is not None else []

    # -- helpers ------------------------------------------------------------------------------
    def _service(
        self,
        path: tuple[str | int, ...],
        namespace: str,
        name: str,
        port: int | None = None,
        port_name: str | None = None,
        port_key: str = "port",
        name_key: str = "name",
    ) -> Iterator[Problem]:
        """Problems with a reference to Service namespace/name (and one of its ports)."""
        if not self.has_services:
            return
        if ("Service", namespace, name) not in self.known:
            yield (*path, name_key), self._missing("Service", namespace, name)
            return
        svc = self.valid.get(("Service", namespace, name))
        if svc is None:
            return  # the Service has errors of its own
        spec: ServiceSpec = svc.spec
        if port is not None and all(p.port != port for p in spec.ports):
            ports = ", ".join(str(p.port) for p in spec.ports) or "none"
            yield (
                (*path, port_key),
                f"Service {namespace}/{name} has no port {port} (expected one of: {ports})",
            )
        if port_name is not None and all(p.name != port_name for p in spec.ports):
            names = ", ".join(p.name for p in spec.ports if p.name) or "none"
            yield (
                (*path, "sectionName"),
                f"Service {namespace}/{name} has no port named "
                f"{quote(port_name)} (expected one of: {names})",
            )

    def _exists(
        self, path: tuple[str | int, ...], kind: str, namespace: str, name: str
    ) -> Iterator[Problem]:
        if (kind, namespace, name) not in self.known:
            yield path, self._missing(kind, namespace, name)

    def _missing(self, kind: str, namespace: str, name: str) -> str:
        """`no KIND "name" in namespace NS (did you mean x? / expected one of: ...)`."""
        names = sorted(n for k, ns, n in self.known if k == kind and ns == namespace)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]}?"
        elif not names:
            hint = f"expected a {kind} defined in the config; namespace {namespace} has none"
        elif len(names) <= 10:
            hint = f"expected one of: {', '.join(names)}"
        else:
            hint = f"expected one of the {len(names)} {kind} names in namespace {namespace}"
        return f"no {kind} {quote(name)} in namespace {namespace} ({hint})"

    # -- per kind -------------------------------------------------------------------------------
    def _check_TrafficTarget(self, r: Resource) -> Iterator[Problem]:
        dest = r.spec.destination
        if (
            self.has_services
            and (dest.namespace, dest.name) not in self.accounts
            and dest.namespace not in self.unsure_namespaces
            and None not in self.unsure_namespaces
        ):
            accounts = sorted({a for ns, a in self.accounts if ns == dest.namespace})
            close = difflib.get_close_matches(dest.name, accounts, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else ("expected the serviceAccount of a Service in the config")
            )
            yield (
                ("spec", "destination", "name"),
                f"no Service in namespace {dest.namespace} has serviceAccount "
                f"{quote(dest.name)} ({hint})",
            )
        for i, rule in enumerate(r.spec.rules):
            path = ("spec", "rules", i)
            if (rule.kind, r.namespace, rule.name) not in self.known:
                yield from self._exists((*path, "name"), rule.kind, r.namespace, rule.name)
                continue
            group = self.valid.get((rule.kind, r.namespace, rule.name))
            if group is None or rule.kind != "HTTPRouteGroup":
                continue
            names = [m.name for m in group.spec.matches]
            for j, match in enumerate(rule.matches):
                if match not in names:
                    yield (
                        (*path, "matches", j),
                        f"no match {quote(match)} in HTTPRouteGroup "
                        f"{r.namespace}/{rule.name} (expected one of: {', '.join(names)})",
                    )

    def _check_TrafficSplit(self, r: Resource) -> Iterator[Problem]:
        spec = r.spec
        yield from self._service(("spec",), r.namespace, spec.service, name_key="service")
        for i, b in enumerate(spec.backends):
            yield from self._service(
                ("spec", "backends", i), r.namespace, b.service, name_key="service"
            )
        for i, m in enumerate(spec.matches):
            yield from self._exists(("spec", "matches", i, "name"), m.kind, r.namespace, m.name)

    def _route(self, r: Resource) -> Iterator[Problem]:
        for i, p in enumerate(r.spec.parent_refs):
            yield from self._service(
                ("spec", "parentRefs", i), p.namespace, p.name, p.port, p.section_name
            )
        for i, rule in enumerate(r.spec.rules):
            path = ("spec", "rules", i)
            yield from self._filters((*path, "filters"), rule.filters)
            for j, b in enumerate(rule.backend_refs):
                yield from self._service((*path, "backendRefs", j), b.namespace, b.name, b.port)
                yield from self._filters((*path, "backendRefs", j, "filters"), b.filters)

    def _filters(self, path: tuple[str | int, ...], filters: Sequence[Any]) -> Iterator[Problem]:
        for k, f in enumerate(filters):
            if f.type == "RequestMirror" and f.request_mirror is not None:
                ref = f.request_mirror.backend_ref
                yield from self._service(
                    (*path, k, "requestMirror", "backendRef"), ref.namespace, ref.name, ref.port
                )

    _check_HTTPRoute = _route
    _check_GRPCRoute = _route

    def _check_TrafficPolicy(self, r: Resource) -> Iterator[Problem]:
        spec = r.spec
        t = spec.target_ref
        path = ("spec", "targetRef")
        if t.kind == "Service":
            yield from self._service(path, r.namespace, t.name, port_name=t.section_name)
        elif (t.kind, r.namespace, t.name) not in self.known:
            yield from self._exists((*path, "name"), t.kind, r.namespace, t.name)
        elif t.section_name is not None:
            route = self.valid.get((t.kind, r.namespace, t.name))
            names = [rule.name for rule in route.spec.rules if rule.name] if route else None
            if names is not None and t.section_name not in names:
                yield (
                    (*path, "sectionName"),
                    f"{t.kind} {r.namespace}/{t.name} has no rule named "
                    f"{quote(t.section_name)} "
                    + (
                        f"(expected one of: {', '.join(names)})"
                        if names
                        else "(expected a rule name; the route has no named rules)"
                    ),
                )
        if spec.mirror is not None:
            m = spec.mirror
            yield from self._service(
                ("spec", "mirror"), m.namespace, m.service, m.port, name_key="service"
            )
        key = (r.namespace, t.kind, t.name, t.section_name)
        first = self.policy_targets.setdefault(key, r)
        if first is not r:
            yield (
                path,
                f"same target as TrafficPolicy {first.namespace}/{first.name} at "
                f"{first.source.file}:{first.source.line} (expected one TrafficPolicy per "
                "target)",
            )


# -- public API ---------------------------------------------------------------------------------


def load_text(text: str, filename: str = "<string>") -> tuple[Resource, ...]:
    """Load and validate YAML text (one or more documents).

    Raises:
        ConfigError: with every problem found, each `FILE:LINE: KIND/NS/NAME: path: problem`.
    """
    loader = _Loader()
    loader.add_text(text, filename)
    return loader.finish()


def load_paths(paths: Sequence[str | os.PathLike[str]]) -> tuple[Resource, ...]:
    """Load and validate files and directories (a directory: its `*.yaml`/`*.yml`, sorted).

    References may cross files. Raises `ConfigError` with the problems of every file at once.
    """
    loader = _Loader()
    for p in paths:
        loader.add_path(os.fspath(p))
    return loader.finish()


def validate_main(paths: Sequence[str]) -> int:
    """`pymesh validate`: print `ok: N resources` (0) or every error line (1), to stdout."""
    try:
        resources = load_paths(paths)
    except ConfigError as exc:
        for e in exc.errors:
            print(e)
        return 1
    print(f"ok: {len(resources)} resources")
    return 0
