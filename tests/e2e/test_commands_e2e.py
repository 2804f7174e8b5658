"""End to end: the addon's commands, called the way mitmweb's command bar calls them.

A real `mitmweb -s addon/main.py` runs in front of the local upstream; the
commands go through mitmweb's own HTTP API (`POST /commands/<name>` with
`{"arguments": [...]}`, as mitmweb's web app sends them; conftest.Mitmweb
passes its authentication on both mitmproxy lines). Assertions are on what the commands
answer, on what they put in mitmweb's event log (`GET /events`), and on what the upstream
receives afterwards.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import conftest
from conftest import assert_no_secrets
from helpers import TOKENS
from test_recovery_e2e import post, rules_for

SUFFIXES = [t[-4:] for t in TOKENS]
STATUS_LINE = re.compile(r"tokens: default \d+ active(, \d+ (cooling|disabled))* \(one row a token in the event log\)")
ROW = re.compile(r"…(\w{4})  (active|disabled|cooling until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)) +(\d+) ok +(\d+) refused")


class Mitmweb(conftest.Mitmweb):
    """mitmweb, with its command bar's API."""

    def __init__(self, rules: Path, workdir: Path) -> None:
        super().__init__(rules, workdir)
        self.outputs: list[str] = []  # every command answer, scanned for secrets

    def command(self, name: str, *arguments: str) -> dict[str, Any]:
        """POST /commands/<name> as mitmweb's command bar does; the JSON answer
        ({"value": ...} or {"error": "..."})."""
        assert self.web is not None
        answer = self.web.post(
            f"/commands/{name}",
            json={"arguments": list(arguments)},
        )
        assert answer.status_code == 200, f"{name}: HTTP {answer.status_code} {answer.text}\n{self.log()}"
        self.outputs.append(answer.text)
        return answer.json()

    def call(self, name: str, *arguments: str) -> Any:
        """The command's value; fails the test if the command answered an error."""
        answer = self.command(name, *arguments)
        assert "error" not in answer, f"{name} {arguments}: {answer['error']}\n{self.log()}"
        return answer["value"]

    def events(self) -> list[str]:
        """mitmweb's event log (GET /events, as its web app reads it), each entry's message; mitmproxy 11
        puts the time in front of each message, which is taken off."""
        assert self.web is not None
        answer = self.web.get("/events")
        assert answer.status_code == 200, f"/events: HTTP {answer.status_code} {answer.text}"
        self.outputs.append(answer.text)
        return [re.sub(r"^\[[\d:.]+\] ", "", e["message"]) for e in answer.json()]

    def status_entries(self) -> list[str]:
        """The event log's entries of tokens.status: one a call, whose lines are the rows."""
        return [m for m in self.events() if m.startswith("tokens.status")]

    def status_call(self) -> tuple[str, list[str]]:
        """tokens.status: its answer, a line to read at a glance (mitmweb's command bar shows it), and
        its rows, which it puts in the event log as one entry (read here once it is there)."""
        before = len(self.status_entries())
        line = self.call("tokens.status")
        assert isinstance(line, str) and STATUS_LINE.fullmatch(line), line
        deadline = time.monotonic() + 10  # (the entry reaches the event log on the next turn of mitmweb's loop)
        while len(entries := self.status_entries()) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(entries) == before + 1, entries
        head, *rows = entries[-1].split("\n")
        assert head == "tokens.status:", entries[-1]
        return line, rows

    def status(self) -> dict[str, tuple[str, str, int, int]]:
        """tokens.status parsed: last four characters -> (state, cooling until or "-", ok, refused)."""
        _, rows = self.status_call()
        assert len(rows) == len(TOKENS), rows
        parsed = {}
        for row in rows:
            m = ROW.fullmatch(row)
            assert m, f"unexpected tokens.status row {row!r} in {rows}"
            parsed[m[1]] = (m[2].split()[0], m[3] or "-", int(m[4]), int(m[5]))
        return parsed


@pytest.fixture
def rules(tmp_path, upstream) -> Path:
    """test_recovery_e2e's rules (round robin, cooldown 300 s, captcha command with ttl 300)."""
    return rules_for(tmp_path, upstream.port)


@pytest.fixture
def mitmweb(rules, tmp_path) -> Iterator[Mitmweb]:
    web = Mitmweb(rules, tmp_path)
    try:
        yield web.start()
    finally:
        web.stop()
    assert_no_secrets(tmp_path, *web.outputs)


def sessions(upstream) -> list[str]:
    return [r.cookie("session") for r in upstream.app.received]


def send(mitmweb, upstream, n: int) -> list[str]:
    """n requests through the proxy, each answered 200; the session cookies the upstream got."""
    upstream.app.received.clear()
    for _ in range(n):
        answer = post(mitmweb, upstream)
        assert answer.status_code == 200, answer.text
    return sessions(upstream)


def test_status_lists_every_token_masked(mitmweb):
    line, rows = mitmweb.status_call()
    # its answer, as mitmweb's command bar shows it: a line of counts by state
    assert line == "tokens: default 3 active (one row a token in the event log)"
    for token in TOKENS:
        assert not any(token in row or token[:-4] in row for row in [line, *rows])
    assert mitmweb.status() == {s: ("active", "-", 0, 0) for s in SUFFIXES}
    assert [row.split()[0] for row in rows] == [f"…{s}" for s in SUFFIXES]  # file order
    # in mitmweb's event log (GET /events, as its web app reads it): one entry a call (two calls
    # above), whose lines are the rows
    assert mitmweb.status_entries() == ["tokens.status:\n" + "\n".join(rows)] * 2


def test_refused_token_is_cooling_until_reset(mitmweb, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}
    assert post(mitmweb, upstream).status_code == 200
    assert sessions(upstream) == [TOKENS[0], TOKENS[1]]  # refused, then replayed with the next token

    status = mitmweb.status()
    state, until, ok, refused = status[SUFFIXES[0]]
    assert (state, ok, refused) == ("cooling", 0, 1)
    expected = datetime.datetime.now() + datetime.timedelta(seconds=300)  # the rules' cooldown
    assert abs((datetime.datetime.fromisoformat(until) - expected).total_seconds()) < 10
    assert status[SUFFIXES[1]] == ("active", "-", 1, 0)
    assert status[SUFFIXES[2]] == ("active", "-", 0, 0)

    upstream.app.tokens = set(TOKENS)
    assert TOKENS[0] not in send(mitmweb, upstream, 3)  # passed over while cooling

    assert mitmweb.call("tokens.reset") is None
    assert mitmweb.status()[SUFFIXES[0]] == ("active", "-", 0, 1)
    assert TOKENS[0] in send(mitmweb, upstream, 3)  # in the rotation again
    mitmweb.wait_for_log(r"tokens: cooldowns cleared")


def test_disable_and_enable_by_suffix(mitmweb, upstream):
    assert mitmweb.call("tokens.disable", SUFFIXES[1]) is None
    assert [v[0] for v in mitmweb.status().values()] == ["active", "disabled", "active"]
    sent = send(mitmweb, upstream, 6)
    assert TOKENS[1] not in sent
    assert set(sent) == {TOKENS[0], TOKENS[2]}

    assert mitmweb.call("tokens.enable", f"…{SUFFIXES[1]}") is None  # as tokens.status shows it
    assert [v[0] for v in mitmweb.status().values()] == ["active"] * 3
    assert set(send(mitmweb, upstream, 3)) == set(TOKENS)
    mitmweb.wait_for_log(rf"tokens: …{SUFFIXES[1]} disabled")
    mitmweb.wait_for_log(rf"tokens: …{SUFFIXES[1]} enabled")

    assert mitmweb.command("tokens.disable", "zzzz") == {"error": "no token ends with 'zzzz'"}
    assert [v[0] for v in mitmweb.status().values()] == ["active"] * 3
    assert set(send(mitmweb, upstream, 3)) == set(TOKENS)


def test_captcha_refresh_runs_the_command_again(mitmweb, upstream, rules):
    runs = rules.parent / "runs.txt"
    assert post(mitmweb, upstream).status_code == 200
    assert runs.read_text() == "1"
    assert upstream.app.received[-1].header("x-captcha-token") == "cap-1-captcha-value"

    assert mitmweb.call("captcha.refresh") is None
    mitmweb.wait_for_log(r"captcha: new value", count=2)  # the fetch goes on after the command answered
    assert runs.read_text() == "2"

    upstream.app.received.clear()
    assert post(mitmweb, upstream).status_code == 200
    assert upstream.app.received[-1].header("x-captcha-token") == "cap-2-captcha-value"  # not cap-1 (ttl 300 s)
    assert runs.read_text() == "2"
