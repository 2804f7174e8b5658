"""Token health saved from a thread, one write at a time."""

import asyncio
import json
import threading

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
