"""`explain`, in process: what it says about removals is what the flow comment says."""

import asyncio

import pytest
from mitmproxy.test import taddons

from addon.cli.explain import explain, make_flow
from addon.request.rewriter import Rewriter
from addon.rules.config import load_config
from addon.runtime.loader import Runtime
from helpers import POOLS, write_rules

RULES = """\
rules:
  - name: strip
    match: {host: a.example}
    headers: {X-Debug: null, Accept: "*/*"}
    cookies: {tracking: null, session: "{token}"}
tokens: {file: tokens.txt}
"""


# (headers the client sent, what explain says of the removals, the comment's removal lines)
@pytest.mark.parametrize(
    "headers, explained, commented",
    [
        ([], ["    Cookie: session=…1111   (session ← strip)"], []),
        (
            [("X-Debug", "1"), ("Cookie", "tracking=t; a=1")],
            ["    Cookie: a=1; session=…1111   (tracking removed by strip; session ← strip)", "    (removed) X-Debug   ← strip"],
            ["· X-Debug removed by strip", "· cookie tracking removed by strip"],
        ),
        (
            [("Cookie", "a=1")],
            ["    Cookie: a=1; session=…1111   (session ← strip)"],
            [],
        ),
    ],
    ids=["neither", "both", "other cookies only"],
)
def test_explain_and_the_comment_name_the_same_removals(tmp_path, headers, explained, commented):
    rules = write_rules(tmp_path, RULES)
    lines = list(explain(load_config(rules), make_flow("GET", "http://a.example/x", headers, None), {"token": "…1111"}))
    assert [line for line in lines if "removed" in line or line.startswith("    Cookie:")] == explained

    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(rules))
        f = make_flow("GET", "http://a.example/x", headers, None)
        f.live = True  # as a flow from a client
        asyncio.run(rewriter.request(f))
    assert f.comment.startswith("rules: strip (non-streaming request)\n")
    assert [line for line in f.comment.splitlines() if "removed" in line] == commented


ARENA = """\
values:
  captcha: {command: [./mint.sh], ttl: 110}
  cf_clearance: {file: cf.txt}
  shown: {env: SHOWN, secret: false}
rules:
  - name: arena
    match: {host: arena.example.com}
    cookies: {cf_clearance: "{cf_clearance}", arena-auth-prod-v1: "{token}"}
    body: {recaptchaV3Token: "{captcha}", modality: "{shown}", debug: null, params.n: 2, bad.x: 1}
tokens: {file: tokens.txt}
on_response:
  - match: {status: 403, body: "(?i)just a moment"}
    action: refresh
    values: [cf_clearance]
  - match: {status: [401, 403]}
    action: rotate
"""


def test_explain_shows_body_edits_masked_and_what_a_refresh_would_do(tmp_path, monkeypatch):
    from mitmproxy.test import tutils

    from addon.cli.explain import stand_in_values

    monkeypatch.setenv("SHOWN", "chat")
    (tmp_path / "mint.sh").write_text("#!/bin/sh\necho cap-never-run\n")
    (tmp_path / "mint.sh").chmod(0o755)
    (tmp_path / "cf.txt").write_text("cf-clearance-value-00aa\n")
    config = load_config(write_rules(tmp_path, ARENA, captcha=None))
    values = stand_in_values(config)
    assert values == {"token": "…1111", "captcha": "‹captcha from the command, not run›", "cf_clearance": "…00aa",
                      "shown": "chat"}  # fmt: skip
    body = '{"id": "x", "debug": true, "bad": "text"}'
    f = make_flow("POST", "https://arena.example.com/x", [("Content-Type", "application/json")], body)
    f.response = tutils.tresp(status_code=403, content=b"<title>Just a moment...</title>")
    lines = list(explain(config, f, values))
    assert lines[lines.index("    body (JSON):"):] == [
        "    body (JSON):",
        '      recaptchaV3Token: "‹captcha from the command, not run›"   ← arena',
        '      modality: "chat"   ← arena',
        "      (removed) debug   ← arena",
        "      params.n: 2   ← arena",
        "  note: body bad.x not set by arena: bad is a string, not an object",
        "  response 403: refresh: retry with the same token and a new cf_clearance",
    ]
    assert "    Cookie: cf_clearance=…00aa; arena-auth-prod-v1=…1111   (cf_clearance ← arena; arena-auth-prod-v1 ← arena)" in lines


def test_explain_says_when_the_body_is_not_a_json_object(tmp_path):
    config = load_config(write_rules(tmp_path, "rules:\n  - match: {host: a.example}\n    body: {a: 1}\n"))
    lines = list(explain(config, make_flow("POST", "http://a.example/x", [], "a=1"), {}))
    assert lines[-1] == "  note: body not edited by rules[0]: the body is not JSON"


def test_explain_says_what_a_disable_rule_would_do(tmp_path):
    from mitmproxy.test import tutils

    rules = ("rules:\n  - match: {host: a.example}\n    headers: {Authorization: 'Bearer {token}'}\n"
             "tokens: {file: tokens.txt}\non_response:\n  - match: {status: 401}\n    action: disable\n")  # fmt: skip
    config = load_config(write_rules(tmp_path, rules))
    f = make_flow("GET", "http://a.example/x", [], "")
    f.response = tutils.tresp(status_code=401)
    lines = list(explain(config, f, {"token": "…1111"}))
    assert lines[-1] == "  response 401: disable: retire this token, then retry with the next one (and a fresh captcha value)"


@pytest.mark.parametrize("openai, said", [
    (["sk-openai-0000bbbb"], ["  token from pool: openai", "    Authorization: Bearer …bbbb   ← openai"]),
    ([], ["  token from pool: openai (none of its tokens is usable now)",
          "  note: Authorization not set by openai: no token value"]),
])  # fmt: skip
def test_explain_names_the_pool_and_shows_a_token_of_it_only(tmp_path, openai, said):
    from addon.cli.explain import stand_in_values

    (tmp_path / "openai.txt").write_text("".join(t + "\n" for t in openai))
    config = load_config(write_rules(tmp_path, POOLS))
    values = stand_in_values(config)
    assert values["token:arena"] == "…1111" and ("token:openai" in values) == bool(openai)
    lines = list(explain(config, make_flow("GET", "https://api.example/v1", [], ""), values))
    assert all(line in lines for line in said), lines
    assert not any("…1111" in line for line in lines)  # never the other pool's


STREAM_RULES = """\
rules:
  - name: account
    match: {host: api.example.com}
    headers: {Authorization: "Bearer {token}"}
tokens: {file: tokens.txt}
on_response:
  - match: {status: 200, first_event: "(?m)^event: error$"}
    action: rotate
"""


@pytest.mark.parametrize(
    "content_type, body, said",
    [
        ("text/event-stream", b'event: error\ndata: {"error": "x"}\n\n', "  response 200 (by its first event): rotate: "
         "retry with the next token (and a fresh captcha value)"),
        ("text/event-stream", b'data: {"n": 1}\n\nevent: error\ndata: {}\n\n', "  response 200: pass: hand it to the "
         "client as it is"),
        ("application/json", b"event: error\n", "  response 200: pass: hand it to the client as it is"),  # not streamed
    ],
)
def test_explain_judges_a_saved_stream_by_its_first_event(tmp_path, content_type, body, said):
    from mitmproxy.test import tutils

    config = load_config(write_rules(tmp_path, STREAM_RULES))
    f = make_flow("POST", "https://api.example.com/v1/chat", [("Content-Type", "application/json")], '{"stream": false}')
    f.response = tutils.tresp(status_code=200, content=body)
    f.response.headers["content-type"] = content_type
    assert list(explain(config, f, {"token": "…1111"}))[-1] == said


def test_explain_lists_a_header_named_body_that_was_not_set_and_still_shows_the_body(tmp_path):
    """A skipped edit is told by its place, not its wording: a header called `body` whose value has no
    source is a note, and the body's own edits are still shown."""
    import pickle

    from addon.request.plan import Skipped

    rules = ("rules:\n  - match: {host: a.example}\n    headers: {body: '{captcha}'}\n    body: {model: x}\n"
             "values:\n  captcha: {command: [/bin/true]}\n")  # fmt: skip
    config = load_config(write_rules(tmp_path, rules, captcha=None))
    lines = list(explain(config, make_flow("POST", "http://a.example/x", [], '{"model": "y"}'), {}))
    assert "  note: body not set by rules[0]: no captcha value" in lines
    assert lines[lines.index("    body (JSON):") + 1] == '      model: "x"   ← rules[0]'
    line = Skipped("X not set by r: no token value", "X")
    assert pickle.loads(pickle.dumps(line)).what == "X" and pickle.loads(pickle.dumps(line)) == line
