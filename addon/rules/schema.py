"""Located errors: every problem of the rules file names the file, the line, the column and the path
to the value (`rules[2].headers.Accept`), in the manner of pre-commit's cfgv.

`At` is a node of PyYAML's tree with its file and path; the types that check a document (types.py,
structures.py) walk those nodes and raise `RulesError` from them, or gather several into `RulesErrors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"

_KIND = {
    STR_TAG: "a string",
    NULL_TAG: "null",
    BOOL_TAG: "a boolean",
    INT_TAG: "a number",
    FLOAT_TAG: "a number",
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


def gather(errors: list[RulesError], check: Callable[[], Any]) -> Any:
    """Run one check, collecting its problems instead of stopping at them."""
    try:
        return check()
    except RulesErrors as e:
        errors.extend(e.errors)
    except RulesError as e:
        errors.append(e)
    return None


def raise_if(errors: list[RulesError]) -> None:
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


def mapping_pairs(at: At) -> list[tuple[str, At, At]]:
    """(key, key's location, value's location) of a mapping node in order; keys must be unique strings."""
    if not isinstance(at.node, yaml.MappingNode):
        at.fail(f"expected a mapping, got {at.kind()}")
    pairs: list[tuple[str, At, At]] = []
    seen: set[str] = set()
    for key_node, value_node in at.node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
            At(at.file, key_node, at.path).fail("keys must be strings")
        name = key_node.value
        if name in seen:
            At(at.file, key_node, at.path).fail(f"duplicate key {name!r}")
        seen.add(name)
        pairs.append((name, At(at.file, key_node, at.key(name, key_node).path), at.key(name, value_node)))
    return pairs


def key_at(at: At, key: str) -> At:
    """The value of `key` in the (checked) mapping at `at`, located."""
    return at.key(key, next(v for k, v in at.node.value if k.value == key))
