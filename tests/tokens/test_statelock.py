"""addon/tokens/statelock.py, and the loader that holds the lock: one proxy per state file."""

import json
import logging
import os

from mitmproxy.test import taddons

from addon.runtime.loader import Runtime
from addon.tokens.statelock import StateFileLock
from helpers import TOKENS, write_rules


def test_a_second_lock_on_one_state_file_is_refused_until_the_first_lets_go(tmp_path, caplog):
    state = tmp_path / "tokens.state.json"
    first, second = StateFileLock(state), StateFileLock(state)
    assert first.acquire()
    with caplog.at_level(logging.WARNING):
        assert not second.acquire()
    assert caplog.messages == [
        f"tokens: another proxy (process {os.getpid()}) uses the state file {state} (it holds tokens.state.json.lock); "
        "this one does not write it and keeps its token health in memory only. To share token health between "
        "proxies, give them tokens.store (redis://…); or give each its own tokens.state_file."
    ]
    first.release()
    assert second.acquire()
    second.release()


def test_a_lock_file_that_cannot_be_made_is_no_lock(tmp_path):
    assert StateFileLock(tmp_path / "missing-folder" / "tokens.state.json").acquire()


RULES = "rules:\n  - match: {host: a.com}\n    headers: {X-Token: '{token}'}\ntokens: {file: tokens.txt}\n"


def test_the_second_loader_on_a_state_file_does_not_write_it(tmp_path, caplog):
    rules = str(write_rules(tmp_path, RULES))
    state = tmp_path / "tokens.state.json"
    first, second = Runtime(), Runtime()
    with taddons.context(first) as tctx:
        tctx.configure(first, rules=rules)
        with taddons.context(second) as tctx2, caplog.at_level(logging.WARNING):
            tctx2.configure(second, rules=rules)
            second.pool.tokens.refused(TOKENS[0])  # without an event loop, a change is saved at once
            second.done()
        assert "uses the state file" in caplog.text
        assert not state.exists()
        first.pool.tokens.refused(TOKENS[1])
        assert list(json.loads(state.read_text())["tokens"]) == [first.pool.tokens.list.keys[1]]
        first.done()
    third = Runtime()  # the first let go when it stopped
    with taddons.context(third) as tctx:
        tctx.configure(third, rules=rules)
        third.pool.tokens.refused(TOKENS[2])
        third.done()
    assert len(json.loads(state.read_text())["tokens"]) == 2
