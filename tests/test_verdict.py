import pytest
from mitmproxy.test import tutils

from addon.config import DEFAULT_ON_RESPONSE, ResponseRule, _regex
from addon.verdict import BODY_SEARCH_LIMIT, applies, may_retry, retry_after, verdict
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
