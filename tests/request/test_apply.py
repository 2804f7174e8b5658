"""addon/request/apply.py and applybody.py: a plan's edits made on the request, and the comment lines that
say them (headers and cookies are also covered through the hook in test_rewriter.py)."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from addon.request import jsonbody
from addon.request.apply import apply_plan
from addon.request.plan import plan_request
from addon.rules.config import load_config
from helpers import write_rules
from test_plan import RULES, VALUES, edited, flow


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_VALUE", VALUES["cf"])
    return load_config(write_rules(tmp_path, RULES))


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
    with caplog.at_level(logging.DEBUG, logger="addon.request.applybody"):
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


def test_a_value_with_secret_false_is_shown_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_VALUE", VALUES["cf"])
    rules = "rules:\n  - match: {host: a.example}\n    cookies: {cf_clearance: '{cf}'}\n    body: {c: '{captcha}'}\n"
    config = load_config(write_rules(tmp_path, rules + "values:\n  cf: {env: CF_VALUE, secret: false}\n  captcha: {file: captcha.txt}\n"))
    f = flow()
    _, lines = edited(config, f)
    assert lines == ["cookie cf_clearance ← rules[0] (cf cf-clear-value-00aa)", "body c ← rules[0] (captcha …9999)"]
