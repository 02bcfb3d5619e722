"""`Mesh`: one validated, immutable, versioned config snapshot.

Constructed by `Mesh.load(path)` (files or directories of YAML, validated by
`pymesh.policy.loader`) or from already-validated `Resource` objects. The proxy compiles a
`Mesh` into lookup tables (`pymesh.proxy.router`); nothing here does I/O after loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, final

from pymesh.policy.model import (
    DEFAULT_NAMESPACE,
    Endpoint,
    MeshSpec,
    Resource,
    ServiceSpec,
    Source,
)

__all__ = ["Mesh"]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    return value


def _canonical_doc(r: Resource) -> dict[str, Any]:
    return {
        "apiVersion": r.api_version,
        "kind": r.kind,
        "name": r.name,
        "namespace": r.namespace,
        "spec": _jsonable(r.spec),
    }


_CANON: dict[int, tuple[Resource, str]] = {}
_CANON_MAX = 50_000


def _canonical_json(r: Resource) -> str:
    """A resource's canonical JSON, cached by identity (resources are immutable)."""
    hit = _CANON.get(id(r))
    if hit is not None and hit[0] is r:
        return hit[1]
    text = json.dumps(_canonical_doc(r), sort_keys=True, separators=(",", ":"))
    if len(_CANON) >= _CANON_MAX:
        _CANON.clear()
    _CANON[id(r)] = (r, text)
    return text


@final
class Mesh:
    """A validated mesh config: every resource, the Mesh settings and the services.

    Immutable by convention: derive a new one (`with_endpoints`) instead of changing it.
    `version` is a content hash, so equal configs have equal versions.
    """

    __slots__ = ("_by_kind", "name", "resources", "services", "spec", "version")

    def __init__(self, resources: Iterable[Resource]) -> None:
        self.resources: tuple[Resource, ...] = tuple(resources)
        by_kind: dict[str, list[Resource]] = {}
        for r in self.resources:
            by_kind.setdefault(r.kind, []).append(r)
        self._by_kind = {k: tuple(v) for k, v in by_kind.items()}
        meshes = self._by_kind.get("Mesh", ())
        self.name: str = meshes[0].name if meshes else "mesh"
        self.spec: MeshSpec = meshes[0].spec if meshes else MeshSpec()
        self.services: Mapping[tuple[str, str], Resource] = {
            (r.namespace, r.name): r for r in self._by_kind.get("Service", ())
        }
        # The same bytes as json.dumps(self._canonical(), sort_keys=True, separators=(",", ":")),
        # built from per-resource pieces that are cached: a control plane makes a Mesh per
        # sidecar view from resources it has already hashed.
        text = "[" + ",".join(_canonical_json(r) for r in self.resources) + "]"
        self.version: str = hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> Mesh:
        """Load and validate YAML files or directories; raise `ConfigError` listing all errors."""
        from pymesh.policy.loader import load_paths

        return cls(load_paths([os.fspath(p) for p in paths]))

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<string>") -> Mesh:
        """Load and validate YAML text (multi-document)."""
        from pymesh.policy.loader import load_text

        return cls(load_text(text, filename))

    # -- queries ------------------------------------------------------------------------
    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        """All resources of one kind, in load order."""
        return self._by_kind.get(kind, ())

    def service(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> Resource | None:
        """The Service resource `namespace/name`, or None."""
        return self.services.get((namespace, name))

    def service_spec(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> ServiceSpec:
        """The spec of Service `namespace/name`; KeyError if there is none."""
        r = self.services.get((namespace, name))
        if r is None:
            raise KeyError(f"no Service {namespace}/{name} in mesh {self.name!r}")
        spec: ServiceSpec = r.spec
        return spec

    def spiffe_id(self, service: Resource) -> str:
        """The SPIFFE ID of a Service's workloads."""
        sa = service.spec.service_account
        return f"spiffe://{self.spec.trust_domain}/ns/{service.namespace}/sa/{sa}"

    # -- derivation ---------------------------------------------------------------------
    def with_endpoints(self, endpoints: Mapping[tuple[str, str], Iterable[Endpoint]]) -> Mesh:
        """A copy whose named services have exactly these endpoints."""
        out: list[Resource] = []
        for r in self.resources:
            key = (r.namespace, r.name)
            if r.kind == "Service" and key in endpoints:
                spec = dataclasses.replace(r.spec, endpoints=tuple(endpoints[key]))
                r = dataclasses.replace(r, spec=spec)
            out.append(r)
        return Mesh(out)

    @classmethod
    def build(
        cls,
        *,
        name: str = "mesh",
        spec: MeshSpec | None = None,
        services: Mapping[str, ServiceSpec] = {},
    ) -> Mesh:
        """Build a mesh in code (tests, embedding): services keyed `name` or `ns/name`."""
        src = Source(file="<code>", line=0)
        res = [
            Resource(
                api_version="pymesh.io/v1alpha1",
                kind="Mesh",
                name=name,
                spec=spec or MeshSpec(),
                source=src,
            )
        ]
        for key, sspec in services.items():
            ns, _, sname = key.rpartition("/")
            res.append(
                Resource(
                    api_version="pymesh.io/v1alpha1",
                    kind="Service",
                    name=sname,
                    namespace=ns or DEFAULT_NAMESPACE,
                    spec=sspec,
                    source=src,
                )
            )
        return cls(res)

    def _canonical(self) -> list[Any]:
        return [_canonical_doc(r) for r in self.resources]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dump (`/config_dump`): version, mesh name and every resource."""
        return {"version": self.version, "mesh": self.name, "resources": self._canonical()}

    def __repr__(self) -> str:
        return f"<Mesh {self.name!r} version={self.version} resources={len(self.resources)}>"
