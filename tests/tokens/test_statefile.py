import json
import os
import threading

import pytest
from mitmproxy.test import taddons

from addon.runtime.loader import Runtime
from addon.tokens.pool import TokenPool
from addon.tokens.health import MAX_TIME, health_from_state
from addon.tokens.statefile import MAX_STATE_BYTES, StateStore, load_state, read_state
from addon.tokens.tokenfile import token_key
from helpers import TOKENS, write_rules


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


# issue 23, attack 9: what is in the state file's place is never a crash or a hang at start-up

ENTRY = {"suffix": "…abcd", "cooling_until": 0.0, "refused_at": 0.0, "disabled": False, "successes": 1, "refusals": 0}


def test_a_fifo_as_the_state_file_is_a_fresh_start_not_a_hang(tmp_path, caplog):
    path = tmp_path / "s.json"
    os.mkfifo(path)
    got = []
    reader = threading.Thread(target=lambda: got.append(load_state(path)), daemon=True)
    reader.start()
    reader.join(30)  # before: open() waited for a writer, for ever
    try:
        assert not reader.is_alive()
    finally:
        if reader.is_alive():  # let it go: a writer that closes at once
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(30)
    assert got == [{}]
    assert f"cannot use the state file {path} (it is not a regular file); starting with every token active" in caplog.text


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_state_file_that_is_not_a_regular_file_is_a_fresh_start(tmp_path, caplog, kind):
    path = tmp_path / "s.json"
    path.mkdir() if kind == "folder" else path.symlink_to("/dev/null")
    assert load_state(path) == {}
    assert f"cannot use the state file {path} (it is not a regular file)" in caplog.text


def test_a_state_file_over_the_size_bound_is_not_read(tmp_path, caplog):
    path = tmp_path / "s.json"
    with open(path, "wb") as f:
        f.truncate(MAX_STATE_BYTES + 2**20)  # sparse: takes no room on the disk
    assert load_state(path) == {}
    assert (f"cannot use the state file {path} (it is 257 MiB, over the 256 MiB a state file may be); "
            "starting with every token active") in caplog.text  # fmt: skip


@pytest.mark.parametrize(
    "number, message",
    [
        ("1e400", "it holds the number 1e400, out of range"),
        ("-1e400", "it holds the number -1e400, out of range"),
        ("NaN", "it holds NaN, which no health record does"),
        ("Infinity", "it holds Infinity, which no health record does"),
    ],
)
def test_a_number_no_health_record_holds_is_a_fresh_start(tmp_path, caplog, number, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": 1, "tokens": {"k": ENTRY}}).replace('"successes": 1', f'"successes": {number}'))
    assert load_state(path) == {}
    assert f"cannot use the state file {path} ({message}); starting with every token active" in caplog.text


def test_a_deeply_nested_state_file_is_a_fresh_start(tmp_path, caplog):
    path = tmp_path / "s.json"
    path.write_text("[" * 1_000_000 + "]" * 1_000_000)
    assert load_state(path) == {}
    assert "starting with every token active" in caplog.text


def test_a_state_file_with_1e400_does_not_stop_the_proxy(tmp_path, caplog):
    write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n")
    key = token_key(TOKENS[0])
    state = {"version": 1, "tokens": {key: {**ENTRY, "successes": 1, "cooling_until": 2e9}}}
    (tmp_path / "tokens.state.json").write_text(json.dumps(state).replace('"successes": 1', '"successes": 1e400'))
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(tmp_path / "rules.yaml"))  # before: OverflowError, and mitmdump exited 1
        assert len(loader.pool.tokens) == 3 and loader.pool.tokens.health == {}
    assert "it holds the number 1e400, out of range" in caplog.text


# what the status shows of a refusal, and the breaker, kept across a restart


def test_the_status_of_the_last_refusal_is_kept(tmp_path):
    pool = TokenPool(TOKENS, clock=lambda: 1000.0)
    pool.refused(TOKENS[0], status=429)
    pool.refused(TOKENS[0], status=403)  # while cooling: only the counts, and the status, change
    pool.refused(TOKENS[1])  # no status known (a shared store's refusal, say): 0
    store = store_with(tmp_path, pool, 1000.0)
    store.write()
    saved = load_state(store.path)
    assert (saved[token_key(TOKENS[0])]["last_status"], saved[token_key(TOKENS[1])]["last_status"]) == (403, 0)
    restarted = TokenPool(TOKENS, clock=lambda: 1000.0)
    restarted.load_state(saved)
    assert [h.last_status for _, h in restarted.status()] == [403, 0, 0]
    assert [h.refusals for _, h in restarted.status()] == [2, 1, 0]


def test_a_state_file_written_before_statuses_were_kept_reads_as_none_known(tmp_path):
    path = tmp_path / "s.json"
    save_state(path, {"k": ENTRY})
    assert "last_status" not in json.loads(path.read_text())["tokens"]["k"]
    assert health_from_state(load_state(path))["k"].last_status == 0


def test_the_breaker_is_written_at_the_top_and_read_back(tmp_path):
    path = tmp_path / "s.json"
    StateStore(path, {"k": ENTRY}, grace=DAY, breaker_open_until=1234.5).write()
    data = json.loads(path.read_text())
    assert list(data) == ["version", "breaker", "tokens"] and data["breaker"] == {"open_until": 1234.5}
    assert read_state(path) == ({"k": ENTRY}, 1234.5)
    StateStore(path, {"k": ENTRY}, grace=DAY).write()  # closed
    assert read_state(path) == ({"k": ENTRY}, 0.0)


@pytest.mark.parametrize(
    "breaker",
    [
        None,  # a file written before the breaker was kept
        {"open_until": "tomorrow"}, {"open_until": True}, {"open_until": -5}, {"open_until": MAX_TIME + 1},
        {"open_until": None}, {}, 1700000000, [1700000000],
    ],
    ids=["absent", "text", "bool", "negative", "beyond the calendar", "null", "empty", "a number", "a list"],
)  # fmt: skip
def test_a_breaker_that_is_not_a_sane_time_is_closed_and_the_tokens_are_kept(tmp_path, breaker):
    path = tmp_path / "s.json"
    data = {"version": 1, "tokens": {"k": ENTRY}}
    if breaker is not None:
        data["breaker"] = breaker
    path.write_text(json.dumps(data))
    assert read_state(path) == ({"k": ENTRY}, 0.0)


def test_no_state_file_reads_as_no_health_and_a_closed_breaker(tmp_path):
    assert read_state(tmp_path / "none.json") == ({}, 0.0)
