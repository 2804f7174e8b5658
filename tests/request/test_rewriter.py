"""The request hook, with mitmproxy's own test helpers."""

import asyncio

import pytest
from mitmproxy.net.encoding import encode
from mitmproxy.test import taddons, tflow

from addon.request.rewriter import METADATA_KEY, Rewriter
from addon.request.streamdetect import MAX_JSON_BODY
from addon.runtime.loader import Runtime
from helpers import compressed_json, write_rules

RULES = """\
rules:
  - name: ua
    match: {host: api.example.com}
    headers:
      User-Agent: Mozilla/5.0
      X-Debug: null
  - name: streaming
    match: {host: api.example.com, stream: true}
    headers: {Accept: text/event-stream}
  - name: plain
    match: {host: api.example.com, stream: false}
    headers: {Accept: application/json}
  - name: account
    match: {host: api.example.com, path: /v1/*}
    headers:
      x-captcha-token: "{captcha}"
      user-agent: "Mozilla/5.0 (account)"
    cookies:
      session: "{token}"
      tracking: null
  - name: only-if-client-sent-it
    match: {host: api.example.com, filter: "~h X-Captcha-Token"}
    headers: {X-Echo: seen}
tokens: {file: tokens.txt}
captcha: {file: captcha.txt, ttl: 60}
"""


@pytest.fixture
def addons(tmp_path):
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        yield loader, rewriter


def flow(host="api.example.com", path="/v1/chat", body=b'{"stream": false}', **headers):
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.path = host, 443, path
    f.request.content = body
    f.request.headers.clear()
    for k, v in headers.items():
        f.request.headers[k.replace("_", "-")] = v
    return f


def run(rewriter, f):
    asyncio.run(rewriter.request(f))
    return f


def test_matching_request_is_rewritten_and_explained(addons):
    _, rewriter = addons
    f = run(rewriter, flow(cookie="a=1; tracking=t; session=client", x_debug="1", user_agent="curl/8"))
    h = f.request.headers
    assert h["User-Agent"] == "Mozilla/5.0 (account)"  # the later rule wins
    assert h["Accept"] == "application/json"
    assert h["X-Captcha-Token"] == "cap-test-value-9999"
    assert "X-Debug" not in h
    assert "X-Echo" not in h  # judged on the request as sent: the client sent no captcha header
    assert h["Cookie"] == "a=1; session=tok-alpha-000000001111"
    assert f.comment.splitlines() == [
        "rules: ua, plain, account (non-streaming request)",
        "· X-Debug removed by ua",
        "· Accept ← plain",
        "· x-captcha-token ← account (captcha …9999)",
        "· user-agent ← account",
        "· cookie session ← account (token …1111)",
        "· cookie tracking removed by account",
    ]
    assert f.metadata[METADATA_KEY] == {"rules": ["ua", "plain", "account"], "streaming": False, "injected": ["captcha", "token"]}


# the comment names a removal only when the request had what it removes (as explain does)
@pytest.mark.parametrize(
    "headers, removals",
    [
        # neither the header nor the cookie
        ({}, []),
        ({"cookie": "a=1; session=client"}, []),
        # one or the other, in any spelling of the header's name
        ({"x-debug": "1"}, ["· X-Debug removed by ua"]),
        ({"X-DEBUG": "1", "cookie": "a=1"}, ["· X-Debug removed by ua"]),
        ({"cookie": "tracking=t"}, ["· cookie tracking removed by account"]),
        # a second Cookie header (as HTTP/2 splits them) that has it
        ({"cookie": "a=1", "Cookie": "tracking=t"}, ["· cookie tracking removed by account"]),
        # a cookie whose name only starts like it
        ({"cookie": "trackingx=1; tracking_=2"}, []),
    ],
    ids=["nothing", "other cookies", "header", "header in capitals", "cookie", "cookie in a second header", "lookalike"],
)
def test_comment_lists_only_the_removals_that_happened(addons, headers, removals):
    _, rewriter = addons
    f = flow()
    for name, value in headers.items():
        f.request.headers.add(name, value)
    run(rewriter, f)
    assert "X-Debug" not in f.request.headers and "tracking" not in f.request.cookies
    assert [line for line in f.comment.splitlines() if "removed" in line] == removals
    assert len(f.comment.splitlines()) == 5 + len(removals)  # the other four edits are there either way


def test_plans_without_drawn_values_list_only_the_removals_that_happened(tmp_path):
    """The same for a plan with no {token} or {captcha}: its lines are written once, at load time."""
    loader = Runtime()
    rewriter = Rewriter(loader)
    rules = """\
    rules:
      - name: strip
        match: {host: a.com}
        headers: {X-Debug: null, Accept: "*/*"}
        cookies: {tracking: null}
    """
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, rules)))
        bare = run(rewriter, flow(host="a.com"))
        full = run(rewriter, flow(host="a.com", x_debug="1", cookie="tracking=t"))
        again = run(rewriter, flow(host="a.com"))  # the plan's compiled lines are not changed by a request
    assert bare.comment.splitlines() == ["rules: strip (non-streaming request)", "· Accept ← strip"]
    assert again.comment == bare.comment
    assert full.comment.splitlines() == [
        "rules: strip (non-streaming request)",
        "· X-Debug removed by strip",
        "· Accept ← strip",
        "· cookie tracking removed by strip",
    ]


def test_streaming_request_gets_the_streaming_rules(addons):
    _, rewriter = addons
    f = run(rewriter, flow(body=b'{"model": "m", "stream": true}'))
    assert f.request.headers["Accept"] == "text/event-stream"
    assert f.metadata[METADATA_KEY]["streaming"] is True


def test_tokens_rotate_per_request(addons):
    _, rewriter = addons
    sessions = [run(rewriter, flow()).request.headers["Cookie"] for _ in range(4)]
    assert [s[-4:] for s in sessions] == ["1111", "2222", "3333", "1111"]


@pytest.mark.parametrize(
    "f",
    [
        flow(host="other.example.com", cookie="tracking=t", x_debug="1"),
        flow(host="api.example.com.evil.net"),
    ],
    ids=["other host", "suffix trick"],
)
def test_unmatched_request_is_left_exactly_as_it_came(addons, f):
    _, rewriter = addons
    before = f.request.get_state()
    run(rewriter, f)
    assert f.request.get_state() == before
    assert f.comment == "" and METADATA_KEY not in f.metadata


def test_flows_already_answered_are_skipped(addons):
    _, rewriter = addons
    f = flow()
    f.response = tflow.tresp()
    before = f.request.get_state()
    run(rewriter, f)
    assert f.request.get_state() == before


def test_no_tokens_means_503_without_contacting_upstream(tmp_path):
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES, tokens=["# none yet"])))
        f = run(rewriter, flow())
    assert f.response.status_code == 503
    assert f.response.text == (
        f"mitmproxy rules addon: cannot send this request: the tokens file {tmp_path}/tokens.txt has no tokens.\n"
    )
    assert f.comment == f"answered 503 by the proxy: the tokens file {tmp_path}/tokens.txt has no tokens"


def test_failed_captcha_skips_only_that_header(tmp_path, caplog):
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        (tmp_path / "captcha.txt").write_text("")
        f = run(rewriter, flow(x_captcha_token="from-client"))
    assert "gave an empty value" in caplog.text
    assert f.request.headers["X-Captcha-Token"] == "from-client"
    assert f.request.headers["Cookie"] == "session=tok-alpha-000000001111"
    assert "x-captcha-token not set by account: no captcha value" in f.comment


@pytest.mark.parametrize(
    "value, where",
    # (a tokens file's line with a control character is skipped when it is read: the captcha brings one here)
    [("tok-with;semicolon-0001", "cookie"), ("cap-with\x01control-0001", "header")],
    ids=["semicolon into a cookie", "control character into a header"],
)
def test_drawn_values_that_would_break_out_of_their_place_are_not_set(tmp_path, value, where):
    loader = Runtime()
    rewriter = Rewriter(loader)
    written = write_rules(tmp_path, RULES, tokens=[value]) if where == "cookie" else write_rules(tmp_path, RULES, captcha=value)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(written))
        f = run(rewriter, flow(cookie="a=1"))
    if where == "cookie":
        assert f.request.headers["Cookie"] == "a=1"
        assert "cookie session not set by account: the token …0001 value cannot go in a cookie" in f.comment
    else:
        assert "X-Captcha-Token" not in f.request.headers
        assert "x-captcha-token not set by account: the captcha …0001 value cannot go in a header" in f.comment


def test_a_token_refused_while_the_captcha_is_fetched_is_not_sent(addons):
    loader, rewriter = addons
    first, second = loader.pool.tokens.list.tokens[:2]
    real_get = loader.captcha.get

    async def slow_get():
        value = await real_get()
        loader.pool.tokens.refused(first)  # another flow's 403 marks the token meanwhile
        return value

    loader.pool.tokens.strategy = "sticky"
    loader.captcha.get = slow_get
    f = run(rewriter, flow())
    assert f.request.headers["Cookie"] == f"session={second}"


def test_filters_are_judged_per_request_though_the_shape_is_remembered(addons):
    _, rewriter = addons
    for sent_captcha in [False, True, False, True]:  # the same host, method, path and body each time
        f = run(rewriter, flow(**({"X_Captcha_Token": "mine"} if sent_captcha else {})))
        assert ("X-Echo" in f.request.headers) is sent_captcha
        assert ("only-if-client-sent-it" in f.metadata[METADATA_KEY]["rules"]) is sent_captcha


def test_the_query_does_not_change_which_rules_match_but_the_path_does(addons):
    _, rewriter = addons
    assert "account" in run(rewriter, flow(path="/v1/chat?x=1")).metadata[METADATA_KEY]["rules"]
    assert "account" not in run(rewriter, flow(path="/v2/chat?x=1")).metadata[METADATA_KEY]["rules"]
    assert "account" in run(rewriter, flow(path="/v1/other")).metadata[METADATA_KEY]["rules"]


ARENA = """\
values:
  captcha: {command: [./mint.sh], ttl: 110}
  cf_clearance: {file: cf.txt}
rules:
  - name: arena
    match: {host: arena.example.com, path: /nextjs-api/stream/*}
    headers: {User-Agent: "Mozilla/5.0 …"}
    cookies: {cf_clearance: "{cf_clearance}", arena-auth-prod-v1: "{token}"}
    body: {recaptchaV3Token: "{captcha}"}
tokens: {file: tokens.txt}
"""


def test_named_values_go_into_cookies_and_the_body(tmp_path):
    import gzip
    import json

    mint = tmp_path / "mint.sh"
    mint.write_text("#!/bin/sh\necho run >> runs.txt\necho cap-minted-value-0042\n")
    mint.chmod(0o755)
    (tmp_path / "cf.txt").write_text("cf-clearance-value-00aa\n")
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, ARENA, captcha=None)))
        flows = []
        for _ in range(2):
            f = flow(host="arena.example.com", path="/nextjs-api/stream/create-evaluation", cookie="theme=dark",
                     content_encoding="gzip")  # fmt: skip
            f.request.raw_content = gzip.compress(b'{"id": "x", "recaptchaV3Token": ""}')
            flows.append(run(rewriter, f))
    first = flows[0].request
    assert first.headers["Cookie"] == "theme=dark; cf_clearance=cf-clearance-value-00aa; arena-auth-prod-v1=tok-alpha-000000001111"
    assert json.loads(gzip.decompress(first.raw_content)) == {"id": "x", "recaptchaV3Token": "cap-minted-value-0042"}
    assert first.headers["content-length"] == str(len(first.raw_content))
    assert flows[0].comment.splitlines() == [
        "rules: arena (non-streaming request)",
        "· User-Agent ← arena",
        "· cookie cf_clearance ← arena (cf_clearance …00aa)",
        "· cookie arena-auth-prod-v1 ← arena (token …1111)",
        "· body recaptchaV3Token ← arena (captcha …0042)",
    ]
    assert flows[0].metadata[METADATA_KEY]["injected"] == ["captcha", "cf_clearance", "token"]
    assert (tmp_path / "runs.txt").read_text() == "run\n"  # the second request reused it (ttl 110)


BODY_FILTER_RULES = """\
rules:
  - name: model-x
    match: {host: api.example.com, filter: '~bq "model": "x"'}
    headers: {X-Model: x}
"""


@pytest.mark.parametrize(
    "body, encoding, matched",
    [
        (b'{"model": "x"}', None, True),
        (encode(b'{"model": "x"}', "br"), "br", True),  # decoded (bounded) for the filter
        (encode(encode(b'{"model": "x"}', "gzip"), "zstd"), "gzip, zstd", True),  # a chain, which mitmproxy does not decode
        (compressed_json("br", 2 * MAX_JSON_BODY), "br", False),  # past the bound: as it came
    ],
    ids=["plain", "br", "chain", "bomb"],
)
def test_body_filters_see_the_body_decoded_with_the_bound(tmp_path, body, encoding, matched):
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, BODY_FILTER_RULES)))
        f = flow(**({"content_encoding": encoding} if encoding else {}))
        f.request.raw_content = body
        sent = f.request.raw_content
        run(rewriter, f)
    assert ("X-Model" in f.request.headers) is matched
    assert f.request.raw_content == sent  # the body goes on as the client sent it
    assert f.request.headers.get("content-encoding") == encoding


def test_requests_are_counted_by_the_pool_of_their_token(addons):
    loader, rewriter = addons
    asyncio.run(rewriter.request(flow(path="/v1/chat")))  # account: a token
    asyncio.run(rewriter.request(flow(path="/other")))  # only headers: no token
    asyncio.run(rewriter.request(flow(host="elsewhere.example")))  # no rule: not rewritten
    assert loader.counters.requests == {"default": 1, "": 1}
