"""End to end: `python -m addon check`, `explain` and `status` as processes, on real files, on flows
saved by a real mitmdump, and on the state a real mitmdump left."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from conftest import ROOT, Proxy, assert_no_secrets
from helpers import CLOCK, TOKENS, write_rules
from test_recovery_e2e import post, rules_for

RULES = """\
rules:
  - name: browser
    match: {{host: "127.0.0.1:{port}"}}
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      X-Stainless-Lang: null
  - name: sse-accept
    match: {{host: "127.0.0.1:{port}", stream: true}}
    headers: {{Accept: text/event-stream}}
  - name: account
    match: {{host: "127.0.0.1:{port}", path: /v1/*}}
    headers:
      X-Captcha-Token: "{{captcha}}"
    cookies:
      session: "{{token}}"
      tracking: null
tokens: {{file: tokens.txt}}
captcha: {{file: captcha.txt}}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def rules(tmp_path):
    return write_rules(tmp_path, RULES.format(port=8765))


# check


def test_check_ok_prints_a_summary(rules, tmp_path):
    result = run("check", str(rules))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"ok: 3 rule(s) for 1 host(s) (127.0.0.1:8765), 3 token(s) from {tmp_path}/tokens.txt (round_robin), "
        f"captcha from file {tmp_path}/captcha.txt\n"
    )


def test_check_the_example_rules_file():
    result = run("check")  # rules.yaml in the repository, as the README's guide does
    assert result.returncode == 0 and result.stdout.startswith("ok: 5 rule(s) for 4 host(s)")
    assert result.stdout.rstrip().endswith(f"captcha from command ./scripts/fetch-captcha, cf_clearance from file {ROOT}/demo/cf_clearance.txt")


def test_check_lists_every_problem(tmp_path):
    path = write_rules(tmp_path, "rules:\n  - match: {host: a.com, methd: GET}\n    headers: {X: '{tokn}'}\ntokens: {file: no.txt}\n")
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}:2:26: rules[0].match: unknown key 'methd' (did you mean 'method'?)",
        f"{path}:3:18: rules[0].headers.X: unknown placeholder {{tokn}} (did you mean {{token}}?)",
        f"{path}:4:16: tokens.file: tokens file not found: {tmp_path}/no.txt",
    ]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "rules.yaml").unlink(), "{d}/rules.yaml:1:1: rules file not found"),
        (lambda d: (d / "tokens.txt").write_text("# none\n"),
         "{d}/tokens.txt: the tokens file has no tokens (requests that need one would get a 503)"),
        (lambda d: (d / "tokens.txt").write_bytes(b"\xff\xfe"), "{d}/tokens.txt: the tokens file is not UTF-8 text (byte 0)"),
        (lambda d: (d / "captcha.txt").write_text("  \n"), "{d}/captcha.txt: the captcha file is empty"),
        (lambda d: (d / "rules.yaml").write_text("rules: [\n"),
         "{d}/rules.yaml:2:1: invalid YAML: expected the node content, but found '<stream end>'"),
    ],
    ids=["no rules file", "no tokens", "tokens not UTF-8", "empty captcha file", "not YAML"],
)
def test_check_problems_with_the_files_it_names(rules, tmp_path, setup, message):
    setup(tmp_path)
    result = run("check", str(rules))
    assert result.returncode == 1
    assert result.stdout == message.format(d=tmp_path) + "\n"


# explain


def test_explain_a_method_and_url(rules):
    result = run("explain", "--rules", str(rules), "POST", "http://127.0.0.1:8765/v1/chat/completions",
                 "-H", "Cookie: a=1; tracking=t", "-H", "X-Stainless-Lang: py", "-d", '{"stream": true}')  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "POST http://127.0.0.1:8765/v1/chat/completions",
        "  streaming: yes",
        "  rules: browser, sse-accept, account",
        "  as it would leave the proxy:",
        "    POST /v1/chat/completions HTTP/1.1",
        "    Host: 127.0.0.1:8765",
        f"    Cookie: a=1; session=…{TOKENS[0][-4:]}   (session ← account; tracking removed by account)",
        "    content-length: 16",
        "    User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0   ← browser",
        "    Accept: text/event-stream   ← sse-accept",
        "    X-Captcha-Token: …9999   ← account",
        "    (removed) X-Stainless-Lang   ← browser",
    ]
    assert TOKENS[0] not in result.stdout and "cap-test-value-9999" not in result.stdout


def test_explain_a_curl_command_that_no_rule_matches(rules):
    result = run("explain", "--rules", str(rules), "--curl", "curl -s -H 'Accept: */*' http://elsewhere.example/x")
    assert result.returncode == 0
    assert result.stdout == "GET http://elsewhere.example/x\n  no rule matches: the request leaves the proxy as it came\n"


def test_explain_flows_saved_by_mitmdump_with_their_responses(tmp_path, upstream):
    """Capture failing requests with a bare mitmdump (no addon), then ask what the rules would do."""
    flows_file = tmp_path / "captured.mitm"
    rules = write_rules(tmp_path, RULES.format(port=upstream.port))
    capture = Proxy(rules, tmp_path, "-w", str(flows_file), addon=False).start()
    try:
        with httpx.Client(proxy=capture.url, timeout=30) as client:
            url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
            assert client.post(url, json={"model": "m", "stream": True}).status_code == 403
            assert client.get(f"http://127.0.0.1:{upstream.port}/elsewhere").status_code == 403
    finally:
        capture.stop()
    result = run("explain", "--rules", str(rules), "--flows", str(flows_file))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n\n")
    assert first.splitlines()[:3] == [
        f"POST http://127.0.0.1:{upstream.port}/v1/chat/completions",
        "  streaming: yes",
        "  rules: browser, sse-accept, account",
    ]
    assert first.splitlines()[-1] == "  response 403: rotate: retry with the next token (and a fresh captcha value)"
    # /elsewhere gets the header rules but no token or captcha: its 403 would be passed on
    assert second.splitlines()[2] == "  rules: browser"
    assert second.splitlines()[-1] == "  response 403: pass: hand it to the client as it is"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--flows", "{d}/none.mitm"], "error: {d}/none.mitm: cannot read flows: "),
        (["--flows", "{d}/rules.yaml"], "error: {d}/rules.yaml: cannot read flows: "),
        (["--curl", "curl -s -H 'Accept: x'"], "error: no URL in the curl command\n"),
        (["--curl", "curl http://a.com/ -H"], "error: curl option -H needs a value\n"),
        (["--curl", "curl 'http://a.com/"], "error: cannot split the curl command: No closing quotation\n"),
        (["--curl", "curl http://a.com/ -H NoColon"], "error: bad curl header 'NoColon': expected 'Name: value'\n"),
        (["GET", "notaurl"], "error: bad request GET notaurl: No hostname given\n"),
        (["GET"], "error: give --flows FILE, --curl 'curl ...', or METHOD URL\n"),
        (["GET", "http://a.com/", "-H", "bad"], "error: bad header 'bad': expected 'Name: value'\n"),
    ],
    ids=["missing flows file", "not a flows file", "curl without URL", "curl option without value",
         "curl unbalanced quote", "curl bad header", "bad URL", "no URL", "bad header"],
)  # fmt: skip
def test_explain_input_errors(rules, tmp_path, args, message):
    result = run("explain", "--rules", str(rules), *[a.replace("{d}", str(tmp_path)) for a in args])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(message.replace("{d}", str(tmp_path)))
    assert "Traceback" not in result.stderr


# issue 23, attack 9: hostile flows files end with one line and status 1; a flow's control characters are shown escaped

def _nested(depth: int) -> bytes:
    """A tnetstring list inside a list, `depth` deep."""
    data = b"0:]"
    for _ in range(depth):
        data = b"%d:%s]" % (len(data), data)
    return data


def _without_request() -> bytes:
    from mitmproxy.io import tnetstring
    from mitmproxy.test import tflow

    state = tflow.tflow(resp=True).get_state()
    del state["request"]
    return tnetstring.dumps(state)


@pytest.mark.parametrize(
    "content, problems",
    [
        (_nested(100_000), ["they are nested too deeply to be a flow"]),  # before: RecursionError, a traceback
        (bytes(range(256)) * 40, ["Invalid data format."]),
        # 12.3.1 says what it found; 11.0.2 meets an AttributeError (before: a traceback)
        (b"5:hello,", ["Invalid flow: loaded=b'hello'",
                       "not a flow mitmproxy can load (AttributeError: 'bytes' object has no attribute 'get')"]),
        (_without_request(), ["not a flow mitmproxy can load (KeyError: 'request')"]),  # before: a traceback
    ],
    ids=["deep tnetstring", "garbage", "not a dict", "a flow without its request"],
)  # fmt: skip
def test_explain_hostile_flows_files_end_with_one_line(rules, tmp_path, content, problems):
    path = tmp_path / "hostile.mitm"
    path.write_bytes(content)
    result = run("explain", "--rules", str(rules), "--flows", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr in [f"error: {path}: cannot read flows: {problem}\n" for problem in problems]


def test_explain_shows_a_flows_control_characters_escaped(rules, tmp_path):
    from mitmproxy import io
    from mitmproxy.test import tflow

    flow = tflow.tflow(resp=True)
    flow.request.host, flow.request.port, flow.request.path = "127.0.0.1", 8765, "/v1/\x1b[2Jx"
    flow.request.headers["X-Title"] = "\x1b]0;pwned\x07 \x9b31m \u2028"
    path = tmp_path / "escapes.mitm"
    with open(path, "wb") as f:
        io.FlowWriter(f).add(flow)
    result = run("explain", "--rules", str(rules), "--flows", str(path))
    assert result.returncode == 0, result.stderr
    assert not any(c in result.stdout for c in "\x1b\x07\x9b\u2028")  # before: written raw to the terminal
    assert "X-Title: \\x1b]0;pwned\\x07 \\x9b31m \\u2028" in result.stdout
    assert "/v1/\\x1b[2Jx" in result.stdout


def test_explain_with_a_bad_rules_file(tmp_path):
    path = write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n")
    result = run("explain", "--rules", str(path), "GET", "http://a.com/")
    assert result.returncode == 1
    assert result.stderr == f"{path}:2:5: rules[0]: a rule needs 'headers', 'cookies' or 'body'\n"


def test_schema_command_matches_the_committed_file():
    result = run("schema")
    assert json.loads(result.stdout) == json.loads((ROOT / "rules.schema.json").read_text())


# status


def test_status_shows_the_token_a_real_mitmdump_found_refused(tmp_path, upstream, start_proxy):
    """A request recovered through mitmdump (its first token refused with a 403); once it has stopped,
    `status` reads the state file it left: that token is cooling, its last refusal a 403."""
    rules = rules_for(tmp_path, upstream.port)  # round robin, cooldown 300 s
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}
    proxy = start_proxy(rules)
    assert post(proxy, upstream).status_code == 200
    assert [r.cookie("session") for r in upstream.app.received] == [TOKENS[0], TOKENS[1]]
    proxy.stop()  # it writes what is pending as it stops

    text = run("status", str(rules))
    assert (text.returncode, text.stderr) == (0, "")
    lines = text.stdout.splitlines()
    assert lines[2] == f"pool default: {tmp_path / 'tokens.txt'} (round_robin), health in state file {tmp_path / 'tokens.state.json'}"
    first, second, third = lines[4:7]
    assert re.fullmatch(rf"  …{TOKENS[0][-4:]}  cooling  {CLOCK} \(in \d+ min\) +0 +1  403 at {CLOCK} \(\d+ (s|min) ago\)", first), text.stdout
    assert (second.split()[:4], third.split()[:4]) == ([f"…{TOKENS[1][-4:]}", "active", "1", "0"], [f"…{TOKENS[2][-4:]}", "active", "0", "0"])
    assert lines[7] == "  2 active, 1 cooling; breaker closed (opens when 10 different tokens are refused within 60 s)"

    as_json = run("status", str(rules), "--json")
    assert as_json.returncode == 0, as_json.stderr
    (pool,) = json.loads(as_json.stdout)["pools"]
    assert pool["state_exists"] is True
    refused = pool["tokens"][0]
    assert (refused["token"], refused["state"], refused["refusals"]) == (f"…{TOKENS[0][-4:]}", "cooling", 1)
    assert refused["last_refusal"]["status"] == 403
    assert [t["state"] for t in pool["tokens"][1:]] == ["active", "active"]
    assert_no_secrets(tmp_path, text.stdout, as_json.stdout)


def test_status_of_a_bad_rules_file_says_where_it_is_wrong(tmp_path):
    path = write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n")
    result = run("status", str(path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"{path}:2:5: rules[0]: a rule needs 'headers', 'cookies' or 'body'\n"
