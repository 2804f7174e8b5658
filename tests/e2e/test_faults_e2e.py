"""End to end: faults at the upstream, in the files the addon reads, and in the captcha source.

Each fault must end with a clear log line and a client answer that makes sense
(the upstream's own answer, or a proxy error that says what happened), and the
proxy must go on serving the next request.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import TOKENS, write_rules
from scripted_upstream import ScriptedUpstream, refuse, reset

# one account token in a cookie; 403 means "rotate" (the default on_response)
ACCOUNT_RULES = """\
rules:
  - name: account
    match: {{host: "127.0.0.1:{port}"}}
    cookies: {{session: "{{token}}"}}
{extra}
tokens:
  file: tokens.txt
  state_file: {state_file}
"""


@pytest.fixture
def scripted() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.stop()


@pytest.fixture
def account(tmp_path, scripted, start_proxy):
    """Start a proxy in front of the scripted upstream: account(*mitmdump args, extra=rules lines, state_file=...)."""

    def start(*args: str, extra: str = "", state_file: str = "tokens.state.json"):
        text = ACCOUNT_RULES.format(port=scripted.port, extra=extra, state_file=json.dumps(state_file))
        return start_proxy(write_rules(tmp_path, text), *args)

    return start


def get(proxy, port: int, path: str = "/v1/models") -> httpx.Response:
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        return client.get(f"http://127.0.0.1:{port}{path}")


def test_connection_reset_during_a_retry_gives_the_refusal(account, scripted):
    proxy = account()
    scripted.script.extend([refuse(), reset])
    first = get(proxy, scripted.port)
    assert first.status_code == 403 and first.json()["error"] == "unknown account"
    proxy.wait_for_log(r"not recovered GET .*: 403 with …1111 → error with …2222 \(attempt 2 failed: .+\)")
    assert get(proxy, scripted.port).status_code == 200
    sessions = [r.cookie("session") for r in scripted.received]
    assert sessions[:2] == TOKENS[:2] and sessions[2] != TOKENS[0]  # the refused token is passed over
    proxy.stop()
    flows = proxy.saved_flows()
    (replay,) = [f for f in flows if f.is_replay]
    original = next(f for f in flows if f.id == replay.metadata["rewrite.attempt"]["of"])
    assert original.response.status_code == 403 and replay.response is None
    # the client got the refusal, but only after the failed retry: mitmweb's time column says so
    assert original.response.timestamp_end >= replay.error.timestamp > original.request.timestamp_start


def test_retry_that_hangs_is_hung_up_after_the_timeout(account, scripted):
    proxy = account("--set", "retry_timeout=1")
    scripted.script.extend([refuse(), scripted.hang])
    first = get(proxy, scripted.port)
    assert first.status_code == 403 and first.json()["error"] == "unknown account"
    proxy.wait_for_log(r"not recovered .*: 403 with …1111 → error with …2222 "
                       r"\(attempt 2 failed: no response headers within 1 s \(retry_timeout\)\)")
    assert scripted.hung_up.wait(10), "the proxy did not close the hanging connection"
    assert get(proxy, scripted.port).status_code == 200


def test_retry_whose_body_goes_silent_is_hung_up_after_the_idle_timeout(account, scripted):
    proxy = account("--set", "retry_idle_timeout=1")
    scripted.script.extend([refuse(), scripted.silent_body])
    first = get(proxy, scripted.port)
    assert first.status_code == 403 and first.json()["error"] == "unknown account"  # the refusal it replaced
    proxy.wait_for_log(r"not recovered .*: 403 with …1111 → error with …2222 "
                       r"\(attempt 2 failed: no data for 1 s \(retry_idle_timeout\)\)")
    assert scripted.hung_up.wait(10), "the proxy did not close the silent connection"
    assert get(proxy, scripted.port).status_code == 200


SLOW_REPLAY_HOOK = """\
import asyncio
import logging

async def request(flow):
    if flow.is_replay == "request":
        try:
            await asyncio.sleep({seconds})  # another addon holding the retry past retry_timeout
        except asyncio.CancelledError:
            logging.warning("slow hook: cancelled")
            raise
        logging.warning("slow hook: done")
"""


def test_retry_held_in_a_hook_past_the_timeout_is_never_sent(tmp_path, account, scripted):
    (tmp_path / "slow.py").write_text(SLOW_REPLAY_HOOK.format(seconds=2))
    proxy = account("--set", "retry_timeout=1", "-s", str(tmp_path / "slow.py"))
    scripted.script.append(refuse())
    assert get(proxy, scripted.port).status_code == 403
    proxy.wait_for_log(r"attempt 2 failed: no response headers within 1 s")
    proxy.wait_for_log(r"slow hook: done")  # the hook let go of the killed retry, within the grace period
    assert [r.cookie("session") for r in scripted.received] == TOKENS[:1]  # the retry was killed, not sent


def test_retry_held_in_a_hook_past_the_grace_period_has_its_hook_cancelled(tmp_path, account, scripted):
    (tmp_path / "slow.py").write_text(SLOW_REPLAY_HOOK.format(seconds=60))
    proxy = account("--set", "retry_timeout=1", "-s", str(tmp_path / "slow.py"))
    scripted.script.append(refuse())
    assert get(proxy, scripted.port).status_code == 403  # after retry_timeout and the grace period
    proxy.wait_for_log(r"attempt 2 failed: no response headers within 1 s")
    proxy.wait_for_log(r"slow hook: cancelled")
    assert get(proxy, scripted.port).status_code == 200  # the proxy goes on serving
    assert [r.cookie("session") for r in scripted.received] == [TOKENS[0], TOKENS[1]]  # the retry was never sent
    assert "Addon error" not in proxy.log() and "Traceback" not in proxy.log()


@pytest.mark.parametrize("close", [True, False], ids=["connection close", "keep-alive"])
def test_refusal_is_recovered_whether_or_not_the_upstream_closes(account, scripted, close):
    proxy = account()
    scripted.script.append(refuse(close=close))
    assert get(proxy, scripted.port).json() == {"ok": True}
    assert [r.cookie("session") for r in scripted.received] == TOKENS[:2]


def test_refusal_with_a_huge_body_is_recovered(account, scripted):
    proxy = account()
    scripted.script.append(refuse(padding=20 * 1024 * 1024))
    assert get(proxy, scripted.port).json() == {"ok": True}
    proxy.wait_for_log(r"recovered GET .*: 403 with …1111 → 200 with …2222")


def test_huge_refusal_streamed_by_mitmproxy_reaches_the_client_whole(account, scripted):
    proxy = account("--set", "stream_large_bodies=1m")
    scripted.script.append(refuse(padding=20 * 1024 * 1024))
    first = get(proxy, scripted.port)
    assert first.status_code == 403 and len(first.json()["padding"]) == 20 * 1024 * 1024
    proxy.wait_for_log(r"not retried .*: the 403 was streamed to the client before it could be judged")
    assert get(proxy, scripted.port).status_code == 200


CAPTCHA_COMMANDS = {
    "hanging": ("import time; time.sleep(30)", r"timed out after 1 s"),
    "crashing": ("import sys; sys.exit('captcha service ' + 'down')", r"exit status 1 \(21 byte\(s\) on stderr, not logged"),
    "silent": ("pass", r"gave an empty value"),
    # issue 23: a child left holding the output (before: the request waited for it, 100000 s), and 500 MiB printed
    "orphaning": ("import subprocess; subprocess.Popen(['sleep', '100000']).wait()",
                  r"timed out after 1 s; it and the processes it started were killed"),
    "flooding": ("import sys; [sys.stdout.buffer.write(b'x' * 2**20) for _ in range(500)]",
                 r"printed more than 64 KiB \(a value is one line\)"),
}


@pytest.mark.parametrize("kind", CAPTCHA_COMMANDS)
def test_failing_captcha_command_blames_no_token(account, scripted, kind):
    code, message = CAPTCHA_COMMANDS[kind]
    extra = (f"    headers: {{X-Captcha-Token: \"{{captcha}}\"}}\n"
             f"captcha: {{command: [{json.dumps(sys.executable)}, -c, {json.dumps(code)}], timeout: 1}}")
    proxy = account(extra=extra)
    scripted.script.append(refuse())
    first = get(proxy, scripted.port)
    assert first.status_code == 403  # the upstream's own answer: the request went without a captcha value
    proxy.wait_for_log(r"captcha: command .* failed: " + message if kind != "silent" else message)
    proxy.wait_for_log(r"not retried .*: the 403 is not blamed on the token, as the request went without its captcha")
    assert get(proxy, scripted.port).status_code == 200
    assert [r.cookie("session") for r in scripted.received] == TOKENS[:2]  # no retry
    assert "refused (403)" not in proxy.log()  # and the token is not passed over
    assert all("x-captcha-token" not in r.headers for r in scripted.received)
    assert "captcha service down" not in proxy.log()  # its stderr may hold a secret
    assert "will report returncode" not in proxy.log()  # asyncio's child watcher reaped what it killed


def test_unwritable_state_folder_is_logged_once_and_serving_goes_on(tmp_path, account, scripted):
    (tmp_path / "blocker").write_text("a file where the state folder should be\n")  # unwritable, even for root
    proxy = account(state_file="blocker/tokens.state.json")
    for _ in range(2):  # two changes of token health, two attempts to save
        scripted.script.append(refuse())
        assert get(proxy, scripted.port).status_code == 200
        proxy.wait_for_log(r"tokens: cannot write the state file .*blocker/tokens.state.json: Not a directory; "
                           r"token health is kept in memory only")
    proxy.stop()  # and save once more on the way out
    assert proxy.log().count("cannot write the state file") == 1


def test_rules_file_deleted_while_running_keeps_the_last_good_rules(tmp_path, account, scripted):
    proxy = account()
    rules = tmp_path / "rules.yaml"
    text = rules.read_text()
    rules.unlink()
    proxy.wait_for_log(r"rules.yaml:1:1: rules file not found; the last good rules stay in force")
    assert get(proxy, scripted.port).status_code == 200
    assert scripted.received[-1].cookie("session") == TOKENS[0]
    rules.write_text(text)
    proxy.wait_for_log(r"rules: loaded .*rules.yaml", count=2)


# the protected API's demands, for the tokens-file tests: tokens in flight against the real rules
PROTECTED_RULES = """\
rules:
  - name: account
    match: {{host: "127.0.0.1:{port}"}}
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      Accept: application/json
      X-Captcha-Token: "{{captcha}}"
    cookies: {{session: "{{token}}"}}
tokens: {{file: tokens.txt}}
captcha: {{file: captcha.txt}}
"""


@pytest.fixture
def protected(tmp_path, upstream, start_proxy):
    return start_proxy(write_rules(tmp_path, PROTECTED_RULES.format(port=upstream.port)))


def test_tokens_file_replaced_truncated_and_deleted_under_load(tmp_path, protected, upstream):
    tokens = tmp_path / "tokens.txt"
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(proxy=protected.url, timeout=60) as client:
            while not stop.is_set():
                statuses.append(client.get(f"http://127.0.0.1:{upstream.port}/v1/models").status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        replacement = tmp_path / "tokens.new"  # replaced at once (an editor's save): one good, one unknown
        replacement.write_text(f"tok-unknown-00000004444\n{TOKENS[2]}\n")
        os.replace(replacement, tokens)
        protected.wait_for_log(r"re-read .*tokens.txt: 2 token\(s\)")
        cut = tmp_path / "tokens.cut"  # cut off mid-line: the stub is just a token the upstream refuses
        cut.write_text(f"{TOKENS[2]}\ntok-bra")
        os.replace(cut, tokens)  # at once, so no poll sees a half-written file (that is the 503 test below)
        protected.wait_for_log(r"re-read .*tokens.txt: 2 token\(s\)", count=2)
        tokens.unlink()
        protected.wait_for_log(r"tokens.txt: tokens file not found; the 2 token\(s\) read before stay in use")
        tokens.write_text("\n".join(TOKENS) + "\n")
        protected.wait_for_log(r"re-read .*tokens.txt: 3 token\(s\)")
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert len(statuses) > 20 and set(statuses) == {200}, statuses
    refused = {r.cookie("session") for r in upstream.app.received if r.status == 403}
    assert refused <= {"tok-unknown-00000004444", "tok-bra"}


def test_emptied_tokens_file_means_503_until_tokens_return(tmp_path, protected, upstream):
    tokens: Path = tmp_path / "tokens.txt"
    tokens.write_text("")
    protected.wait_for_log(r"tokens.txt has no tokens; requests that need one get a 503")
    empty = get(protected, upstream.port)
    assert empty.status_code == 503 and "the tokens file" in empty.text and "has no tokens" in empty.text
    tokens.write_text(TOKENS[1] + "\n")
    protected.wait_for_log(r"re-read .*tokens.txt: 1 token\(s\)")
    assert get(protected, upstream.port).status_code == 200
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[1]]
