"""End to end: sessions kept alive, through a real mitmdump in front of an upstream that renews the
session cookie with every answer (`Set-Cookie: session=<new value>`) and then accepts only the new
value, as the LMArena bridges see `arena-auth-prod-v1` refreshed; and two proxies on a real redis-server."""

from __future__ import annotations

import json
import stat

import httpx
import pytest
from mitmproxy.certs import CertStore

from conftest import Proxy, written
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {{host: "127.0.0.1:{port}"}}
    headers: {{User-Agent: "Mozilla/5.0 (X11; Linux x86_64)", Accept: application/json, X-Captcha-Token: "{{captcha}}"}}
    cookies: {{session: "{{token}}"}}
  - match: {{host: "127.0.0.1:{port}", stream: true}}
    headers: {{Accept: text/event-stream}}
tokens: {{file: tokens.txt{more}}}
captcha: {{file: captcha.txt}}
"""
KEY = "MITM_RULES_E2E_SESSION_KEY"
RENEWED = "session renewed by the upstream's Set-Cookie"
THROUGH_OTHER = "session renewed through another proxy"
LOCAL_ONLY = "renewed session values stay on this proxy"


def rules_for(folder, port, more=""):
    return write_rules(folder, RULES.format(port=port, more=more), tokens=[TOKENS[0]])


@pytest.fixture
def renewing(upstream):
    """The upstream renews the session of every request it accepts; only TOKENS[0] to start with."""
    upstream.app.tokens, upstream.app.renew_sessions = {TOKENS[0]}, True
    return upstream


def post(proxy, upstream, stream=False) -> httpx.Response:
    """One request on a connection of its own; the answer read whole."""
    url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        with client.stream("POST", url, json={"stream": stream}) as answer:
            answer.read()
            return answer


def sent(upstream) -> list[str]:
    return [r.cookie("session") for r in upstream.app.received]


def renewals(upstream) -> list[str]:
    """The values the upstream renewed, in order."""
    return list(upstream.app.renewed.values())


def assert_not_written(folder, values) -> None:
    for where, text in written(folder):
        leaked = [v for v in values if v in text or v[-12:] in text]
        assert not leaked, f"renewed session values written whole in {where}: {leaked}"


def test_the_next_request_carries_the_renewed_value_the_client_never_sees_it_and_a_restart_keeps_it(
    tmp_path, start_proxy, renewing
):
    rules = rules_for(tmp_path, renewing.port)
    proxy = start_proxy(rules)
    answers = [post(proxy, renewing), post(proxy, renewing, stream=True), post(proxy, renewing)]
    assert [a.status_code for a in answers] == [200] * 3
    assert [a.headers.get_list("set-cookie") for a in answers] == [[]] * 3  # the client never gets the secret
    assert b"data: [DONE]" in answers[1].content
    first, second, third = renewals(renewing)
    assert sent(renewing) == [TOKENS[0], first, second]
    proxy.stop()
    kept = tmp_path / "tokens.sessions.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    from addon.tokens.tokenfile import token_key

    assert json.loads(kept.read_text())["sessions"] == {token_key(TOKENS[0]): third}
    assert proxy.log().count(RENEWED) == 3

    renewing.app.received.clear()
    proxy = start_proxy(rules)  # a restart: the renewed value, not the one in the tokens file
    assert post(proxy, renewing).status_code == 200
    assert sent(renewing) == [third]
    proxy.stop()
    assert_not_written(tmp_path, renewals(renewing))


def test_a_retry_renewed_by_the_upstream_gives_the_client_its_answer_without_the_set_cookie(
    tmp_path, start_proxy, renewing
):
    renewing.app.tokens = {TOKENS[1]}  # TOKENS[0] is refused (403): the retry goes with TOKENS[1]
    rules = write_rules(tmp_path, RULES.format(port=renewing.port, more=""), tokens=TOKENS[:2])
    proxy = start_proxy(rules)
    answers = [post(proxy, renewing, stream=True), post(proxy, renewing)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers.get_list("set-cookie") for a in answers] == [[], []]
    first, second = renewals(renewing)
    assert sent(renewing) == [TOKENS[0], TOKENS[1], first]  # the account that was renewed in a retry goes on renewed
    proxy.stop()
    assert_not_written(tmp_path, renewals(renewing))


def test_follow_set_cookie_false_passes_the_set_cookie_on(tmp_path, start_proxy, renewing):
    proxy = start_proxy(rules_for(tmp_path, renewing.port, ", follow_set_cookie: false"))
    answer = post(proxy, renewing)
    assert answer.headers.get_list("set-cookie") == [f"session={renewals(renewing)[0]}; Path=/; HttpOnly; Secure"]
    assert post(proxy, renewing).status_code == 403  # the account kept its old value, which the upstream no longer takes
    assert sent(renewing) == [TOKENS[0], TOKENS[0]]
    assert not (tmp_path / "tokens.sessions.json").exists()


@pytest.fixture
def two_on_redis(tmp_path, renewing, redis_server):
    """Two proxies on one rules file and one redis-server (`more`: further tokens: keys)."""
    started: list[Proxy] = []

    def start(more: str) -> list[Proxy]:
        rules = rules_for(tmp_path, renewing.port, f', store: "{redis_server.url}"{more}')
        proxies = [Proxy(rules, tmp_path), Proxy(rules, tmp_path)]
        started.extend(proxies)
        CertStore.from_store(proxies[0].confdir, "mitmproxy", 2048)  # one CA, made before both start
        for p in proxies:
            p.start()
            p.wait_for_log("token health shared through Redis")
        return proxies

    yield start
    for p in started:
        p.stop()
    assert_not_written(tmp_path, renewals(renewing))


def test_with_a_key_the_other_proxy_uses_the_renewed_value_and_redis_holds_none_in_the_clear(
    two_on_redis, renewing, redis_server, monkeypatch
):
    monkeypatch.setenv(KEY, "a-session-key-for-the-e2e-tests")  # the proxies inherit the environment
    a, b = two_on_redis(f', session_key: "{{env:{KEY}}}"')
    assert post(a, renewing).status_code == 200
    b.wait_for_log(THROUGH_OTHER)
    assert post(b, renewing).status_code == 200
    first, second = renewals(renewing)
    assert sent(renewing) == [TOKENS[0], first]
    a.wait_for_log(THROUGH_OTHER)  # and back: b's renewal reaches a
    assert post(a, renewing).status_code == 200
    assert sent(renewing)[-1] == second
    everything = redis_server.everything()
    assert any("sessions" in item for item in everything)  # the sealed values are there
    for value in [TOKENS[0], *renewals(renewing)]:
        assert not [item for item in everything if value[-12:] in item], value
    assert LOCAL_ONLY not in a.log() + b.log()


def test_without_a_key_renewed_values_stay_local_and_the_log_says_so_once(two_on_redis, renewing, redis_server):
    a, b = two_on_redis("")
    assert [post(a, renewing).status_code for _ in range(2)] == [200, 200]
    assert post(b, renewing).status_code == 403  # b still sends the value of the tokens file
    assert sent(renewing) == [TOKENS[0], renewals(renewing)[0], TOKENS[0]]
    assert a.log().count(LOCAL_ONLY) == 1
    assert THROUGH_OTHER not in b.log()
    assert not [item for item in redis_server.everything() if item.endswith(":sessions")]
