"""Write config back out: `Resource`s → Kubernetes-shaped documents and YAML (the loader's inverse).

    text = pymesh.policy.dump.to_yaml(mesh.resources)
    assert [r.spec for r in load_text(text)] == [r.spec for r in mesh.resources]

The writer is driven by the same schema as the loader (`pymesh.policy._schema.converter`):
each field is written under its YAML name (`trustDomain`, `certificateTTL`, `pathRegex`, ...),
durations as strings the loader parses back to the very same float (`250ms`, `1h`, or exact
decimal seconds), string maps as mappings, tuples as lists. Fields equal to their default are
omitted (a loader fills them in again); `metadata` carries `name` and `namespace` only (labels
and annotations are validated by the loader, then not kept). `Source` is not written.

`to_yaml` caches the text of each resource object (bounded), so that a control plane writing
the views of many sidecars from one snapshot serialises each resource once.
"""

from __future__ import annotations

import dataclasses
import decimal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import yaml

from pymesh.policy._schema import (
    Conv,
    DataclassConv,
    DurationConv,
    ListConv,
    OptionalConv,
    StrMapConv,
    converter,
    parse_duration,
)
from pymesh.policy.kinds import KINDS
from pymesh.policy.model import Resource

__all__ = ["format_duration", "to_document", "to_yaml"]

_DUMPER: Final[Any] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_UNITS: Final = (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))
_CACHE_SIZE: Final = 16_384  # resource texts kept by to_yaml (a few MB at most)

Writer = Callable[[Any], Any]


def format_duration(seconds: float) -> str:
    """A duration string that `parse_duration` reads back as exactly `seconds` (>= 0, finite).

    The largest whole unit that is exact (`1h`, `90m`, `250ms`), else exact decimal seconds.
    """
    if seconds == 0:
        return "0s"
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"not a duration: {seconds!r} (expected a finite number >= 0)")
    for unit, size in _UNITS:
        quotient = seconds / size
        if 0.5 <= quotient < 1e18:
            text = f"{round(quotient)}{unit}"
            if parse_duration(text) == seconds:
                return text
    # repr() is the shortest text that reads back as this float; write it without an exponent
    return format(decimal.Decimal(repr(seconds)), "f") + "s"


@dataclass(frozen=True, slots=True)
class _FieldWriter:
    attr: str
    yaml: str
    default: Any  # dataclasses.MISSING: required (always written)
    write: Writer


def _identity(value: Any) -> Any:
    return value


def _writer(conv: Conv) -> Writer:
    """The function turning a field value into plain YAML data, for a converter of the loader."""
    if isinstance(conv, OptionalConv):
        return _writer(conv.inner)  # None never reaches a writer: the field is omitted
    if isinstance(conv, DataclassConv):
        return _dataclass_writer(conv.cls)
    if isinstance(conv, ListConv):
        item = _writer(conv.item)
        if item is _identity:
            return list
        return lambda values: [item(v) for v in values]
    if isinstance(conv, StrMapConv):
        return dict
    if isinstance(conv, DurationConv):
        return format_duration
    return _identity  # str, int, float, bool, Literal: PyYAML writes them as the loader reads


_WRITERS: dict[type, Writer] = {}


def _dataclass_writer(cls: type) -> Writer:
    """A writer for one spec class (cached; the fields come from the loader's converter)."""
    done = _WRITERS.get(cls)
    if done is not None:
        return done
    fields: list[_FieldWriter] = []

    def write(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields:
            value = getattr(obj, f.attr)
            if value is None or (f.default is not dataclasses.MISSING and value == f.default):
                continue
            out[f.yaml] = f.write(value)
        return out

    _WRITERS[cls] = write  # before building, so that self-references terminate
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    fields.extend(
        _FieldWriter(f.attr, f.yaml, defaults.get(f.attr, dataclasses.MISSING), _writer(f.conv))
        for f in converter(cls).fields
    )
    return write


def to_document(resource: Resource) -> dict[str, Any]:
    """The Kubernetes-shaped document of a resource: apiVersion, kind, metadata, spec.

    Raises:
        ValueError: the resource's kind is unknown, or its spec is not its kind's spec class.
    """
    info = KINDS.get(resource.kind)
    if info is None:
        raise ValueError(f"{resource.ref}: unsupported kind {resource.kind!r}")
    if not isinstance(resource.spec, info.spec):
        raise ValueError(
            f"{resource.ref}: spec is a {type(resource.spec).__name__} "
            f"(expected {info.spec.__name__})"
        )
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.name, "namespace": resource.namespace},
        "spec": _dataclass_writer(info.spec)(resource.spec),
    }


def _dump(doc: dict[str, Any]) -> str:
    text: str = yaml.dump(
        doc,
        Dumper=_DUMPER,
        sort_keys=False,
        # Escape everything beyond ASCII: YAML treats NEL (U+0085) and the Unicode line and
        # paragraph separators as line breaks inside scalars, so written raw they would not
        # read back as the same string (a hypothesis test found '\x85' coming back as ' ').
        allow_unicode=False,
        default_flow_style=None,
        width=100,
    )
    return text


class _TextCache:
    """Resource object → its YAML text; bounded LRU keyed by identity (resources are immutable)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[int, tuple[Resource, str]] = OrderedDict()
        self._lock = threading.Lock()

    def text(self, resource: Resource) -> str:
        key = id(resource)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] is resource:
                self._items.move_to_end(key)
                return hit[1]
        text = _dump(to_document(resource))
        with self._lock:
            self._items[key] = (resource, text)  # holding the resource keeps its id unique
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return text


_TEXTS: Final = _TextCache(_CACHE_SIZE)


def to_yaml(resources: Iterable[Resource]) -> str:
    """Multi-document YAML that `pymesh.policy.load_text` loads back to equal resources.

    Equal except for `Source` (the file and line the resources were first read from).
    """
    return "".join("---\n" + _TEXTS.text(r) for r in resources)
