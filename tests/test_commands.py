"""The commands, through mitmproxy's command manager as the console and mitmweb call them."""

import asyncio
import re

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addon.commands import TokenCommands
from addon.loader import RulesLoader
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {host: a.com}
    headers: {X: "{token}", Y: "{captcha}"}
tokens: {file: tokens.txt}
captcha: {command: [./fetch.sh], ttl: 300}
"""


@pytest.fixture
def tctx(tmp_path):
    fetch = tmp_path / "fetch.sh"
    fetch.write_text("#!/bin/sh\necho run >> runs.txt\necho cap-commands-test\n")
    fetch.chmod(0o755)
    loader = RulesLoader()
    with taddons.context(loader, TokenCommands(loader)) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        tctx.loader = loader
        yield tctx


def run(tctx, cmd):
    return tctx.master.commands.execute(cmd)


def test_status_masks_every_token(tctx):
    out = run(tctx, "tokens.status")
    for token in TOKENS:
        assert token not in out and f"…{token[-4:]}" in out
    assert out.count("active") == 3


def test_disable_enable_and_reset(tctx):
    pool = tctx.loader.tokens
    pool.refused(TOKENS[0])
    run(tctx, f"tokens.disable …{TOKENS[1][-4:]}")
    assert [s for s, _ in pool.status()] == ["cooling", "disabled", "active"]
    assert re.search(rf"^…{TOKENS[0][-4:]} +cooling +\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d +0 +1$", run(tctx, "tokens.status"), re.M)
    run(tctx, "tokens.reset")
    assert [s for s, _ in pool.status()] == ["active", "disabled", "active"]
    run(tctx, f"tokens.enable {TOKENS[1][-4:]}")
    assert [s for s, _ in pool.status()] == ["active", "active", "active"]
    with pytest.raises(exceptions.CommandError, match="no token ends with 'zzzz'"):
        run(tctx, "tokens.disable zzzz")


def test_captcha_refresh_runs_the_source_again(tctx, tmp_path):
    async def go():
        await tctx.loader.captcha.get()
        run(tctx, "captcha.refresh")
        await tctx.master.addons.get("tokencommands").refreshing

    asyncio.run(go())
    assert (tmp_path / "runs.txt").read_text() == "run\nrun\n"


def test_status_survives_a_cooldown_beyond_the_calendar(tctx):
    tctx.loader.tokens.refused(TOKENS[0], retry_after=1e18)
    assert "far future" in run(tctx, "tokens.status")
