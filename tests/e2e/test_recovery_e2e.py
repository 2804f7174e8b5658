"""End to end: refused requests are replayed with the next token through a real mitmdump.

The upstream refuses chosen tokens; assertions are on what it received and on
what the client got.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from mitmproxy import io

from conftest import Mitmweb, Proxy, free_port
from streams import h2_read_then_reset
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - name: account
    match:
      host: "127.0.0.1:{port}"
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      X-Captcha-Token: "{{captcha}}"
    cookies:
      session: "{{token}}"
  - name: sse-accept
    match: {{host: "127.0.0.1:{port}", stream: true}}
    headers: {{Accept: text/event-stream}}
  - name: json-accept
    match: {{host: "127.0.0.1:{port}", stream: false}}
    headers: {{Accept: application/json}}
tokens:
  file: tokens.txt
  strategy: {strategy}
  max_attempts: {max_attempts}
  cooldown: {cooldown}
  breaker: {{tokens: {breaker}, window: 60, pause: 300}}
captcha: {{command: [{python}, fetch.py], ttl: 300}}
on_response:
  - match: {{status: 403, body: "(?i)recaptcha validation failed"}}
    action: refresh_captcha
  - match: {{status: [401, 403]}}
    action: rotate
"""

# a new captcha value for every run: cap-1, cap-2, ...
FETCH = """\
import pathlib
p = pathlib.Path("runs.txt")
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
print(f"cap-{n}-captcha-value")
"""

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def rules_for(folder, port, strategy="round_robin", breaker=10, tokens=None, max_attempts=3, cooldown=300):
    """The rules above for an upstream on this port, with the captcha command beside them."""
    (folder / "fetch.py").write_text(FETCH)
    text = RULES.format(port=port, python=json.dumps(sys.executable), strategy=strategy, breaker=breaker,
                        max_attempts=max_attempts, cooldown=cooldown)  # fmt: skip
    return write_rules(folder, text, tokens=tokens)


@pytest.fixture
def make_rules(tmp_path, upstream):
    return lambda **kw: rules_for(tmp_path, upstream.port, **kw)


def start(start_proxy, rules):
    return start_proxy(rules, "--save-stream-file", str(rules.parent / "flows.mitm"))


def post(proxy, upstream, body=BODY, **kw):
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        return client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", content=body, **kw)


def saved_flows(proxy, rules):
    proxy.stop()
    with open(rules.parent / "flows.mitm", "rb") as f:
        return list(io.FlowReader(f).stream())


def state(rules) -> dict:
    return json.loads((rules.parent / "tokens.state.json").read_text())["tokens"]


def test_refused_token_is_recovered_by_the_next(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    rules = make_rules()
    proxy = start(start_proxy, rules)
    answer = post(proxy, upstream, headers={"X-Client": "kept"})
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"

    first, second = upstream.app.received
    assert (first.cookie("session"), second.cookie("session")) == (TOKENS[0], TOKENS[1])
    assert (first.header("x-captcha-token"), second.header("x-captcha-token")) == ("cap-1-captcha-value", "cap-2-captcha-value")
    assert first.body == second.body == BODY
    same = lambda r: [(k, v) for k, v in r.headers if k not in ("cookie", "x-captcha-token")]  # noqa: E731
    assert same(first) == same(second)
    assert (first.method, first.path) == (second.method, second.path)

    flows = saved_flows(proxy, rules)
    original = next(f for f in flows if not f.is_replay)
    (replay,) = [f for f in flows if f.is_replay]
    assert original.marked == ":repeat:"
    assert original.comment.splitlines()[-1] == f"· attempts: 403 with …{TOKENS[0][-4:]} → 200 with …{TOKENS[1][-4:]}"
    assert replay.is_replay == "request" and replay.response.status_code == 200
    assert replay.comment == f"attempt 2 of flow {original.id[:8]}, with token …{TOKENS[1][-4:]}"
    log = proxy.log()
    assert f"tokens: …{TOKENS[0][-4:]} refused (403); passed over for 300 s" in log
    for token in TOKENS:
        assert token not in log


def test_every_attempt_refused_gives_the_last_answer(make_rules, start_proxy, upstream):
    upstream.app.tokens = set()
    rules = make_rules()
    proxy = start(start_proxy, rules)
    answer = post(proxy, upstream)
    assert answer.status_code == 403 and answer.json()["error"]["message"] == "unknown account"
    assert [r.cookie("session") for r in upstream.app.received] == TOKENS
    original = next(f for f in saved_flows(proxy, rules) if not f.is_replay)
    assert original.marked == ""
    masks = [f"…{t[-4:]}" for t in TOKENS]
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with {masks[0]} → 403 with {masks[1]} → 403 with {masks[2]} (gave up after 3 attempts)"
    )
    assert (rules.parent / "runs.txt").read_text() == "3"  # a captcha value for each attempt, none after the last


def test_no_captcha_value_is_fetched_when_no_token_is_left_to_try(make_rules, start_proxy, upstream):
    upstream.app.tokens = set()
    rules = make_rules(tokens=TOKENS[:2])  # two tokens, three attempts allowed
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 403
    assert [r.cookie("session") for r in upstream.app.received] == TOKENS[:2]
    assert [r.header("x-captcha-token") for r in upstream.app.received] == ["cap-1-captcha-value", "cap-2-captcha-value"]
    original = next(f for f in saved_flows(proxy, rules) if not f.is_replay)
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with …{TOKENS[0][-4:]} → 403 with …{TOKENS[1][-4:]} (no other token to try)"
    )
    assert (rules.parent / "runs.txt").read_text() == "2"  # the command ran for the two attempts sent, not a third time


def test_recovered_flow_is_timed_as_the_client_waited(make_rules, start_proxy, upstream):
    """mitmweb's time column is response.timestamp_end - request.timestamp_start of the client's flow."""
    upstream.app.tokens = {TOKENS[1]}
    rules = make_rules()
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200
    answered = time.time()
    flows = saved_flows(proxy, rules)
    original = next(f for f in flows if not f.is_replay)
    (replay,) = [f for f in flows if f.is_replay]
    assert original.request.timestamp_start < replay.request.timestamp_start
    # the client's answer is the replay's: it began when the replay's did, and ended no earlier
    assert original.response.timestamp_start == replay.response.timestamp_start
    assert replay.response.timestamp_end <= original.response.timestamp_end <= answered


def test_one_request_never_uses_a_token_twice(make_rules, start_proxy, upstream):
    """More attempts allowed than there are tokens, and a breaker that would not stop it: the
    rotation runs out of untried tokens before the bound, and stops there."""
    upstream.app.tokens = set()
    rules = make_rules(max_attempts=5, breaker=10)
    proxy = start(start_proxy, rules)
    answer = post(proxy, upstream)
    assert answer.status_code == 403
    assert [r.cookie("session") for r in upstream.app.received] == TOKENS  # each once, though all are cooling
    original = next(f for f in saved_flows(proxy, rules) if not f.is_replay)
    masks = [f"…{t[-4:]}" for t in TOKENS]
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with {masks[0]} → 403 with {masks[1]} → 403 with {masks[2]} (no other token to try)"
    )


def test_sticky_stays_on_the_replacement_when_the_refused_tokens_cooldown_ends(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}
    rules = make_rules(strategy="sticky", cooldown=1)
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200  # T0 refused, T1 took over
    proxy.wait_for_log(r"tokens: …1111 refused \(403\); passed over for 1 s")
    time.sleep(1.5)  # T0's cooldown is over: it is active again, but sticky stays on T1
    upstream.app.tokens = set(TOKENS)
    for _ in range(3):
        assert post(proxy, upstream).status_code == 200
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[0], TOKENS[1], TOKENS[1], TOKENS[1], TOKENS[1]]


def test_no_tokens_means_503_and_no_upstream_traffic(make_rules, start_proxy, upstream):
    rules = make_rules(tokens=["# nothing here yet"])
    proxy = start(start_proxy, rules)
    answer = post(proxy, upstream)
    assert answer.status_code == 503
    assert answer.text == (
        f"mitmproxy rules addon: cannot send this request: the tokens file {rules.parent}/tokens.txt has no tokens.\n"
    )
    assert upstream.app.received == []


def test_stale_captcha_is_refreshed_with_the_same_token(make_rules, start_proxy, upstream):
    upstream.app.rejected_captchas = {"cap-1-captcha-value"}
    rules = make_rules()
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200
    first, second = upstream.app.received
    assert first.cookie("session") == second.cookie("session") == TOKENS[0]
    assert (first.header("x-captcha-token"), second.header("x-captcha-token")) == ("cap-1-captcha-value", "cap-2-captcha-value")
    proxy.stop()
    assert state(rules)[_key(TOKENS[0])]["cooling_until"] == 0  # a captcha problem cools no token


def test_retry_after_longer_than_the_cooldown_wins(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    upstream.app.retry_after = "7200"
    rules = make_rules()
    proxy = start(start_proxy, rules)
    before = time.time()
    assert post(proxy, upstream).status_code == 200
    proxy.stop()
    cooling_until = state(rules)[_key(TOKENS[0])]["cooling_until"]
    assert before + 7200 <= cooling_until <= time.time() + 7200


def test_a_retry_after_of_other_digits_than_ascii_is_as_if_absent(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    upstream.app.retry_after = "²"  # issue 23, attack 8: "²".isdigit() is true, float("²") raises
    rules = make_rules()
    proxy = start(start_proxy, rules)
    before = time.time()
    assert post(proxy, upstream).status_code == 200  # retried with the next token
    proxy.stop()
    assert "Traceback" not in proxy.log()
    cooling_until = state(rules)[_key(TOKENS[0])]["cooling_until"]
    assert before + 300 <= cooling_until <= time.time() + 300  # the cooldown, as with no Retry-After


def test_breaker_stops_rotation_when_every_token_is_refused(make_rules, start_proxy, upstream):
    upstream.app.refuse_all = "access denied for your IP address"
    rules = make_rules(breaker=3, tokens=[*TOKENS, "tok-delta-0000000004444"])
    proxy = start(start_proxy, rules)
    first = post(proxy, upstream)
    assert first.status_code == 403
    assert len(upstream.app.received) == 3  # T0, T1, T2 refused: the third opens the breaker
    upstream.app.received.clear()
    second = post(proxy, upstream)
    assert second.status_code == 403 and second.json()["error"]["message"] == "access denied for your IP address"
    (passed,) = upstream.app.received  # passed to the client as it is, with the next token in the rotation
    assert passed.cookie("session") == TOKENS[1]
    proxy.stop()
    log = proxy.log()
    assert log.count("3 different tokens were refused within 60 s and none worked in between; the cause is probably "
                     "not the tokens") == 1
    health = state(rules)
    assert _key("tok-delta-0000000004444") not in health  # never drawn: no record, so active
    assert [health[_key(t)]["refusals"] for t in TOKENS] == [1, 1, 1]  # counted (not while open), ...
    assert [health[_key(t)]["cooling_until"] for t in TOKENS] == [0, 0, 0]  # ... but no good token cooled


def test_revoked_tokens_among_good_ones_cool_down_and_the_breaker_stays_closed(make_rules, start_proxy, upstream):
    """Issue 22: 6 tokens of which 3 are revoked, round robin, the default breaker (3 tokens in 60 s).
    The good tokens' successes between the refusals put the blame on the revoked ones."""
    revoked = [f"tok-revoked-00000000000{n}" for n in range(3)]
    tokens = [t for pair in zip(TOKENS, revoked) for t in pair]  # good, revoked, good, revoked, ...
    rules = make_rules(breaker=3, tokens=tokens)
    proxy = start(start_proxy, rules)
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        statuses = [client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", content=BODY).status_code
                    for _ in range(200)]  # fmt: skip
    assert statuses == [200] * 200
    sent = [r.cookie("session") for r in upstream.app.received]
    assert [sent.count(t) for t in revoked] == [1, 1, 1]  # each refused once, then passed over
    proxy.stop()
    assert "different tokens were refused" not in proxy.log()
    health = state(rules)
    for t in revoked:
        assert health[_key(t)]["refusals"] == 1 and health[_key(t)]["cooling_until"] > time.time()


def test_token_health_survives_a_restart(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}
    rules = make_rules(strategy="sticky")
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200
    proxy.stop()
    upstream.app.received.clear()
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[1]]  # T0 is still cooling down


def test_corrupt_state_file_means_a_fresh_start(make_rules, start_proxy, upstream):
    rules = make_rules()
    (rules.parent / "tokens.state.json").write_text("{not json")
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200
    assert "cannot use the state file" in proxy.log() and "starting with every token active" in proxy.log()


def test_health_follows_tokens_when_the_file_is_edited(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2], "tok-new-000000000005555"}
    rules = make_rules(strategy="sticky")
    proxy = start(start_proxy, rules)
    assert post(proxy, upstream).status_code == 200  # T0 refused, cooling; sticky now on T1
    (rules.parent / "tokens.txt").write_text("\n".join(["tok-new-000000000005555", TOKENS[0], TOKENS[2]]) + "\n")
    proxy.wait_for_log(r"re-read .*tokens.txt: 3 token")
    upstream.app.received.clear()
    for _ in range(3):
        assert post(proxy, upstream).status_code == 200
    # T1 is gone from the file; T0 keeps its cooldown although it moved to another line
    assert TOKENS[0] not in [r.cookie("session") for r in upstream.app.received]


def test_storm_of_refusals_marks_the_token_once(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}
    upstream.app.refusal_delay = 0.3  # the first refusals come late: many requests are in flight with the token
    rules = make_rules(strategy="sticky", breaker=3)
    proxy = start(start_proxy, rules)

    def one(i: int) -> int:
        return post(proxy, upstream, headers={"X-Request": str(i)}).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(one, range(100)))
    assert statuses == [200] * 100
    by_request: dict[str, list[str]] = {}
    for r in upstream.app.received:
        by_request.setdefault(r.header("x-request"), []).append(r.cookie("session"))
    assert len(by_request) == 100
    for tokens in by_request.values():
        assert tokens.count(TOKENS[0]) <= 1  # never the same token twice in one request
        assert tokens in ([TOKENS[0], TOKENS[1]], [TOKENS[1]])  # every retry moved to the same next token
    sent_t0 = [i for i, r in enumerate(upstream.app.received) if r.cookie("session") == TOKENS[0]]
    print(f"{len(sent_t0)} requests went out with the refused token before it was marked")
    assert len(sent_t0) >= 2  # several in flight were refused with it at once: the case under test
    first_retry = next(i for i, r in enumerate(upstream.app.received) if r.cookie("session") == TOKENS[1])
    assert all(i < first_retry + 20 for i in sent_t0)  # none sent once the refusal was marked (20 in flight)
    log = proxy.log()
    assert log.count(f"tokens: …{TOKENS[0][-4:]} refused (403)") == 1
    assert "different tokens were refused" not in log


def test_openai_sdk_streams_through_a_recovery(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    rules = make_rules()
    proxy = start(start_proxy, rules)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{upstream.port}/v1",
        api_key="sk-client",
        http_client=httpx.Client(proxy=proxy.url, timeout=60),
        max_retries=0,
    )
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "word0 word1 word2 word3 word4 "
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[0], TOKENS[1]]
    assert all(r.header("accept") == "text/event-stream" for r in upstream.app.received)


def test_successful_streams_still_stream(make_rules, start_proxy, upstream):
    """A first attempt that succeeds is streamed as before, though a 403 would have been held."""
    rules = make_rules()
    proxy = start(start_proxy, rules)
    arrivals = []
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
        with client.stream("POST", url, content=json.dumps({"model": "m", "stream": True})) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append((time.time(), json.loads(line[6:])["sent_at"]))
    assert len(arrivals) == 6
    assert arrivals[0][0] < arrivals[-1][1] - 0.5  # the first event arrived long before the last was sent


def test_recovery_over_https_and_http2(tmp_path, start_proxy, upstream_tls):
    upstream_tls.app.tokens = {TOKENS[2]}
    rules = rules_for(tmp_path, upstream_tls.port)
    proxy = start(start_proxy, rules)
    with httpx.Client(proxy=proxy.url, verify=proxy.ssl_context, http2=True, timeout=60) as client:
        answer = client.post(f"https://127.0.0.1:{upstream_tls.port}/v1/chat/completions", content=BODY)
    assert answer.status_code == 200 and answer.http_version == "HTTP/2"
    assert [(r.cookie("session"), r.http_version, r.status) for r in upstream_tls.app.received] == [
        (TOKENS[0], "2", 403), (TOKENS[1], "2", 403), (TOKENS[2], "2", 200),
    ]  # fmt: skip
    assert len({r.body for r in upstream_tls.app.received}) == 1


@pytest.mark.parametrize("regular_first", [False, True], ids=["upstream mode", "upstream mode after a regular one"])
def test_recovery_in_upstream_mode_goes_through_the_upstream_proxy(make_rules, start_proxy, upstream, tmp_path, regular_first):
    """With `--mode upstream:`, the retry takes the same route as the refused request. mitmproxy's
    replay routes through the upstream proxy only when the first mode is upstream mode; with
    another mode first, the route comes from the refused flow's server connection."""
    upstream.app.tokens = {TOKENS[1]}
    rules = make_rules()
    outer = Proxy(rules, tmp_path, addon=False).start()  # a bare mitmdump between the addon and the upstream
    modes = ["--mode", f"regular@{free_port()}"] if regular_first else []
    try:
        proxy = start_proxy(rules, *modes, "--mode", f"upstream:{outer.url}")
        answer = post(proxy, upstream)
    finally:
        outer.stop()
    assert answer.status_code == 200
    assert [(r.cookie("session"), r.status) for r in upstream.app.received] == [(TOKENS[0], 403), (TOKENS[1], 200)]
    assert [f.request.cookies["session"] for f in outer.saved_flows()] == [TOKENS[0], TOKENS[1]]
    proxy.stop()
    (replay,) = [f for f in proxy.saved_flows() if f.is_replay]
    assert replay.server_conn.via == ("http", ("127.0.0.1", outer.port))


def test_recovery_over_https_in_upstream_mode(tmp_path, start_proxy, upstream_tls):
    """HTTPS through an upstream proxy (CONNECT): the retry tunnels through it too."""
    upstream_tls.app.tokens = {TOKENS[1]}
    rules = rules_for(tmp_path, upstream_tls.port)
    outer = Proxy(rules, tmp_path, addon=False).start()
    try:
        proxy = start_proxy(rules, "--mode", f"upstream:{outer.url}")
        with httpx.Client(proxy=proxy.url, verify=proxy.ssl_context, timeout=60) as client:
            answer = client.post(f"https://127.0.0.1:{upstream_tls.port}/v1/chat/completions", content=BODY)
    finally:
        outer.stop()
    assert answer.status_code == 200
    assert [(r.cookie("session"), r.status) for r in upstream_tls.app.received] == [(TOKENS[0], 403), (TOKENS[1], 200)]
    flows = [f for f in outer.saved_flows() if f.request.method != "CONNECT"]
    assert [(f.request.scheme, f.request.cookies["session"]) for f in flows] == [("https", TOKENS[0]), ("https", TOKENS[1])]


def test_recovery_in_reverse_mode(make_rules, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    proxy = start_proxy(make_rules(), "--mode", f"reverse:http://127.0.0.1:{upstream.port}")
    with httpx.Client(timeout=60) as client:
        answer = client.post(f"{proxy.url}/v1/chat/completions", content=BODY)
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert [(r.cookie("session"), r.status) for r in upstream.app.received] == [(TOKENS[0], 403), (TOKENS[1], 200)]


@pytest.mark.parametrize("large", [403, 200], ids=["large refusal", "large answer to the retry"])
def test_answers_mitmproxy_streams_by_size_are_not_lost(make_rules, start_proxy, upstream, large):
    """With stream_large_bodies, mitmproxy streams a body past the limit whatever an addon says:
    a large refusal has reached the client before it can be judged, and a large answer to a
    replay goes nowhere. Neither may be lost, sent twice, or leave the client hanging."""
    upstream.app.tokens = {TOKENS[1]}
    upstream.app.padding = {large: 50_000}
    rules = make_rules()
    proxy = start_proxy(rules, "--set", "stream_large_bodies=10k")
    answer = post(proxy, upstream)
    assert answer.status_code == 403 and answer.json()["error"]["message"] == "unknown account"
    if large == 403:
        assert len(answer.content) > 50_000
        assert [r.status for r in upstream.app.received] == [403]  # not replayed behind the client's back
        proxy.wait_for_log("the 403 was streamed to the client before it could be judged")
    else:
        assert [r.status for r in upstream.app.received] == [403, 200]
        proxy.wait_for_log(r"attempt 2 failed: the answer was too large to hold \(stream_large_bodies\)")


def _key(token: str) -> str:
    from addon.tokens.tokenfile import token_key

    return token_key(token)


@pytest.mark.parametrize("way", ["HTTP/1.1 close", "HTTP/2 reset"])
def test_no_retry_for_a_client_that_left(request, tmp_path, start_proxy, way):
    """A client that leaves while its request is being recovered (each refusal takes 1 s; it leaves
    once the first has come, while the first retry is under way): the retry in flight is hung up, and
    nothing more is sent for it: no other retry, no other token cooled."""
    fixture = "upstream" if way == "HTTP/1.1 close" else "upstream_tls"
    up = request.getfixturevalue(fixture)
    up.app.tokens, up.app.refusal_delay = set(), 1.0
    rules = rules_for(tmp_path, up.port, max_attempts=10, breaker=100, tokens=[*TOKENS, *(t + "x" for t in TOKENS)])
    proxy = start_proxy(rules)
    body = json.dumps({"model": "m", "messages": []}).encode()  # not streaming: recovered in the response hook
    first_refusal = lambda: proxy.wait_for_log(r"refused \(403\)")  # noqa: E731
    if way == "HTTP/1.1 close":
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(f"POST http://127.0.0.1:{up.port}/v1/chat/completions?left HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        first_refusal()
    else:
        sock = h2_read_then_reset(proxy.url, f"https://127.0.0.1:{up.port}/v1/chat/completions?left", body, proxy.ca, 0,
                                  first_refusal)  # fmt: skip
    sock.close()
    proxy.wait_for_log(r"not recovered POST .*the client left")
    time.sleep(1.5)  # another retry would have reached the upstream by now
    # the client's request, and the one retry under way when it left if it got that far (its captcha is
    # fetched first); not one more
    ours = [r for r in up.app.received if r.query == "left"]  # (not what another test's proxy may still send)
    assert 1 <= len(ours) <= 2, proxy.log()
    assert proxy.log().count("refused (403)") == 1  # one token cooled, not one per retry


def test_refusals_that_go_to_no_client_keep_only_a_copy(tmp_path, upstream):
    """Three refusals of 2 MB each: the client gets the last one whole; the attempts before it keep
    the first stream_copy_limit bytes of theirs in memory (what mitmweb shows), not all of it."""
    upstream.app.tokens, upstream.app.padding = set(), {403: 2_000_000}
    web = Mitmweb(rules_for(tmp_path, upstream.port, breaker=100), tmp_path, "--set", "stream_copy_limit=1k").start()
    assert web.web is not None
    try:
        answer = post(web, upstream)
        web.wait_for_log(r"not recovered POST")
        flows = web.web.get("/flows").json()
    finally:
        web.stop()
    assert answer.status_code == 403 and len(answer.content) > 2_000_000  # the last refusal, whole
    size = {f["comment"].split(",")[0] if f["comment"].startswith("attempt") else "client": f["response"]["contentLength"]
            for f in flows}  # fmt: skip
    assert size["client"] > 2_000_000
    assert size["attempt 1 of flow " + flows[0]["id"][:8]] == 1024  # the refused first attempt, for mitmweb
    assert size["attempt 2 of flow " + flows[0]["id"][:8]] == 1024
    assert size["attempt 3 of flow " + flows[0]["id"][:8]] > 2_000_000  # its answer is the one the client got
