"""{exit} in a value's source: each exit has its own value (ValueSpec.per_exit, for_exit, label), one
source an exit at run time (sources_for, Runtime.source), and the mistakes a rules file can make with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon.rules.config import load_config
from addon.rules.schema import RulesError
from addon.runtime.loader import Runtime
from addon.runtime.sources import sources_for
from helpers import write_rules

ENVIRON = {"PLAIN": "plain-value-0000"}
RULES = """\
exits:
  - name: a
    url: http://127.0.0.1:3128
  - name: b
    url: http://127.0.0.1:3129
values:
  cf: {file: "clearance/{exit}.txt"}
  plain: {env: PLAIN}
rules:
  - match: {host: a.example}
    cookies: {cf_clearance: "{cf}", session: "{token}", plain: "{plain}"}
tokens: {file: tokens.txt, exits: all}
"""
NO_EXITS = "values:" + RULES.split("values:", 1)[1].replace(", exits: all", "")


def write(tmp_path: Path, text: str = RULES, exits: tuple[str, ...] = ("a", "b")) -> Path:
    (tmp_path / "clearance").mkdir(exist_ok=True)
    for name in exits:
        (tmp_path / "clearance" / f"{name}.txt").write_text(f"cf-clearance-of-{name}-0000\n")
    solve = tmp_path / "solve"
    solve.write_text("#!/bin/sh\necho cf-clearance-of-$1\n")
    solve.chmod(0o755)
    return write_rules(tmp_path, text)


def test_a_file_of_each_exit(tmp_path):
    config = load_config(write(tmp_path), environ=ENVIRON)
    cf, plain = config.values["cf"], config.values["plain"]
    assert cf.per_exit and not plain.per_exit
    assert (cf.label, cf.exit) == ("cf", "")
    a = cf.for_exit("a")
    assert (a.file, a.label, a.exit) == (tmp_path / "clearance" / "a.txt", "cf@a", "a")
    assert not a.per_exit  # an exit's own source is one source
    assert cf.for_exit("b").file == tmp_path / "clearance" / "b.txt"


@pytest.mark.parametrize(
    "command, written",
    [
        ('["./solve", "--exit", "{exit}"]', ("./solve", "--exit", "{exit}")),
        ('"./solve {exit}"', ("./solve", "{exit}")),  # one string: split as a shell would
        ('"./solve --exit={exit}"', ("./solve", "--exit={exit}")),
    ],
    ids=["list", "one string", "in a longer argument"],
)
def test_exit_in_a_commands_argument_runs_it_for_each_exit(tmp_path, command, written):
    text = RULES.replace('{file: "clearance/{exit}.txt"}', f"{{command: {command}}}")
    cf = load_config(write(tmp_path, text), environ=ENVIRON).values["cf"]
    assert cf.command == written and cf.per_exit
    assert cf.for_exit("b").command == tuple(arg.replace("{exit}", "b") for arg in written)
    assert cf.for_exit("b").label == "cf@b"


def test_a_command_without_exit_is_one_source(tmp_path):
    text = RULES.replace('{file: "clearance/{exit}.txt"}', '{command: "./solve x"}')
    assert not load_config(write(tmp_path, text), environ=ENVIRON).values["cf"].per_exit


@pytest.mark.parametrize(
    "text, exits, where, message",
    [
        (RULES, ("a",), "7:14", "values.cf.file: cf file of exit b not found: {tmp}/clearance/b.txt"),
        (NO_EXITS, (), "2:14", "values.cf.file: {{exit}} is the name of an exit, and the file has no 'exits' section"),
        (RULES.replace('{file: "clearance/{exit}.txt"}', '{command: ["./solve-{exit}", "x"]}'), ("a", "b"), "7:17",
         "values.cf.command: {{exit}} may be in a command's arguments, not in the program's name"),
        (RULES.replace('{file: "clearance/{exit}.txt"}', '{command: "./{exit}/solve x"}'), ("a", "b"), "7:17",
         "values.cf.command: {{exit}} may be in a command's arguments, not in the program's name"),
    ],
    ids=["no file of exit b", "no exits section", "in the program", "in the program, one string"],
)
def test_exit_where_it_cannot_be(tmp_path, text, exits, where, message):
    path = write(tmp_path, text, exits)
    with pytest.raises(RulesError) as e:
        load_config(path, environ=ENVIRON)
    assert str(e.value) == f"{path}:{where}: " + message.format(tmp=tmp_path)


def test_sources_for_makes_one_source_an_exit_and_keeps_those_unchanged(tmp_path):
    path = write(tmp_path)
    config = load_config(path, environ=ENVIRON)
    sources = sources_for(config, {})
    assert list(sources) == ["cf@a", "cf@b", "plain"]
    assert sources["cf@a"].spec == config.values["cf"].for_exit("a")
    assert sources["cf@b"].spec.file == tmp_path / "clearance" / "b.txt"
    assert sources["plain"].spec == config.values["plain"]

    again = sources_for(config, sources)
    assert all(again[key] is sources[key] for key in sources)  # with their values

    path.write_text(RULES.replace("  - name: b\n    url: http://127.0.0.1:3129\n", "").replace(
        "plain: {env: PLAIN}", "plain: {env: PLAIN, ttl: 5}"))  # fmt: skip
    fewer = sources_for(load_config(path, environ=ENVIRON), sources)
    assert list(fewer) == ["cf@a", "plain"]
    assert fewer["cf@a"] is sources["cf@a"]
    assert fewer["plain"] is not sources["plain"] and fewer["plain"].spec.ttl == 5  # changed: a new source


def test_the_runtime_gives_the_source_of_the_requests_exit(tmp_path):
    runtime = Runtime()
    runtime.values = sources_for(load_config(write(tmp_path), environ=ENVIRON), {})
    assert runtime.source("cf", "a") is runtime.values["cf@a"]
    assert runtime.source("cf", "b") is runtime.values["cf@b"]
    assert runtime.source("plain", "a") is runtime.values["plain"]  # one value for every exit
    assert runtime.source("plain") is runtime.values["plain"]
    assert runtime.source("cf") is None  # which exit's? none
    assert runtime.source("cf", "c") is None
    assert runtime.source("unknown", "a") is None


def test_exit_in_the_rules_files_folder_is_no_placeholder(tmp_path):
    folder = tmp_path / "{exit}"
    folder.mkdir()
    (folder / "cf.txt").write_text("cf-clearance-value-0000\n")
    config = load_config(write_rules(folder, NO_EXITS.replace('"clearance/{exit}.txt"', "cf.txt")), environ=ENVIRON)
    assert not config.values["cf"].per_exit and config.values["cf"].file == folder / "cf.txt"


def test_exit_in_the_rules_files_folder_stays_in_each_exits_file(tmp_path):
    folder = tmp_path / "{exit}"
    folder.mkdir()
    cf = load_config(write(folder), environ=ENVIRON).values["cf"]
    assert cf.per_exit and cf.for_exit("b").file == folder / "clearance" / "b.txt"
