"""The rules option: first load, hot reload, and keeping the last good configuration."""

import asyncio
import logging
import os
import threading

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addon.runtime.loader import Runtime
from helpers import write_rules

ONE = "rules:\n  - name: one\n    match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n"
TWO = ONE.replace("name: one", "name: two")


@pytest.fixture
def loaded(tmp_path):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, ONE)))
        yield loader, tctx, tmp_path


def test_loads_rules_and_tokens(loaded, caplog):
    loader, tctx, tmp_path = loaded
    assert [r.name for r in loader.config.rules] == ["one"]
    assert len(loader.pool.tokens) == 3


def test_changed_rules_file_is_reloaded(loaded):
    loader, _, tmp_path = loaded
    (tmp_path / "rules.yaml").write_text(TWO)
    loader._watcher.poll()
    assert [r.name for r in loader.config.rules] == ["two"]


def test_bad_reload_keeps_the_last_good_rules(loaded, caplog):
    loader, _, tmp_path = loaded
    (tmp_path / "rules.yaml").write_text(ONE.replace("headers", "heders"))
    with caplog.at_level(logging.ERROR):
        loader._watcher.poll()
    assert [r.name for r in loader.config.rules] == ["one"]
    assert caplog.records[-1].getMessage() == (
        f"{tmp_path}/rules.yaml:4:5: rules[0]: unknown key 'heders' (did you mean 'headers'?); "
        "the last good rules stay in force"
    )


def test_deleted_rules_file_keeps_the_last_good_rules(loaded, caplog):
    loader, _, tmp_path = loaded
    (tmp_path / "rules.yaml").unlink()
    loader._watcher.poll()
    assert [r.name for r in loader.config.rules] == ["one"]
    assert "rules file not found; the last good rules stay in force" in caplog.text


def test_tokens_file_changes_are_picked_up(loaded):
    loader, _, tmp_path = loaded
    (tmp_path / "tokens.txt").write_text("tok-new-00000000000\n")
    loader._watcher.poll()
    assert loader.pool.tokens.draw() == "tok-new-00000000000"


def test_deleted_tokens_file_keeps_the_tokens_read_before(loaded, caplog):
    loader, _, tmp_path = loaded
    (tmp_path / "tokens.txt").unlink()
    loader._watcher.poll()
    assert len(loader.pool.tokens) == 3
    assert f"{tmp_path}/tokens.txt: tokens file not found; the 3 token(s) read before stay in use" in caplog.text


def test_first_load_error_is_one_log_line(tmp_path, caplog):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        path = write_rules(tmp_path, "rules: 3\n")
        with caplog.at_level(logging.ERROR):
            tctx.configure(loader, rules=str(path))
    assert loader.config is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"{path}:1:8: rules: expected a list of a mapping (rule), got a number"
    ]


def test_bad_stream_copy_limit(loaded):
    loader, tctx, _ = loaded
    with pytest.raises(exceptions.OptionsError, match="Cannot parse stream_copy_limit"):
        tctx.configure(loader, stream_copy_limit="lots")
    tctx.configure(loader, stream_copy_limit="2k")
    assert loader.stream_copy_limit == 2048


VALUES = """\
rules:
  - match: {host: a.com}
    cookies: {cf_clearance: "{cf}"}
    headers: {X: "{captcha}"}
values:
  cf: {file: cf.txt}
captcha: {file: captcha.txt}
"""


def test_a_value_file_that_changes_is_read_again(tmp_path, caplog):
    (tmp_path / "cf.txt").write_text("cf-one-000000000001\n")
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, VALUES)))
        cf = loader.values["cf"]
        assert asyncio.run(cf.get()) == "cf-one-000000000001"
        (tmp_path / "cf.txt").write_text("cf-two-000000000002\n")
        with caplog.at_level(logging.INFO):
            loader._watcher.poll()
        assert cf.cached() is None and asyncio.run(cf.get()) == "cf-two-000000000002"
        assert f"cf: {tmp_path}/cf.txt changed; it is read again at the next request" in caplog.text
        assert set(loader.values) == {"cf", "captcha"} and loader.captcha is loader.values["captcha"]
        # a reload keeps the sources whose spec did not change, with their values
        (tmp_path / "rules.yaml").write_text(VALUES.replace("X:", "Y:"))
        loader._watcher.poll()
        assert loader.values["cf"] is cf and cf.cached() == "cf-two-000000000002"


def test_a_reload_reads_in_a_thread_so_the_event_loop_goes_on(loaded, tmp_path):
    # the new rules file is a pipe: reading it blocks until the writer below writes
    loader, _, _ = loaded
    rules = tmp_path / "rules.yaml"
    rules.unlink()
    os.mkfifo(rules)
    ran, written = threading.Event(), threading.Event()

    def writer():
        ran.wait(10)  # until the event loop has run on while the reload waits (at most ten seconds)
        with open(rules, "w") as pipe:
            pipe.write(TWO)
        written.set()

    async def go():
        threading.Thread(target=writer, daemon=True).start()
        loader._watcher.poll()  # notices the change and starts the reload
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert not written.is_set(), "the event loop waited for the rules file"
        assert [r.name for r in loader.config.rules] == ["one"]
        ran.set()
        if loader._reloading is not None:
            await loader._reloading

    asyncio.run(go())
    assert [r.name for r in loader.config.rules] == ["two"]
