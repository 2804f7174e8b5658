"""addon/status/summary.py: the log's summary line, logged only when something changed."""

import asyncio

import pytest
from mitmproxy.test import taddons

from addon.runtime.loader import Runtime
from addon.status.summary import LogSummary
from helpers import POOLS, TOKENS, write_rules


@pytest.fixture
def runtime(tmp_path):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n"
                                                               "    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n")))
        yield loader


def summary_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "addon.status.summary"]


def test_a_line_when_something_changed_and_none_when_nothing_did(runtime, caplog):
    caplog.set_level("INFO")
    summary = LogSummary(runtime)
    # the first look says how the pools stand
    assert summary.look() == "tokens: default 3 active; last minute 0 requests, 0 refused, 0 recovered"
    assert summary.look() is None  # nothing changed since
    counters = runtime.counters
    counters.requests["default"] += 12
    counters.refusals["default", "rotate"] += 1
    counters.retries["default"] += 1
    counters.recovery("default", True, 0.2, "GET", "/", "")
    assert summary.look() == "tokens: default 3 active; last minute 12 requests, 1 refused, 1 recovered"
    assert summary.look() is None  # the counts are the last minute's, not running totals
    runtime.pool.tokens.refused(TOKENS[0])  # the pools changed, with no request
    assert summary.look() == "tokens: default 2 active, 1 cooling; last minute 0 requests, 0 refused, 0 recovered"
    counters.recovery("default", False, 0.2, "GET", "/", "")  # a recovery that failed is no news of its own
    assert summary.look() is None
    assert summary_lines(caplog) == [
        "tokens: default 3 active; last minute 0 requests, 0 refused, 0 recovered",
        "tokens: default 3 active; last minute 12 requests, 1 refused, 1 recovered",
        "tokens: default 2 active, 1 cooling; last minute 0 requests, 0 refused, 0 recovered",
    ]


def test_several_pools_and_an_open_breaker_are_in_the_line(tmp_path, caplog):
    (tmp_path / "openai.txt").write_text("sk-openai-account-0000aaaa\n")
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, POOLS)))
        summary = LogSummary(loader)
        assert summary.look() == "tokens: arena 3 active; openai 1 active; last minute 0 requests, 0 refused, 0 recovered"
        loader.pools["openai"].breaker.opened(loader.pools["openai"].breaker.clock() + 300)
        line = summary.look()
        assert line is not None and line.startswith("tokens: arena 3 active; openai 1 active, breaker open until ")


def test_without_tokens_a_line_only_for_requests(tmp_path, caplog):
    caplog.set_level("INFO")
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: x}\n")))
        summary = LogSummary(loader)
        assert summary.look() is None
        loader.counters.requests[""] += 2
        assert summary.look() == "rules: last minute 2 requests, 0 refused, 0 recovered"
        assert summary.look() is None
    assert summary_lines(caplog) == ["rules: last minute 2 requests, 0 refused, 0 recovered"]


def test_it_looks_while_the_proxy_runs_and_stops_when_it_is_done(runtime, caplog):
    caplog.set_level("INFO")

    async def go():
        summary = LogSummary(runtime, every=0)  # (no wait between looks)
        summary.running()
        summary.running()  # once only
        for _ in range(5):
            await asyncio.sleep(0)
        task = summary._task
        summary.done()
        await asyncio.sleep(0)
        return task

    task = asyncio.run(go())
    assert task.cancelled()
    assert summary_lines(caplog) == ["tokens: default 3 active; last minute 0 requests, 0 refused, 0 recovered"]
