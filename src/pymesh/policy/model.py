"""Frozen config objects: what the loader produces and everything else reads.

The YAML field names are the contract (DESIGN.md §3); the Python attribute names are their
snake_case forms. Every object here is immutable and holds no I/O resources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
AuthzMode = Literal["enforce", "audit"]
PortProtocol = Literal["tcp", "http", "http2", "grpc"]

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where a resource was written: file and 1-based line of its document start."""

    file: str
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One config document: identity plus its typed spec.

    `spec` is one of the `*Spec` classes (MeshSpec, ServiceSpec, ...) for the resource's kind.
    """

    api_version: str
    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    spec: Any
    source: Source

    @property
    def ref(self) -> str:
        """`KIND/NAMESPACE/NAME`, as error messages name a resource."""
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSpec:
    """`pymesh.io/v1alpha1` `Mesh.spec`."""

    trust_domain: str = "cluster.local"
    mtls: MtlsMode = "STRICT"
    authorization: AuthzMode = "enforce"
    certificate_ttl_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    """One entry of `Service.spec.ports`: the service port clients name."""

    name: str | None = None
    port: int
    protocol: PortProtocol | None = None  # None: detect


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where a connection for the service goes (a sidecar's inbound listener if meshed)."""

    address: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """`pymesh.io/v1alpha1` `Service.spec`."""

    service_account: str
    meshed: bool = True
    mtls: MtlsMode | None = None
    authorization: AuthzMode | None = None
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = field(default=())
