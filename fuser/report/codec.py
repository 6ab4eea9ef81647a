"""The one serializer of the report: typed sections (dataclasses) to JSON-safe values, and JSON back to the types.

    to_json(report)                          -> a dict json.dumps writes as strict JSON
    from_json(Report, data, sections=...)    -> a Report, or FieldError naming the field that does not fit

A dataclass is written field by field in declaration order. Nested dataclasses, lists, tuples, sets (sorted), dicts,
NamedTuples (as objects) and Paths (as strings) follow; bytes (names protobuf handed back that are not UTF-8) become
text with \\xNN escapes, NaN and infinities become null. Field metadata says where a field differs:

    {"json": False}          run state, never written nor read (a near miss's node ids)
    {"digits": 6}            a float written rounded (times)
    {"omit_default": True}   left out while it equals its default (statistics that apply only sometimes)
    {"null": False | True}   whether null is a value it takes in JSON; by default a type with None takes null
                             unless it is left out while None (then None only means "absent")
    {"required": True}       a document must have it, although a new object starts with its default
    {"sections": True}       a dict of sections, each written at the top level under its type's `key`

Reading checks each value against its annotation, in declaration order, and the first that does not fit is the
error: "field fusions[0].rule: expected string, got array", "field validation: 'outputs' is missing". A field with a
default may be absent: it reads as null when it may be null (not recorded), else as its default. Keys no type
declares are ignored (what a newer fuser added).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union


class FieldError(ValueError):
    """A value read from JSON does not fit its type; `field` is its path ("validation.outputs.y.max_abs")."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field or '(top level)'}: {problem}")
        self.field = field


# ---------------------------------------------------------------------------------------------- writing

def to_json(value: Any) -> Any:
    """`value` as JSON-safe data: dicts with string keys, lists, str, int, float (finite), bool and None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("json") is False:
                continue
            item = getattr(value, f.name)
            if f.metadata.get("sections"):
                out.update((key, to_json(section)) for key, section in item.items())
                continue
            if f.metadata.get("omit_default") and item == _default(f) or item is None and not takes_null(f):
                continue  # left out: a reader takes its absence for the default (or "not recorded")
            if "digits" in f.metadata and isinstance(item, float) and math.isfinite(item):
                item = round(item, f.metadata["digits"])
            out[f.name] = to_json(item)
        return out
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return {name: to_json(item) for name, item in zip(value._fields, value)}
    if isinstance(value, Mapping):
        return {_text(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [to_json(v) for v in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, Path)):
        return _text(value)
    return value


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# ---------------------------------------------------------------------------------------------- reading

def from_json(kind: type, data: Any, sections: Mapping[str, type] | None = None, where: str = "") -> Any:
    """`data` (parsed JSON) as an instance of the dataclass `kind`; `sections` maps the keys of a field marked
    "sections" to their types. Raises FieldError naming the first field that does not fit."""
    if not isinstance(data, dict):
        raise FieldError(where, f"expected object, got {json_type(data)}")
    hints = type_hints(kind)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        if not f.init or f.metadata.get("json") is False:
            continue
        if f.metadata.get("sections"):
            values[f.name] = {key: read(section, data[key], _at(where, key))
                              for key, section in (sections or {}).items() if key in data}
            continue
        if f.name not in data:
            if _default(f) is dataclasses.MISSING or f.metadata.get("required"):
                raise FieldError(where, f"'{f.name}' is missing")
            if nullable(hints[f.name]):
                values[f.name] = None  # not recorded, which may differ from the default (an empty list)
            continue
        tp = hints[f.name]
        if data[f.name] is None and nullable(tp) and not takes_null(f):
            tp = without_none(tp)  # null is not a value of this field: an error below
        values[f.name] = read(tp, data[f.name], _at(where, f.name))
    try:
        return kind(**values)
    except (ValueError, TypeError) as exc:  # the type's own checks (__post_init__)
        raise FieldError(where, str(exc)) from None


def read(tp: Any, value: Any, where: str) -> Any:
    """`value` as the annotated type `tp` (see from_json)."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        fitting = [a for a in args if a is not type(None) and _fits(a, value)]
        if not fitting:
            raise FieldError(where, f"expected {' or '.join(sorted({kind_name(a) for a in args}))}, "
                                    f"got {json_type(value)}")
        problems = []
        for option in fitting:  # list[int] | list[list[int]]: the first whose contents fit
            try:
                return read(option, value, where)
            except FieldError as exc:
                problems.append(exc)
        raise problems[0]
    if origin is Literal:
        if not _fits(tp, value):
            raise FieldError(where, f"expected one of {', '.join(map(repr, args))}, got {_short(value)}")
        return value
    if not _fits(tp, value):
        raise FieldError(where, f"expected {kind_name(tp)}, got {json_type(value)}")
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where=where)
    if is_named_tuple(tp):
        hints = type_hints(tp)
        for name in tp._fields:
            if name not in value:
                raise FieldError(where, f"'{name}' is missing")
        return tp(**{name: read(hints[name], value[name], _at(where, name)) for name in tp._fields})
    if origin in (dict, Mapping) or tp is dict:
        item = args[1] if args else Any
        return {k: read(item, v, _at(where, k)) for k, v in value.items()}
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        item = args[0] if args else Any
        items = [read(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return (origin or tp)(items) if (origin or tp) is not list else items
    if tp is float:
        return float(value)
    if tp is Path:
        return Path(value)
    return value


def is_named_tuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def takes_null(f: dataclasses.Field) -> bool:
    """Whether JSON null is a value of this field (see the metadata above)."""
    return f.metadata.get("null", not f.metadata.get("omit_default"))


def without_none(tp: Any) -> Any:
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    return options[0] if len(options) == 1 else Union[tuple(options)]


def _fits(tp: Any, value: Any) -> bool:
    """Whether `value` has the JSON kind `tp` takes (its contents are checked by `read`)."""
    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) or is_named_tuple(tp):
        return isinstance(value, dict)
    kind = origin or tp
    if kind in (dict, Mapping):
        return isinstance(value, dict)
    if kind in (list, tuple, set, frozenset):
        return isinstance(value, list)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, Path):
        return isinstance(value, str)
    if kind is type(None):
        return value is None
    raise TypeError(f"the report codec cannot read {tp!r}")


def kind_name(tp: Any) -> str:
    """The JSON kind of a type, as error messages and the schema say it."""
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp) or is_named_tuple(tp) or origin in (dict, Mapping):
        return "object"
    if origin is Literal:
        return " or ".join(sorted({json_type(a) for a in typing.get_args(tp)}))
    return {list: "array", tuple: "array", set: "array", frozenset: "array", bool: "boolean", int: "integer",
            float: "number", str: "string", Path: "string", type(None): "null"}.get(origin, "any value")


def json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_IDENTIFIER = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")


def _at(where: str, key: str) -> str:
    """The path of `key` inside `where`: validation.outputs.y, or rules['odd name'] for keys that are not names."""
    if _IDENTIFIER.match(key):
        return f"{where}.{key}" if where else key
    return f"{where}['{key}']"


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(kind: type) -> dict[str, Any]:
    if kind not in _HINTS:
        _HINTS[kind] = typing.get_type_hints(kind)
    return _HINTS[kind]
