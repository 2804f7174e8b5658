"""The commands, through mitmproxy's command manager as the console and mitmweb call them."""

import asyncio
import re
import time

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addon.runtime.commands import TokenCommands
from addon.runtime.loader import Runtime
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
    loader = Runtime()
    with taddons.context(loader, TokenCommands(loader)) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        tctx.loader = loader
        yield tctx


def run(tctx, cmd):
    return tctx.master.commands.execute(cmd)


def logged_status(caplog) -> list[str]:
    """The event log's entries of tokens.status."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokens.status")]


def status(tctx, caplog) -> tuple[str, list[str]]:
    """tokens.status: what it answers (a line), and its rows, from the one entry it logged (whose lines
    are the rows: mitmweb's event log and the console show them one a row)."""
    caplog.set_level("INFO")
    before = len(logged_status(caplog))
    line = run(tctx, "tokens.status")
    entries = logged_status(caplog)
    assert len(entries) == before + 1
    head, *rows = entries[-1].split("\n")
    assert head == "tokens.status:"
    return line, rows


def rows(tctx, caplog) -> list[str]:
    return status(tctx, caplog)[1]


def test_status_is_one_row_per_token_masked(tctx, caplog):
    line, rows = status(tctx, caplog)
    assert line == "tokens: default 3 active (one row a token in the event log)"
    assert rows == [
        "…1111  active                                 0 ok      0 refused",
        "…2222  active                                 0 ok      0 refused",
        "…3333  active                                 0 ok      0 refused",
    ]
    assert [t[-4:] for t in TOKENS] == ["1111", "2222", "3333"]
    for token in TOKENS:
        assert not any(token in row or token[:-4] in row for row in [line, *rows])
    # the rows in the event log as one entry (mitmweb shows its lines as rows)
    assert logged_status(caplog) == ["tokens.status:\n" + "\n".join(rows)]


def test_status_without_tokens_is_still_a_row(tmp_path, caplog):
    loader = Runtime()
    with taddons.context(loader, TokenCommands(loader)) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: x}\n")))
        line, rows = status(tctx, caplog)
        assert rows == ["no tokens"]  # the event log's entry is never a bare heading
        assert line == "tokens: no token pool (one row a token in the event log)"


def test_disable_enable_and_reset(tctx, caplog):
    pool = tctx.loader.pool.tokens
    pool.refused(TOKENS[0])
    run(tctx, f"tokens.disable …{TOKENS[1][-4:]}")
    assert [s for s, _ in pool.status()] == ["cooling", "disabled", "active"]
    line, (first, second, _) = status(tctx, caplog)
    assert line == "tokens: default 1 active, 1 cooling, 1 disabled (one row a token in the event log)"
    assert re.fullmatch(rf"…{TOKENS[0][-4:]}  cooling until \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d +0 ok +1 refused", first)
    assert re.fullmatch(rf"…{TOKENS[1][-4:]}  disabled +0 ok +0 refused", second)
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


def test_status_survives_a_cooldown_beyond_the_calendar(tctx, caplog):
    tctx.loader.pool.tokens.refused(TOKENS[0], retry_after=1e18)
    assert rows(tctx, caplog)[0].startswith(f"…{TOKENS[0][-4:]}  cooling until far future ")


def test_status_survives_a_breaker_open_beyond_the_calendar(tctx, caplog):
    tctx.loader.pool.breaker.opened(1e18)  # (a `pause` of 1e18 s is a finite number the rules file takes)
    line, rows = status(tctx, caplog)
    assert line == "tokens: default 3 active, breaker open until far future (one row a token in the event log)"
    assert rows[-1] == "breaker open until far future: refusals go to the client as they are"


def test_status_line_names_the_time_an_open_breaker_closes(tctx, caplog):
    until = time.time() + 300
    tctx.loader.pool.breaker.opened(until)
    line, rows = status(tctx, caplog)
    closes = time.strftime("%H:%M:%S", time.localtime(until))
    assert line == f"tokens: default 3 active, breaker open until {closes} (one row a token in the event log)"
    assert re.fullmatch(rf"breaker open until \d{{4}}-\d\d-\d\d {closes}: refusals go to the client as they are", rows[-1])
    run(tctx, "tokens.reset")
    assert status(tctx, caplog)[0] == "tokens: default 3 active (one row a token in the event log)"


def test_values_refresh_names_the_value(tctx, tmp_path):
    async def go():
        await tctx.loader.captcha.get()
        run(tctx, "values.refresh captcha")
        await tctx.master.addons.get("tokencommands").refreshing

    asyncio.run(go())
    assert (tmp_path / "runs.txt").read_text() == "run\nrun\n"
    with pytest.raises(exceptions.CommandError, match=r"^no value named 'cf' \(the rules file has captcha\)$"):
        run(tctx, "values.refresh cf")


def test_status_tells_on_trial_retired_and_expired_apart(tctx, tmp_path, caplog):
    from helpers import jwt

    expired = jwt({"exp": 1_000_000}, "sig9")
    (tmp_path / "tokens.txt").write_text("\n".join([*TOKENS, expired]) + "\n")
    tctx.loader.reload_tokens()
    pool = tctx.loader.pool.tokens
    pool.refused(TOKENS[0])
    pool.health[pool.list.keys[0]].cooling_until = 1.0  # its cooldown is over; it has not worked since
    pool.refused(TOKENS[1], retire=True)
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    line, rows = status(tctx, caplog)
    assert line == "tokens: default 1 active, 1 on trial, 1 retired, 1 expired (one row a token in the event log)"
    assert re.fullmatch(r"…1111  on trial +0 ok +1 refused", rows[0])
    assert re.fullmatch(rf"…2222  retired {when} +0 ok +1 refused", rows[1])
    assert rows[2].startswith("…3333  active ")
    assert re.fullmatch(rf"…sig9  expired {when} +0 ok +0 refused", rows[3])
    run(tctx, "tokens.enable 2222")
    assert status(tctx, caplog)[1][1].startswith("…2222  cooling until ")  # back; its refusal's cooldown runs on


def test_status_names_each_exit_and_a_resting_one_in_its_line(tmp_path, caplog, monkeypatch):
    from mitmproxy.addons.proxyserver import Proxyserver

    from helpers import TWO_EXITS

    monkeypatch.setenv("EXIT_PW", "exit-password-0001")
    loader = Runtime()
    with taddons.context(Proxyserver(), loader, TokenCommands(loader)) as tctx:
        (tmp_path / "fetch.sh").write_text("#!/bin/sh\necho cap-commands-test\n")
        (tmp_path / "fetch.sh").chmod(0o755)
        rules = write_rules(tmp_path, TWO_EXITS + RULES.replace("tokens: {file: tokens.txt}",
                                                                "tokens: {file: tokens.txt, exits: all}"))
        tctx.options.update(rules=str(rules))  # (mitmproxy's Proxyserver owns connection_strategy, which exits set)
        until = time.time() + 300
        loader.exits.by_name["a"].breaker.opened(until)
        line, rows = status(tctx, caplog)
    rests = time.strftime("%H:%M:%S", time.localtime(until))
    assert line == f"tokens: default 3 active; exit a resting until {rests} (one row a token in the event log)"
    assert rows[-2].startswith("exit a (http://exit-user:****@127.0.0.1:3128): resting until ")
    assert rows[-1] == "exit b (https://10.0.0.2:8443): up; 0 ok, 0 refused, 0 could not connect"
