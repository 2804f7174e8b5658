import pytest
from mitmproxy.test import tutils

from addon.recovery.verdict import BODY_SEARCH_LIMIT, applies, holds_for_first_event, may_retry, retry_after, verdict
from addon.rules.records import DEFAULT_ON_RESPONSE, ResponseRule
from addon.rules.sections.on_response import _regex
from helpers import compressed_json

RULES = (
    ResponseRule(frozenset({403}), _regex("(?i)recaptcha validation failed"), "refresh_captcha"),  # as the loader compiles
    ResponseRule(frozenset({401, 403}), None, "rotate"),
    ResponseRule(frozenset({500}), _regex("maintenance"), "pass"),
    ResponseRule(frozenset({500}), None, "rotate"),
    ResponseRule(frozenset({429}), None, "pass"),
)


def resp(status, body=b"", **headers):
    r = tutils.tresp(status_code=status, content=body)
    for k, v in headers.items():
        r.headers[k.replace("_", "-")] = v
    return r


@pytest.mark.parametrize(
    "response, action",
    [
        (resp(403, b'{"error": "reCAPTCHA validation failed"}'), "refresh_captcha"),
        (resp(403, b"forbidden"), "rotate"),
        (resp(401), "rotate"),
        (resp(500, b"down for maintenance"), None),  # first match wins: pass
        (resp(500, b"oops"), "rotate"),
        (resp(429), None),
        (resp(200), None),
    ],
)
def test_first_matching_rule_decides(response, action):
    assert action_of(verdict(RULES, response)) == action


def action_of(rule):
    return rule.action if rule is not None else None


def test_default_rotates_on_403_only():
    assert action_of(verdict(DEFAULT_ON_RESPONSE, resp(403))) == "rotate"
    assert verdict(DEFAULT_ON_RESPONSE, resp(401)) is None


def test_body_regex_reads_compressed_bodies():
    import gzip

    r = resp(403, gzip.compress(b"recaptcha validation failed"), content_encoding="gzip")
    assert action_of(verdict(RULES, r)) == "refresh_captcha"


def test_a_catastrophic_pattern_runs_in_linear_time():
    # (a+)+$ against a+ then "!" backtracks 2^n times in Python's re; RE2 does not backtrack
    rules = (ResponseRule(frozenset({403}), _regex("(a+)+$"), "rotate"),)
    assert verdict(rules, resp(403, b"a" * 30 + b"!")) is None
    assert action_of(verdict(rules, resp(403, b"a" * 30))) == "rotate"


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_body_regexes_see_the_start_of_a_bomb_only(encoding):
    # the body decodes to 64 MiB; only its first BODY_SEARCH_LIMIT bytes are decoded and searched
    rules = (
        ResponseRule(frozenset({403}), _regex('"pad": "  '), "refresh_captcha"),  # at the start
        ResponseRule(frozenset({403}), _regex('"}$'), "pass"),  # only at the very end
        ResponseRule(frozenset({403}), None, "rotate"),
    )
    bomb = resp(403, compressed_json(encoding, 64 * BODY_SEARCH_LIMIT), content_encoding=encoding)
    assert action_of(verdict(rules, bomb)) == "refresh_captcha"
    assert action_of(verdict(rules[1:], bomb)) == "rotate"


@pytest.mark.parametrize(
    "status, injected, retry",
    [
        (403, ["token"], True),
        (403, ["captcha"], True),  # the body might say recaptcha validation failed
        (401, ["token"], True),
        (401, ["captcha"], False),  # rotate needs a token
        (500, ["token"], True),
        (429, ["token"], False),
        (200, ["token", "captcha"], False),
    ],
)
def test_may_retry_is_decided_on_status_and_what_was_put_in(status, injected, retry):
    assert may_retry(RULES, status, injected) is retry


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("120", 120.0), ("", None), ("soon", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("99999999999999", 86400.0),  # capped at a day
        ("9" * 5000, 86400.0),  # too long for a float: a day, no OverflowError
        # issue 23, attack 8: only ASCII digits or an HTTP date; anything else is as if absent
        ("²", None), ("١٢", None), ("1e3", None), ("-5", None), ("+5", None), ("5.0", None), ("0x10", None),
        ("1_000", None), ("12\x0b", None), ("Thu, 01 Jan 99999 00:00:00 GMT", None),
    ],  # fmt: skip
)
def test_retry_after(value, seconds):
    r = resp(403, retry_after=value) if value else resp(403)
    assert retry_after(r, now=60.0) == seconds


CLEARANCE = (
    ResponseRule(frozenset({403}), _regex("(?i)just a moment"), "refresh", frozenset({"cf_clearance"})),
    ResponseRule(frozenset({403}), None, "rotate"),
)


@pytest.mark.parametrize(
    "status, injected, retry",
    [
        (403, ["cf_clearance"], True),  # the body might be the challenge page
        (403, ["captcha"], False),  # neither the value refresh fetches nor a token
        (403, ["token"], True),
    ],
)
def test_a_refresh_may_retry_a_request_that_used_one_of_its_values(status, injected, retry):
    assert may_retry(CLEARANCE, status, injected) is retry


def test_a_refresh_applies_to_the_requests_that_used_its_values():
    challenge = verdict(CLEARANCE, resp(403, b"<title>Just a moment...</title>"))
    assert challenge is CLEARANCE[0]
    assert applies(challenge, {"token", "cf_clearance"}) and not applies(challenge, {"token"})
    assert applies(RULES[0], {"captcha"}) and not applies(RULES[0], {"token"})  # refresh_captcha


# first_event rules: a streamed answer (an event stream, or any answer to a streaming request) judged by its first event
STREAM_RULES = (
    ResponseRule(frozenset({200}), None, "rotate", first_event=_regex("(?m)^event: error$", "first_event")),
    ResponseRule(frozenset({200}), None, "rotate", first_event=_regex("^$", "first_event")),
    ResponseRule(frozenset({403}), None, "rotate"),
)
SSE = {"content_type": "text/event-stream; charset=utf-8"}


@pytest.mark.parametrize(
    "response, streaming, action",
    [
        # an event stream: its first event block with data
        (resp(200, b"event: error\ndata: {}\n\ndata: {}\n\n", **SSE), False, "rotate"),
        (resp(200, b"data: {}\n\nevent: error\ndata: {}\n\n", **SSE), False, None),  # only the first event counts
        (resp(200, b": ping\n\nevent: error\r\ndata: x\r\n\r\n", **SSE), False, "rotate"),  # comments before it skipped
        (resp(200, b"", **SSE), False, "rotate"),  # no event at all: "^$"
        (resp(200, b": ping\n\n", **SSE), False, "rotate"),  # only a keep-alive: no event either
        # any answer to a streaming request: its first 64 KiB
        (resp(200, b"", content_type="application/x-ndjson"), True, "rotate"),
        (resp(200, b'{"n": 1}\n', content_type="application/x-ndjson"), True, None),
        # never an answer that is not streamed
        (resp(200, b"", content_type="application/json"), False, None),
        (resp(200, b"event: error\ndata: x\n\n", content_type="text/plain"), False, None),
        (resp(403, b"", **SSE), False, "rotate"),
    ],
)
def test_first_event_rules_judge_a_streamed_answer_by_its_first_event(response, streaming, action):
    assert action_of(verdict(STREAM_RULES, response, streaming)) == action


@pytest.mark.parametrize(
    "status, injected, whole, first_event",
    [
        (200, {"token"}, False, True),  # a first_event rule: held until its first event, not whole
        (200, set(), False, False),  # rotate needs a token: nothing to retry it with
        (403, {"token"}, True, False),
        (500, {"token"}, False, False),
    ],
)
def test_a_first_event_rule_holds_an_answer_for_its_first_event_not_whole(status, injected, whole, first_event):
    assert may_retry(STREAM_RULES, status, injected) is whole
    assert holds_for_first_event(STREAM_RULES, status, injected) is first_event


def test_a_rule_without_conditions_before_a_first_event_rule_ends_the_search():
    rules = (ResponseRule(frozenset({200}), None, "pass"), *STREAM_RULES)
    assert not holds_for_first_event(rules, 200, {"token"})
    body_first = (ResponseRule(frozenset({200}), _regex("x"), "pass"), *STREAM_RULES)
    assert holds_for_first_event(body_first, 200, {"token"})  # a body rule might not match
