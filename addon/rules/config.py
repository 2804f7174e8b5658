"""The rules file: `load_config(path)` reads and checks it into the records of records.py, and
`json_schema()` describes it for editors, both from the schema of sections/. Paths inside the file are
relative to the file's folder.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from addon.rules.records import Config
from addon.rules.schema import At, RulesError
from addon.rules.sections import rules_schema
from addon.rules.sections.tokens import pool_keys
from addon.rules.structures import names_one
from addon.rules.template import CAPTCHA
from addon.rules.yamlcompose import parse_document

MAX_RULES_FILE = 16 * 1024 * 1024  # bytes; a 100,000-rule file is about 13 MiB


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Config:
    """Read and check a rules file.

    Raises:
        RulesError: the file cannot be read or is wrong; the message names the
            file, line, column and the problem.
    """
    file = Path(path)
    shown = str(path)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_RULES_FILE + 1)  # no parser sees more than this
    except FileNotFoundError:
        raise RulesError(shown, 1, 1, "rules file not found") from None
    except OSError as e:
        raise RulesError(shown, 1, 1, f"cannot read the rules file: {e.strerror or e}") from None
    if len(raw) > MAX_RULES_FILE:
        raise RulesError(shown, 1, 1, f"the rules file is larger than {MAX_RULES_FILE // 2**20} MiB")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8")) + 1  # in characters, as YAML's marks count
        raise RulesError(shown, line, column, f"the rules file is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    with _collection_paused():
        root = parse_document(text, shown)
        if root.node is None:
            root.fail("the rules file is empty; it needs at least a 'rules:' list")
        schema = rules_schema(file.resolve().parent, file, environ, _declared_values(root), _declared_pools(root),
                              _declared_exits(root))  # fmt: skip
        return schema.check(root)


def _declared_values(root: At) -> frozenset[str]:
    """The names the file gives values (`values:` keys, and `captcha:`), read ahead of the check, so
    that a placeholder can be judged where it is written, wherever in the file `values:` comes."""
    names: set[str] = set()
    if isinstance(root.node, yaml.MappingNode):
        for key, value in root.node.value:
            if key.value == "values" and isinstance(value, yaml.MappingNode):
                names.update(k.value for k, _ in value.value if isinstance(k, yaml.ScalarNode))
            elif key.value == "captcha":
                names.add(CAPTCHA)
    return frozenset(names)


def _declared_pools(root: At) -> tuple[str, ...]:
    """The names of the token pools, when `tokens:` names them (read ahead, as the values are)."""
    if isinstance(root.node, yaml.MappingNode):
        for key, value in root.node.value:
            if key.value == "tokens" and not names_one(value, pool_keys()):
                return tuple(k.value for k, _ in value.value if isinstance(k, yaml.ScalarNode))
    return ()


def _declared_exits(root: At) -> tuple[str, ...]:
    """The names of the exits (`exits:` items' `name`), read ahead, so that a pool's `exits:` can be
    judged where it is written."""
    names: list[str] = []
    if isinstance(root.node, yaml.MappingNode):
        for key, value in root.node.value:
            if key.value == "exits" and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    if isinstance(item, yaml.MappingNode):
                        names += [v.value for k, v in item.value if k.value == "name" and isinstance(v, yaml.ScalarNode)]
    return tuple(dict.fromkeys(names))


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a file loads: a big file makes millions of
    objects and no cycles, and each collection would walk all of them again (a 100,000-rule file
    loads in half the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def json_schema() -> dict[str, Any]:
    """The rules file's JSON Schema, from the same definitions the loader checks against."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rules file of the mitmproxy rules addon",
        **rules_schema(Path("."), Path("rules.yaml"), {}).json_schema(),
    }
