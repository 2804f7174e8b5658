"""End to end: real clients, through a real mitmdump with the addon, to a real local upstream.

Assertions are on what the upstream actually received.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from mitmproxy import io

from conftest import MITMPROXY_MAJOR, ROOT, run_mitmdump
from helpers import TOKENS, write_rules
from streams import assert_spread_out, read_sse

RULES = """\
rules:
  - name: browser
    match:
      host: ["127.0.0.1:{port}", "127.0.0.1:{tls_port}"]
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      X-Stainless-Lang: null
  - name: sse-accept
    match: {{host: ["127.0.0.1:{port}", "127.0.0.1:{tls_port}"], stream: true}}
    headers: {{Accept: text/event-stream}}
  - name: json-accept
    match: {{host: ["127.0.0.1:{port}", "127.0.0.1:{tls_port}"], stream: false}}
    headers: {{Accept: application/json}}
  - name: account
    match:
      host: ["127.0.0.1:{port}", "127.0.0.1:{tls_port}"]
      path: /v1/*
    headers:
      X-Captcha-Token: "{{captcha}}"
    cookies:
      session: "{{token}}"
      tracking: null
tokens: {{file: tokens.txt}}
captcha: {{command: [{python}, fetch.py], ttl: 300}}
"""

FETCH = """\
import pathlib, time
p = pathlib.Path("runs.txt")
p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))
time.sleep(0.3)
print("cap-e2e-captcha-value-0042")
"""


@pytest.fixture
def rules(tmp_path, upstream, upstream_tls):
    (tmp_path / "fetch.py").write_text(FETCH)
    text = RULES.format(port=upstream.port, tls_port=upstream_tls.port, python=json.dumps(sys.executable))
    return write_rules(tmp_path, text)


@pytest.fixture
def proxy(rules, start_proxy):
    return start_proxy(rules, "--save-stream-file", str(rules.parent / "flows.mitm"))


def chat(stream: bool) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()


def test_curl_request_arrives_as_the_service_demands(proxy, upstream):
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, f"http://127.0.0.1:{upstream.port}/v1/chat/completions",
         "-H", "Cookie: a=1; tracking=t; b=2", "-H", "X-Stainless-Lang: python", "--data-binary", chat(False)],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["object"] == "chat.completion"
    (got,) = upstream.app.received
    assert got.header("user-agent") == "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
    assert got.header("accept") == "application/json"
    assert got.header("x-captcha-token") == "cap-e2e-captcha-value-0042"
    assert got.header("cookie") == f"a=1; b=2; session={TOKENS[0]}"
    assert got.header("x-stainless-lang") is None
    assert got.body == chat(False)


def test_unmatched_requests_pass_untouched(proxy, upstream):
    body = b'{"stream": true, "x": "\xc3\xa9"}'
    headers = {"User-Agent": "my-client/1.0", "Cookie": "tracking=t;session=mine", "X-Stainless-Lang": "py"}
    with httpx.Client(proxy=proxy.url) as client:
        client.post(f"http://localhost:{upstream.port}/other", content=body, headers=headers)  # localhost: no rule
    (got,) = upstream.app.received
    assert got.body == body
    for name, value in headers.items():
        assert got.header_all(name) == [value]
    assert got.header("x-captcha-token") is None and got.header("accept") == "*/*"


def test_httpx_sse_chunks_arrive_as_sent(proxy, upstream):
    url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        with client.stream("POST", url, content=chat(True)) as response:
            assert response.status_code == 200
            events = read_sse(response)
    assert_spread_out(events)
    assert upstream.app.received[0].header("accept") == "text/event-stream"


def test_https_http2_request_and_stream(proxy, upstream_tls):
    url = f"https://127.0.0.1:{upstream_tls.port}/v1/chat/completions"
    with httpx.Client(proxy=proxy.url, verify=proxy.ssl_context, http2=True, timeout=30) as client:
        plain = client.post(url, content=chat(False))
        with client.stream("POST", url, content=chat(True)) as response:
            events = read_sse(response)
    assert plain.status_code == 200 and plain.http_version == "HTTP/2"
    assert_spread_out(events)
    first, second = upstream_tls.app.received
    assert (first.http_version, second.http_version) == ("2", "2")
    assert first.header("accept") == "application/json" and second.header("accept") == "text/event-stream"
    assert [first.header("cookie"), second.header("cookie")] == [f"session={TOKENS[0]}", f"session={TOKENS[1]}"]


def test_curl_over_https(proxy, upstream_tls):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", proxy.ca, "-x", proxy.url,
         f"https://127.0.0.1:{upstream_tls.port}/v1/models"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"ok": True, "path": "/v1/models"}
    assert upstream_tls.app.received[0].header("cookie") == f"session={TOKENS[0]}"


def test_openai_sdk_streams_a_chat_completion(proxy, upstream):
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{upstream.port}/v1",
        api_key="sk-client-key",
        http_client=httpx.Client(proxy=proxy.url, timeout=30),
        max_retries=0,
    )
    arrivals = []
    for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
        arrivals.append((time.time(), {"sent_at": chunk.model_extra["sent_at"], "chunk": chunk}))
    text = "".join(c["chunk"].choices[0].delta.content or "" for _, c in arrivals)
    assert text == "word0 word1 word2 word3 word4 "
    assert_spread_out(arrivals)
    (got,) = upstream.app.received
    assert got.header("accept") == "text/event-stream"
    assert got.header("authorization") == "Bearer sk-client-key"  # no rule touches it
    assert got.header("x-stainless-lang") is None


def test_concurrent_requests_share_one_captcha_run(proxy, upstream, rules):
    url = f"http://127.0.0.1:{upstream.port}/v1/models"
    with httpx.Client(proxy=proxy.url, timeout=30) as client, ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: client.get(url).status_code, range(20)))
    assert statuses == [200] * 20
    assert (rules.parent / "runs.txt").read_text() == "1"
    assert {r.header("x-captcha-token") for r in upstream.app.received} == {"cap-e2e-captcha-value-0042"}


def test_flow_comments_explain_the_rewrite(proxy, upstream, rules):
    url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        client.post(url, content=chat(True), headers={"X-Stainless-Lang": "python", "Cookie": "a=1; tracking=t"}).read()
        client.post(url, content=chat(True), headers={"Cookie": "a=1"}).read()  # nothing to remove
    proxy.stop()
    with open(rules.parent / "flows.mitm", "rb") as f:
        full, bare = list(io.FlowReader(f).stream())
    done = [
        "rules: browser, sse-accept, account (streaming request)",
        "· User-Agent ← browser",
        "· X-Stainless-Lang removed by browser",
        "· Accept ← sse-accept",
        "· X-Captcha-Token ← account (captcha …0042)",
        f"· cookie session ← account (token …{TOKENS[0][-4:]})",
        "· cookie tracking removed by account",
    ]
    assert full.comment.splitlines() == done
    assert bare.comment.splitlines() == [line for line in done if "removed" not in line][:4] + [
        f"· cookie session ← account (token …{TOKENS[1][-4:]})"
    ]
    for flow in (full, bare):
        assert TOKENS[0] not in flow.comment and "cap-e2e-captcha-value-0042" not in flow.comment
        assert b"data: [DONE]" in flow.response.raw_content  # the streamed body's copy, for mitmweb
    assert TOKENS[0] not in proxy.log()


@pytest.mark.parametrize(
    "extra, kept",
    [
        ([], 100),  # the addon's copy, capped
        pytest.param(["--set", "store_streamed_bodies=true"], None, id="store_streamed_bodies",
                     marks=pytest.mark.skipif(MITMPROXY_MAJOR < 12, reason="an option of mitmproxy 12.1 and later")),
    ],
)
def test_streamed_body_kept_for_mitmweb(rules, start_proxy, upstream, extra, kept):
    proxy = start_proxy(rules, "--set", "stream_copy_limit=100", *extra)
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        whole = client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", content=chat(True)).read()
    proxy.stop()
    (flow,) = proxy.saved_flows()
    assert len(whole) > 100 and flow.response.raw_content == (whole if kept is None else whole[:kept])


def test_hot_reload_and_a_bad_edit_keeps_the_last_good_rules(proxy, upstream, rules):
    url = f"http://127.0.0.1:{upstream.port}/v1/models"
    rules.write_text(rules.read_text().replace("Chrome/126.0", "Chrome/127.0"))
    proxy.wait_for_log(r"rules: loaded .*rules.yaml", count=2)
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        client.get(url)
        rules.write_text(rules.read_text().replace("headers:", "heders:", 1))
        proxy.wait_for_log(r"unknown key 'heders'")
        client.get(url)
    assert [r.header("user-agent") for r in upstream.app.received] == ["Mozilla/5.0 (X11; Linux x86_64) Chrome/127.0"] * 2
    assert f"{rules}:5:5: rules[0]: unknown key 'heders' (did you mean 'headers'?); the last good rules stay in force" in proxy.log()


def test_tokens_file_edited_while_running(proxy, upstream, rules):
    (rules.parent / "tokens.txt").write_text("tok-fresh-0000000009999\n")
    proxy.wait_for_log(r"re-read .*tokens.txt: 1 token")
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        client.get(f"http://127.0.0.1:{upstream.port}/v1/models")
    assert upstream.app.received[0].header("cookie") == "session=tok-fresh-0000000009999"


@pytest.mark.parametrize(
    "text, message",
    [
        ("rules:\n  - match: {host: a.com}\n    heders: {X: y}\n",
         "rules.yaml:3:5: rules[0]: unknown key 'heders' (did you mean 'headers'?)"),
        ("rules:\n  - match: {host: '*'}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n",
         "rules.yaml:2:19: rules[0].match.host: this rule sends {token} but its host '*' could match any host; "
         "that would send tokens to every host: name the hosts this rule is for"),
        ("rules:\n  - match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: nope.txt}\n",
         "rules.yaml:4:16: tokens.file: tokens file not found: {dir}/nope.txt"),
    ],
    ids=["typo", "token to every host", "missing tokens file"],
)
def test_bad_rules_stop_mitmdump_with_one_message(tmp_path, text, message):
    path = write_rules(tmp_path, text)
    result = run_mitmdump(path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"{tmp_path}/{message.replace('{dir}', str(tmp_path))}" in output.splitlines()[1]
    assert "Traceback" not in output


def test_example_rules_file_loads(tmp_path, start_proxy):
    proxy = start_proxy(ROOT / "rules.yaml")
    assert "rules: loaded" in proxy.log()
    assert "5 rule(s), 3 token(s), captcha from command ./scripts/fetch-captcha, cf_clearance from file " in proxy.log()


def test_reverse_mode_for_clients_that_only_take_a_base_url(rules, start_proxy, upstream):
    proxy = start_proxy(rules, "--mode", f"reverse:http://127.0.0.1:{upstream.port}")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client-key", max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello from upstream"
    (got,) = upstream.app.received
    assert got.header("cookie") == f"session={TOKENS[0]}" and got.header("accept") == "application/json"
