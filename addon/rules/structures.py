"""The structures of the rules file's types: lists (`SeqOf`), mappings with free keys (`MapOf`),
records with fixed keys (`Field`, `Record`, built into objects), and one record or a mapping of names
to them (`OneOrNamed`, `names_one`). Each gathers every problem of its items before it raises.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from addon.rules.schema import At, RulesError, gather, mapping_pairs, raise_if
from addon.rules.types import Type


@dataclass(frozen=True)
class SeqOf(Type):
    """A list of the inner type; `single=True` also takes one bare value."""

    inner: Type
    single: bool = False
    min_items: int = 0

    def check(self, at: At) -> tuple[Any, ...]:
        if isinstance(at.node, yaml.SequenceNode):
            errors: list[RulesError] = []
            items = tuple(
                gather(errors, lambda i=i, n=n: self.inner.check(at.index(i, n))) for i, n in enumerate(at.node.value)
            )
            raise_if(errors)
            if len(items) < self.min_items:
                at.fail(f"expected at least {self.min_items} item(s), got {len(items)}")
            return items
        if self.single:
            return (self.inner.check(at),)
        at.fail(f"expected {self.describe()}, got {at.kind()}")

    def describe(self) -> str:
        many = f"a list of {self.inner.describe()}"
        return f"{self.inner.describe()} or {many}" if self.single else many

    def json_schema(self) -> dict[str, Any]:
        many: dict[str, Any] = {"type": "array", "items": self.inner.json_schema()}
        if self.min_items:
            many["minItems"] = self.min_items
        return {"anyOf": [self.inner.json_schema(), many]} if self.single else many


@dataclass(frozen=True)
class MapOf(Type):
    """A mapping with free keys (header or cookie names): returns (key, value) pairs in order."""

    value: Type
    key_check: Callable[[str], str] | None = None
    what: str = "a mapping"

    def check(self, at: At) -> tuple[tuple[str, Any], ...]:
        out = []
        errors: list[RulesError] = []
        for name, key_at, child in mapping_pairs(at):
            if self.key_check is not None:
                try:
                    name = self.key_check(name)
                except ValueError as e:
                    errors.append(key_at.error(str(e)))
                    continue
            out.append((name, gather(errors, lambda child=child: self.value.check(child))))
        raise_if(errors)
        return tuple(out)

    def describe(self) -> str:
        return self.what

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object", "description": self.what, "additionalProperties": self.value.json_schema()}


@dataclass(frozen=True)
class Field:
    type: Type
    required: bool = False
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Record(Type):
    """A mapping with a fixed set of keys, built into an object by `build`.

    `build(values, at)` gets every field (defaults filled in) and the record's
    own location, so cross-field checks can point at the right key with
    `at.key(name, ...)` or `at.fail(...)`.
    """

    name: str
    fields: Mapping[str, Field]
    build: Callable[[dict[str, Any], At, dict[str, At]], Any] = field(
        default=lambda values, at, where: values
    )

    def check(self, at: At) -> Any:
        pairs = mapping_pairs(at)
        values: dict[str, Any] = {}
        where: dict[str, At] = {}
        errors: list[RulesError] = []
        for name, key_at, child in pairs:
            spec = self.fields.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, list(self.fields), 1)
                hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(self.fields)
                errors.append(At(at.file, key_at.node, at.path).error(f"unknown key {name!r} ({hint})"))
                continue
            values[name] = gather(errors, lambda spec=spec, child=child: spec.type.check(child))
            where[name] = child
        for name, spec in self.fields.items():
            if name not in values:
                if spec.required:
                    errors.append(at.error(f"missing required key {name!r}"))
                values[name] = spec.default
        raise_if(errors)  # cross-field checks in `build` need every field good
        return self.build(values, at, where)

    def describe(self) -> str:
        return f"a mapping ({self.name})"

    def json_schema(self) -> dict[str, Any]:
        properties = {}
        for name, spec in self.fields.items():
            prop = spec.type.json_schema()
            if spec.doc:
                prop = {**prop, "description": spec.doc}
            properties[name] = prop
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [name for name, spec in self.fields.items() if spec.required]
        if required:
            schema["required"] = required
        return schema


def names_one(node: yaml.Node | None, keys: frozenset[str]) -> bool:
    """Is this mapping one record with these keys (it has one of them, or none at all, or a value
    that is not a mapping: a key misspelled), rather than a mapping of names to such records? What
    OneOrNamed decides, for a reader that looks ahead."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        return True
    return any((isinstance(k, yaml.ScalarNode) and k.value in keys) or not isinstance(v, yaml.MappingNode)
               for k, v in node.value)


@dataclass(frozen=True)
class OneOrNamed(Type):
    """One record, or a mapping of names to such records (`tokens: {file: …}` or
    `tokens: {arena: {file: …}, openai: {file: …}}`): a mapping with any of the record's keys is the
    one. Returns (name, built record) pairs in order; the one record's name is None."""

    record: Record
    key_check: Callable[[str], str]
    what: str  # of the names, like "a pool name"

    def check(self, at: At) -> tuple[tuple[str | None, Any], ...]:
        if names_one(at.node, frozenset(self.record.fields)):
            return ((None, self.record.check(at)),)
        return MapOf(self.record, self.key_check, f"a mapping of {self.what}s to {self.record.describe()}s").check(at)

    def describe(self) -> str:
        return f"{self.record.describe()}, or a mapping of {self.what}s to them"

    def json_schema(self) -> dict[str, Any]:
        one = self.record.json_schema()
        return {"anyOf": [one, {"type": "object", "description": f"{self.what}s and their {self.record.name}",
                                "minProperties": 1, "additionalProperties": one}]}
