"""The report's JSON Schema, generated from its types: fuser/schema/report.schema.json is this, checked in for tools
that validate reports without fuser (a test keeps the two equal).

    python -m fuser.report.schema           rewrite fuser/schema/report.schema.json from the types
    python -m fuser.report.schema --check   exit 1 when the checked-in file differs

Each dataclass is a definition (`$defs`) with its docstring as description; a field without a default, or marked
"required", is required; the metadata key "schema" adds keywords ({"pattern": ...}). Objects allow other keys: a
reader ignores what a newer fuser added.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from .codec import is_named_tuple, kind_name, nullable, takes_null, type_hints, without_none
from .document import SCHEMA_VERSION, Report

CHECKED_IN = "schema/report.schema.json"  # inside the fuser package


def report_schema(sections: Iterable[type]) -> dict:
    """The JSON Schema of a report holding these section types (beyond the core)."""
    defs: dict[str, dict] = {}
    root = _object(Report, defs, {kind.key: kind for kind in sections})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://fuser.invalid/schema/report-{SCHEMA_VERSION}.json",
            "title": "fuser report",
            "description": ("A fuser report, as fuser.report.codec.to_json writes it. schema_version changes with "
                            "fuser.report.SCHEMA_VERSION: the minor number when fields are added, the major number "
                            "when a field changes meaning or is removed. Generated from the types by "
                            "`python -m fuser.report.schema`; see docs/report.md."),
            **{k: v for k, v in root.items() if k != "description"},
            "$defs": dict(sorted(defs.items()))}


def checked_in() -> dict:
    return json.loads(resources.files("fuser").joinpath(CHECKED_IN).read_text())


def text(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _object(kind: type, defs: dict, sections: Mapping[str, type] | None = None) -> dict:
    hints = type_hints(kind)
    properties: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(kind):
        if f.metadata.get("json") is False:
            continue
        if f.metadata.get("sections"):
            properties.update((key, _type(section, defs)) for key, section in (sections or {}).items())
            continue
        tp = hints[f.name] if takes_null(f) or not nullable(hints[f.name]) else without_none(hints[f.name])
        properties[f.name] = {**_type(tp, defs), **f.metadata.get("schema", {})}
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if not has_default or f.metadata.get("required"):
            required.append(f.name)
    out: dict[str, Any] = {"type": "object"}
    doc = " ".join((kind.__doc__ or "").split())
    if doc and not doc.startswith(f"{kind.__name__}("):  # not the signature dataclass writes when there is none
        out["description"] = doc
    out["properties"] = properties
    if required:
        out["required"] = required
    return out


def _type(tp: Any, defs: dict) -> dict:
    if tp is Any or tp is object:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        branches = [_type(a, defs) for a in args]
        if all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
            return {"type": sorted({b["type"] for b in branches})}
        return {"anyOf": branches}
    if origin is Literal:
        return {"enum": list(args)}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder: a type may refer to itself
            defs[tp.__name__] = _object(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if is_named_tuple(tp):
        hints = type_hints(tp)
        return {"type": "object", "properties": {n: _type(hints[n], defs) for n in tp._fields},
                "required": list(tp._fields)}
    if origin in (dict, Mapping):
        return {"type": "object", "additionalProperties": _type(args[1], defs)}
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": _type(args[0], defs)}
    name = kind_name(tp)
    return {} if name == "any value" else {"type": name}


def main(argv: list[str]) -> int:
    from fuser.report.audit import report_sections  # the passes' sections and the audit's, chosen outside the core

    generated = text(report_schema(report_sections()))
    path = Path(str(resources.files("fuser").joinpath(CHECKED_IN)))
    if "--check" in argv:
        if path.read_text() != generated:
            print(f"{path} differs from the report's types: run `python -m fuser.report.schema`", file=sys.stderr)
            return 1
        return 0
    path.write_text(generated)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
