import json
import os

import pytest

from addon.statefile import StateStore, load_state
from addon.tokens import TokenList, TokenPool, token_key


def save_state(path, entries):
    StateStore(path, entries, grace=86400).write()


def test_round_trip(tmp_path):
    path = tmp_path / "tokens.state.json"
    save_state(path, {"k": {"suffix": "…abcd"}, "gone": {"suffix": "…ef01", "gone_since": 5.0}})
    assert load_state(path) == {"k": {"suffix": "…abcd"}, "gone": {"suffix": "…ef01", "gone_since": 5.0}}
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


DAY = 24 * 3600.0


def store_with(tmp_path, pool, now, state=None):
    store = StateStore(tmp_path / "s.json", state or {}, grace=DAY)
    store.update(pool.take_changes(), pool.list, pool.listed_at, now)
    return store


def test_health_of_tokens_gone_from_the_file_is_dropped_after_a_day(tmp_path):
    now = [1000.0]
    tokens = [f"tok-{i:05d}-zzzzzzzz" for i in range(1000)]
    pool = TokenPool(tokens, clock=lambda: now[0])
    for t in tokens:
        pool.succeeded(t, now[0])
    store = store_with(tmp_path, pool, now[0])
    store.write()
    assert len(load_state(store.path)) == 1000
    now[0] += 60
    pool.replace(tokens[:2])  # 998 tokens leave the file
    assert store.update(pool.take_changes(), pool.list, pool.listed_at, now[0]) == []
    store.write()
    saved = load_state(store.path)
    assert len(saved) == 1000 and saved[token_key(tokens[5])]["gone_since"] == 1060.0
    assert "gone_since" not in saved[token_key(tokens[0])]
    now[0] += DAY - 1  # a second short of the grace period: kept
    assert store.update({}, pool.list, pool.listed_at, now[0]) == []
    now[0] += 1
    pruned = store.update({}, pool.list, pool.listed_at, now[0])
    assert sorted(pruned) == sorted(token_key(t) for t in tokens[2:])
    pool.forget(pruned)
    store.write()
    assert set(load_state(store.path)) == set(pool.health) == {token_key(t) for t in tokens[:2]}


def test_a_token_back_within_the_day_keeps_its_health_and_the_clock_survives_a_restart(tmp_path):
    now = [1000.0]
    pool = TokenPool(["tok-a-11111111", "tok-b-22222222"], cooldown=3 * DAY, clock=lambda: now[0])
    pool.refused("tok-b-22222222")
    store = store_with(tmp_path, pool, now[0])
    pool.replace(["tok-a-11111111"])
    store.update(pool.take_changes(), pool.list, pool.listed_at, now[0])
    store.write()
    # a restart half a day later: the state file says since when b is gone
    now[0] += DAY / 2
    restarted = StateStore(store.path, load_state(store.path), grace=DAY)
    pool = TokenPool(["tok-a-11111111"], cooldown=3 * DAY, clock=lambda: now[0])
    pool.load_state(load_state(store.path))
    assert restarted.update({}, pool.list, pool.listed_at, now[0]) == []
    now[0] += DAY / 2
    assert restarted.update({}, pool.list, pool.listed_at, now[0]) == [token_key("tok-b-22222222")]
    # and one that comes back in time is no longer gone
    pool.refused("tok-a-11111111")
    store = store_with(tmp_path, pool, now[0])
    pool.replace(["tok-b-33333333"])
    store.update(pool.take_changes(), pool.list, pool.listed_at, now[0])
    pool.replace(["tok-a-11111111"])
    store.update(pool.take_changes(), pool.list, pool.listed_at, now[0] + 10)
    assert store.update({}, pool.list, pool.listed_at, now[0] + 2 * DAY) == []
    assert [s for s, _ in pool.status()] == ["cooling"]
