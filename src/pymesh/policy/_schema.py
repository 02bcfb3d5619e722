"""YAML nodes → frozen dataclasses, driven by type hints, with every error collected.

The loader (`pymesh.policy.loader`) composes YAML into nodes (`yaml.compose_all`), which keep
the line of every key and value, and converts the nodes of a spec with `converter(cls)`. A
converter walks the type hints of a frozen dataclass once (cached) and builds one small
converter object per field:

- `str`, `int`, `float`, `bool`, `Literal[...]` scalars, strictly typed: YAML `port: "80"` is a
  string and an error where an integer is expected; a bool is never an int;
- `tuple[X, ...]` lists and `X | None` optionals (YAML `null` means "omitted");
- nested dataclasses, whose unknown keys are errors;
- `Annotated[...]` markers: `Range`, `Len`, `Pattern`, `Re2`, `Duration`, `StrMap`, `Unique`,
  `Yaml` (the YAML name when it is not the camelCase of the attribute).

A dataclass may define `_check(self)`, yielding `(subpath, message)` for cross-field problems
once every field converted cleanly; `subpath` is a tuple of YAML keys and list indices relative
to the object, used to find the line. Classes that live elsewhere (model.py) get their markers
and checks through `annotate()` and `add_check()`.

Errors go to a `Cx` as `FieldError`s; a failed conversion returns `INVALID` and the caller
carries on with the next field, so one run reports everything.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pymesh.errors import FieldError

__all__ = [
    "INVALID",
    "Check",
    "Cx",
    "Duration",
    "Len",
    "Pattern",
    "Problem",
    "Range",
    "Re2",
    "StrMap",
    "Unique",
    "Yaml",
    "add_check",
    "annotate",
    "converter",
    "describe",
    "format_path",
    "is_null",
    "join",
    "line_of",
    "locate",
    "mapping_items",
    "parse_duration",
    "quote",
    "re2_problem",
]

# -- YAML tags ----------------------------------------------------------------------------------
TAG_STR: Final = "tag:yaml.org,2002:str"
TAG_INT: Final = "tag:yaml.org,2002:int"
TAG_FLOAT: Final = "tag:yaml.org,2002:float"
TAG_BOOL: Final = "tag:yaml.org,2002:bool"
TAG_NULL: Final = "tag:yaml.org,2002:null"
TAG_MAP: Final = "tag:yaml.org,2002:map"
TAG_SEQ: Final = "tag:yaml.org,2002:seq"
TAG_MERGE: Final = "tag:yaml.org,2002:merge"

_CONSTRUCTOR: Final = yaml.constructor.SafeConstructor()

PathToken = str | int
Problem = tuple[tuple[PathToken, ...], str]
"""A cross-field problem: (subpath of YAML keys and indices, message with "(expected ...)")."""


class _Invalid:
    """The result of a conversion that failed (its errors are already recorded)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final[Any] = _Invalid()


# -- errors and locations -----------------------------------------------------------------------
class Cx:
    """Error sink for one document: file name, the resource label, the errors found so far."""

    __slots__ = ("errors", "file", "resource")

    def __init__(self, file: str, resource: str, errors: list[FieldError]) -> None:
        self.file = file
        self.resource = resource
        self.errors = errors

    def error(self, where: Node | int, path: str, message: str) -> None:
        """Record one error at a node (its line) or at an explicit 1-based line."""
        line = where if isinstance(where, int) else line_of(where)
        one_line = " ".join(message.splitlines())  # every kind of line break
        self.errors.append(FieldError(self.file, line, self.resource, path or "-", one_line))


def line_of(node: Node) -> int:
    """The 1-based line where a node starts."""
    return int(node.start_mark.line) + 1


def join(path: str, key: PathToken) -> str:
    """Extend a field path with a key (`spec.ports`) or an index (`spec.ports[0]`).

    A key with whitespace, control characters or quotes is JSON-quoted (spaces as \\u0020),
    so that a path is always one word of one line.
    """
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key or _PLAIN_KEY.fullmatch(key) is None:
        key = json.dumps(key).replace(" ", "\\u0020")
    return f"{path}.{key}" if path else key


_PLAIN_KEY: Final = re.compile(r"[^\s\"\\\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def format_path(path: str, tokens: Iterable[PathToken]) -> str:
    """Extend a field path with several keys and indices."""
    for t in tokens:
        path = join(path, t)
    return path


def locate(node: Node, tokens: Iterable[PathToken]) -> Node:
    """The node at a subpath, or the deepest existing node on the way to it."""
    for t in tokens:
        if isinstance(t, int):
            if isinstance(node, SequenceNode) and 0 <= t < len(node.value):
                node = node.value[t]
                continue
            break
        if not isinstance(node, MappingNode):
            break
        found = None
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag == TAG_STR and k.value == t:
                found = v
        if found is None:
            break
        node = found
    return node


def quote(text: str, limit: int = 60) -> str:
    """A string as it appears in a message: double-quoted, escaped, one line, shortened."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return json.dumps(text)


def is_null(node: Node) -> bool:
    """Whether a node is YAML null (`~`, `null` or nothing)."""
    return isinstance(node, ScalarNode) and node.tag == TAG_NULL


def describe(node: Node) -> str:
    """What a node is, for "got ..." in messages."""
    if isinstance(node, MappingNode):
        return "a mapping" if node.tag == TAG_MAP else f"a mapping tagged {node.tag}"
    if isinstance(node, SequenceNode):
        return "a list" if node.tag == TAG_SEQ else f"a list tagged {node.tag}"
    tag, text = node.tag, str(node.value)
    if tag == TAG_STR:
        return f"string {quote(text)}"
    if tag == TAG_INT:
        return f"integer {text}"
    if tag == TAG_FLOAT:
        return f"number {text}"
    if tag == TAG_BOOL:
        if text.lower() in ("true", "false"):
            return f"boolean {text}"
        return f"boolean {text} (YAML 1.1 reads {text} as a boolean; quote it for a string)"
    if tag == TAG_NULL:
        return "null"
    if tag == "tag:yaml.org,2002:timestamp":
        return f"timestamp {text} (quote it to make it a string)"
    return f"a value tagged {tag}"


def _int_value(node: ScalarNode) -> int | None:
    try:
        value = _CONSTRUCTOR.construct_yaml_int(node)
    except (ValueError, TypeError, yaml.YAMLError):
        return None
    return value


def _float_value(node: ScalarNode) -> float | None:
    try:
        value = _CONSTRUCTOR.construct_yaml_float(node)
    except (ValueError, TypeError, yaml.YAMLError):
        return None
    return value


def _bool_value(node: ScalarNode) -> bool | None:
    try:
        value = _CONSTRUCTOR.construct_yaml_bool(node)
    except (ValueError, TypeError, KeyError, yaml.YAMLError):
        return None
    return value


def mapping_items(node: MappingNode, path: str, cx: Cx) -> dict[str, tuple[Node, Node]]:
    """The keys of a mapping node with their key and value nodes.

    Reports (and drops) non-string keys, merge keys (`<<`, not supported) and repeated keys
    (the first one is kept; YAML would silently keep the last).
    """
    out: dict[str, tuple[Node, Node]] = {}
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.tag == TAG_MERGE:
            cx.error(
                k,
                join(path, "<<"),
                "YAML merge keys are not supported (expected the fields written out)",
            )
            continue
        if not (isinstance(k, ScalarNode) and k.tag == TAG_STR):
            shown = str(k.value) if isinstance(k, ScalarNode) else "?"
            cx.error(k, join(path, shown), f"invalid field name: {describe(k)} (expected a string)")
            continue
        key: str = k.value
        if key in out:
            first = line_of(out[key][0])
            cx.error(
                k,
                join(path, key),
                f"repeated field, first at line {first} (expected each field once)",
            )
            continue
        out[key] = (k, v)
    return out


# -- annotation markers ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Yaml:
    """The field's YAML name, when it is not the camelCase of the attribute name."""

    name: str


@dataclass(frozen=True, slots=True)
class Range:
    """Numeric bounds (inclusive; `lo_open` makes the lower bound exclusive)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"{_num(self.lo)}-{_num(self.hi)}"
        if self.lo is not None:
            return f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
        if self.hi is not None:
            return f"<= {_num(self.hi)}"
        return ""

    def ok(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass(frozen=True, slots=True)
class Len:
    """Length bounds of a list or string."""

    lo: int = 0
    hi: int | None = None


@dataclass(frozen=True, slots=True)
class Pattern:
    """The whole string must match `regex` (Python `re`, trusted); `expected` names it."""

    regex: str
    expected: str
    max_len: int | None = None

    def problem(self, value: str) -> str | None:
        if self.max_len is not None and len(value) > self.max_len:
            return (
                f"{quote(value)} is {len(value)} characters long (expected {self.expected}, "
                f"at most {self.max_len} characters)"
            )
        if _compiled(self.regex).fullmatch(value) is None:
            return f"invalid value {quote(value)} (expected {self.expected})"
        return None


@cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


@dataclass(frozen=True, slots=True)
class Check:
    """A string test: `test(value)` returns the problem (with "(expected ...)") or None."""

    test: Callable[[str], str | None]
    expected: str


@dataclass(frozen=True, slots=True)
class Re2:
    """The string is an RE2 regular expression (compiled once here, only to check it)."""


@dataclass(frozen=True, slots=True)
class Duration:
    """A Go/Kubernetes duration string ("250ms", "1h30m") converted to float seconds."""

    allow_zero: bool = False


@dataclass(frozen=True, slots=True)
class StrMap:
    """A YAML mapping of string to string, kept as a tuple of (key, value) pairs in order."""

    key: Pattern | None = None
    value: Pattern | Re2 | None = None
    casefold_keys: bool = False  # keys that differ only in case are duplicates (header names)
    what: str = "key"


@dataclass(frozen=True, slots=True)
class Unique:
    """List items must be unique (by the attribute `attr` of dataclass items, or by value)."""

    attr: str | None = None
    casefold: bool = False


@cache
def _re2_options() -> Any:
    """RE2 is imported on first use: a config without regexes (and the sidecar's memory)
    does not pay for it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # errors are reported by the loader, not logged to stderr
    return options


def re2_problem(pattern: str) -> str | None:
    """Why `pattern` is not a valid RE2 regex, or None if it compiles."""
    import re2

    try:
        re2.compile(pattern, _re2_options())
    except re2.error as exc:
        raw = exc.args[0] if exc.args else "invalid"
        reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        reason = reason.split(": ", 1)[0]
        return (
            f"invalid RE2 regex {quote(pattern)}: {reason} (expected RE2 syntax, "
            "see https://github.com/google/re2/wiki/Syntax)"
        )
    except (TypeError, ValueError) as exc:  # e.g. lone surrogates
        return f"invalid RE2 regex {quote(pattern)}: {exc} (expected RE2 syntax)"
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
DURATION_EXPECTED: Final = "a duration such as 250ms, 1.5s, 5m or 1h30m"


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("250ms", "1.5s", "1h30m"); None if malformed.

    One or more `<number><unit>` parts, units ns, us (µs), ms, s, m, h; no sign, no spaces.
    """
    pos, total = 0, 0.0
    if not text:
        return None
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if math.isfinite(total) else None


# -- converters ---------------------------------------------------------------------------------
class Conv:
    """Converts one YAML node to a value, recording errors in a `Cx`; INVALID on failure."""

    expected: str = "a value"

    def convert(self, node: Node, path: str, cx: Cx) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrong(self, node: Node, path: str, cx: Cx) -> Any:
        cx.error(node, path, f"got {describe(node)} (expected {self.expected})")
        return INVALID


class StrConv(Conv):
    __slots__ = ("check", "expected", "length", "pattern", "regex")

    def __init__(
        self, pattern: Pattern | None, regex: bool, length: Len | None, check: Check | None = None
    ) -> None:
        self.pattern, self.regex, self.length, self.check = pattern, regex, length, check
        if check is not None:
            self.expected = check.expected
        elif pattern is not None:
            self.expected = pattern.expected
        elif regex:
            self.expected = "an RE2 regular expression"
        elif length is not None and length.lo > 0:
            self.expected = "a non-empty string"
        else:
            self.expected = "a string"

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag == TAG_STR):
            return self.wrong(node, path, cx)
        value: str = node.value
        problem = None
        if self.length is not None:
            if len(value) < self.length.lo:
                problem = f"empty string (expected {self.expected})"
            elif self.length.hi is not None and len(value) > self.length.hi:
                problem = (
                    f"{quote(value)} is {len(value)} characters long (expected at most "
                    f"{self.length.hi})"
                )
        if problem is None and self.pattern is not None:
            problem = self.pattern.problem(value)
        if problem is None and self.regex:
            problem = re2_problem(value)
        if problem is None and self.check is not None:
            problem = self.check.test(value)
        if problem is not None:
            cx.error(node, path, problem)
            return INVALID
        return value


class IntConv(Conv):
    __slots__ = ("expected", "range")

    def __init__(self, rng: Range | None) -> None:
        self.range = rng
        bounds = rng.text() if rng else ""
        self.expected = f"an integer {bounds}".rstrip()

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag == TAG_INT):
            return self.wrong(node, path, cx)
        value = _int_value(node)
        if value is None:
            cx.error(
                node, path, f"invalid integer {quote(str(node.value))} (expected {self.expected})"
            )
            return INVALID
        if self.range is not None and not self.range.ok(value):
            cx.error(node, path, f"{value} is out of range (expected {self.expected})")
            return INVALID
        return value


class FloatConv(Conv):
    __slots__ = ("expected", "range")

    def __init__(self, rng: Range | None) -> None:
        self.range = rng
        bounds = rng.text() if rng else ""
        self.expected = f"a number {bounds}".rstrip()

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag in (TAG_INT, TAG_FLOAT)):
            return self.wrong(node, path, cx)
        num = _int_value(node) if node.tag == TAG_INT else _float_value(node)
        if num is None or not math.isfinite(num):
            cx.error(
                node, path, f"invalid number {quote(str(node.value))} (expected {self.expected})"
            )
            return INVALID
        value = float(num)
        if self.range is not None and not self.range.ok(value):
            cx.error(node, path, f"{node.value} is out of range (expected {self.expected})")
            return INVALID
        return value


class BoolConv(Conv):
    __slots__ = ()
    expected = "true or false"

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag == TAG_BOOL):
            return self.wrong(node, path, cx)
        value = _bool_value(node)
        if value is None:
            return self.wrong(node, path, cx)
        return value


class LiteralConv(Conv):
    __slots__ = ("expected", "values")

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        shown = [json.dumps(v) if v == "" else str(v) for v in values]
        self.expected = shown[0] if len(shown) == 1 else "one of: " + ", ".join(shown)

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if isinstance(node, ScalarNode) and node.tag == TAG_STR:
            value: Any = node.value
        elif isinstance(node, ScalarNode) and node.tag == TAG_INT:
            value = _int_value(node)
        else:
            return self.wrong(node, path, cx)
        for v in self.values:
            if type(v) is type(value) and v == value:
                return v
        if isinstance(value, str):
            cx.error(node, path, f"invalid value {quote(value)} (expected {self.expected})")
        else:
            cx.error(node, path, f"invalid value {node.value} (expected {self.expected})")
        return INVALID


class DurationConv(Conv):
    __slots__ = ("allow_zero", "expected")

    def __init__(self, marker: Duration) -> None:
        self.allow_zero = marker.allow_zero
        self.expected = (
            f"{DURATION_EXPECTED}; 0s disables"
            if marker.allow_zero
            else "a positive duration such as 250ms, 1.5s, 5m or 1h30m"
        )

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if isinstance(node, ScalarNode) and node.tag in (TAG_INT, TAG_FLOAT):
            cx.error(node, path, f"got {describe(node)} without a unit (expected {self.expected})")
            return INVALID
        if not (isinstance(node, ScalarNode) and node.tag == TAG_STR):
            return self.wrong(node, path, cx)
        value = parse_duration(node.value)
        if value is None:
            cx.error(node, path, f"invalid duration {quote(node.value)} (expected {self.expected})")
            return INVALID
        if value <= 0 and not (self.allow_zero and value == 0):
            cx.error(
                node,
                path,
                f"duration {quote(node.value)} is not positive (expected {self.expected})",
            )
            return INVALID
        return value


class OptionalConv(Conv):
    """`X | None`: YAML null is None (the dataclass layer treats null as omitted)."""

    __slots__ = ("expected", "inner")

    def __init__(self, inner: Conv) -> None:
        self.inner = inner
        self.expected = inner.expected

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if is_null(node):
            return None
        return self.inner.convert(node, path, cx)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ListConv(Conv):
    __slots__ = ("expected", "item", "length", "unique", "unique_yaml")

    def __init__(self, item: Conv, length: Len | None, unique: Unique | None) -> None:
        self.item, self.length, self.unique = item, length, unique
        self.unique_yaml: str | None = None
        if unique is not None and unique.attr is not None and isinstance(item, DataclassConv):
            self.unique_yaml = item.yaml_name(unique.attr)
        items = _plural_expected(item.expected)
        if length is not None and length.lo > 0:
            self.expected = f"a non-empty list{items}"
        else:
            self.expected = f"a list{items}"

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, SequenceNode) and node.tag == TAG_SEQ):
            return self.wrong(node, path, cx)
        n = len(node.value)
        ok = True
        if self.length is not None:
            if n < self.length.lo:
                cx.error(
                    node,
                    path,
                    f"{_plural(n, 'item')} (expected at least {_plural(self.length.lo, 'item')})",
                )
                ok = False
            elif self.length.hi is not None and n > self.length.hi:
                cx.error(
                    node,
                    path,
                    f"{_plural(n, 'item')} (expected at most {_plural(self.length.hi, 'item')})",
                )
                ok = False
        out: list[Any] = []
        for i, child in enumerate(node.value):
            v = self.item.convert(child, join(path, i), cx)
            if v is INVALID:
                ok = False
            out.append(v)
        if ok and self.unique is not None:
            ok = self._check_unique(node, out, path, cx)
        return tuple(out) if ok else INVALID

    def _check_unique(self, node: SequenceNode, values: list[Any], path: str, cx: Cx) -> bool:
        assert self.unique is not None
        attr, fold = self.unique.attr, self.unique.casefold
        seen: dict[Any, int] = {}
        ok = True
        for i, v in enumerate(values):
            value = getattr(v, attr) if attr is not None else v
            if value is None:
                continue
            key = value.lower() if fold and isinstance(value, str) else value
            sub: tuple[PathToken, ...] = (i, self.unique_yaml) if self.unique_yaml else (i,)
            if key in seen:
                target = locate(node, sub)
                first = line_of(locate(node, (seen[key], *sub[1:])))
                what = self.unique_yaml or "value"
                shown = quote(value) if isinstance(value, str) else str(value)
                cx.error(
                    target,
                    format_path(path, sub),
                    f"duplicate {what} {shown}, first at line {first} (expected unique {what}s)",
                )
                ok = False
            else:
                seen[key] = i
        return ok


def _plural_expected(text: str) -> str:
    """The tail of "a list..." for items described by `text`: " of strings", ", each ..."."""
    for article in ("an ", "a "):
        if text.startswith(article):
            head, sep, tail = text[len(article) :].partition(" ")
            if head in ("string", "integer", "number", "mapping", "duration"):
                return f" of {head}s{sep}{tail}"
            if head == "non-empty" and tail == "string":
                return " of non-empty strings"
    if text.startswith("one of: "):
        return f" of {text}"
    return f", each {text}"


class StrMapConv(Conv):
    __slots__ = ("expected", "marker", "value_conv")

    def __init__(self, marker: StrMap) -> None:
        self.marker = marker
        vpattern = marker.value if isinstance(marker.value, Pattern) else None
        self.value_conv = StrConv(vpattern, isinstance(marker.value, Re2), None)
        self.expected = f"a mapping of {marker.what} to {self.value_conv.expected}"

    def convert(self, node: Node, path: str, cx: Cx) -> Any:
        if not (isinstance(node, MappingNode) and node.tag == TAG_MAP):
            return self.wrong(node, path, cx)
        items = mapping_items(node, path, cx)
        ok = len(items) == len(node.value)
        seen: dict[str, int] = {}
        out: list[tuple[str, str]] = []
        for key, (knode, vnode) in items.items():
            kpath = join(path, key)
            if self.marker.key is not None:
                problem = self.marker.key.problem(key)
                if problem is not None:
                    cx.error(
                        knode,
                        kpath,
                        problem.replace("invalid value", f"invalid {self.marker.what}", 1),
                    )
                    ok = False
                    continue
            if self.marker.casefold_keys:
                folded = key.lower()
                if folded in seen:
                    cx.error(
                        knode,
                        kpath,
                        f"repeated {self.marker.what} (case-insensitive), "
                        f"first at line {seen[folded]} (expected each {self.marker.what} "
                        "once)",
                    )
                    ok = False
                    continue
                seen[folded] = line_of(knode)
            value = self.value_conv.convert(vnode, kpath, cx)
            if value is INVALID:
                ok = False
                continue
            out.append((key, value))
        return tuple(out) if ok else INVALID


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    yaml: str
    conv: Conv
    required: bool


class DataclassConv(Conv):
    """A YAML mapping → a frozen dataclass; unknown keys and missing required fields are errors."""

    __slots__ = ("by_yaml", "check", "cls", "expected", "fields")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: tuple[_Field, ...] = ()
        self.by_yaml: dict[str, _Field] = {}
        self.check: Callable[[Any], Iterable[Problem]] | None = None
        self.expected = "a mapping"

    def _build(self) -> None:
        hints = get_type_hints(self.cls, include_extras=True)
        fields: list[_Field] = []
        for f in dataclasses.fields(self.cls):
            tp = hints[f.name]
            extras = _EXTRA_MARKERS.get((self.cls, f.name), ())
            markers = (*_annotated_markers(tp), *extras)
            yaml_name = _camel(f.name)
            if f.name.endswith("_s") and any(isinstance(m, Duration) for m in markers):
                yaml_name = _camel(f.name[:-2])
            for m in markers:
                if isinstance(m, Yaml):
                    yaml_name = m.name
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields.append(_Field(f.name, yaml_name, _make_conv(tp, extras), required))
        self.fields = tuple(fields)
        self.by_yaml = {f.yaml: f for f in fields}
        self.expected = "a mapping with fields " + ", ".join(f.yaml for f in fields)
        own = getattr(self.cls, "_check", None)
        self.check = own if own is not None else _EXTRA_CHECKS.get(self.cls)

    def yaml_name(self, attr: str) -> str:
        for f in self.fields:
            if f.attr == attr:
                return f.yaml
        raise KeyError(attr)

    def field_names(self) -> tuple[str, ...]:
        """The YAML field names, in declaration order."""
        return tuple(f.yaml for f in self.fields)

    def convert(self, node: Node, path: str, cx: Cx, defaults: dict[str, Any] | None = None) -> Any:
        if not (isinstance(node, MappingNode) and node.tag == TAG_MAP):
            return self.wrong(node, path, cx)
        items = mapping_items(node, path, cx)
        ok = len(items) == len(node.value)
        for key, (knode, _) in items.items():
            if key not in self.by_yaml:
                cx.error(knode, join(path, key), self.unknown_message(key))
                ok = False
        kwargs: dict[str, Any] = {}
        for f in self.fields:
            entry = items.get(f.yaml)
            if entry is None or is_null(entry[1]):
                if defaults is not None and f.attr in defaults:
                    kwargs[f.attr] = defaults[f.attr]
                elif f.required:
                    where = entry[1] if entry is not None else node
                    cx.error(
                        where,
                        join(path, f.yaml),
                        f"missing required field (expected {f.conv.expected})",
                    )
                    ok = False
                continue
            value = f.conv.convert(entry[1], join(path, f.yaml), cx)
            if value is INVALID:
                ok = False
            else:
                kwargs[f.attr] = value
        if not ok:
            return INVALID
        obj = self.cls(**kwargs)
        if self.check is not None:
            for sub, message in self.check(obj):
                cx.error(locate(node, sub), format_path(path, sub), message)
                ok = False
        return obj if ok else INVALID

    def unknown_message(self, key: str) -> str:
        """`unknown field (did you mean x?)` or the list of fields."""
        close = difflib.get_close_matches(key, list(self.by_yaml), n=1, cutoff=0.6)
        if not close:
            lowered = {k.lower(): k for k in self.by_yaml}
            if key.lower() in lowered:
                close = [lowered[key.lower()]]
        if close:
            return f"unknown field (did you mean {close[0]}?)"
        return "unknown field (expected one of: " + ", ".join(self.by_yaml) + ")"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _annotated_markers(tp: Any) -> tuple[Any, ...]:
    """Markers of `Annotated[...]` at the top of `tp` or inside its `| None`."""
    if get_origin(tp) is Annotated:
        return tuple(tp.__metadata__) + _annotated_markers(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(m for a in get_args(tp) for m in _annotated_markers(a))
    return ()


_EXTRA_MARKERS: dict[tuple[type, str], tuple[Any, ...]] = {}
_EXTRA_CHECKS: dict[type, Callable[[Any], Iterable[Problem]]] = {}


def annotate(cls: type, attr: str, *markers: Any) -> None:
    """Add markers to a field of a dataclass defined elsewhere (model.py)."""
    if attr not in {f.name for f in dataclasses.fields(cls)}:
        raise AttributeError(f"{cls.__name__} has no field {attr!r}")
    _EXTRA_MARKERS[(cls, attr)] = _EXTRA_MARKERS.get((cls, attr), ()) + markers


def add_check(cls: type, check: Callable[[Any], Iterable[Problem]]) -> None:
    """Register the cross-field check of a dataclass defined elsewhere (model.py)."""
    _EXTRA_CHECKS[cls] = check


_DATACLASS_CONVS: dict[type, DataclassConv] = {}


def converter(cls: type) -> DataclassConv:
    """The (cached) converter for a dataclass."""
    conv = _DATACLASS_CONVS.get(cls)
    if conv is None:
        conv = DataclassConv(cls)
        _DATACLASS_CONVS[cls] = conv  # before building, so self-references terminate
        conv._build()
    return conv


def _make_conv(tp: Any, extras: tuple[Any, ...] = ()) -> Conv:
    markers = list(extras)
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            markers.extend(tp.__metadata__)
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"unsupported union {tp!r}")
            return OptionalConv(_make_conv(args[0], tuple(markers)))
        break

    def marker(kind: type) -> Any:
        for m in markers:
            if isinstance(m, kind):
                return m
        return None

    smap = marker(StrMap)
    if smap is not None:
        return StrMapConv(smap)
    if tp is str:
        return StrConv(marker(Pattern), marker(Re2) is not None, marker(Len), marker(Check))
    if tp is bool:
        return BoolConv()
    if tp is int:
        return IntConv(marker(Range))
    if tp is float:
        duration = marker(Duration)
        return DurationConv(duration) if duration is not None else FloatConv(marker(Range))
    if get_origin(tp) is Literal:
        return LiteralConv(get_args(tp))
    if get_origin(tp) is tuple:
        targs = get_args(tp)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise TypeError(f"unsupported tuple type {tp!r}")
        item_markers = tuple(m for m in markers if not isinstance(m, Len | Unique))
        return ListConv(_make_conv(targs[0], item_markers), marker(Len), marker(Unique))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return converter(tp)
    raise TypeError(f"unsupported field type {tp!r}")
