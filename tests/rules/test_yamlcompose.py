"""The bounds the rules file is read within, before the schema: what its YAML may not do (hold a character
YAML does not allow, nest too deep, expand too far by aliases: yamlcompose.py) and its size (config.py),
each one located message."""

from __future__ import annotations

import pytest

from addon.rules.config import load_config
from addon.rules.schema import RulesError
from helpers import write_rules


def test_a_character_yaml_does_not_allow(tmp_path):
    path = write_rules(tmp_path, "rules:\n  - match: {host: a\x1f.com}\n")
    with pytest.raises(RulesError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:2:20: invalid YAML: character 0x001f is not allowed"


# Bounds checked before the schema (and before PyYAML's recursive composer could see the text):
# nesting, what aliases expand to, and the size of the file. Each text is small to write.
HOSTS = "hosts: &h [" + ", ".join(f"h{i}.example.com" for i in range(2000)) + "]\n"
ALIAS_RULE = "  - {match: {host: *h}, headers: {X: y}}\n"
LIMITS = [
    ("rules: " + "[" * 50_000 + "]" * 50_000 + "\n",
     "1:71: collections are nested more than 64 deep here (a rules file needs about 6)"),
    ("rules: " + "{a: " * 50_000 + "\n", "1:260: collections are nested more than 64 deep here (a rules file needs about 6)"),
    ("rules:\n" + "".join("  " * i + "- a:\n" for i in range(100)),
     "33:65: collections are nested more than 64 deep here (a rules file needs about 6)"),
    ("rules:\n" + "- " * 50_000 + "x\n", "2:127: collections are nested more than 64 deep here (a rules file needs about 6)"),
    (HOSTS + "rules:\n" + ALIAS_RULE * 2000,
     "52:20: with the alias *h, aliases add more than 100,000 values to the document (each alias counts every "
     "value in what it names): write the values out, or use fewer aliases"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
     "5:36: with the alias *d, aliases add more than 100,000 values to the document (each alias counts every "
     "value in what it names): write the values out, or use fewer aliases"),
    ("rules: &r [*r]\n", "1:12: the alias *r is inside the value it names"),
    ("rules: []\n" + "#" * (16 * 2**20), "1:1: the rules file is larger than 16 MiB"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", LIMITS, ids=["flow", "flow-mapping", "block", "compact", "aliases", "laughs",
                                                       "self", "size"])
def test_bounds_are_located_errors(tmp_path, text, message):
    path = write_rules(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:{message}"


def test_aliases_within_the_bound_work(tmp_path):
    path = write_rules(tmp_path, "api: &api [a.example.com, b.example.com]\n"  # an unknown key, so: reported after the aliases
                           "rules:\n" + "  - {match: {host: *api}, headers: {X: y}}\n" * 3)
    with pytest.raises(RulesError, match=r":1:1: unknown key 'api'"):
        load_config(path)
    path = write_rules(tmp_path, "rules:\n  - {match: {host: &api [a.example.com, b.example.com]}, headers: {X: y}}\n"
                           + "  - {match: {host: *api}, headers: {X: z}}\n")
    assert [h.text for r in load_config(path).rules for h in r.match.hosts] == ["a.example.com", "b.example.com"] * 2
