"""addon/request/apply.py's memos give what the plain computation gives: edit_fields' programs (kept per
compiled plan, by the request's field names), the comment lines and values of drawn edits kept in
`Compiled.rendered`, and the Cookie results kept by `_cookie_fields`."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from mitmproxy import http

from addon.request import apply
from addon.request.apply import apply_plan, edit_fields
from addon.request.cookies import edit_cookie_headers
from addon.request.plan import Skipped, plan_request
from addon.rules.config import load_config
from helpers import write_rules
from test_plan import flow

# -- edit_fields: one shared `programs` dict gives what no memo gives ---------------------------------------

# edits as a compiled plan has them (lower-case name -> (name, value; None removes)), and cookie edits; each key
# keeps its kind across the sets, as within one plan (a drawn value that is skipped drops its key)
EDIT_SETS = {
    "headers and cookies": (
        {b"user-agent": (b"User-Agent", b"Mozilla/5.0"), b"x-debug": (b"X-Debug", None),
         b"accept": (b"Accept", b"application/json"), b"x-captcha": (b"X-Captcha", b"cap-1")},
        {"session": "tok-alpha-1", "tracking": None},
    ),
    "the same keys, other drawn values": (
        {b"user-agent": (b"User-Agent", b"Mozilla/5.0"), b"x-debug": (b"X-Debug", None),
         b"accept": (b"Accept", b"application/json"), b"x-captcha": (b"X-Captcha", b"cap-2")},
        {"session": "tok-bravo-2", "tracking": None},
    ),
    "a drawn header and cookie skipped": (
        {b"user-agent": (b"User-Agent", b"Mozilla/5.0"), b"x-debug": (b"X-Debug", None),
         b"accept": (b"Accept", b"application/json")},
        {"tracking": None},
    ),
    "the drawn cookie skipped, no cookie edit left": (
        {b"user-agent": (b"User-Agent", b"Mozilla/5.0"), b"x-debug": (b"X-Debug", None),
         b"accept": (b"Accept", b"application/json"), b"x-captcha": (b"X-Captcha", b"cap-3")},
        {},
    ),
    "the Cookie header itself": ({b"cookie": (b"Cookie", b"fixed=1"), b"user-agent": (b"User-Agent", b"UA")}, {}),
    "cookies only": ({}, {"session": "tok-charlie-3", "other": None}),
    "removals only": ({b"x-debug": (b"X-Debug", None), b"accept": (b"Accept", None)}, {}),
}

CANDIDATE_FIELDS = [
    (b"Host", b"a.example"),
    (b"User-Agent", b"client/1"),
    (b"user-agent", b"client/2"),
    (b"X-Debug", b"1"),
    (b"X-DEBUG", b"2"),
    (b"Accept", b"*/*"),
    (b"ACCEPT", b"text/html"),
    (b"X-Captcha", b"from-client"),
    (b"Cookie", b"session=client; tracking=t; other=1"),
    (b"cookie", b"b=2; session=again"),
    (b"COOKIE", b"tracking=x"),
    (b"Cookie", b"weird=\xff\xfe; session=s"),
    (b"Cookie", b""),
    (b"X-Other", b"o"),
    (b"Content-Type", b"application/json"),
]

HAND_PICKED = [
    (),
    ((b"Host", b"a.example"),),
    ((b"Cookie", b"session=client"),),
    ((b"Cookie", b"tracking=t"),),  # a Cookie header that its removal empties
    ((b"Cookie", b"tracking=t"), (b"Cookie", b"a=1"), (b"Cookie", b"tracking=u")),
    ((b"X-Debug", b"1"), (b"x-debug", b"2"), (b"X-DEBUG", b"3")),
    ((b"user-agent", b"a"), (b"Host", b"h"), (b"USER-AGENT", b"b"), (b"cookie", b"session=c"), (b"User-Agent", b"c")),
    tuple(CANDIDATE_FIELDS),
    tuple(reversed(CANDIDATE_FIELDS)),
]


def _layouts(n: int = 120, seed: int = 1612) -> list[tuple[tuple[bytes, bytes], ...]]:
    rnd = random.Random(seed)
    layouts = list(HAND_PICKED)
    for _ in range(n):
        fields = rnd.sample(CANDIDATE_FIELDS, rnd.randint(0, 8))
        if fields and rnd.random() < 0.3:  # a field sent twice
            fields.insert(rnd.randint(0, len(fields)), rnd.choice(fields))
        layouts.append(tuple(fields))
    return layouts


LAYOUTS = _layouts()


def _edited(fields, edits, cookies, programs):
    headers = http.Headers(fields)
    found: set = set()
    edit_fields(headers, dict(edits), dict(cookies), found, programs)
    return headers.fields, found


def _as_mitmproxy_does(fields, edits, cookies):
    """What edit_fields' docstring says it equals: `headers[name] = value` and `headers.pop(name)` one by one,
    then `headers.set_all("Cookie", edited values)`."""
    headers = http.Headers(fields)
    found: set = set()
    for key, (name, value) in edits.items():
        if key.decode() in headers:
            found.add(key)
        if value is None:
            headers.pop(name.decode(), None)
        else:
            headers[name.decode()] = value.decode("utf-8", "surrogateescape")
    if cookies:
        headers.set_all("Cookie", edit_cookie_headers(headers.get_all("Cookie"), cookies, found))
    return headers.fields, found


@pytest.mark.parametrize("which", list(EDIT_SETS))
def test_edit_fields_is_what_mitmproxys_own_edits_give(which):
    edits, cookies = EDIT_SETS[which]
    for fields in LAYOUTS:
        assert _edited(fields, edits, cookies, None) == _as_mitmproxy_does(fields, edits, cookies), fields


def test_edit_fields_with_one_shared_memo_gives_what_it_gives_without(monkeypatch):
    monkeypatch.setattr(apply, "PROGRAMS_LIMIT", 10_000)  # (the bound has a test of its own)
    programs: dict = {}
    for round_ in range(3):  # the second and third time, every layout's program comes from the memo
        for fields in LAYOUTS:
            for which, (edits, cookies) in EDIT_SETS.items():
                before = len(programs)
                got = _edited(fields, edits, cookies, programs)
                assert got == _edited(fields, edits, cookies, None), (which, fields)
                if round_:
                    assert len(programs) == before  # a memo hit: nothing new was worked out
    distinct = {(tuple(f[0] for f in fields), tuple(e), bool(c)) for fields in LAYOUTS for e, c in EDIT_SETS.values()}
    assert len(programs) == len(distinct)


def test_a_remembered_program_is_not_taken_for_another_spelling_or_order_of_the_same_names():
    edits, cookies = EDIT_SETS["headers and cookies"]
    programs: dict = {}
    shapes = [
        ((b"User-Agent", b"a"), (b"X-Debug", b"1"), (b"Cookie", b"session=s; tracking=t")),
        ((b"user-agent", b"a"), (b"X-Debug", b"1"), (b"Cookie", b"session=s; tracking=t")),
        ((b"X-Debug", b"1"), (b"User-Agent", b"a"), (b"Cookie", b"session=s; tracking=t")),
        ((b"Cookie", b"session=s; tracking=t"), (b"User-Agent", b"a"), (b"X-Debug", b"1")),
        ((b"Cookie", b"session=s"), (b"User-Agent", b"a"), (b"Cookie", b"tracking=t")),
        ((b"User-Agent", b"a"), (b"User-Agent", b"b"), (b"Cookie", b"tracking=t")),
        ((b"User-Agent", b"a"),),
    ]
    for fields in shapes * 2:
        _edited(fields, edits, cookies, programs)
    assert len(programs) == len(shapes)
    assert _edited(shapes[3], edits, cookies, programs) == (
        ((b"Cookie", b"session=tok-alpha-1"), (b"User-Agent", b"Mozilla/5.0"),
         (b"Accept", b"application/json"), (b"X-Captcha", b"cap-1")),
        {b"user-agent", b"x-debug", "session", "tracking"},
    )
    assert _edited(shapes[4], edits, cookies, programs) == (
        ((b"Cookie", b"session=tok-alpha-1"), (b"User-Agent", b"Mozilla/5.0"),
         (b"Accept", b"application/json"), (b"X-Captcha", b"cap-1")),  # the emptied second Cookie field goes
        {b"user-agent", "session", "tracking"},
    )
    assert _edited(shapes[6], edits, cookies, programs) == (
        ((b"User-Agent", b"Mozilla/5.0"), (b"Accept", b"application/json"), (b"X-Captcha", b"cap-1"),
         (b"Cookie", b"session=tok-alpha-1")),
        {b"user-agent"},
    )


def test_the_programs_memo_starts_over_at_its_limit():
    edits, cookies = EDIT_SETS["headers and cookies"]
    programs: dict = {}
    layouts = [((b"X-Pad-%d" % i, b"v"), (b"User-Agent", b"a"), (b"Cookie", b"tracking=t"))
               for i in range(apply.PROGRAMS_LIMIT + 5)]
    for i, fields in enumerate(layouts):
        got = _edited(fields, edits, cookies, programs)
        assert got == _edited(fields, edits, cookies, None)
        assert len(programs) == (i % apply.PROGRAMS_LIMIT) + 1  # full: cleared, then this one kept
    assert len(programs) == 5
    # what was forgotten is worked out again, the same
    assert _edited(layouts[0], edits, cookies, programs) == _edited(layouts[0], edits, cookies, None)
    assert len(programs) == 6


# -- apply_plan: drawn values are each request's own, in the fields and in the comment -------------------

DRAWN_RULES = """\
rules:
  - name: acct
    match: {host: a.example}
    headers:
      X-Captcha: "{captcha}"
      X-Both: "{captcha}/{token}"
      X-Fixed: "yes"
      X-Debug: null
    cookies:
      session: "{token}"
      tracking: null
tokens: {file: tokens.txt}
values:
  captcha: {file: captcha.txt}
"""

A = {"token": "tok-alpha-000000001111", "captcha": "cap-first-value-0001"}
B = {"token": "tok-bravo-000000002222", "captcha": "cap-second-value-0002"}
C = {"token": "tok-charlie-0000003333", "captcha": "cap-third-value-0003"}


@pytest.fixture
def drawn_plan(tmp_path):
    config = load_config(write_rules(tmp_path, DRAWN_RULES))
    return plan_request(config, _request())


def _request():
    # (flow() sets its body after the headers: Content-Length comes after them)
    return flow(cookie="session=client; tracking=t; other=1", x_captcha="from-client", x_debug="1", accept="*/*")


CONTENT_LENGTH = (b"content-length", str(len(_request().request.raw_content)).encode())


def _applied(plan, values):
    f = _request()
    lines = apply_plan(plan, f.request, values)
    return f.request.headers.fields, lines


def _fresh(plan, values):
    """The same plan compiled anew, whose memos are empty, and the cookie results' cache cleared."""
    apply._cookie_fields.cache_clear()
    return _applied(replace(plan), values)


def _expected(values):
    t, c = values["token"], values["captcha"]
    fields = (
        (b"cookie", f"session={t}; other=1".encode()),
        (b"x-captcha", c.encode()),
        (b"accept", b"*/*"),
        CONTENT_LENGTH,
        (b"X-Both", f"{c}/{t}".encode()),
        (b"X-Fixed", b"yes"),
    )
    lines = [
        f"X-Captcha ← acct (captcha …{c[-4:]})",
        f"X-Both ← acct (captcha …{c[-4:]}, token …{t[-4:]})",
        "X-Fixed ← acct",
        "X-Debug removed by acct",
        f"cookie session ← acct (token …{t[-4:]})",
        "cookie tracking removed by acct",
    ]
    return fields, lines


def test_each_request_gets_its_own_drawn_values_in_its_fields_and_its_comment(drawn_plan):
    for values in (A, B, A, C, B, B, A):  # values that come back are taken from the memo
        got = _applied(drawn_plan, values)
        assert got == _expected(values)
        assert got == _fresh(drawn_plan, values)
    assert len(drawn_plan.compiled.rendered) == 2 * 3 + 3  # per drawn edit, one entry per set of values it uses


def test_a_missing_value_skips_its_edits_and_a_later_request_with_it_sets_them(drawn_plan):
    fields, lines = _applied(drawn_plan, A)
    assert (b"x-captcha", b"cap-first-value-0001") in fields
    only_token = {"token": B["token"]}  # the captcha source failed
    for _ in range(2):  # the second time from the memo
        fields, lines = _applied(drawn_plan, only_token)
        assert (fields, lines) == _fresh(drawn_plan, only_token)
        assert fields == (
            (b"cookie", b"session=tok-bravo-000000002222; other=1"),
            (b"x-captcha", b"from-client"),  # left as the client sent it
            (b"accept", b"*/*"),
            CONTENT_LENGTH,
            (b"X-Fixed", b"yes"),
        )
        assert lines == [
            "X-Captcha not set by acct: no captcha value",
            "X-Both not set by acct: no captcha value",
            "X-Fixed ← acct",
            "X-Debug removed by acct",
            "cookie session ← acct (token …2222)",
            "cookie tracking removed by acct",
        ]
        assert [type(line) for line in lines[:3]] == [Skipped, Skipped, str]
        assert lines[0].what == "X-Captcha" and lines[1].what == "X-Both"
    assert _applied(drawn_plan, C) == _expected(C)  # the value is back: set again
    assert _applied(drawn_plan, {"captcha": C["captcha"]}) == (  # no token this time
        (
            (b"cookie", b"session=client; other=1"),
            (b"x-captcha", b"cap-third-value-0003"),
            (b"accept", b"*/*"),
            CONTENT_LENGTH,
            (b"X-Fixed", b"yes"),
        ),
        [
            "X-Captcha ← acct (captcha …0003)",
            "X-Both not set by acct: no token value",
            "X-Fixed ← acct",
            "X-Debug removed by acct",
            "cookie session not set by acct: no token value",
            "cookie tracking removed by acct",
        ],
    )
    assert _applied(drawn_plan, A) == _expected(A)


def test_a_value_that_cannot_go_in_its_place_is_skipped_each_time_and_a_good_one_after_is_set(drawn_plan):
    bad = {"token": "tok;evil=1-0000004444", "captcha": "cap-line\nbreak-0005"}
    for _ in range(2):
        fields, lines = _applied(drawn_plan, bad)
        assert (fields, lines) == _fresh(drawn_plan, bad)
        assert (b"x-captcha", b"from-client") in fields and (b"cookie", b"session=client; other=1") in fields
        assert lines[0] == "X-Captcha not set by acct: the captcha …0005 value cannot go in a header"
        assert lines[4] == "cookie session not set by acct: the token …4444 value cannot go in a cookie"
    assert _applied(drawn_plan, B) == _expected(B)


def test_the_render_memo_starts_over_at_its_limit(drawn_plan, monkeypatch):
    monkeypatch.setattr(apply, "RENDERED_LIMIT", 4)
    for i in range(10):
        values = {"token": f"tok-number-00000000{i:04d}", "captcha": f"cap-number-value-{i:04d}"}
        assert _applied(drawn_plan, values) == _expected(values)
        assert len(drawn_plan.compiled.rendered) <= 4
    assert _applied(drawn_plan, A) == _expected(A)


def test_a_retrys_plan_gets_its_own_values_too(drawn_plan):
    dynamic = drawn_plan.dynamic
    for values in (A, B, A):
        f = _request()
        lines = apply_plan(dynamic, f.request, values)
        t, c = values["token"], values["captcha"]
        assert f.request.headers["X-Captcha"] == c and f.request.headers["X-Both"] == f"{c}/{t}"
        assert f.request.headers["Cookie"] == f"session={t}; tracking=t; other=1"  # a retry removes nothing again
        assert lines == [
            f"X-Captcha ← acct (captcha …{c[-4:]})",
            f"X-Both ← acct (captcha …{c[-4:]}, token …{t[-4:]})",
            f"cookie session ← acct (token …{t[-4:]})",
        ]


# -- _cookie_fields: the kept Cookie results -------------------------------------------------------------


def test_the_same_cookie_header_with_other_tokens_gives_other_cookies():
    apply._cookie_fields.cache_clear()
    values = (b"session=client; tracking=t; other=1",)
    seen = []
    for token in ("tok-1", "tok-2", "tok-1", "tok-2"):
        new, present = apply._cookie_fields(values, (("session", token), ("tracking", None), ("absent", None)))
        seen.append(new)
        assert new == (f"session={token}; other=1".encode(),)
        assert present == frozenset({"session", "tracking"})
    assert seen[0] != seen[1]
    info = apply._cookie_fields.cache_info()
    assert (info.hits, info.misses) == (2, 2)


def test_found_gets_the_edited_cookies_present_on_every_request_also_from_the_cache():
    apply._cookie_fields.cache_clear()
    edits: dict = {}
    layouts = [
        ((b"Cookie", b"session=client; tracking=t"), (b"Host", b"a")),
        ((b"Cookie", b"other=1"),),
        ((b"Host", b"a"),),
        ((b"cookie", b"tracking=t"), (b"Cookie", b"session=s")),
    ]
    want = [{"session", "tracking"}, set(), set(), {"session", "tracking"}]
    for round_ in range(3):
        for fields, present in zip(layouts, want):
            for token in ("tok-1", "tok-2"):
                headers = http.Headers(fields)
                found: set = set()
                edit_fields(headers, edits, {"session": token, "tracking": None}, found, {})
                assert found == present
                assert headers.get_all("cookie") == edit_cookie_headers(
                    http.Headers(fields).get_all("cookie"), {"session": token, "tracking": None})
                assert f"session={token}" in headers["cookie"] and "tracking" not in headers["cookie"]
    info = apply._cookie_fields.cache_info()
    assert info.misses == len(layouts) * 2 and info.hits == 2 * len(layouts) * 2


def test_a_cookie_that_is_only_removed_is_found_only_when_there():
    apply._cookie_fields.cache_clear()
    for _ in range(2):
        found: set = set()
        headers = http.Headers(((b"Cookie", b"a=1"),))
        edit_fields(headers, {}, {"tracking": None}, found)
        assert found == set() and headers.fields == ((b"Cookie", b"a=1"),)
        found = set()
        headers = http.Headers(((b"Cookie", b"tracking=1"),))
        edit_fields(headers, {}, {"tracking": None}, found)
        assert found == {"tracking"} and headers.fields == ()


COOKIE_FIELDS = [b"session=a", b"x=1; session=b", b"tracking=t"]


@pytest.mark.parametrize("cookie_fields", list(itertools.permutations(COOKIE_FIELDS, 2)))
def test_the_cookie_cache_follows_the_order_of_the_cookie_fields(cookie_fields):
    edits = (("session", "tok-9"), ("tracking", None))
    for _ in range(2):
        new, present = apply._cookie_fields(cookie_fields, edits)
        plain = edit_cookie_headers([v.decode() for v in cookie_fields], dict(edits))
        assert new == tuple(v.encode() for v in plain)
        had = frozenset(n for n in ("session", "tracking") if any(n.encode() + b"=" in v for v in cookie_fields))
        assert present == had
