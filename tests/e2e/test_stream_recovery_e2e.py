"""End to end: a refused streaming request recovers as a stream (addon/mitm/httplayer.py).

The answer of the retry that works reaches the client event by event as the upstream sends it,
over HTTP/1.1 and HTTP/2 and in every proxy mode; a retry that goes silent mid-stream and a client
that leaves end it cleanly; with stream_retries off, or when the version guard declines, the
answer comes whole, as before. Assertions are on what the upstream received and sent, on what the
client got and when, and on the flows the proxy saved.
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import openai
import pytest
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from conftest import ROOT, Mitmweb, Proxy, assert_no_secrets, fresh
from helpers import TOKENS, write_rules
from scripted_upstream import ScriptedUpstream, answer, refuse
from streams import assert_spread_out, h2_read_then_reset, read_sse
from test_recovery_e2e import rules_for, state

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
MASKS = [f"…{t[-4:]}" for t in TOKENS]


def chat_url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}/v1/chat/completions"


def stream(url: str, **client) -> tuple[httpx.Response, list[tuple[float, dict]]]:
    """POST a streaming chat request; the answer, and each event with its arrival time."""
    with httpx.Client(timeout=60, **client) as c:
        with c.stream("POST", url, content=CHAT) as response:
            events = read_sse(response)
    return response, events


def assert_every_event_once(events: list[tuple[float, dict]], chunks: int = 5) -> None:
    """The client got the upstream's stream event for event: `chunks` words, then the end, each once
    and in the order the upstream sent them (none lost, none twice)."""
    assert len(events) == chunks + 1, [e["choices"][0]["delta"].get("content") for _, e in events]
    assert [e["choices"][0]["delta"] for _, e in events] == [{"content": f"word{i} "} for i in range(chunks)] + [{}]
    assert [e["choices"][0]["finish_reason"] for _, e in events] == [None] * chunks + ["stop"]
    sent = [e["sent_at"] for _, e in events]
    assert sent == sorted(set(sent))


def client_and_replays(proxy: Proxy):
    proxy.stop()
    flows = proxy.saved_flows()
    return next(f for f in flows if not f.is_replay), [f for f in flows if f.is_replay]


def test_recovered_stream_reaches_the_client_as_the_upstream_sends_it(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    proxy = start_proxy(rules_for(tmp_path, upstream.port), "--set", "stream_copy_limit=300")
    response, events = stream(chat_url(upstream.port), proxy=proxy.url)
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    assert_every_event_once(events)
    assert_spread_out(events)
    assert [(r.cookie("session"), r.status) for r in upstream.app.received] == [(TOKENS[0], 403), (TOKENS[1], 200)]

    original, (retry,) = client_and_replays(proxy)
    # what mitmweb shows: the winning status, the mark, the attempts, a capped copy of the body
    assert original.response.status_code == 200 and original.marked == ":repeat:"
    *_, copied, attempts = original.comment.splitlines()
    assert attempts == f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)"
    assert copied.startswith("· streamed body: ") and copied.endswith(" bytes, the first 300 kept")
    assert len(original.response.raw_content) == 300 and original.response.raw_content.startswith(b"data: {")
    assert retry.response.status_code == 200 and retry.comment == (
        f"attempt 2 of flow {original.id[:8]}, with token {MASKS[1]}; its body went to flow {original.id[:8]} as it came"
    )
    assert f"recovered POST {chat_url(upstream.port)}: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)" in proxy.log()


def test_mitmweb_shows_the_answer_that_worked_while_it_streams(tmp_path, upstream):
    upstream.app.tokens, upstream.app.chunks = {TOKENS[1]}, 12  # 3.3 s of events
    web = Mitmweb(rules_for(tmp_path, upstream.port), tmp_path).start()
    assert web.web is not None
    try:
        with httpx.Client(proxy=web.url, timeout=60) as client:
            with client.stream("POST", chat_url(upstream.port), content=CHAT) as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith("data: {"))  # under way
                during = web.web.get("/flows").json()
                assert sum(line.startswith("data: {") for line in lines) == 12  # the rest came, and the end
        after = web.web.get("/flows").json()
    finally:
        web.stop()
    assert_no_secrets(tmp_path)
    (refused,) = [f for f in during if f["marked"] == "⛔"]  # the refused first attempt, a flow of its own
    original, retry = sorted((f for f in during if f is not refused), key=lambda f: bool(f["is_replay"]))
    assert original["response"]["status_code"] == 200 and original["marked"] == "🔁"  # mitmweb shows the emoji
    assert retry["is_replay"] == "request" and retry["response"]["status_code"] == 200  # each attempt a flow of its own
    (done,) = [f for f in after if f["id"] == original["id"]]
    assert done["comment"].splitlines()[-1] == f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)"


def test_stream_refused_twice_recovers_with_the_third_token(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[2]}
    proxy = start_proxy(rules_for(tmp_path, upstream.port))
    response, events = stream(chat_url(upstream.port), proxy=proxy.url)
    assert response.status_code == 200
    assert_every_event_once(events)
    assert_spread_out(events)
    assert [(r.cookie("session"), r.status) for r in upstream.app.received] == [
        (TOKENS[0], 403), (TOKENS[1], 403), (TOKENS[2], 200),
    ]  # fmt: skip
    original, replays = client_and_replays(proxy)
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with {MASKS[0]} → 403 with {MASKS[1]} → 200 with {MASKS[2]} (streamed)"
    )
    assert [r.response.status_code for r in replays] == [403, 200]


def _outer(request, tmp_path):
    """A bare mitmdump between the addon and the upstream (upstream mode), stopped at the end."""
    # it streams bodies past 1 byte: all of them (mitmproxy on its own would hold the events)
    outer = Proxy(tmp_path / "rules.yaml", tmp_path, "--set", "stream_large_bodies=1", addon=False).start()
    request.addfinalizer(outer.stop)
    return outer


# (upstream fixture, scheme, mitmdump arguments, how the client reaches it)
MODES = {
    "plain HTTP": ("upstream", "http", lambda r, t, up: [], "proxy"),
    "HTTPS through CONNECT": ("upstream_tls", "https", lambda r, t, up: [], "proxy"),
    "HTTP/2 through CONNECT": ("upstream_tls", "https", lambda r, t, up: [], "proxy, http2"),
    "reverse mode": ("upstream", "http", lambda r, t, up: ["--mode", f"reverse:http://127.0.0.1:{up.port}"], "direct"),
    "upstream mode": ("upstream", "http", lambda r, t, up: ["--mode", f"upstream:{_outer(r, t).url}"], "proxy"),
}


@pytest.mark.parametrize("mode", MODES)
def test_recovered_stream_in_every_mode(request, tmp_path, start_proxy, mode):
    fixture, scheme, args, reach = MODES[mode]
    up = fresh(request.getfixturevalue(fixture))
    up.app.tokens = {TOKENS[1]}
    rules = rules_for(tmp_path, up.port)
    proxy = start_proxy(rules, *args(request, tmp_path, up))
    if reach == "direct":
        response, events = stream(f"{proxy.url}/v1/chat/completions")
    else:
        response, events = stream(chat_url(up.port, scheme), proxy=proxy.url, verify=proxy.ssl_context, http2="http2" in reach)
    assert response.status_code == 200
    assert response.http_version == ("HTTP/2" if "http2" in reach else "HTTP/1.1")
    assert_every_event_once(events)
    assert_spread_out(events)
    assert [(r.cookie("session"), r.status) for r in up.app.received] == [(TOKENS[0], 403), (TOKENS[1], 200)]


def test_curl_over_http2_gets_a_recovered_stream_as_it_comes(tmp_path, start_proxy, upstream_tls):
    upstream_tls.app.tokens = {TOKENS[1]}
    proxy = start_proxy(rules_for(tmp_path, upstream_tls.port))
    curl = subprocess.Popen(
        ["curl", "-sS", "-N", "--http2", "--cacert", proxy.ca, "-x", proxy.url, chat_url(upstream_tls.port, "https"),
         "-H", "Content-Type: application/json", "--data-binary", CHAT, "-w", "\nhttp_version=%{http_version}\n"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert curl.stdout is not None
    events, lines = [], []
    for raw in curl.stdout:
        line = raw.decode().strip()
        lines.append(line)
        if line.startswith("data: {"):
            events.append((time.time(), json.loads(line[6:])))
    assert curl.wait(30) == 0
    assert lines[-1] == "http_version=2"
    assert_spread_out(events)
    assert [(r.cookie("session"), r.http_version, r.status) for r in upstream_tls.app.received] == [
        (TOKENS[0], "2", 403), (TOKENS[1], "2", 200),
    ]  # fmt: skip


def test_openai_sdk_gets_a_recovered_stream_as_it_comes(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    proxy = start_proxy(rules_for(tmp_path, upstream.port))
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{upstream.port}/v1",
        api_key="sk-client",
        http_client=httpx.Client(proxy=proxy.url, timeout=60),
        max_retries=0,
    )
    arrivals = []
    for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
        arrivals.append((time.time(), {"sent_at": chunk.model_extra["sent_at"], "chunk": chunk}))
    assert "".join(c["chunk"].choices[0].delta.content or "" for _, c in arrivals) == "word0 word1 word2 word3 word4 "
    assert_spread_out(arrivals)
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[0], TOKENS[1]]


def test_openai_sdk_hanging_up_after_done_leaves_every_recovered_stream_a_success(tmp_path, upstream):
    """The `openai` SDK closes a stream as soon as it reads `data: [DONE]`. Here the upstream waits a
    second after that event before it ends its answer, so the SDK always hangs up first: each of 30
    recovered streams is still a success in mitmweb (🔁, 200, "(streamed…)", the copy of its body)."""
    upstream.app.tokens, upstream.app.refuse_odd = set(TOKENS), True  # every request recovers with one retry
    upstream.app.linger, upstream.app.interval = 1.0, 0.01
    web = Mitmweb(rules_for(tmp_path, upstream.port, breaker=100), tmp_path).start()
    assert web.web is not None
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{upstream.port}/v1", api_key="sk-client",
                               http_client=httpx.Client(proxy=web.url, timeout=60), max_retries=0)  # fmt: skip
        for _ in range(30):
            chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == "word0 word1 word2 word3 word4 "
        web.wait_for_log(r"the client hung up once it had the stream's data: \[DONE\]", count=30)
        flows = web.web.get("/flows").json()
    finally:
        web.stop()
    originals = [f for f in flows if not f["is_replay"] and f["marked"] != "⛔"]  # not the refused attempts
    assert len(originals) == 30 and len(upstream.app.received) == 60
    for f in originals:
        assert f["response"]["status_code"] == 200 and f["marked"] == "🔁" and "error" not in f, f
        assert f["comment"].splitlines()[-1].startswith("· attempts: 403 with …"), f["comment"]
        assert "(streamed; the client hung up once it had the stream's data: [DONE])" in f["comment"], f["comment"]
        assert f["response"]["contentLength"] > 500  # the copy of what was streamed, for mitmweb to show
    assert "broke off" not in web.log()


# a retry that goes silent after three events: the client's stream ends with a protocol error
STALLS = {
    "HTTP/1.1": ("upstream", "http", False, "incomplete chunked read"),
    "HTTP/2": ("upstream_tls", "https", True, "StreamReset"),
}


@pytest.mark.parametrize("version", STALLS)
def test_retry_that_stalls_mid_stream_ends_the_clients_stream_with_an_error(request, tmp_path, start_proxy, version):
    fixture, scheme, http2, client_error = STALLS[version]
    up = fresh(request.getfixturevalue(fixture))
    up.app.tokens, up.app.stall_after = {TOKENS[1]}, 3
    rules = rules_for(tmp_path, up.port)
    proxy = start_proxy(rules, "--set", "retry_idle_timeout=1")
    events = []
    with httpx.Client(proxy=proxy.url, verify=proxy.ssl_context, http2=http2, timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError) as broken:
            with client.stream("POST", chat_url(up.port, scheme), content=CHAT) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    events += [line] if line.startswith("data: {") else []
    assert client_error in str(broken.value)
    assert len(events) == 3  # what came before the silence reached the client
    assert up.app.hung_up.wait(10), "the proxy did not hang up the silent retry"

    original, (retry,) = client_and_replays(proxy)
    why = "no data for 1 s (retry_idle_timeout)"
    assert original.error.msg == f"the retry's answer broke off: {why}"
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed; the retry's answer broke off: {why})"
    )
    assert original.marked == ""
    assert original.response.raw_content.count(b"data: {") == 3  # the copy holds what was streamed
    assert f"then its stream broke off: 403 with {MASKS[0]} → 200 with {MASKS[1]}" in proxy.log()
    health = state(rules)
    assert [health[_key(t)]["refusals"] for t in TOKENS[:2]] == [1, 0]  # no token is blamed for the silence
    assert health[_key(TOKENS[1])]["cooling_until"] == 0


def test_retry_reset_mid_stream_ends_the_clients_stream_with_an_error(tmp_path, start_proxy):
    scripted = ScriptedUpstream()
    try:
        scripted.script.extend([refuse(), scripted.events(10, 0.3, reset_after=3)])
        proxy = start_proxy(_account_rules(tmp_path, scripted.port))
        events = []
        with httpx.Client(proxy=proxy.url, timeout=60) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                with client.stream("POST", chat_url(scripted.port), content=CHAT) as response:
                    assert response.status_code == 200
                    for line in response.iter_lines():
                        events += [line] if line.startswith("data: {") else []
        assert len(events) == 3
        original, (retry,) = client_and_replays(proxy)
        assert original.error.msg.startswith("the retry's answer broke off: ")
        assert original.comment.splitlines()[-1] == (
            f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed; {original.error.msg})"
        )
    finally:
        scripted.stop()


def test_retry_answer_over_stream_large_bodies_streams_to_the_client(tmp_path, start_proxy):
    """mitmproxy streams a body past stream_large_bodies by itself: a retry's answer that could not
    be held is no failed attempt when it is one that streams to the client anyway."""
    scripted = ScriptedUpstream()
    try:
        big = b'{"padding": "' + b"x" * 50_000 + b'"}'
        scripted.script.extend([refuse(), answer(200, big)])
        proxy = start_proxy(_account_rules(tmp_path, scripted.port), "--set", "stream_large_bodies=10k")
        with httpx.Client(proxy=proxy.url, timeout=60) as client:
            got = client.post(chat_url(scripted.port), content=CHAT)
        assert got.status_code == 200 and got.content == big
        proxy.wait_for_log(r"recovered POST .*: 403 with …1111 → 200 with …2222 \(streamed\)")
    finally:
        scripted.stop()


def _account_rules(folder, port: int):
    """A token in a cookie for the scripted upstream; 403 means rotate."""
    return write_rules(folder, (
        f'rules:\n  - name: account\n    match: {{host: "127.0.0.1:{port}"}}\n'
        f'    cookies: {{session: "{{token}}"}}\ntokens: {{file: tokens.txt}}\n'
    ))  # fmt: skip


# the client leaves while the retry's answer streams to it
LEAVES = ["HTTP/1.1 client closes the connection", "HTTP/2 client closes the connection", "HTTP/2 client resets the stream"]


@pytest.mark.parametrize("how", LEAVES)
def test_client_leaving_mid_stream_hangs_up_the_retry(tmp_path, start_proxy, upstream, upstream_tls, how):
    up = upstream if how.startswith("HTTP/1.1") else upstream_tls
    up.app.tokens, up.app.chunks = {TOKENS[1]}, 100  # 30 s of events, unless the proxy hangs up
    proxy = start_proxy(rules_for(tmp_path, up.port))
    url = chat_url(up.port, "http" if up is upstream else "https")
    if how.endswith("resets the stream"):
        connection = h2_read_then_reset(proxy.url, url, CHAT, proxy.ca, events=2)
        try:  # the connection stays open: only the stream ends
            assert up.app.hung_up.wait(10), "the retry's upstream connection was not closed"
        finally:
            connection.close()
    else:
        with httpx.Client(proxy=proxy.url, verify=proxy.ssl_context, http2=up is upstream_tls, timeout=60) as client:
            with client.stream("POST", url, content=CHAT) as response:
                seen = 0
                for line in response.iter_lines():
                    seen += line.startswith("data: {")
                    if seen == 2:
                        break
        assert up.app.hung_up.wait(10), "the retry's upstream connection was not closed"
    assert up.app.events_sent < 100
    proxy.wait_for_log(r"then its stream broke off: 403 with …1111 → 200 with …2222")
    original, (retry,) = client_and_replays(proxy)
    assert original.error is not None and original.marked == ""
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]} (streamed; {original.error.msg})"
    )


def test_client_leaving_before_the_retry_answers_hangs_it_up(tmp_path, start_proxy):
    scripted = ScriptedUpstream()
    try:
        scripted.script.extend([refuse(), scripted.hang])
        proxy = start_proxy(_account_rules(tmp_path, scripted.port))
        with httpx.Client(proxy=proxy.url, timeout=2) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post(chat_url(scripted.port), content=CHAT)
        assert scripted.hung_up.wait(10), "the retry's upstream connection was not closed"
        proxy.wait_for_log(r"not recovered POST .*: 403 with …1111 → error with …2222 \(attempt 2 failed: the client left\)")
    finally:
        scripted.stop()


def test_with_stream_retries_off_the_answer_comes_whole(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    proxy = start_proxy(rules_for(tmp_path, upstream.port), "--set", "stream_retries=false")
    response, events = stream(chat_url(upstream.port), proxy=proxy.url)
    assert response.status_code == 200 and len(events) == 6
    assert events[0][0] >= events[-1][1]["sent_at"], "the buffered fallback delivers after the last event was sent"
    original, _ = client_and_replays(proxy)
    assert original.marked == ":repeat:"
    assert original.comment.splitlines()[-1] == f"· attempts: 403 with {MASKS[0]} → 200 with {MASKS[1]}"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "held whole (stream_retries=false)"])
def test_retry_timeout_counts_to_the_headers_not_to_the_end_of_the_answer(tmp_path, start_proxy, upstream, streamed):
    upstream.app.tokens = {TOKENS[1]}  # the retry's answer takes 1.2 s: five events 0.3 s apart
    proxy = start_proxy(rules_for(tmp_path, upstream.port), "--set", "retry_timeout=1",
                        "--set", f"stream_retries={str(streamed).lower()}")  # fmt: skip
    response, events = stream(chat_url(upstream.port), proxy=proxy.url)
    assert response.status_code == 200 and len(events) == 6
    assert events[-1][1]["sent_at"] - events[0][1]["sent_at"] > 1.0
    assert [r.status for r in upstream.app.received] == [403, 200]


BREAK_GUARD = """\
from mitmproxy.proxy.layers.http import HttpStream

_check_killed = HttpStream.check_killed


def check_killed(self, *args):  # the same behaviour under another signature: the guard must decline
    return _check_killed(self, *args)


HttpStream.check_killed = check_killed
"""


def test_when_the_guard_declines_it_says_so_once_and_the_answer_comes_whole(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1]}
    rules = rules_for(tmp_path, upstream.port)
    (tmp_path / "break_guard.py").write_text(BREAK_GUARD)
    # loaded before the addon, so that the addon finds mitmproxy changed when it starts
    proxy = Proxy(rules, tmp_path, "-s", str(tmp_path / "break_guard.py"), "-s", str(ROOT / "addon" / "main.py"),
                  "--set", f"rules={rules}", addon=False).start()  # fmt: skip
    try:
        for accepted in TOKENS[1], TOKENS[2]:  # two recoveries: T0 refused, then T1 (the next in the rotation)
            upstream.app.tokens = {accepted}
            response, events = stream(chat_url(upstream.port), proxy=proxy.url)
            assert response.status_code == 200 and events[0][0] >= events[-1][1]["sent_at"]
    finally:
        proxy.stop()
    log = proxy.log()
    assert log.count("recovered POST") == 2 and log.count("stream_retries: off") == 1
    assert (
        f"stream_retries: off, as mitmproxy {MITMPROXY_VERSION} is not what it was written for (HttpStream.check_killed "
        "takes (self, *args), not (self, emit_error_hook)); a retried streaming request gets its answer whole, "
        "when it is complete"
    ) in log


def _key(token: str) -> str:
    from addon.tokens.tokenfile import token_key

    return token_key(token)


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "not streaming"])
def test_mitmweb_shows_the_refused_attempt_as_a_flow_of_its_own(tmp_path, upstream, streaming):
    """The client's flow shows the answer that worked; its refused first attempt is a flow of its own
    (the request as sent, the 403 and its body, marked ⛔), and one filter selects the whole family."""
    upstream.app.tokens = {TOKENS[1]}
    web = Mitmweb(rules_for(tmp_path, upstream.port), tmp_path).start()
    assert web.web is not None
    body = CHAT if streaming else CHAT.replace(b', "stream": true', b"")
    try:
        with httpx.Client(proxy=web.url, timeout=60) as client:
            answer = client.post(chat_url(upstream.port), content=body)
            assert answer.status_code == 200
            web.wait_for_log(r"recovered POST")
            assert client.post(chat_url(upstream.port), content=body).status_code == 200  # not of the family
        flows = web.web.get("/flows").json()
        original = next(f for f in flows if f["marked"] == "🔁")
        family = f"~comment {original['id'][:8]}"
        assert web.web.put("/options", json={"view_filter": family}).status_code == 200
        selected = web.web.get("/flows").json()
        refused_body = web.web.get(f"/flows/{next(f['id'] for f in flows if f['marked'] == '⛔')}/response/content.data")
    finally:
        web.stop()
    assert_no_secrets(tmp_path)
    assert len(flows) == 4  # the client's, its refused first attempt, the retry; and another request
    refused = next(f for f in flows if f["marked"] == "⛔")
    retry = next(f for f in flows if f["is_replay"])
    assert refused["response"]["status_code"] == 403 and not refused["is_replay"]
    assert refused["comment"] == (
        f"attempt 1 of flow {original['id'][:8]}, with token {MASKS[0]}: refused, then retried ({family})"
    )
    assert any(name.lower() == "cookie" and TOKENS[0] in value for name, value in refused["request"]["headers"])
    assert json.loads(refused_body.text)["error"]["message"] == "unknown account"  # the refusal's own body
    assert f"· refused (403 with {MASKS[0]}), then retried; this flow and each attempt: {family}" in original["comment"]
    assert original["response"]["status_code"] == retry["response"]["status_code"] == 200
    assert sorted(f["id"] for f in selected) == sorted(f["id"] for f in (original, refused, retry))  # the family


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "held whole (stream_retries=false)"])
def test_a_client_that_stops_reading_holds_the_retry_back(tmp_path, start_proxy, upstream, streamed):
    """A recovered stream is read from the upstream no faster than the client reads it: while the
    client reads nothing, the upstream gets to send a few MiB at most, not its whole answer; then the
    client reads on and gets all of it. (Held whole, with stream_retries off, it is buffered: the
    fallback's known cost.)"""
    upstream.app.tokens, upstream.app.firehose = {TOKENS[1]}, 96 << 20
    proxy = start_proxy(rules_for(tmp_path, upstream.port), "--set", f"stream_retries={str(streamed).lower()}")
    with httpx.Client(proxy=proxy.url, timeout=120) as client:
        with client.stream("POST", chat_url(upstream.port), content=CHAT) as response:
            assert response.status_code == 200, proxy.log()
            chunks = response.iter_raw()
            got = len(next(chunks))
            for _ in range(50):  # the client reads no more; the proxy would read the whole answer in this time
                if upstream.app.firehose_sent >= upstream.app.firehose:
                    break
                time.sleep(0.1)
            sent_while_paused = upstream.app.firehose_sent
            got += sum(len(c) for c in chunks)
    if streamed:
        assert sent_while_paused < 32 << 20, f"{sent_while_paused >> 20} MiB sent while the client read nothing"
    else:
        assert sent_while_paused == upstream.app.firehose  # buffered whole before the client gets any
    assert got >= upstream.app.firehose
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[0], TOKENS[1]]


def test_a_client_that_leaves_a_recovered_stream_hangs_up_the_retry(tmp_path, start_proxy, upstream):
    """The client takes the first bytes of a recovered 512 MiB stream and leaves: the retry is hung
    up, and what its upstream still sends is not kept (mitmdump's peak memory does not grow by it)."""
    upstream.app.tokens, upstream.app.firehose = {TOKENS[1]}, 512 << 20
    proxy = start_proxy(rules_for(tmp_path, upstream.port))
    peak = lambda: int(next(x for x in open(f"/proc/{proxy.proc.pid}/status") if x.startswith("VmHWM")).split()[1])  # noqa: E731
    before = peak()
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        with client.stream("POST", chat_url(upstream.port), content=CHAT) as response:
            assert response.status_code == 200
            next(response.iter_raw())
    proxy.wait_for_log(r"then its stream broke off: .* \(.*(the client left|Client disconnected)")
    time.sleep(5)  # the upstream goes on sending as fast as it can
    assert peak() - before < 128 * 1024, f"mitmdump's peak memory grew by {(peak() - before) >> 10} MiB"
