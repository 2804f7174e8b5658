"""End to end: two real mitmdump processes sharing one token pool through a real redis-server.

Each test starts its own redis-server (no persistence) on a free loopback port and proxies whose
rules name it as `tokens.store`; assertions are on what the local upstream received. Both proxies
run the one fetch.py in the rules' folder, so runs.txt counts captcha runs across them.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mitmproxy.certs import CertStore

from addon.tokens.tokenfile import token_key
from conftest import Proxy, assert_no_secrets, written
from helpers import TOKENS, write_rules
from latency_relay import LatencyRelay
from test_commands_e2e import Mitmweb  # with `call`: a command through the web API

RULES = """\
rules:
  - name: account
    match:
      host: "127.0.0.1:{port}"
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      Accept: application/json
      X-Captcha-Token: "{{captcha}}"
    cookies:
      session: "{{token}}"
tokens:
  file: tokens.txt
  strategy: {strategy}
  max_attempts: {max_attempts}
  cooldown: 300
  breaker: {{tokens: {breaker}, window: 60, pause: 300}}
  store: "{store}"
captcha: {{command: [{python}, fetch.py], ttl: 300}}
"""

FETCH = """\
import pathlib, time
time.sleep({delay})
p = pathlib.Path("runs.txt")
n = len(p.read_text().splitlines()) + 1 if p.exists() else 1
with p.open("a") as f:
    f.write(f"run {{n}}\\n")
print(f"cap-{{n}}-shared-captcha")
"""

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
SHARED = r"token health shared through Redis"
DOWN = r"tokens: Redis at .* cannot be reached \("  # the alert, not the warning of a command run meanwhile
BACK = r"is back: token health is shared again"
HEALTH = "mitm-rules:{default}:health"  # addon/tokens/storerecords.py's key of the token records (namespace default)
FOURTH = "tok-delta-000000004444"


def captcha(n: int) -> str:
    """The value fetch.py prints on its n-th run."""
    return f"cap-{n}-shared-captcha"


def runs(folder) -> int:
    p = folder / "runs.txt"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture
def two_proxies(tmp_path, upstream, redis_server):
    """Start proxies on one store, all on one rules file: the first a Mitmweb (to send commands to)
    with `web=True`. At the end, no token or captcha value in anything they wrote."""
    started: list[Proxy] = []

    def start(strategy="round_robin", breaker=10, max_attempts=3, tokens=None, delay=0.0, count=2, web=False,
              shared=True, store=None):  # fmt: skip
        (tmp_path / "fetch.py").write_text(FETCH.format(delay=delay))
        text = RULES.format(port=upstream.port, python=json.dumps(sys.executable), strategy=strategy, breaker=breaker,
                            max_attempts=max_attempts, store=store or redis_server.url)  # fmt: skip
        rules = write_rules(tmp_path, text, tokens=tokens)
        proxies = [Mitmweb(rules, tmp_path) if web and i == 0 else Proxy(rules, tmp_path) for i in range(count)]
        started.extend(proxies)
        # side by side (start-up is most of a test's time), on one CA made first: not by both at once
        CertStore.from_store(proxies[0].confdir, "mitmproxy", 2048)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda p: p.start(), proxies))
        for p in proxies if shared else ():
            p.wait_for_log(SHARED)
        return proxies

    yield start
    for p in started:
        p.stop()
    outputs = [o for p in started for o in getattr(p, "outputs", [])]
    assert_no_secrets(tmp_path, *outputs)
    values = [FOURTH, *(captcha(n) for n in range(1, runs(tmp_path) + 1))]
    for where, text in written(tmp_path):
        leaked = [v for v in values if v in text]
        assert not leaked, f"secret values written whole in {where}: {leaked}"


def send(via: Proxy | httpx.Client, port: int) -> httpx.Response:
    """One request through a proxy (on a connection of its own) or a client of one."""
    if isinstance(via, Proxy):
        with httpx.Client(proxy=via.url, timeout=30) as c:
            return send(c, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return via.post(url, content=BODY, headers={"Content-Type": "application/json"})


def sessions(upstream) -> list[str]:
    return [r.cookie("session") for r in upstream.app.received]


def send_ok(proxy: Proxy, upstream, n: int) -> list[str]:
    """n requests through the proxy, each answered 200; the session cookies the upstream got."""
    upstream.app.received.clear()
    for _ in range(n):
        answer = send(proxy, upstream.port)
        assert answer.status_code == 200, answer.text
    return sessions(upstream)


def wait_for_redis(redis_server, ready, what: str, timeout: float = 10) -> None:
    """Wait until `ready(client)` (a command's change goes to Redis in the background)."""
    client = redis_server.client()
    deadline = time.monotonic() + timeout
    while not ready(client):
        assert time.monotonic() < deadline, f"Redis never had {what}: {redis_server.everything()}"
        time.sleep(0.02)


def disabled_records(client) -> int:
    """Token records in Redis with the disabled flag ("cooling_until refused_at disabled successes refusals")."""
    return sum(v.split()[2] == "1" for v in client.hvals(HEALTH))


def refused_through_one_passed_over_by_the_other(a: Proxy, b: Proxy, upstream) -> None:
    upstream.app.tokens = set(TOKENS[1:])  # the first token is refused
    for _ in range(4 * len(TOKENS)):  # until the rotation comes to it (a draws at places of the shared rotation)
        upstream.app.received.clear()
        assert send(a, upstream.port).status_code == 200
        if sessions(upstream)[0] == TOKENS[0]:
            break
    assert sessions(upstream) == [TOKENS[0], TOKENS[1]]
    b.wait_for_log(rf"tokens: …{TOKENS[0][-4:]} refused through another proxy; passed over for \d+ s")
    assert TOKENS[0] not in send_ok(b, upstream, 4)


def test_a_token_refused_through_one_is_passed_over_by_the_other(two_proxies, upstream):
    a, b = two_proxies()
    refused_through_one_passed_over_by_the_other(a, b, upstream)


def test_a_token_disabled_on_one_is_disabled_on_the_other(two_proxies, upstream, redis_server):
    a, b = two_proxies(web=True)
    assert a.call("tokens.disable", TOKENS[1][-4:]) is None
    wait_for_redis(redis_server, lambda c: disabled_records(c) == 1, "the disabled token")
    sent = send_ok(b, upstream, 6)
    assert TOKENS[1] not in sent
    assert set(sent) == {TOKENS[0], TOKENS[2]}

    assert a.call("tokens.enable", TOKENS[1][-4:]) is None
    wait_for_redis(redis_server, lambda c: disabled_records(c) == 0, "the token enabled again")
    assert set(send_ok(b, upstream, 3)) == set(TOKENS)


def test_the_breaker_opened_through_one_holds_on_the_other(two_proxies, upstream):
    a, b = two_proxies(breaker=2)
    upstream.app.refuse_all = "your address is banned"
    assert send(a, upstream.port).status_code == 403
    a.wait_for_log(r"2 different tokens were refused within 60 s")
    b.wait_for_log(r"another proxy on the shared store opened the breaker")  # told in the background

    upstream.app.received.clear()
    answer = send(b, upstream.port)
    assert answer.status_code == 403
    assert answer.json()["error"]["message"] == "your address is banned"
    assert len(upstream.app.received) == 1  # passed to the client, not retried with another token


def test_a_captcha_command_runs_once_for_a_burst_over_both(two_proxies, upstream, tmp_path):
    a, b = two_proxies(delay=0.3)
    clients = [httpx.Client(proxy=(a, b)[i % 2].url, timeout=30) for i in range(20)]  # made first: the burst is one
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda c: send(c, upstream.port), clients))
    for c in clients:
        c.close()
    assert [r.status_code for r in answers] == [200] * 20
    assert runs(tmp_path) == 1
    assert {r.header("x-captcha-token") for r in upstream.app.received} == {captcha(1)}
    assert len(upstream.app.received) == 20


def test_redis_gone_and_back_mid_traffic(two_proxies, upstream, redis_server):
    a, b = two_proxies()
    answered, down = itertools.count(1), threading.Event()
    clients = [httpx.Client(proxy=p.url, timeout=30) for p in (a, b)]

    def one(i: int) -> int:
        status = send(clients[i % 2], upstream.port).status_code
        if next(answered) == 30:
            redis_server.kill()  # with up to three requests under way
            down.set()
        return status

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, range(100)))
    for c in clients:
        c.close()
    assert down.is_set()
    assert statuses == [200] * 100
    for p in (a, b):
        p.wait_for_log(DOWN)

    redis_server.start()
    for p in (a, b):
        p.wait_for_log(BACK)
        assert p.log().count("cannot be reached (") == 1, p.log()
    refused_through_one_passed_over_by_the_other(a, b, upstream)


def test_no_token_goes_to_redis(two_proxies, upstream, redis_server, tmp_path):
    a, b = two_proxies(web=True, breaker=3)
    upstream.app.tokens = set(TOKENS[1:])
    assert send(a, upstream.port).status_code == 200  # a refusal, then a success
    assert a.call("tokens.disable", TOKENS[2][-4:]) is None
    wait_for_redis(redis_server, lambda c: disabled_records(c) == 1, "the disabled token")
    send_ok(b, upstream, 3)
    assert a.call("tokens.reset") is None
    send_ok(a, upstream, 2)

    # every token has its record (successes are sent within about a second), so the scan sees them all
    wait_for_redis(redis_server, lambda c: c.hlen(HEALTH) == len(TOKENS), "a record of every token")
    everything = redis_server.everything()
    for token in TOKENS:
        for part in (token, token[-12:]):
            assert not [item for item in everything if part in item], part
    assert any(captcha(runs(tmp_path)) in item for item in everything)  # values are kept there, as documented


def test_round_robin_over_both_proxies(two_proxies, upstream):
    tokens = [*TOKENS, FOURTH]
    a, b = two_proxies(tokens=tokens)
    upstream.app.tokens = set(tokens)
    for i in range(8):
        assert send((a, b)[i % 2], upstream.port).status_code == 200
    sent = sessions(upstream)
    assert Counter(sent) == {t: 2 for t in tokens}
    assert set(sent[:4]) == set(sent[4:]) == set(tokens)  # one shared rotation, not one for each proxy


def test_started_with_redis_down_serves_then_shares(two_proxies, upstream, redis_server):
    redis_server.kill()
    (proxy,) = two_proxies(count=1, shared=False)
    proxy.wait_for_log(DOWN)
    assert send_ok(proxy, upstream, 3) == TOKENS
    redis_server.start()
    proxy.wait_for_log(BACK)
    assert proxy.log().count("cannot be reached (") == 1, proxy.log()
    assert SHARED not in proxy.log()  # "is back", not a first connection

    upstream.app.tokens = set(TOKENS[1:])
    assert send(proxy, upstream.port).status_code == 200
    wait_for_redis(redis_server, lambda c: any(v.split()[4] == "1" for v in c.hvals(HEALTH)), "the refusal")


def test_a_store_50_ms_away(two_proxies, upstream, redis_server):
    """Redis behind a relay that holds every byte 50 ms each way: the proxies still share what they
    learn, every request is answered, and sharing never turns off (no alert, no flapping)."""
    relay = LatencyRelay(redis_server.port, 0.05).start()
    try:
        a, b = two_proxies(store=redis_server.url.replace(f":{redis_server.port}/", f":{relay.port}/"))
        refused_through_one_passed_over_by_the_other(a, b, upstream)
        for p in (a, b, a, b):
            send_ok(p, upstream, 5)
        time.sleep(2)  # the keepers' turns: successes sent, the request path's connection pinged
        assert relay.connections >= 6  # the proxies did talk to Redis through it (three clients each)
        for p in (a, b):
            assert not re.search(DOWN, p.log()), p.log()
    finally:
        relay.stop()


def test_a_retry_after_longer_than_the_cooldown_holds_on_the_shared_store(two_proxies, upstream, redis_server):
    """The cooldown is 300 s; the upstream refuses the first token with `Retry-After: 7200`. It cools
    for 7200 s on the proxy it was refused through, in Redis, and on the other proxy."""
    a, b = two_proxies(web=True)
    upstream.app.tokens, upstream.app.retry_after = set(TOKENS[1:]), "7200"
    before = time.time()
    for _ in range(4 * len(TOKENS)):  # until the rotation comes to it (a draws at places of the shared rotation)
        upstream.app.received.clear()
        assert send(a, upstream.port).status_code == 200
        if sessions(upstream)[0] == TOKENS[0]:
            break
    after = time.time()
    assert sessions(upstream) == [TOKENS[0], TOKENS[1]]
    assert [r.status for r in upstream.app.received] == [403, 200]
    a.wait_for_log(rf"tokens: …{TOKENS[0][-4:]} refused \(403\); passed over for 7[12]\d\d s")
    key = token_key(TOKENS[0])
    wait_for_redis(redis_server, lambda c: c.hget(HEALTH, key) is not None, "the refusal")
    cooling_until = float(redis_server.client().hget(HEALTH, key).split()[0])
    assert before + 7200 <= cooling_until <= after + 7200, f"cools {cooling_until - after:.0f} s in Redis"
    b.wait_for_log(rf"tokens: …{TOKENS[0][-4:]} refused through another proxy; passed over for 7[12]\d\d s")
    assert TOKENS[0] not in send_ok(b, upstream, 4)
    # the refusing proxy took Redis's answer as its record (long since, by now): 7200 s there too
    (row,) = [r for r in a.status_call()[1] if r.startswith(f"…{TOKENS[0][-4:]} ")]  # (its rows, from the event log)
    until = datetime.datetime.fromisoformat(re.search(r"cooling until (\S+ \S+)", row)[1]).timestamp()
    assert before + 7199 <= until <= after + 7200, row  # (shown to the second)
