"""The rules file's reference in Markdown (`mitm-rules reference > docs/reference.md`), from the loader's own
definitions: each key's type and whether it is required from `json_schema()`, its doc from the `doc=` of
its `Field` (the JSON Schema's `description`), and its default from the same `Field`. A test keeps
docs/reference.md equal to what this renders.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from addon.rules.config import json_schema
from addon.rules.sections import rules_schema

HEADER = """\
# Rules file reference

Every key of the rules file, with its type, its default and what it does. Generated from the
loader's own definitions by `mitm-rules reference > docs/reference.md` (a test fails when this file
is stale); the same definitions give `rules.schema.json` (`mitm-rules schema`). A key not listed is
an error; `mitm-rules check` names the nearest valid one. The guide, with examples:
[rules.md](rules.md).

Types: *string*, *whole number*, *number* (whole or not), *true/false*; *X, or a list of them* takes
one X or a list; a *mapping of names to X* has keys of your choosing. `NAME` in a section's name
stands for such a key, and `[]` for each item of a list.
"""

_SCALARS = {"string": "string", "integer": "whole number", "number": "number", "boolean": "true/false",
            "null": "null", "array": "list", "object": "mapping"}  # fmt: skip
_ANY_JSON = {"string", "number", "boolean", "array", "object", "null"}


def render() -> str:
    """docs/reference.md, as text ending in a line break."""
    schema = json_schema()
    defaults = dict(_defaults(rules_schema(Path("."), Path("rules.yaml"), {}), ""))
    sections = list(_sections(schema, "", "The file"))
    out = [HEADER]
    for path, title, record in sections:
        out.append(f"## {title}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        required = set(record.get("required", ()))
        for key, prop in record["properties"].items():
            where = _join(path, key)
            default = "required" if key in required else _default(defaults.get(where))
            doc = _text(prop.get("description", ""))
            out.append(f"| `{key}` | {_cell(_type(prop, where))} | {_cell(default)} | {_cell(doc)} |")
        out.append("")
    return "\n".join(out)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _record_of(prop: dict[str, Any], path: str) -> tuple[str, dict[str, Any]] | None:
    """The record (a mapping with fixed keys) a property holds, and the name of its section."""
    if "properties" in prop:
        return path, prop
    if prop.get("type") == "array" and "properties" in prop.get("items", {}):
        return f"{path}[]", prop["items"]
    extra = prop.get("additionalProperties")
    if prop.get("type") == "object" and isinstance(extra, dict) and "properties" in extra:
        return f"{path}.NAME", extra
    one = _one_or_named(prop)
    if one is not None:
        return path, one
    return None


def _one_or_named(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a key that is one such record or a mapping of names to them (`tokens:`)."""
    options = prop.get("anyOf", ())
    if len(options) == 2 and "properties" in options[0] and options[1].get("additionalProperties") == options[0]:
        return options[0]
    return None


def _sections(record: dict[str, Any], path: str, title: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section name, its heading, the record) for this record and those in it, in order."""
    yield path, title, record
    for key, prop in record["properties"].items():
        inner = _record_of(prop, _join(path, key))
        if inner is not None:
            named = f", or each `{inner[0]}.NAME`" if _one_or_named(prop) is not None else ""
            yield from _sections(inner[1], inner[0], f"`{inner[0]}`{named}")


def _type(prop: dict[str, Any], path: str, own: bool = False) -> str:
    """A property's type in words; `own`: its description names its type (a nested schema's does; a
    key's is the key's doc)."""
    inner = _record_of(prop, path)
    if inner is not None:
        section = f"`{inner[0]}`"
        if _one_or_named(prop) is not None:
            return f"mapping (see {section}), or a mapping of names to such mappings"
        if inner[0].endswith("[]"):
            return f"list of mappings (see {section})"
        if inner[0].endswith(".NAME"):
            return f"mapping of names to mappings (see {section})"
        return f"mapping (see {section})"
    if "enum" in prop:
        choices = [f"`{v}`" for v in prop["enum"]]
        return " or ".join(choices) if len(choices) < 3 else f"one of {', '.join(choices)}"
    if "anyOf" in prop:
        options = prop["anyOf"]
        if len(options) == 2 and options[1].get("type") == "array" and options[1].get("items") == options[0]:
            least = " (at least one)" if options[1].get("minItems") else ""
            return f"{_type(options[0], path, True)}, or a list of them{least}"
        return " or ".join(_type(o, path, True) for o in options)
    kind = prop.get("type")
    if isinstance(kind, list):
        if set(kind) == _ANY_JSON:
            return "any JSON value"
        if set(kind) == {"integer", "number"}:
            return "number"
        return " or ".join(_SCALARS[k] for k in kind)
    if kind == "array":
        return f"list of {_type(prop['items'], path, True)}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping of names to {_type(prop['additionalProperties'], path, True)}"
    what = prop.get("description") if own else None
    if what:
        return what.removeprefix("a ").removeprefix("an ")
    return _SCALARS[kind]


def _defaults(kind: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(section path.key, default) of every field, by the section names `_sections` gives."""
    if hasattr(kind, "fields"):  # a Record
        for key, field in kind.fields.items():
            where = _join(path, key)
            yield where, field.default
            yield from _defaults(field.type, where)
    elif hasattr(kind, "record"):  # one record, or a mapping of names to them
        yield from _defaults(kind.record, path)
    elif hasattr(kind, "value") and hasattr(kind, "key_check"):  # a MapOf
        yield from _defaults(kind.value, f"{path}.NAME")
    elif hasattr(kind, "single"):  # a SeqOf
        yield from _defaults(kind.inner, f"{path}[]")


def _default(value: Any) -> str:
    """A default as the rules file would write it; empty for none (or a mapping whose keys list theirs)."""
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float, str)):
        return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return f"`{'.'.join(value)}`"  # a dotted path, kept split
    if isinstance(value, tuple) and all(hasattr(v, "statuses") and hasattr(v, "action") for v in value):
        return "`[" + ", ".join(_response_rule(r) for r in value) + "]`"  # on_response
    return ""


def _response_rule(rule: Any) -> str:
    statuses = sorted(rule.statuses)
    match = [f"status: {statuses[0] if len(statuses) == 1 else list(statuses)}"]
    match += [f"{key}: {getattr(rule, key).pattern!r}" for key in ("body", "first_event") if getattr(rule, key, None)]
    return f"{{match: {{{', '.join(match)}}}, action: {rule.action}}}"


def _text(doc: str) -> str:
    return doc.replace("*", "\\*")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
