import json
import os

import pytest

from addon.statefile import load_state, save_state


def test_round_trip(tmp_path):
    path = tmp_path / "tokens.state.json"
    save_state(path, {"k": {"suffix": "…abcd"}})
    assert load_state(path) == {"k": {"suffix": "…abcd"}}
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.state.json"]  # no temporary file left


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot use the state file"),
        ('{"version": 99, "tokens": {}}', "is not one this version wrote"),
        ("[]", "is not one this version wrote"),
    ],
)
def test_corrupt_file_means_a_fresh_start(tmp_path, caplog, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    assert load_state(path) == {}
    assert message in caplog.text and "starting with every token active" in caplog.text


def test_missing_file_is_a_fresh_start(tmp_path):
    assert load_state(tmp_path / "none.json") == {}


def test_failed_write_leaves_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    save_state(path, {"old": {}})

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        save_state(path, {"new": {}})
    monkeypatch.undo()
    assert load_state(path) == {"old": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
