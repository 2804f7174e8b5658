"""End to end: a 200 stream judged by its first event (`first_event` rules of on_response).

A real mitmdump with the addon in front of a scripted upstream: a stream whose first event is an
error is retried with the next token and the client gets only the retry's stream; one whose first
event is fine streams through byte for byte, as it comes; an empty stream is matched by "^$"; a
stream no first_event rule concerns is not held at all; with stream_retries off the answer is held
whole and still judged by its first event.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from conftest import Proxy
from helpers import TOKENS, write_rules
from scripted_upstream import ScriptedUpstream
from streams import assert_spread_out

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
MASKS = [f"…{t[-4:]}" for t in TOKENS]
ERROR_EVENT = b'event: error\ndata: {"error": {"message": "session expired FIRST-ANSWER"}}\n\n'


def rules(folder, port: int, *extra: str):
    """The token in a cookie for /v1/*, a User-Agent for every path; a 200 whose first event is an
    error, or a 200 stream that ends without one, means: rotate."""
    return write_rules(folder, (
        f'rules:\n'
        f'  - name: account\n    match: {{host: "127.0.0.1:{port}", path: /v1/*}}\n    cookies: {{session: "{{token}}"}}\n'
        f'  - name: browser\n    match: {{host: "127.0.0.1:{port}"}}\n    headers: {{User-Agent: "Mozilla/5.0"}}\n'
        f'tokens: {{file: tokens.txt}}\n'
        f'on_response:\n'
        f'  - match: {{status: 200, first_event: "(?m)^event: error$"}}\n    action: rotate\n'
        f'  - match: {{status: 200, first_event: "^$"}}\n    action: rotate\n'
        f'  - match: {{status: 403}}\n    action: rotate\n'
    ))  # fmt: skip


def good_events(count: int = 6, interval: float = 0.3) -> list:
    """Data events made as they are sent (each says when), `interval` seconds apart."""
    parts: list = []
    for n in range(count):
        parts += [lambda n=n: f"data: {json.dumps({'n': n, 'sent_at': time.time()})}\n\n".encode(), interval]
    return [*parts[:-1], b"data: [DONE]\n\n"]


def read_stream(url: str, path: str = "/v1/chat/completions", then=lambda: None, **client) -> tuple[httpx.Response, bytes, list]:
    """POST a streaming request; the answer, its body as it came, and (arrival, event) per data event.
    `then` runs once the answer has ended, before the client closes its connection."""
    body, events, pending = b"", [], b""
    with httpx.Client(timeout=30, **client) as c:
        with c.stream("POST", url + path, content=CHAT) as response:
            for chunk in response.iter_raw():
                body += chunk
                pending += chunk
                while b"\n\n" in pending:
                    block, pending = pending.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: {"):
                            events.append((time.time(), json.loads(line[6:])))
        then()
    return response, body, events


@pytest.fixture
def scripted():
    upstream = ScriptedUpstream()
    yield upstream
    upstream.stop()


def client_flow(proxy: Proxy):
    proxy.stop()
    return next(f for f in proxy.saved_flows() if not f.is_replay)


@pytest.mark.parametrize("tls", [False, True], ids=["HTTP", "HTTPS through CONNECT"])
def test_a_stream_whose_first_event_is_an_error_is_retried_and_the_client_gets_only_the_retry(
    tmp_path, start_proxy, upstream_cert, tls
):
    scripted = ScriptedUpstream(upstream_cert if tls else None)
    try:
        _retried_error_event(tmp_path, start_proxy, scripted, tls)
    finally:
        scripted.stop()


def _retried_error_event(tmp_path, start_proxy, scripted, tls):
    # the refused answer has more to send, once the client has had the retry's whole answer (or the
    # proxy closes its connection: it must, before, while the client's connection is still open)
    more = threading.Event()
    refused = [b": keep-alive\n\n", ERROR_EVENT, more, b'data: {"more": "FIRST-ANSWER"}\n\n']
    scripted.script.extend([scripted.sse(*refused), scripted.sse(*good_events())])
    proxy = start_proxy(rules(tmp_path, scripted.port))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{scripted.port}"
    hung_up_first = []
    response, body, events = read_stream(url, proxy=proxy.url, verify=proxy.ssl_context,
                                         then=lambda: (hung_up_first.append(scripted.hung_up.wait(10)), more.set()))
    assert response.status_code == 200
    assert b"FIRST-ANSWER" not in body and b"keep-alive" not in body  # nothing of the refused answer
    assert body == b"".join(scripted.sent_bodies[1])  # the retry's stream, byte for byte
    assert_spread_out(events)  # as it came
    assert [r.cookie("session") for r in scripted.received] == [TOKENS[0], TOKENS[1]]
    assert hung_up_first == [True], "the refused answer's upstream connection was not closed"
    flow = client_flow(proxy)
    assert flow.marked == ":repeat:"
    assert flow.comment.splitlines()[-1] == f"· attempts: 200 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)"


def test_a_stream_whose_first_event_is_fine_streams_through_byte_for_byte_as_it_comes(tmp_path, start_proxy, scripted):
    parts = [b": keep-alive\n\n", b"event: message\n", b"data: {\"n\": -1, \"sent_at\": 0}\n\n", *good_events()]
    scripted.script.append(scripted.sse(*parts))
    proxy = start_proxy(rules(tmp_path, scripted.port))
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert response.status_code == 200
    assert body == b"".join(scripted.sent_bodies[0])
    assert_spread_out(events[1:])
    assert [r.cookie("session") for r in scripted.received] == [TOKENS[0]]
    flow = client_flow(proxy)
    assert flow.response.content == body and not flow.marked  # mitmweb's copy of what streamed


# an empty 200 stream: chunked with no chunk, or Content-Length: 0 (no body at all)
EMPTY = {"chunked": {}, "Content-Length: 0": {"length": 0}}


@pytest.mark.parametrize("framing", EMPTY)
def test_an_empty_stream_matched_by_an_empty_first_event_is_retried(tmp_path, start_proxy, scripted, framing):
    scripted.script.extend([scripted.sse(**EMPTY[framing]), scripted.sse(*good_events())])
    proxy = start_proxy(rules(tmp_path, scripted.port))
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert response.status_code == 200
    assert body == b"".join(scripted.sent_bodies[1]) and len(events) == 6
    assert [r.cookie("session") for r in scripted.received] == [TOKENS[0], TOKENS[1]]
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == f"· attempts: 200 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)"


def test_a_stream_no_first_event_rule_concerns_is_not_held(tmp_path, start_proxy, scripted):
    """/free/* gets no token, so a rotate cannot retry it: its answer goes on as it comes. The
    upstream sends its first event only once the client has the headers, and its second once the
    client has the first: held for a moment, the client would wait in vain."""
    headers_came, first_came = threading.Event(), threading.Event()
    parts = [headers_came, ERROR_EVENT, first_came, b'data: {"n": 1}\n\n']
    scripted.script.append(scripted.sse(*parts))
    proxy = start_proxy(rules(tmp_path, scripted.port))
    got = b""
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        with client.stream("POST", f"http://127.0.0.1:{scripted.port}/free/stream", content=CHAT) as response:
            assert response.status_code == 200
            headers_came.set()
            for chunk in response.iter_raw():
                got += chunk
                if got.endswith(b"\n\n"):
                    first_came.set()
    assert got == ERROR_EVENT + b'data: {"n": 1}\n\n'
    assert not scripted.gate_timed_out.is_set()
    assert scripted.received[0].cookie("session") is None and len(scripted.received) == 1


def test_with_stream_retries_off_the_answer_is_held_whole_and_judged_by_its_first_event(tmp_path, start_proxy, scripted):
    scripted.script.extend([scripted.sse(ERROR_EVENT, b'data: {"more": "FIRST-ANSWER"}\n\n'), scripted.sse(*good_events())])
    proxy = start_proxy(rules(tmp_path, scripted.port), "--set", "stream_retries=false")
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert response.status_code == 200
    assert body == b"".join(scripted.sent_bodies[1])
    assert events[0][0] >= events[-1][1]["sent_at"], "the buffered fallback delivers it whole"
    assert [r.cookie("session") for r in scripted.received] == [TOKENS[0], TOKENS[1]]
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == f"· attempts: 200 with {MASKS[0]} → 200 with {MASKS[1]}"


def test_a_retry_refused_by_its_first_event_too_is_followed_by_the_next_token(tmp_path, start_proxy, scripted):
    scripted.script.extend([scripted.sse(ERROR_EVENT), scripted.sse(b": ping\n\n", ERROR_EVENT), scripted.sse(*good_events())])
    proxy = start_proxy(rules(tmp_path, scripted.port))
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert body == b"".join(scripted.sent_bodies[2])
    assert_spread_out(events)
    assert [r.cookie("session") for r in scripted.received] == TOKENS[:3]
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == (
        f"· attempts: 200 with {MASKS[0]} → 200 with {MASKS[1]} → 200 with {MASKS[2]} (streamed)"
    )


def test_with_no_token_to_retry_with_the_refused_stream_goes_on_as_it_came(tmp_path, start_proxy, scripted):
    parts = [ERROR_EVENT, *good_events()]
    scripted.script.append(scripted.sse(*parts))
    path = rules(tmp_path, scripted.port)
    (tmp_path / "tokens.txt").write_text(TOKENS[0] + "\n")
    proxy = start_proxy(path)
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert response.status_code == 200 and body == b"".join(scripted.sent_bodies[0])
    assert_spread_out(events[1:])  # it still streams
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == f"· attempts: 200 with {MASKS[0]} (no other token to try)"


def test_a_first_event_that_does_not_come_within_retry_timeout_lets_the_stream_go_on_unjudged(tmp_path, start_proxy, scripted):
    """The upstream says nothing until the client has the headers: the hold ends at retry_timeout,
    and the stream goes on, not judged (its first event would have been refused)."""
    headers_came = threading.Event()
    scripted.script.append(scripted.sse(headers_came, ERROR_EVENT))
    proxy = start_proxy(rules(tmp_path, scripted.port), "--set", "retry_timeout=1")
    got = b""
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        with client.stream("POST", f"http://127.0.0.1:{scripted.port}/v1/chat/completions", content=CHAT) as response:
            headers_came.set()
            for chunk in response.iter_raw():
                got += chunk
    assert response.status_code == 200 and got == ERROR_EVENT
    assert not scripted.gate_timed_out.is_set() and len(scripted.received) == 1
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == "· not judged: its first event did not come within 1 s (retry_timeout)"


def test_a_client_that_leaves_while_the_answer_is_held_hangs_it_up(tmp_path, start_proxy, scripted):
    never = threading.Event()
    scripted.script.extend([scripted.sse(never, ERROR_EVENT), scripted.sse(*good_events(2))])
    proxy = start_proxy(rules(tmp_path, scripted.port), "--set", "retry_timeout=1")
    with httpx.Client(proxy=proxy.url, timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):  # held: no headers come
            client.post(f"http://127.0.0.1:{scripted.port}/v1/chat/completions", content=CHAT)
    assert scripted.hung_up.wait(10), "the held answer's upstream connection was not closed"
    proxy.wait_for_log(r"client disconnect|Client disconnected", timeout=10)
    time.sleep(1.5)  # past retry_timeout: the end of the hold finds the client gone, and lets it be
    response, body, events = read_stream(f"http://127.0.0.1:{scripted.port}", proxy=proxy.url)
    assert response.status_code == 200 and len(events) == 2  # the proxy goes on serving
    never.set()
    proxy.stop()
    assert "Traceback" not in proxy.log()


def test_over_http2_on_both_sides_the_refused_stream_is_reset_and_the_retry_streams(tmp_path, start_proxy, upstream_tls):
    from test_recovery_e2e import rules_for

    upstream_tls.app.error_first = {TOKENS[0]}  # a 200 whose first event is an error, then its events all the same
    path = rules_for(tmp_path, upstream_tls.port)
    with open(path, "a") as f:
        f.write('  - match: {status: 200, first_event: "(?m)^event: error$"}\n    action: rotate\n')
    proxy = start_proxy(path)
    response, body, events = read_stream(f"https://127.0.0.1:{upstream_tls.port}", proxy=proxy.url,
                                         verify=proxy.ssl_context, http2=True)  # fmt: skip
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert b"session expired" not in body and body.endswith(b"data: [DONE]\n\n")
    assert_spread_out(events)
    assert [(r.cookie("session"), r.http_version) for r in upstream_tls.app.received] == [(TOKENS[0], "2"), (TOKENS[1], "2")]
    assert upstream_tls.app.hung_up.wait(10), "the refused answer's HTTP/2 stream was not reset"
    flow = client_flow(proxy)
    assert flow.comment.splitlines()[-1] == f"· attempts: 200 with {MASKS[0]} → 200 with {MASKS[1]} (streamed)"
