"""Property-based tests: random requests, cookies, rules files and tokens files never break the addon."""

from __future__ import annotations

import asyncio
import json
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.net.encoding import encode
from mitmproxy.test import taddons, tflow

from addon.request.cookies import edit_cookie_headers
from addon.request.rewriter import Rewriter
from addon.request.streamdetect import is_streaming
from addon.rules.config import load_config
from addon.rules.schema import RulesError
from addon.runtime.loader import Runtime
from addon.tokens.tokenfile import TokensFileError, read_tokens
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - name: ua
    match: {host: "*.example.com"}
    headers: {User-Agent: Mozilla/5.0, X-Debug: null}
  - name: secret
    match: {host: api.example.com, path: /v1/*}
    headers: {X-Token: "{token}"}
    cookies: {session: "{token}", tracking: null}
tokens: {file: tokens.txt}
"""

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

token_chars = string.ascii_letters + string.digits + "-_.~!#$&'*+^`|"
cookie_name = st.text(token_chars, min_size=1, max_size=8)
cookie_value = st.text(string.ascii_letters + string.digits + "-_.~!#$&'*+^`|/:?@[]()=", max_size=12)
cookie_pair = st.builds(lambda n, v: f"{n}={v}", cookie_name, cookie_value) | st.text(token_chars, max_size=5)
cookie_header = st.lists(cookie_pair, max_size=6).map("; ".join)
hosts = st.sampled_from(["api.example.com", "www.example.com", "example.com", "api.example.com.evil.net", "evil.net", "API.EXAMPLE.COM"])
paths = st.sampled_from(["/", "/v1/chat", "/v1/", "/v2/x", "/v1/chat?stream=true", "//v1/x"])
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["stream", "a", "options"]), inner, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps(v).encode())
bodies = json_bodies | st.binary(max_size=200)
header_names = st.sampled_from(["Accept", "X-Debug", "X-Token", "User-Agent", "Content-Encoding", "X-Other"])
header_values = st.text(string.printable.strip() + " ", max_size=20).map(str.strip)


@st.composite
def requests(draw):
    f = tflow.tflow()
    f.request.method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "get"]))
    f.request.host = draw(hosts)
    f.request.port = draw(st.sampled_from([80, 443, 8443]))
    f.request.path = draw(paths)
    f.request.headers.clear()
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=5)):
        f.request.headers.add(name, value)
    if draw(st.booleans()):
        f.request.headers.add("Cookie", draw(cookie_header))
    f.request.raw_content = draw(bodies)
    return f


@given(values=st.lists(cookie_header, max_size=3), edits=st.dictionaries(cookie_name, st.none() | cookie_value, max_size=3))
def test_cookie_edits_leave_every_other_cookie_byte_identical(values, edits):
    out = edit_cookie_headers(values, edits)
    others = lambda vs: [p.strip() for v in vs for p in v.split(";") if p.split("=", 1)[0].strip() not in edits]  # noqa: E731
    assert [p for p in others(out) if p] == [p for p in others(values) if p]
    for name, value in edits.items():
        mine = [p.strip() for v in out for p in v.split(";") if p.split("=", 1)[0].strip() == name]
        assert mine == ([] if value is None else [f"{name}={value}"])


@given(body=bodies, encoding=st.sampled_from([None, "gzip", "br", "deflate", "zstd", "identity", "x-bogus"]))
def test_stream_detection_never_raises(body, encoding):
    f = tflow.tflow()
    f.request.raw_content = body
    if encoding:
        f.request.headers["content-encoding"] = encoding
    assert is_streaming(f.request, ("stream",)) in (True, False)


@given(body=json_bodies, encoding=st.sampled_from(["gzip", "br", "deflate", "zstd", "identity"]))
def test_a_compressed_json_body_is_judged_as_the_plain_one(body, encoding):
    plain, packed = tflow.tflow(), tflow.tflow()
    plain.request.raw_content = body
    packed.request.headers["content-encoding"] = encoding
    packed.request.raw_content = encode(body, encoding)
    assert is_streaming(packed.request, ("stream",)) is is_streaming(plain.request, ("stream",))


@SETTINGS
@given(flows=st.lists(requests(), min_size=1, max_size=4))
def test_random_requests_never_break_the_rewriter(tmp_path_factory, flows):
    folder = tmp_path_factory.mktemp("rules")
    loader = Runtime()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(write_rules(folder, RULES)))
        for f in flows:
            before = f.request.get_state()
            asyncio.run(rewriter.request(f))
            host = f.request.host.lower()
            sent_token = any(t in (v or "") for t in TOKENS for v in f.request.headers.values())
            if host != "api.example.com" or not f.request.path.startswith("/v1/"):
                assert not sent_token  # a secret never leaves for a host or path its rule does not name
            if not host.endswith(".example.com"):
                assert f.request.get_state() == before and f.comment == ""  # untouched, exactly


yaml_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from([RULES]).flatmap(lambda t: st.integers(0, len(t)).map(lambda n: t[:n])),  # truncated
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["rules", "match", "host", "headers", "cookies", "tokens", "file", "x"]), inner, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps(v)),  # JSON is YAML: random structures with the right key names
)


@SETTINGS
@given(text=yaml_texts)
def test_any_rules_file_loads_or_gets_one_located_error(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("rules")
    path = write_rules(folder, "")
    path.write_text(text)
    try:
        load_config(path)
    except RulesError as e:
        assert str(e).startswith(f"{path}:{e.line}:{e.column}: ") and "\n" not in e.problem


@SETTINGS
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from(["tok-a", "# c", "", "  ", "\ufefftok-b", "tok-a", "t\tb"]), max_size=8).map(lambda ls: "\r\n".join(ls).encode()))
def test_any_tokens_file_reads_or_gets_a_clear_error(tmp_path_factory, data):
    path = Path(tmp_path_factory.mktemp("tokens")) / "tokens.txt"
    path.write_bytes(data)
    try:
        tokens = read_tokens(path)
    except TokensFileError as e:
        assert str(e).startswith(f"{path}: ")
    else:
        assert len(set(tokens)) == len(tokens) and all(t == t.strip() and t and not t.startswith("#") for t in tokens)


edit_names = st.sampled_from(["Accept", "accept", "X-Debug", "User-Agent", "X-New", "Cookie", "cookie"])


@SETTINGS
@given(
    fields=st.lists(st.tuples(edit_names | header_names, header_values), max_size=8),
    cookie_fields=st.lists(cookie_header, max_size=3),
    edits=st.dictionaries(edit_names, st.none() | header_values, max_size=4),
    cookies=st.dictionaries(st.sampled_from(["session", "theme", "new"]), st.none() | cookie_value, max_size=3),
)
def test_one_pass_edit_equals_mitmproxys_own_operations(fields, cookie_fields, edits, cookies):
    """apply_plan's one pass over the fields gives what mitmproxy's Headers operations give one by one."""
    from mitmproxy import http

    from addon.request.apply import edit_fields

    given = http.Headers([(k.encode(), v.encode()) for k, v in fields + [("Cookie", c) for c in cookie_fields]])
    by_lower = {}
    for name, value in edits.items():  # as the plan folds them: one edit per name, the last spelling wins
        by_lower.pop(name.lower(), None)
        by_lower[name.lower()] = (name, value)
    expected = given.copy()
    for name, value in by_lower.values():
        if value is None:
            expected.pop(name, None)
        else:
            expected[name] = value
    if cookies:
        expected.set_all("Cookie", edit_cookie_headers(expected.get_all("cookie"), cookies))
    got = given.copy()
    one_pass = {lk.encode(): (n.encode(), None if v is None else v.encode()) for lk, (n, v) in by_lower.items()}
    if b"cookie" in one_pass:  # as apply_plan does: Cookie edited as a header first
        edit_fields(got, one_pass, {})
        one_pass = {}
    edit_fields(got, one_pass, cookies)
    assert got.fields == expected.fields


BODY_RULES = """\
rules:
  - match: {host: api.example.com}
    body: {a: "{token}", options.n: 2, stream: null}
tokens: {file: tokens.txt}
"""


@SETTINGS
@given(body=json_bodies | st.binary(max_size=50), encoding=st.sampled_from([None, "gzip", "br", "deflate", "zstd"]))
def test_body_edits_leave_a_body_that_decodes_to_the_edits_or_the_body_as_it_came(tmp_path_factory, body, encoding):
    from mitmproxy.net.encoding import decode

    from addon.request.apply import apply_plan
    from addon.request.plan import plan_request

    config = load_config(write_rules(tmp_path_factory.mktemp("r"), BODY_RULES))
    f = tflow.tflow()
    f.request.host, f.request.port = "api.example.com", 443
    raw = encode(body, encoding) if encoding else body
    f.request.raw_content = raw
    if encoding:
        f.request.headers["content-encoding"] = encoding
    lines = apply_plan(plan_request(config, f), f.request, {"token": TOKENS[0]})
    try:
        sent = json.loads(body)
    except ValueError:
        sent = None
    if not isinstance(sent, dict):
        assert f.request.raw_content == raw and lines[-1].startswith("body not edited by rules[0]: ")
        return
    assert f.request.headers.get("content-encoding") == encoding
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))
    got = json.loads(decode(f.request.raw_content, encoding) if encoding else f.request.raw_content)
    assert got["a"] == TOKENS[0] and "stream" not in got
    if isinstance(sent.get("options", {}), dict):
        assert got["options"]["n"] == 2
    else:
        assert got["options"] == sent["options"] and "body options.n not set by rules[0]" in lines[1]
    assert {k: v for k, v in got.items() if k not in ("a", "options", "stream")} == {
        k: v for k, v in sent.items() if k not in ("a", "options", "stream")
    }
