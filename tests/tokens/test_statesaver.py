"""Token health saved from a thread, one write at a time."""

import asyncio
import json
import threading
import time

import pytest
from mitmproxy.test import taddons

from addon.runtime.loader import Runtime
from addon.tokens import statefile
from addon.tokens import statesaver
from helpers import write_rules

ONE = "rules:\n  - name: one\n    match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n"


@pytest.fixture
def loaded(tmp_path):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, ONE)))
        yield loader, tctx, tmp_path


def test_the_state_file_is_written_in_a_thread(loaded, monkeypatch):
    loader, _, _ = loaded
    started, release, writers = threading.Event(), threading.Event(), []
    real_write = statefile.StateStore.write

    def slow_write(store):
        writers.append(threading.current_thread())
        started.set()
        release.wait(10)
        real_write(store)

    monkeypatch.setattr(statefile.StateStore, "write", slow_write)
    monkeypatch.setattr(statesaver, "SAVE_EVERY", 0.0)

    async def go():
        loader.pool.tokens.refused(loader.pool.tokens.list.tokens[0])
        for _ in range(500):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the loop runs while the write is held
        assert started.is_set() and loader.pool.saver._writing is not None and not loader.pool.saver._writing.done()
        release.set()
        await loader.pool.saver._writing

    asyncio.run(go())
    assert writers and writers[0] is not threading.main_thread()
    assert json.loads(loader.pool.saver.path.read_text())["tokens"][loader.pool.tokens.list.keys[0]]["refusals"] == 1


def _written(path) -> dict:
    return json.loads(path.read_text())["tokens"] if path.exists() else {}


def test_a_success_that_changes_only_a_count_is_written_later_and_a_refusal_brings_it_forward(loaded, monkeypatch):
    loader, _, _ = loaded
    monkeypatch.setattr(statesaver, "SAVE_EVERY", 0.05)
    monkeypatch.setattr(statesaver, "SAVE_COUNTS_EVERY", 60.0)
    tokens, saver = loader.pool.tokens, loader.pool.saver
    first, second, path = tokens.list.keys[0], tokens.list.keys[1], saver.path

    async def go():
        tokens.succeeded(tokens.list.tokens[0], time.time())  # a well token: only its count changes
        await asyncio.sleep(0.4)
        assert _written(path).get(first, {}).get("successes", 0) == 0  # not yet: counts wait up to a minute
        tokens.refused(tokens.list.tokens[1])  # a change that matters: written within SAVE_EVERY
        for _ in range(300):
            if _written(path).get(second, {}).get("refusals") == 1:
                break
            await asyncio.sleep(0.01)
        assert _written(path)[first]["successes"] == 1 and _written(path)[second]["refusals"] == 1
        tokens.succeeded(tokens.list.tokens[0], time.time())  # counts alone again: waits, and shut-down writes it
        await asyncio.sleep(0.3)
        assert _written(path)[first]["successes"] == 1
        saver.done()
        assert _written(path)[first]["successes"] == 2

    asyncio.run(go())


def test_a_success_that_ends_a_cooldown_is_written_within_a_second(loaded, monkeypatch):
    loader, _, _ = loaded
    monkeypatch.setattr(statesaver, "SAVE_EVERY", 0.05)
    monkeypatch.setattr(statesaver, "SAVE_COUNTS_EVERY", 60.0)
    tokens, path = loader.pool.tokens, loader.pool.saver.path
    key = tokens.list.keys[0]

    async def go():
        tokens.refused(tokens.list.tokens[0])
        await asyncio.sleep(0.3)
        assert _written(path)[key]["cooling_until"] > 0
        tokens.succeeded(tokens.list.tokens[0], time.time() + 1)  # sent after the refusal: it cools no more
        for _ in range(300):
            if _written(path)[key]["cooling_until"] == 0:
                break
            await asyncio.sleep(0.01)
        assert _written(path)[key]["cooling_until"] == 0 and _written(path)[key]["successes"] == 1

    asyncio.run(go())


def test_a_change_that_matters_never_puts_off_a_counts_write_already_due(loaded, monkeypatch):
    loader, _, _ = loaded
    monkeypatch.setattr(statesaver, "SAVE_COUNTS_EVERY", 0.0)
    tokens, saver = loader.pool.tokens, loader.pool.saver
    saver._took = 4.0  # writes take long: 40 s between two (a tenth of the time at most)

    async def go():
        tokens.succeeded(tokens.list.tokens[0], time.time())  # counts only: due in 40 s
        assert saver._pending is not None
        due = saver._pending.when()
        await asyncio.sleep(0.2)
        tokens.refused(tokens.list.tokens[1])  # a change that matters, 0.2 s later: due in 40 s from now
        assert saver._pending is not None
        assert saver._pending.when() == due  # the earlier of the two
        saver._pending.cancel()

    asyncio.run(go())
