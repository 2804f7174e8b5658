"""End to end: exits. Two real upstream proxies (tinyproxy, connecting out from 127.0.0.2 and 127.0.0.3)
in front of a local upstream that sees each request's source address, bans an address, and accepts a
clearance per address; a real mitmdump with the addon in regular, reverse and upstream mode."""

from __future__ import annotations

import json
import re
import socket
from collections import defaultdict
from types import SimpleNamespace

import httpx
import pytest

from addon.exits.binding import exit_order
from addon.tokens.tokenfile import token_key
from conftest import free_port
from helpers import TOKENS, write_rules
from tinyproxy import Tinyproxy

# TOKENS are all bound to exit a of (a, b); these two to b (exit_order says so, and the first test checks it)
B_TOKENS = ["tok-exit-000000000001", "tok-exit-000000000002"]
ALL_TOKENS = [*TOKENS, *B_TOKENS]
SOURCES = {"a": "127.0.0.2", "b": "127.0.0.3"}
LOGIN = ("exituser", "exit-pass-7731")

RULES = """\
exits:
  - name: a
    url: http://{user}:{{env:EXIT_PASSWORD}}@127.0.0.1:{port_a}
    cooldown: 300
  - name: b
    url: http://{user}:{{env:EXIT_PASSWORD}}@127.0.0.1:{port_b}
rules:
  - match: {{host: ["127.0.0.1:{port}", "localhost:{port_tls}", "127.0.0.1:{port_tls}"]}}
    headers: {{User-Agent: "Mozilla/5.0 (X11; Linux x86_64)", Accept: application/json, X-Captcha-Token: "{{captcha}}"}}
    cookies: {{session: "{{token}}"}}
tokens:
  file: tokens.txt
  exits: all
  failover: {failover}
  breaker: {{tokens: 2, window: 60, pause: 300}}
captcha: {{file: captcha.txt}}
"""


@pytest.fixture
def exits(tmp_path):
    started = {name: Tinyproxy(tmp_path, source, LOGIN).start() for name, source in SOURCES.items()}
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("EXIT_PASSWORD", LOGIN[1])  # the proxy inherits the environment


def rules_for(folder, exits, upstream, upstream_tls, failover=False, user=LOGIN[0]):
    text = RULES.format(port_a=exits["a"].port, port_b=exits["b"].port, port=upstream.port, port_tls=upstream_tls.port,
                        failover=str(failover).lower(), user=user)  # fmt: skip
    return write_rules(folder, text, tokens=ALL_TOKENS)


def sources_by_token(upstream) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for rec in upstream.app.received:
        seen[rec.cookie("session")].add(rec.client)
    return dict(seen)


def post(client: httpx.Client, url: str, n: int) -> list[int]:
    return [client.post(url, json={"n": i}).status_code for i in range(n)]


def test_each_token_arrives_from_its_exits_address_only(tmp_path, start_proxy, upstream, upstream_tls, exits):
    upstream.app.tokens = upstream_tls.app.tokens = set(ALL_TOKENS)
    homes = {t: exit_order(t, ("a", "b"))[0] for t in ALL_TOKENS}
    assert homes == {**dict.fromkeys(TOKENS, "a"), **dict.fromkeys(B_TOKENS, "b")}
    proxy = start_proxy(rules_for(tmp_path, exits, upstream, upstream_tls))
    with httpx.Client(proxy=proxy.url, timeout=30) as client:  # plain HTTP/1.1: a CONNECT to the exit too
        assert post(client, f"http://127.0.0.1:{upstream.port}/v1/chat/completions", 10) == [200] * 10
    with httpx.Client(proxy=proxy.url, timeout=30, verify=proxy.ssl_context, http2=True) as client:  # HTTPS, HTTP/2
        assert post(client, f"https://localhost:{upstream_tls.port}/v1/chat/completions", 10) == [200] * 10
    for server in (upstream, upstream_tls):
        seen = sources_by_token(server)
        assert len(seen) == len(ALL_TOKENS)  # every token was drawn
        assert seen == {t: {SOURCES[exit_order(t, ("a", "b"))[0]]} for t in ALL_TOKENS}
    assert {r.http_version for r in upstream_tls.app.received} == {"2"}
    proxy.stop()
    comments = [f.comment for f in proxy.saved_flows()]
    assert sum("via exit a" in c for c in comments) and sum("via exit b" in c for c in comments)
    assert "connection_strategy is set to lazy" in proxy.log()
    assert LOGIN[1] not in proxy.log()
    for tiny in exits.values():  # each exit was logged in to, and never refused the login
        assert "CONNECT" in tiny.log() and "Proxy Authentication" not in tiny.log()


@pytest.mark.parametrize("mode", ["reverse", "upstream"])
def test_in_reverse_and_upstream_mode_each_token_leaves_through_its_exit(tmp_path, start_proxy, upstream, upstream_tls,
                                                                         exits, mode):  # fmt: skip
    upstream.app.tokens = set(ALL_TOKENS)
    rules = rules_for(tmp_path, exits, upstream, upstream_tls)
    if mode == "reverse":
        proxy = start_proxy(rules, "--mode", f"reverse:http://127.0.0.1:{upstream.port}")
        client = httpx.Client(base_url=proxy.url, timeout=30, headers={"Host": f"127.0.0.1:{upstream.port}"})
    else:  # the mode's own upstream proxy is a third tinyproxy, that the requests of these tokens never take
        mode_proxy = Tinyproxy(tmp_path, "127.0.0.4").start()
        proxy = start_proxy(rules, "--mode", f"upstream:{mode_proxy.url()}")
        client = httpx.Client(proxy=proxy.url, base_url=f"http://127.0.0.1:{upstream.port}", timeout=30)
    try:
        with client:
            assert post(client, "/v1/chat/completions", 10) == [200] * 10
    finally:
        if mode == "upstream":
            mode_proxy.stop()
    assert sources_by_token(upstream) == {t: {SOURCES[exit_order(t, ("a", "b"))[0]]} for t in ALL_TOKENS}
    if mode == "upstream":  # plain http in upstream mode: the exit gets the request itself, with the login on it
        assert all(r.header("proxy-authorization") is None for r in upstream.app.received)


def test_a_banned_address_rests_its_exit_and_blames_no_token(tmp_path, start_proxy, upstream, upstream_tls, exits):
    upstream.app.tokens = set(ALL_TOKENS)
    upstream.app.banned = {SOURCES["a"]}
    rules = rules_for(tmp_path, exits, upstream, upstream_tls)
    status_port = free_port()
    proxy = start_proxy(rules, "--set", f"status_listen=127.0.0.1:{status_port}")
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        statuses = post(client, f"http://127.0.0.1:{upstream.port}/v1/chat/completions", 12)
    with httpx.Client(base_url=f"http://127.0.0.1:{status_port}", timeout=30) as status:
        metrics, document = status.get("/metrics").text, status.get("/status").json()
    assert 'mitm_rules_exit_up{exit="a"} 0.0' in metrics and 'mitm_rules_exit_up{exit="b"} 1.0' in metrics
    assert 'mitm_rules_exit_refusals_total{exit="a"} 2.0' in metrics
    a, b = document["exits"]
    assert (a["name"], a["state"], a["refusals"], a["tokens"]) == ("a", "resting", 2, {"default": len(TOKENS)})
    assert (b["name"], b["state"], b["refusals"], b["successes"]) == ("b", "up", 0, 12)
    assert {t["token"][-4:]: t["exit"] for t in document["pools"][0]["tokens"]} == {
        t[-4:]: exit_order(t, ("a", "b"))[0] for t in ALL_TOKENS}
    proxy.stop()
    log = proxy.log()
    assert "exit a: 2 different tokens were refused through it" in log
    # the refusals through a were retried with tokens of b; once a rested, its tokens wait: not drawn
    assert statuses == [200] * 12
    assert {r.client for r in upstream.app.received if r.status == 200} == {SOURCES["b"]}
    assert sum(r.client == SOURCES["a"] for r in upstream.app.received) == 2  # the two refusals that rested it
    state = json.loads((rules.parent / "tokens.state.json").read_text())["tokens"]
    for token in TOKENS:  # no token of exit a was cooled down or retired for its address
        record = state.get(token_key(token), {})
        assert record.get("cooling_until", 0) == 0 and record.get("retired_at", 0) == 0, token
    assert "different tokens were refused within" not in log  # the pool's own breaker stayed closed


def test_with_failover_the_tokens_of_a_resting_exit_leave_through_the_next(tmp_path, start_proxy, upstream,
                                                                          upstream_tls, exits):  # fmt: skip
    upstream.app.tokens = set(ALL_TOKENS)
    upstream.app.banned = {SOURCES["a"]}
    proxy = start_proxy(rules_for(tmp_path, exits, upstream, upstream_tls, failover=True))
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        statuses = post(client, f"http://127.0.0.1:{upstream.port}/v1/chat/completions", 12)
    assert statuses == [200] * 12  # the first refusals through a were retried through b
    later = upstream.app.received[-6:]
    assert {r.client for r in later} == {SOURCES["b"]}
    assert {r.cookie("session") for r in later} & set(TOKENS)  # a's tokens, through b
    proxy.stop()
    assert any("(failover: exit a rests)" in f.comment for f in proxy.saved_flows())


def test_an_exit_with_the_wrong_password_is_a_clear_failed_attempt(tmp_path, start_proxy, upstream, upstream_tls,
                                                                  exits):  # fmt: skip
    upstream.app.tokens = set(ALL_TOKENS)
    rules = rules_for(tmp_path, exits, upstream, upstream_tls, user="someone-else")
    proxy = start_proxy(rules)
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        response = client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", json={})
    assert response.status_code == 502
    assert "refused HTTP CONNECT request: 401" in response.text  # Debian's tinyproxy 1.11.1 answers 401
    assert upstream.app.received == []
    proxy.stop()
    log = proxy.log()
    assert "could not get through http://someone-else:****@127.0.0.1:" in log and "(no token is blamed)" in log
    assert LOGIN[1] not in log
    state = rules.parent / "tokens.state.json"
    if state.exists():
        assert all(r.get("cooling_until", 0) == 0 for r in json.loads(state.read_text())["tokens"].values())


def test_an_exit_that_never_answers_costs_a_request_retry_timeout_not_a_hang(tmp_path, start_proxy, upstream,
                                                                           upstream_tls, exits):  # fmt: skip
    upstream.app.tokens = set(ALL_TOKENS)
    with socket.socket() as silent:  # takes connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        both = {"a": SimpleNamespace(port=silent.getsockname()[1]), "b": exits["b"]}
        proxy = start_proxy(rules_for(tmp_path, both, upstream, upstream_tls), "--set", "retry_timeout=2")
        with httpx.Client(proxy=proxy.url, timeout=60) as client:  # TOKENS[0], the first drawn, is bound to a
            response = client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", json={})
            assert response.status_code == 502
            assert post(client, f"http://127.0.0.1:{upstream.port}/v1/chat/completions", 1) in ([200], [502])
    proxy.stop()
    assert upstream.app.received == [] or {r.client for r in upstream.app.received} == {SOURCES["b"]}
    assert re.search(r"exit a: POST http://127\.0\.0\.1:\d+/v1/chat/completions could not get through "
                     r"http://exituser:\*\*\*\*@127\.0\.0\.1:\d+: (exit timeout|connection closed)", proxy.log())


CLEARANCE_RULES = """\
exits:
  - {{name: a, url: "http://{user}:{{env:EXIT_PASSWORD}}@127.0.0.1:{port_a}"}}
  - {{name: b, url: "http://{user}:{{env:EXIT_PASSWORD}}@127.0.0.1:{port_b}"}}
values:
  cf_clearance: {{file: "clearance/{{exit}}.txt"}}
  ua: {{file: "ua/{{exit}}.txt", secret: false}}
captcha: {{file: captcha.txt}}
rules:
  - match: {{host: "127.0.0.1:{port}", path: /nextjs-api/stream/*}}
    headers: {{User-Agent: "{{ua}}"}}
    cookies: {{cf_clearance: "{{cf_clearance}}", arena-auth-prod-v1: "{{token}}"}}
    body: {{recaptchaV3Token: "{{captcha}}"}}
tokens: {{file: tokens.txt, exits: all}}
on_response:
  - match: {{status: 403, body: "(?i)just a moment"}}
    action: refresh
    values: [cf_clearance]
"""


def test_each_exit_has_its_own_clearance_and_user_agent_and_a_refresh_renews_the_refused_exits(
    tmp_path, start_proxy, upstream, exits
):
    clearance = {"a": "cf-clearance-e2e-value-0001", "b": "cf-clearance-e2e-value-0002"}
    for folder, per_exit in (("clearance", clearance), ("ua", {n: f"Mozilla/5.0 (exit {n})" for n in SOURCES})):
        (tmp_path / folder).mkdir()
        for name, value in per_exit.items():
            (tmp_path / folder / f"{name}.txt").write_text(value + "\n")
    upstream.app.tokens = set(ALL_TOKENS)
    upstream.app.clearance_by_address = {SOURCES[n]: clearance[n] for n in SOURCES}
    text = CLEARANCE_RULES.format(user=LOGIN[0], port_a=exits["a"].port, port_b=exits["b"].port, port=upstream.port)
    proxy = start_proxy(write_rules(tmp_path, text, tokens=ALL_TOKENS))
    url = f"http://127.0.0.1:{upstream.port}/nextjs-api/stream/create-evaluation"
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        assert [client.post(url, json={"id": str(i)}).status_code for i in range(6)] == [200] * 6
        by_source = {r.client: (r.cookie("cf_clearance"), r.header("user-agent")) for r in upstream.app.received}
        assert by_source == {SOURCES[n]: (clearance[n], f"Mozilla/5.0 (exit {n})") for n in SOURCES}
        # b's address needs a new clearance now: a challenge to b's request, a browser (this callback)
        # solves it for b, and the refresh reads b's file again; a's is untouched
        upstream.app.clearance_by_address[SOURCES["b"]] = "cf-clearance-e2e-value-0003"
        solved = tmp_path / "clearance" / "b.txt"
        upstream.app.on_challenge = lambda: solved.write_text("cf-clearance-e2e-value-0003\n")
        upstream.app.received.clear()
        assert [client.post(url, json={"id": str(i)}).status_code for i in range(6)] == [200] * 6
    answered = [(r.client, r.cookie("cf_clearance")) for r in upstream.app.received if r.status == 200]
    assert set(answered) == {(SOURCES["a"], clearance["a"]), (SOURCES["b"], "cf-clearance-e2e-value-0003")}
    proxy.stop()
    assert "cf_clearance@b: new value …0003" in proxy.log() and "cf_clearance@a: new value …0003" not in proxy.log()


def test_an_exit_rested_by_one_proxy_rests_on_the_others_of_its_store(tmp_path, start_proxy, upstream, upstream_tls,
                                                                      exits, redis_server):  # fmt: skip
    upstream.app.tokens = set(ALL_TOKENS)
    upstream.app.banned = {SOURCES["a"]}
    rules = rules_for(tmp_path, exits, upstream, upstream_tls)
    rules.write_text(rules.read_text().replace("  exits: all\n", f"  exits: all\n  store: {redis_server.url}\n"))
    first, second = start_proxy(rules), start_proxy(rules)
    url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    with httpx.Client(proxy=first.url, timeout=30) as client:
        assert post(client, url, 6) == [200] * 6  # a rests, on the first proxy
    first.wait_for_log("exit a: 2 different tokens were refused through it")
    second.wait_for_log("exit a: another proxy on the shared store found its address blocked")
    upstream.app.received.clear()
    with httpx.Client(proxy=second.url, timeout=30) as client:
        assert post(client, url, 6) == [200] * 6
    assert {r.client for r in upstream.app.received} == {SOURCES["b"]}  # none of a's tokens was tried
    assert redis_server.client().get("mitm-rules:{default}:exit:a") is not None
