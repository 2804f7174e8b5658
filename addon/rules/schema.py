"""A small declarative validator for YAML documents that keeps line numbers.

The rules file is described as data (`Record`, `Str`, `SeqOf`, ...). Checking a
document walks PyYAML's node tree, so every error can name the file, the line,
the column and the path to the value (`rules[2].headers.Accept`), in the manner
of pre-commit's cfgv. Semantic checks (globs, placeholders, filters) plug in as
`convert` callables that raise `ValueError`; the validator adds the location.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"

_KIND = {
    _STR: "a string",
    _NULL: "null",
    _BOOL: "a boolean",
    _INT: "a number",
    _FLOAT: "a number",
    "tag:yaml.org,2002:seq": "a list",
    "tag:yaml.org,2002:map": "a mapping",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}


class RulesError(ValueError):
    """A problem in a configuration file, with its location."""

    def __init__(self, file: str, line: int, column: int, problem: str) -> None:
        self.file, self.line, self.column, self.problem = file, line, column, problem
        super().__init__(f"{file}:{line}:{column}: {problem}")


class RulesErrors(RulesError):
    """Several problems at once: reads as the first, and `errors` lists them all in file order."""

    def __init__(self, errors: list[RulesError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.line, e.column))
        first = self.errors[0]
        super().__init__(first.file, first.line, first.column, first.problem)


def _gather(errors: list[RulesError], check: Callable[[], Any]) -> Any:
    """Run one check, collecting its problems instead of stopping at them."""
    try:
        return check()
    except RulesErrors as e:
        errors.extend(e.errors)
    except RulesError as e:
        errors.append(e)
    return None


def _raise_if(errors: list[RulesError]) -> None:
    if errors:
        raise RulesErrors(errors)


@dataclass(frozen=True)
class At:
    """A node of the document, with the file it came from and its path."""

    file: str
    node: yaml.Node | None
    path: str = ""

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1 if self.node else 1

    @property
    def column(self) -> int:
        return self.node.start_mark.column + 1 if self.node else 1

    def error(self, problem: str) -> RulesError:
        where = f"{self.path}: " if self.path else ""
        return RulesError(self.file, self.line, self.column, where + problem)

    def fail(self, problem: str) -> NoReturn:
        raise self.error(problem)

    def kind(self) -> str:
        return _KIND.get(self.node.tag, self.node.tag) if self.node else "nothing"

    def key(self, name: str, node: yaml.Node) -> At:
        return At(self.file, node, f"{self.path}.{name}" if self.path else name)

    def index(self, i: int, node: yaml.Node) -> At:
        return At(self.file, node, f"{self.path}[{i}]")


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml, when PyYAML was built with it

MAX_DEPTH = 64  # collections inside collections; a rules file needs about 6
MAX_ALIAS_NODES = 100_000  # values that aliases (*name) may add to the document, all aliases together


class _Limit(Exception):
    """The document passes one of the bounds above, at `mark`."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree, built here from the parser's events without recursion, so that no
    nesting can overflow a stack (PyYAML's own composer recurses once per level, in C with libyaml:
    50,000 levels crashed the process). It stops at the first collection past MAX_DEPTH and the first
    alias past MAX_ALIAS_NODES, before the parser has read much further (libyaml's scanner slows down
    with the square of the nesting). libyaml's parser when there is one (faster on a large file); on
    any error the pure-Python one runs again so that messages keep their wording.
    """
    if _FAST_LOADER is not None:
        try:
            return _compose_events(_FAST_LOADER(text))
        except yaml.YAMLError:
            pass
    return _compose_events(yaml.SafeLoader(text))


class _Open:
    """A collection being composed: its node, how many values it holds (counting what aliases
    in it expand to), its anchor, and a mapping's key waiting for its value."""

    __slots__ = ("node", "size", "anchor", "key")

    def __init__(self, node: yaml.CollectionNode, anchor: str | None) -> None:
        self.node, self.size, self.anchor, self.key = node, 1, anchor, None


def _compose_events(loader) -> yaml.Node | None:
    """The nodes of the one document in the stream; they carry start marks only (the schema reports
    those, and an end mark per node costs memory)."""
    try:
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        document = loader.get_event()
        anchors: dict[str, tuple[yaml.Node, int]] = {}
        open_: list[_Open] = []
        root: list[yaml.Node] = []
        via_aliases = 0

        def attach(node: yaml.Node, size: int) -> None:
            if not open_:
                root.append(node)
                return
            parent = open_[-1]
            parent.size += size
            if isinstance(parent.node, yaml.SequenceNode):
                parent.node.value.append(node)
            elif parent.key is None:
                parent.key = node
            else:
                parent.node.value.append((parent.key, node))
                parent.key = None

        while True:
            event = loader.get_event()
            if isinstance(event, yaml.DocumentEndEvent):
                break
            if isinstance(event, yaml.CollectionEndEvent):
                done = open_.pop()
                if done.anchor is not None:
                    anchors[done.anchor] = (done.node, done.size)
                attach(done.node, done.size)
            elif isinstance(event, yaml.AliasEvent):
                if any(o.anchor == event.anchor for o in open_):
                    raise _Limit(f"the alias *{event.anchor} is inside the value it names", event.start_mark)
                if event.anchor not in anchors:
                    raise yaml.composer.ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                    )
                node, size = anchors[event.anchor]
                via_aliases += size
                if via_aliases > MAX_ALIAS_NODES:
                    raise _Limit(
                        f"with the alias *{event.anchor}, aliases add more than {MAX_ALIAS_NODES:,} values to the "
                        "document (each alias counts every value in what it names): write the values out, or use "
                        "fewer aliases",
                        event.start_mark,
                    )
                attach(node, size)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                node = yaml.ScalarNode(tag, event.value, event.start_mark, None, style=event.style)
                if event.anchor is not None:
                    anchors[event.anchor] = (node, 1)
                attach(node, 1)
            else:  # a sequence or a mapping starts
                if len(open_) >= MAX_DEPTH:
                    raise _Limit(
                        f"collections are nested more than {MAX_DEPTH} deep here (a rules file needs about 6)",
                        event.start_mark,
                    )
                kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(kind, None, event.implicit)
                open_.append(_Open(kind(tag, [], event.start_mark, None, flow_style=event.flow_style), event.anchor))
        if not loader.check_event(yaml.StreamEndEvent):
            raise yaml.composer.ComposerError(
                "expected a single document in the stream", document.start_mark,
                "but found another document", loader.get_event().start_mark,
            )  # fmt: skip
        return root[0] if root else None
    finally:
        loader.dispose()


def parse_document(text: str, file: str) -> At:
    """Parse YAML text into a located root node.

    Raises:
        RulesError: the text is not valid YAML, or nests or expands past the bounds above.
    """
    try:
        node = _compose(text)
    except _Limit as e:
        raise RulesError(file, e.mark.line + 1, e.mark.column + 1, e.problem) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "cannot be parsed"
        raise RulesError(file, line, col, f"invalid YAML: {problem}") from e
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        before = text[: e.position]
        line, col = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        raise RulesError(file, line, col, f"invalid YAML: character {e.character:#06x} is not allowed") from e
    except yaml.YAMLError as e:
        raise RulesError(file, 1, 1, "invalid YAML: " + " ".join(str(e).split())) from e
    return At(file, node)


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


_JSON_TYPE = {_STR: "string", _BOOL: "boolean", _INT: "integer", _FLOAT: "number"}


def Str(convert: Callable[[str], Any] | None = None, what: str = "a string") -> Scalar:
    return Scalar((_STR,), what, convert)


def Choice(*choices: str) -> Scalar:
    return Scalar((_STR,), "one of " + ", ".join(choices), choices=choices)


Bool = Scalar((_BOOL,), "true or false")


def Number(minimum: float = 0) -> Scalar:
    def at_least(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {v}")
        if v < minimum:
            raise ValueError(f"expected a number of at least {minimum}, got {v}")
        return v

    return Scalar((_INT, _FLOAT), "a number", at_least)


def Int(minimum: int = 0) -> Scalar:
    def at_least(v: int) -> int:
        if v < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}, got {v}")
        return v

    return Scalar((_INT,), "a whole number", at_least)


@dataclass(frozen=True)
class Nullable(Type):
    """`null`, or the inner type."""

    inner: Type

    def check(self, at: At) -> Any:
        if isinstance(at.node, yaml.ScalarNode) and at.node.tag == _NULL:
            return None
        if isinstance(at.node, yaml.ScalarNode) and at.node.tag in (_INT, _FLOAT, _BOOL):
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
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return None
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return self.string.check(at)
        return JsonLiteral(json.dumps(self._plain(at), ensure_ascii=False, separators=(",", ":")))

    def _plain(self, at: At) -> Any:
        node = at.node
        if isinstance(node, yaml.SequenceNode):
            errors: list[RulesError] = []
            items = [_gather(errors, lambda i=i, n=n: self._plain(at.index(i, n))) for i, n in enumerate(node.value)]
            _raise_if(errors)
            return items
        if isinstance(node, yaml.MappingNode):
            errors = []
            out = {name: _gather(errors, lambda child=child: self._plain(child)) for name, _, child in _mapping_pairs(at)}
            _raise_if(errors)
            return out
        if isinstance(node, yaml.ScalarNode) and node.tag in (_STR, _NULL, _BOOL, _INT, _FLOAT):
            value = yaml.constructor.SafeConstructor().construct_object(node)
            if isinstance(value, float) and not math.isfinite(value):
                at.fail(f"expected a finite number, got {value} (JSON has no such number)")
            return value
        at.fail(f"expected {self.describe()}, got {at.kind()}")

    def describe(self) -> str:
        return "a JSON value (a string, number, true or false, list, mapping or null)"

    def json_schema(self) -> dict[str, Any]:
        return {"type": ["string", "number", "boolean", "array", "object", "null"]}


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
                _gather(errors, lambda i=i, n=n: self.inner.check(at.index(i, n))) for i, n in enumerate(at.node.value)
            )
            _raise_if(errors)
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


def _mapping_pairs(at: At) -> list[tuple[str, At, At]]:
    """(key, key's location, value's location) of a mapping node in order; keys must be unique strings."""
    if not isinstance(at.node, yaml.MappingNode):
        at.fail(f"expected a mapping, got {at.kind()}")
    pairs: list[tuple[str, At, At]] = []
    seen: set[str] = set()
    for key_node, value_node in at.node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
            At(at.file, key_node, at.path).fail("keys must be strings")
        name = key_node.value
        if name in seen:
            At(at.file, key_node, at.path).fail(f"duplicate key {name!r}")
        seen.add(name)
        pairs.append((name, At(at.file, key_node, at.key(name, key_node).path), at.key(name, value_node)))
    return pairs


@dataclass(frozen=True)
class MapOf(Type):
    """A mapping with free keys (header or cookie names): returns (key, value) pairs in order."""

    value: Type
    key_check: Callable[[str], str] | None = None
    what: str = "a mapping"

    def check(self, at: At) -> tuple[tuple[str, Any], ...]:
        out = []
        errors: list[RulesError] = []
        for name, key_at, child in _mapping_pairs(at):
            if self.key_check is not None:
                try:
                    name = self.key_check(name)
                except ValueError as e:
                    errors.append(key_at.error(str(e)))
                    continue
            out.append((name, _gather(errors, lambda child=child: self.value.check(child))))
        _raise_if(errors)
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
        pairs = _mapping_pairs(at)
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
            values[name] = _gather(errors, lambda spec=spec, child=child: spec.type.check(child))
            where[name] = child
        for name, spec in self.fields.items():
            if name not in values:
                if spec.required:
                    errors.append(at.error(f"missing required key {name!r}"))
                values[name] = spec.default
        _raise_if(errors)  # cross-field checks in `build` need every field good
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
