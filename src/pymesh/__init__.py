"""pymesh: a service mesh in Python.

The public API only (DESIGN.md §3 "Python API"); everything else lives in subpackages.
"""

from pymesh._version import __version__
from pymesh.policy.snapshot import Mesh

__all__ = ["Mesh", "__version__"]
