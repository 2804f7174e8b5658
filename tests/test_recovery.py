"""Recovery's parts that need no process (the replays themselves are in tests/e2e): what the
client's flow is given, and what the next attempt draws."""

import asyncio

import pytest
from mitmproxy.test import taddons, tflow

from addon import recovery
from addon.config import REFRESH_CAPTCHA, ROTATE
from addon.loader import RulesLoader
from addon.recovery import Recovery, _take_response
from addon.rewriter import Rewriter
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {host: a.com}
    headers: {X-Captcha: "{captcha}"}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt, max_attempts: 5}
captcha: {command: [./fetch.sh], ttl: 300}
"""


def refused_flow():
    f = tflow.tflow(resp=True)
    f.request.timestamp_start = 1000.0
    f.response.status_code, f.response.timestamp_start, f.response.timestamp_end = 403, 1000.010, 1000.018
    return f


# the time mitmweb shows is response.timestamp_end - request.timestamp_start
def test_the_client_gets_the_retry_answer_ending_when_the_recovery_did(monkeypatch):
    f = refused_flow()
    retry = tflow.tresp(status_code=200, content=b'{"ok": true}')
    retry.timestamp_start, retry.timestamp_end = 1001.0, 1001.2
    monkeypatch.setattr(recovery.time, "time", lambda: 1001.25)
    _take_response(f, retry)
    assert (f.response.status_code, f.response.content) == (200, b'{"ok": true}')
    assert (f.response.timestamp_start, f.response.timestamp_end) == (1001.0, 1001.25)


def test_a_client_given_its_own_refusal_after_a_failed_retry_waited_for_it_too(monkeypatch):
    f = refused_flow()
    monkeypatch.setattr(recovery.time, "time", lambda: 1121.0)  # the retry was hung up after 120 s
    _take_response(f, f.response)
    assert (f.response.status_code, f.response.timestamp_start, f.response.timestamp_end) == (403, 1000.010, 1121.0)


@pytest.fixture
def recover(tmp_path):
    fetch = tmp_path / "fetch.sh"
    fetch.write_text("#!/bin/sh\necho run >> runs.txt\necho cap-recovery-test-$(wc -l < runs.txt)\n")
    fetch.chmod(0o755)
    loader = RulesLoader()
    rewriter = Rewriter(loader)
    addon = Recovery(loader, rewriter)
    with taddons.context(loader, rewriter, addon) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        yield addon


def runs(tmp_path) -> int:
    path = tmp_path / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


SENT = {"token": TOKENS[0], "captcha": "cap-recovery-test-0"}


@pytest.mark.parametrize(
    "action, tried, expected, fetched",
    [
        # another token and a fresh captcha value
        (ROTATE, {TOKENS[0]}, {"token": TOKENS[1], "captcha": "cap-recovery-test-1"}, 1),
        # every token tried: no retry follows, so no captcha value is fetched for it
        (ROTATE, set(TOKENS), None, 0),
        # the same token and a fresh captcha value
        (REFRESH_CAPTCHA, {TOKENS[0]}, {"token": TOKENS[0], "captcha": "cap-recovery-test-1"}, 1),
    ],
    ids=["rotate", "rotate, no token left", "refresh captcha"],
)
def test_next_values_fetch_a_captcha_value_only_for_a_retry(recover, tmp_path, action, tried, expected, fetched):
    assert asyncio.run(recover._next_values(action, dict(SENT), set(tried))) == expected
    assert runs(tmp_path) == fetched
