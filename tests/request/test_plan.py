"""The pure part of the request side: which rules match and what they fold into (the edits made on the
request: test_apply.py; headers and cookies are also covered through the hook in test_rewriter.py)."""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import tflow

from addon.request.apply import apply_plan
from addon.request.plan import plan_request
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


# a shape (host, port, method, path, streaming) is judged once; its filters per request, and the plan by
# which of them pass is remembered with the shape (by_passes): it must follow each request's filters

FILTERED = """\
rules:
  - name: always
    match: {host: a.example}
    headers: {X-Always: "1"}
  - name: debug
    match: {host: a.example, filter: "~h X-Debug"}
    headers: {X-Seen: debug, X-Always: "2"}
  - name: trace
    match: {host: a.example, filter: "~h X-Trace"}
    cookies: {trace: "on"}
  - name: debug-only
    match: {host: b.example, filter: "~h X-Debug"}
    headers: {X-Seen: debug-only}
"""


def _filtered_flow(host="a.example", **headers):
    f = flow(**headers)
    f.request.host = host
    return f


def test_a_filtered_rule_is_in_the_plan_only_when_its_filter_passes_each_time(tmp_path):
    config = load_config(write_rules(tmp_path, FILTERED))
    plans = {}
    for debug in [True, False, True, False, False, True, True, False]:  # one shape, the header on and off
        f = _filtered_flow(**({"X_Debug": "1"} if debug else {}))
        plan = plan_request(config, f)
        assert [r.name for r in plan.rules] == (["always", "debug"] if debug else ["always"])
        assert [(e.name, e.value.render({}), e.rule) for e in plan.headers] == (
            [("X-Seen", "debug", "debug"), ("X-Always", "2", "debug")] if debug else [("X-Always", "1", "always")])
        assert plan.cookies == ()
        assert plans.setdefault(debug, plan) is plan  # the plan of each outcome is made once, then remembered
    assert len(config.index.requests) == 1  # one shape


def test_two_filters_of_one_shape_in_every_combination_get_their_own_plans(tmp_path):
    config = load_config(write_rules(tmp_path, FILTERED))
    combos = [(False, False), (True, False), (False, True), (True, True)]
    for debug, trace in combos * 2 + combos[::-1] * 2:
        headers = {**({"X_Debug": "1"} if debug else {}), **({"X_Trace": "1"} if trace else {})}
        plan = plan_request(config, _filtered_flow(**headers))
        assert [r.name for r in plan.rules] == ["always", *(["debug"] if debug else []), *(["trace"] if trace else [])]
        assert [e.name for e in plan.cookies] == (["trace"] if trace else [])
        assert ("X-Seen" in [e.name for e in plan.headers]) is debug


def test_a_shape_whose_only_rule_is_filtered_has_no_plan_when_the_filter_fails(tmp_path):
    config = load_config(write_rules(tmp_path, FILTERED))
    for debug in [False, True, False, True, True, False]:
        plan = plan_request(config, _filtered_flow("b.example", **({"X_Debug": "1"} if debug else {})))
        if debug:
            assert [r.name for r in plan.rules] == ["debug-only"]
            assert [(e.name, e.value.render({})) for e in plan.headers] == [("X-Seen", "debug-only")]
        else:
            assert plan is None


def test_the_plans_by_filter_outcome_start_over_at_their_limit(tmp_path, monkeypatch):
    from addon.request import plan as plan_module

    monkeypatch.setattr(plan_module, "_PASSES_LIMIT", 2)
    config = load_config(write_rules(tmp_path, FILTERED))
    combos = [(False, False), (True, False), (False, True), (True, True)]
    for debug, trace in combos * 3:
        headers = {**({"X_Debug": "1"} if debug else {}), **({"X_Trace": "1"} if trace else {})}
        plan = plan_request(config, _filtered_flow(**headers))
        assert [r.name for r in plan.rules] == ["always", *(["debug"] if debug else []), *(["trace"] if trace else [])]
        (shape,) = config.index.requests.values()
        assert 1 <= len(shape.by_passes) <= 2
