"""pymesh: a service mesh in Python.

The public API only (DESIGN.md §3 "Python API"); everything else lives in subpackages.

    mesh = pymesh.Mesh.load("mesh.yaml")
    pymesh.run(mesh, "orders", app=("127.0.0.1", 9001))          # blocks

    async with pymesh.Sidecar(mesh, "orders", app=("127.0.0.1", 9001)) as sidecar:
        ...
"""

from pymesh._version import __version__
from pymesh.errors import ConfigError, ProxyError, PymeshError
from pymesh.policy.snapshot import Mesh
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
