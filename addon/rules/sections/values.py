"""The `values:` section (named values for placeholders, each from a file, the environment or a command)
and `captcha:` (the source of {captcha}), with the checks of a value's name and source.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from addon.rules.records import DEFAULT_WAIT, EXIT, ValueSpec
from addon.rules.schema import At
from addon.rules.structures import Field, MapOf, Record, SeqOf
from addon.rules.template import TOKEN
from addon.rules.types import Bool, Number, Str

VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # a value's name, and a token pool's


def values_field(base: Path, environ: Mapping[str, str], exits: tuple[str, ...] = ()) -> Field:
    """`values:`; `base` is the folder relative paths start from; `exits`: the names of the file's exits."""
    return Field(
        MapOf(Record("value source", _source_fields(base), build=partial(_build_source, base, environ, exits)),
              _value_name, "a mapping of names to value sources"),
        default=(),
        doc="Named values for placeholders: {NAME} in a header, cookie or body value. "
        "Each has one source: file, env or command.",
    )


def captcha_field(base: Path, environ: Mapping[str, str], exits: tuple[str, ...] = ()) -> Field:
    """`captcha:`, short for `values: {captcha: …}`."""
    return Field(
        Record("captcha", _source_fields(base), build=partial(_build_source, base, environ, exits)),
        doc="The source of {captcha}; the same as values: {captcha: ...}.",
    )


def _source_fields(base: Path) -> dict[str, Field]:
    """The keys of one value's source."""
    return {
        "file": Field(Str(lambda name: base / name),
                      doc="A file whose content, stripped, is the value; read again when it changes. "
                      "{exit} in its name: each exit has its own (clearance/{exit}.txt)."),
        "env": Field(Str(), doc="An environment variable, read once."),
        "command": Field(SeqOf(Str(), single=True, min_items=1),
                         doc="A command (run in the rules file's folder) whose standard output, stripped, is the value. "
                         "{exit} in an argument: run for each exit, with its name."),
        "ttl": Field(Number(0), default=0,
                     doc="Seconds one value is reused; 0: a command runs for every request, a file is kept until it changes."),
        "timeout": Field(Number(0.1), default=10, doc="Seconds a command may run."),
        "wait": Field(Number(0), doc="For a file: seconds a refresh waits for the file to change (default 30)."),
        "secret": Field(Bool, default=True,
                        doc="false: logs, flow comments and explain may show the value whole (default: masked, as tokens)."),
    }


def _value_name(name: str) -> str:
    if name == TOKEN:
        raise ValueError("'token' is the rotation of the tokens file ({token}); give this value another name")
    if not VALUE_NAME.fullmatch(name) or name == "env":
        raise ValueError(f"bad value name {name!r}: expected a letter or _, then letters, digits, _ or -, "
                         "like cf_clearance")
    return name


def _build_source(
    base: Path, environ: Mapping[str, str], exits: tuple[str, ...], v: dict[str, Any], at: At, where: dict[str, At]
) -> ValueSpec:
    name = at.path.rpartition(".")[2]  # values.NAME, or captcha
    given = [k for k in ("file", "env", "command") if v[k] is not None]
    if len(given) != 1:
        at.fail(f"give exactly one {name} source (file, env or command); got {', '.join(given) or 'none'}")
    command = v["command"]
    if command is not None and len(command) == 1 and " " in command[0]:
        command = tuple(shlex.split(command[0]))
    written = str(v["file"].relative_to(base) if v["file"] is not None and v["file"].is_relative_to(base) else v["file"])
    per_exit = (v["file"] is not None and EXIT in written) or (command is not None and any(EXIT in a for a in command))
    if per_exit and not exits:
        where[given[0]].fail(f"{EXIT} is the name of an exit, and the file has no 'exits' section")
    if v["file"] is not None:
        for exit in exits if per_exit else ("",):
            path = base / written.replace(EXIT, exit) if exit else v["file"]
            if not path.is_file():
                where["file"].fail(f"{name} file {f'of exit {exit} ' if exit else ''}not found: {path}")
    if v["env"] is not None and v["env"] not in environ:
        where["env"].fail(f"environment variable {v['env']} is not set")
    if v["wait"] is not None and v["file"] is None:
        where["wait"].fail("wait is for a file source (a refresh runs a command again, and the environment never changes)")
    if command is not None:
        program = command[0]
        if EXIT in program:
            where["command"].fail(f"{EXIT} may be in a command's arguments, not in the program's name")
        found = (base / program).is_file() if "/" in program else shutil.which(program) is not None
        if not found:
            where["command"].fail(f"{name} command not found: {program} (relative paths start at {base})")
    return ValueSpec(
        name=name, ttl=v["ttl"], timeout=v["timeout"], cwd=base, file=v["file"], env=v["env"], command=command,
        wait=DEFAULT_WAIT if v["wait"] is None else v["wait"], secret=v["secret"],
    )  # fmt: skip
