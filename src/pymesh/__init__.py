"""pymesh: a service mesh in Python.

The public API only (DESIGN.md §3 "Python API"); everything else lives in subpackages.

    mesh = pymesh.Mesh.load("mesh.yaml")
    pymesh.run(mesh, "orders", app=("127.0.0.1", 9001))          # blocks

    async with pymesh.Sidecar(mesh, "orders", app=("127.0.0.1", 9001)) as sidecar:
        ...

The proxy half is imported on first use, so `pymesh validate` and config tooling stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pymesh._version import __version__
from pymesh.errors import ConfigError, ProxyError, PymeshError
from pymesh.policy.snapshot import Mesh

if TYPE_CHECKING:
    from pymesh.proxy.chain import HttpFilter, HttpService, NetworkFilter
    from pymesh.proxy.messages import Body, Request, Response
    from pymesh.proxy.sidecar import Sidecar, run

__all__ = [
    "Body",
    "ConfigError",
    "HttpFilter",
    "HttpService",
    "Mesh",
    "NetworkFilter",
    "ProxyError",
    "PymeshError",
    "Request",
    "Response",
    "Sidecar",
    "__version__",
    "run",
]

_LAZY = {
    "HttpFilter": "pymesh.proxy.chain",
    "HttpService": "pymesh.proxy.chain",
    "NetworkFilter": "pymesh.proxy.chain",
    "Body": "pymesh.proxy.messages",
    "Request": "pymesh.proxy.messages",
    "Response": "pymesh.proxy.messages",
    "Sidecar": "pymesh.proxy.sidecar",
    "run": "pymesh.proxy.sidecar",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pymesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
