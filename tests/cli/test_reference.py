"""`mitm-rules reference`: the rules file's reference in Markdown, and docs/reference.md kept equal to it."""

from addon.cli.main import main
from addon.cli.reference import render
from helpers import ROOT


def test_reference_file_is_current():
    """docs/reference.md is generated from the loader's own definitions: regenerate it with
    `.venv/bin/mitm-rules reference > docs/reference.md` when this fails."""
    assert (ROOT / "docs" / "reference.md").read_text() == render(), (
        "docs/reference.md is stale: run `.venv/bin/mitm-rules reference > docs/reference.md`"
    )


def test_reference_lists_a_key_with_its_type_default_and_doc():
    text = render()
    assert "## `tokens`, or each `tokens.NAME`" in text
    assert (
        "| `retire_after` | whole number | `3` | A token refused this many times in a row (a success starts the count "
        "again) is retired: never used again until tokens.enable. 0: never. |"
    ) in text.splitlines()
    assert "| `host` | host glob, or a list of them (at least one) | required |" in text
    on_response = "| `on_response` | list of mappings (see `on_response[]`) | `[{match: {status: 403}, action: rotate}]` |"
    assert on_response in text


def test_reference_command_prints_it(capsys):
    assert main(["reference"]) == 0
    assert capsys.readouterr().out == render()
