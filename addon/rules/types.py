"""The types the rules file is described with, as data: `Type`, what each must give (`check`, `describe`,
`json_schema`), and the values that are not structures: scalars (`Str`, `Choice`, `Bool`, `Number`,
`Int`), `Nullable`, and `JsonValue` (any JSON value, kept as a `JsonLiteral`). Semantic checks (globs,
placeholders, filters) plug in as `convert` callables that raise `ValueError`; the check adds the location.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from addon.rules.schema import (
    BOOL_TAG, FLOAT_TAG, INT_TAG, NULL_TAG, STR_TAG, At, RulesError, gather, mapping_pairs, raise_if,
)  # fmt: skip


class Type:
    """One kind of value in the schema."""

    def check(self, at: At) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        """The same type in JSON Schema, for editors (semantic checks such as globs stay with the loader)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Scalar(Type):
    """A YAML scalar of one of the given tags, optionally converted."""

    tags: tuple[str, ...]
    what: str
    convert: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, at: At) -> Any:
        if not isinstance(at.node, yaml.ScalarNode) or at.node.tag not in self.tags:
            at.fail(f"expected {self.describe()}, got {at.kind()}")
        value = yaml.constructor.SafeConstructor().construct_object(at.node)
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            at.fail(f"expected one of {', '.join(map(str, self.choices))}; got {value!r}{hint}")
        if self.convert is None:
            return value
        try:
            return self.convert(value)
        except ValueError as e:
            at.fail(str(e))

    def describe(self) -> str:
        return self.what

    def json_schema(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"enum": list(self.choices)}
        types = sorted({_JSON_TYPE[t] for t in self.tags})
        schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if self.what not in ("a string", "true or false", "a number", "a whole number"):
            schema["description"] = self.what
        return schema


_JSON_TYPE = {STR_TAG: "string", BOOL_TAG: "boolean", INT_TAG: "integer", FLOAT_TAG: "number"}


def Str(convert: Callable[[str], Any] | None = None, what: str = "a string") -> Scalar:
    return Scalar((STR_TAG,), what, convert)


def Choice(*choices: str) -> Scalar:
    return Scalar((STR_TAG,), "one of " + ", ".join(choices), choices=choices)


Bool = Scalar((BOOL_TAG,), "true or false")


def Number(minimum: float = 0) -> Scalar:
    def at_least(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {v}")
        if v < minimum:
            raise ValueError(f"expected a number of at least {minimum}, got {v}")
        return v

    return Scalar((INT_TAG, FLOAT_TAG), "a number", at_least)


def Int(minimum: int = 0) -> Scalar:
    def at_least(v: int) -> int:
        if v < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}, got {v}")
        return v

    return Scalar((INT_TAG,), "a whole number", at_least)


@dataclass(frozen=True)
class Nullable(Type):
    """`null`, or the inner type."""

    inner: Type

    def check(self, at: At) -> Any:
        if isinstance(at.node, yaml.ScalarNode) and at.node.tag == NULL_TAG:
            return None
        if isinstance(at.node, yaml.ScalarNode) and at.node.tag in (INT_TAG, FLOAT_TAG, BOOL_TAG):
            at.fail(f"expected {self.describe()}, got {at.kind()} (quote it to make it a string)")
        if not isinstance(at.node, yaml.ScalarNode):
            at.fail(f"expected {self.describe()}, got {at.kind()}")
        return self.inner.check(at)

    def describe(self) -> str:
        return f"{self.inner.describe()} or null"

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.json_schema(), {"type": "null"}]}


@dataclass(frozen=True)
class JsonLiteral:
    """A JSON value other than a string with placeholders, as the rules file wrote it (kept as its
    JSON text, so that every use gets an object of its own that later edits may change)."""

    text: str

    def value(self) -> Any:
        return json.loads(self.text) if self.text[:1] in ("[", "{") else self._scalar

    @functools.cached_property
    def _scalar(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True)
class JsonValue(Type):
    """Any JSON value, written in YAML: `null` (None: remove), a string (the inner type: a template), or
    a number, boolean, list or mapping (a JsonLiteral, whose strings are taken as written)."""

    string: Type

    def check(self, at: At) -> Any:
        node = at.node
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return None
        if isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG:
            return self.string.check(at)
        return JsonLiteral(json.dumps(self._plain(at), ensure_ascii=False, separators=(",", ":")))

    def _plain(self, at: At) -> Any:
        node = at.node
        if isinstance(node, yaml.SequenceNode):
            errors: list[RulesError] = []
            items = [gather(errors, lambda i=i, n=n: self._plain(at.index(i, n))) for i, n in enumerate(node.value)]
            raise_if(errors)
            return items
        if isinstance(node, yaml.MappingNode):
            errors = []
            out = {name: gather(errors, lambda child=child: self._plain(child)) for name, _, child in mapping_pairs(at)}
            raise_if(errors)
            return out
        if isinstance(node, yaml.ScalarNode) and node.tag in (STR_TAG, NULL_TAG, BOOL_TAG, INT_TAG, FLOAT_TAG):
            value = yaml.constructor.SafeConstructor().construct_object(node)
            if isinstance(value, float) and not math.isfinite(value):
                at.fail(f"expected a finite number, got {value} (JSON has no such number)")
            return value
        at.fail(f"expected {self.describe()}, got {at.kind()}")

    def describe(self) -> str:
        return "a JSON value (a string, number, true or false, list, mapping or null)"

    def json_schema(self) -> dict[str, Any]:
        return {"type": ["string", "number", "boolean", "array", "object", "null"]}
