"""pymesh.policy: config resources, the YAML loader and the validated `Mesh` snapshot.

    resources = pymesh.policy.load_paths(["mesh/"])     # ConfigError lists every problem
    mesh = pymesh.policy.Mesh(resources)                 # or Mesh.load("mesh/")

The spec classes of every kind are in `pymesh.policy.kinds` (Mesh and Service: `model`).
"""

from __future__ import annotations

from pymesh.policy._schema import parse_duration
from pymesh.policy.kinds import (
    KINDS,
    GRPCRouteSpec,
    HTTPRouteGroupSpec,
    HTTPRouteSpec,
    KindInfo,
    ObjectMeta,
    TCPRouteSpec,
    TrafficPolicySpec,
    TrafficSplitSpec,
    TrafficTargetSpec,
    UDPRouteSpec,
)
from pymesh.policy.loader import SUPPORTED_KINDS, load_paths, load_text, validate_main
from pymesh.policy.model import (
    DEFAULT_NAMESPACE,
    Endpoint,
    MeshSpec,
    Resource,
    ServicePort,
    ServiceSpec,
    Source,
)
from pymesh.policy.snapshot import Mesh

__all__ = [
    "DEFAULT_NAMESPACE",
    "KINDS",
    "SUPPORTED_KINDS",
    "Endpoint",
    "GRPCRouteSpec",
    "HTTPRouteGroupSpec",
    "HTTPRouteSpec",
    "KindInfo",
    "Mesh",
    "MeshSpec",
    "ObjectMeta",
    "Resource",
    "ServicePort",
    "ServiceSpec",
    "Source",
    "TCPRouteSpec",
    "TrafficPolicySpec",
    "TrafficSplitSpec",
    "TrafficTargetSpec",
    "UDPRouteSpec",
    "load_paths",
    "load_text",
    "parse_duration",
    "validate_main",
]
