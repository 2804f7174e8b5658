"""The pure part of the request side: which rules match, what they fold into, and the edits applied
(headers and cookies are also covered through the hook in test_rewriter.py)."""

from __future__ import annotations

import gzip
import json
import logging

import pytest
from mitmproxy.test import tflow

from addon.request import jsonbody
from addon.request.plan import apply_plan, plan_request
from addon.rules.config import load_config
from helpers import write_rules

VALUES = {"token": "tok-alpha-000000001111", "captcha": "cap-test-value-9999", "cf": "cf-clear-value-00aa"}

RULES = """\
rules:
  - name: first
    match: {host: a.example}
    cookies: {session: "first-{token}", keep: one}
    body:
      model: first-model
      params.temperature: 0.5
  - name: second
    match: {host: a.example, path: /v1/*}
    cookies: {session: "{token}"}
    body:
      model: "{captcha}"
      recaptchaV3Token: "{captcha}"
      stream: true
      n: 2
      stop: [a, "{b}"]
      meta: {k: v, nested: [1, null]}
      debug: null
      note: "line one\\nline two {{x}}"
tokens: {file: tokens.txt}
values:
  captcha: {file: captcha.txt}
  cf: {env: CF_VALUE, secret: false}
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_VALUE", VALUES["cf"])
    return load_config(write_rules(tmp_path, RULES))


def flow(path="/v1/chat", body=b'{"model": "client", "debug": true, "messages": []}', **headers):
    f = tflow.tflow()
    f.request.method, f.request.scheme, f.request.host, f.request.port, f.request.path = "POST", "https", "a.example", 443, path
    f.request.headers.clear()
    for k, v in headers.items():
        f.request.headers[k.replace("_", "-")] = v
    f.request.content = body
    return f


def edited(config, f, values=VALUES):
    plan = plan_request(config, f)
    return plan, apply_plan(plan, f.request, values)


# the missing test of issue 16: for the same cookie (or body field) a later rule wins, as for headers
def test_a_cookie_set_by_two_rules_takes_the_later_rules_value(config):
    f = flow(cookie="session=client; other=1")
    plan, lines = edited(config, f)
    assert f.request.headers["cookie"] == "session=tok-alpha-000000001111; other=1; keep=one"
    assert [(e.name, e.rule) for e in plan.cookies] == [("keep", "first"), ("session", "second")]
    assert "cookie session ← second (token …1111)" in lines


def test_a_body_field_set_by_two_rules_takes_the_later_rules_value(config):
    f = flow()
    plan, lines = edited(config, f)
    assert json.loads(f.request.content)["model"] == "cap-test-value-9999"
    assert [e.rule for e in plan.body if e.name == "model"] == ["second"]
    assert "body model ← second (captcha …9999)" in lines


def test_body_values_keep_their_json_types_and_null_removes(config):
    f = flow()
    _, lines = edited(config, f)
    body = json.loads(f.request.content)
    assert body == {
        "model": "cap-test-value-9999",
        "messages": [],
        "params": {"temperature": 0.5},
        "recaptchaV3Token": "cap-test-value-9999",
        "stream": True,
        "n": 2,
        "stop": ["a", "{b}"],  # strings inside a list or mapping are taken as written
        "meta": {"k": "v", "nested": [1, None]},
        "note": "line one\nline two {x}",
    }
    assert list(body)[:2] == ["model", "messages"]  # fields the client sent keep their places
    assert f.request.raw_content.startswith(b'{"model":"cap-test-value-9999","messages":[]')  # compact
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))
    assert lines == [
        "cookie keep ← first",
        "cookie session ← second (token …1111)",
        "body params.temperature ← first",
        "body model ← second (captcha …9999)",
        "body recaptchaV3Token ← second (captcha …9999)",
        "body stream ← second",
        "body n ← second",
        "body stop ← second",
        "body meta ← second",
        "body debug removed by second",
        "body note ← second",
    ]


def test_a_removal_is_listed_only_when_the_body_had_the_field(config):
    f = flow(body=b'{"model": "m"}')
    _, lines = edited(config, f)
    assert not any("removed" in line for line in lines)


def test_a_gzip_encoded_body_is_edited_and_still_decodes(config):
    f = flow(content_encoding="gzip")
    f.request.raw_content = gzip.compress(b'{"model": "client", "messages": []}')
    edited(config, f)
    assert f.request.headers["content-encoding"] == "gzip"
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))
    assert json.loads(gzip.decompress(f.request.raw_content))["recaptchaV3Token"] == "cap-test-value-9999"


@pytest.mark.parametrize(
    "body, why",
    [
        (b"", "the request has no body"),
        (b"model=client", "the body is not JSON"),
        (b'[{"model": "client"}]', "the body is JSON but not an object (it is a list)"),
    ],
    ids=["no body", "a form", "a JSON list"],
)
def test_a_body_that_is_not_a_json_object_is_left_and_the_comment_and_log_say_why(config, caplog, body, why):
    f = flow(body=body, cookie="session=client")
    with caplog.at_level(logging.DEBUG, logger="addon.request.plan"):
        _, lines = edited(config, f)
    assert f.request.raw_content == body
    assert lines[-1] == f"body not edited by first, second: {why}"
    assert f.request.headers["cookie"] == "session=tok-alpha-000000001111; keep=one"  # the other edits are made
    assert f"rules: body of POST https://a.example/v1/chat not edited (first, second): {why}" in caplog.text


def test_a_field_that_cannot_be_set_is_skipped_and_said(config):
    f = flow(body=b'{"params": "fast", "model": "m"}')
    _, lines = edited(config, f)
    assert json.loads(f.request.content)["params"] == "fast"
    assert "body params.temperature not set by first: params is a string, not an object" in lines


def test_a_value_without_a_source_skips_the_field_only(config):
    f = flow()
    _, lines = edited(config, f, {"token": VALUES["token"]})  # the captcha source failed
    body = json.loads(f.request.content)
    assert "recaptchaV3Token" not in body and body["model"] == "client"
    assert "body recaptchaV3Token not set by second: no captcha value" in lines


def test_a_plan_without_body_edits_never_reads_the_body(tmp_path, monkeypatch):
    config = load_config(write_rules(tmp_path, "rules:\n  - match: {host: a.example}\n    headers: {X: y}\n"))

    def unexpected(request):
        raise AssertionError("the body was read")

    monkeypatch.setattr(jsonbody, "read_object", unexpected)
    f = flow()
    before = f.request.raw_content
    assert apply_plan(plan_request(config, f), f.request, {}) == ["X ← rules[0]"]
    assert f.request.raw_content == before


def test_a_retry_applies_the_body_edits_again_with_its_values(config):
    f = flow()
    plan, _ = edited(config, f)
    retry = f.request.copy()
    lines = apply_plan(plan.dynamic, retry, {**VALUES, "token": "tok-bravo-000000002222", "captcha": "cap-second-value-0002"})
    body = json.loads(retry.content)
    assert body["recaptchaV3Token"] == body["model"] == "cap-second-value-0002"
    assert body["n"] == 2 and "debug" not in body  # the first attempt's other edits are still there
    assert retry.cookies["session"] == "tok-bravo-000000002222"
    assert [e.name for e in plan.dynamic.cookies] == ["session"]  # the headers and cookies with drawn values
    assert plan.dynamic.body == plan.body  # and every body edit, in order (see the next test)
    assert lines == [
        "cookie session ← second (token …2222)",
        "body params.temperature ← first",
        "body model ← second (captcha …0002)",
        "body recaptchaV3Token ← second (captcha …0002)",
        "body stream ← second",
        "body n ← second",
        "body stop ← second",
        "body meta ← second",
        "body note ← second",
    ]


def test_a_value_with_secret_false_is_shown_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_VALUE", VALUES["cf"])
    rules = "rules:\n  - match: {host: a.example}\n    cookies: {cf_clearance: '{cf}'}\n    body: {c: '{captcha}'}\n"
    config = load_config(write_rules(tmp_path, rules + "values:\n  cf: {env: CF_VALUE, secret: false}\n  captcha: {file: captcha.txt}\n"))
    f = flow()
    _, lines = edited(config, f)
    assert lines == ["cookie cf_clearance ← rules[0] (cf cf-clear-value-00aa)", "body c ← rules[0] (captcha …9999)"]


def test_a_retry_keeps_a_later_rules_removal_of_what_holds_a_drawn_field(tmp_path):
    rules = """\
    rules:
      - name: first
        match: {host: a.example}
        body: {params.session: "{token}", id: "{token}"}
      - name: second
        match: {host: a.example}
        body: {params: null}
    tokens: {file: tokens.txt}
    """
    config = load_config(write_rules(tmp_path, rules))
    f = flow(body=b'{"params": {"a": 1}}')
    plan, _ = edited(config, f)
    assert json.loads(f.request.content) == {"id": VALUES["token"]}
    retry = f.request.copy()
    apply_plan(plan.dynamic, retry, {"token": "tok-bravo-000000002222"})
    assert json.loads(retry.content) == {"id": "tok-bravo-000000002222"}
