"""addon/rules/headfilter.py: a header filter of plain text answers as mitmproxy's own regex does."""

from __future__ import annotations

import io
import random
import re

import pytest
from mitmproxy import flowfilter, http
from mitmproxy.test import tflow, tutils

from addon.rules.headfilter import PlainHead, plain_heads
from addon.rules.matching import parse_filter

PLAIN = ["X-Debug", "x-debug", "DEBUG", "Bearer tok", "debug: 1", "text/event-stream", "gzip, br", "ü-ä", "#", "a b"]
REGEX = ["X-De.ug", "^x-debug", "debug$", "(debug)", "de+bug", "a|b", "[xy]-debug", "debug?", "de{2}bug"]
NAMES = [b"X-Debug", b"x-debug", b"Accept", b"Authorization", b"Content-Encoding", b"X-DEBUG-Mode", b"Cookie", b"\xc3\xbc-\xc3\xa4"]
VALUES = [b"1", b"debug", b"DeBuG: 1", b"Bearer tok-1234", b"text/event-stream", b"gzip, br", b"a b", b"#x", b"", b"\xc3\xbc-\xc3\xa4"]


def flows(n: int = 150) -> list[http.HTTPFlow]:
    rnd = random.Random(27)
    out = []
    for i in range(n):
        flow = tflow.tflow(resp=bool(i % 3))
        flow.request.headers = http.Headers([(rnd.choice(NAMES), rnd.choice(VALUES)) for _ in range(rnd.randrange(4))])
        if flow.response:
            flow.response.headers = http.Headers([(rnd.choice(NAMES), rnd.choice(VALUES)) for _ in range(rnd.randrange(3))])
        out.append(flow)
    return out


def case_modes():
    yield "mitmproxy's default"
    if hasattr(flowfilter, "maybe_ignore_case"):  # 12.x: case-insensitive unless MITMPROXY_CASE_SENSITIVE_FILTERS=1
        yield "case-sensitive"


@pytest.mark.parametrize("mode", list(case_modes()))
@pytest.mark.parametrize("code", ["h", "hq", "hs"])
def test_plain_text_answers_as_the_regex_does(monkeypatch, mode, code):
    if mode == "case-sensitive":
        monkeypatch.setattr(flowfilter, "maybe_ignore_case", re.NOFLAG)
    checked = 0
    for text in PLAIN:
        expr = f'~{code} "{text}"'
        theirs, ours = flowfilter.parse(expr), plain_heads(flowfilter.parse(expr))
        assert isinstance(ours, PlainHead) and type(ours.node) is type(theirs), expr
        assert (ours.node.expr, ours.node.re.pattern, ours.node.re.flags) == (theirs.expr, theirs.re.pattern, theirs.re.flags)
        if type(theirs).__str__ is not object.__str__:  # 12.x describes its filters
            assert str(ours) == str(theirs)
        for flow in flows():
            assert ours(flow) == bool(theirs(flow)), (expr, flow.request.headers, flow.response and flow.response.headers)
            checked += theirs(flow) is True
    assert checked > 20  # the table has matches, not only misses


@pytest.mark.parametrize("text", REGEX)
def test_an_expression_with_a_regex_metacharacter_stays_mitmproxys(text):
    parsed = flowfilter.parse(f'~h "{text}"')
    assert type(plain_heads(parsed)) is flowfilter.FHead


def test_header_nodes_inside_and_or_not_are_replaced_and_the_whole_answers_the_same():
    expr = '(~h "x-debug" & !~hq "Bearer") | ~hs "gzip" | (~m POST & ~h "de.ug")'
    theirs, ours = flowfilter.parse(expr), parse_filter(expr)
    assert ours.pattern == expr
    nodes, stack = [], [ours]
    while stack:
        node = stack.pop()
        nodes.append(f"Plain{type(node.node).__name__}" if isinstance(node, PlainHead) else type(node).__name__)
        stack.extend(getattr(node, "lst", ()))
        stack.extend([node.itm] if hasattr(node, "itm") else [])
    assert nodes.count("PlainFHead") == nodes.count("PlainFHeadRequest") == nodes.count("PlainFHeadResponse") == 1
    assert nodes.count("FHead") == 1  # de.ug: a regex
    mine, original = io.StringIO(), io.StringIO()
    ours.dump(fp=mine)
    theirs.dump(fp=original)
    assert mine.getvalue() == original.getvalue() and "x-debug" in mine.getvalue()
    for flow in flows():
        flow.request.method = random.Random(len(flow.request.headers)).choice(["GET", "POST"])
        assert bool(ours(flow)) == bool(theirs(flow))


def test_a_rules_filter_is_compiled_with_plain_header_nodes():
    f = parse_filter("~h X-Debug")
    assert isinstance(f, PlainHead) and f.pattern == "~h X-Debug"
    flow = tflow.tflow()
    flow.request.headers["X-Debug"] = "1"
    assert f(flow) and not f(tflow.ttcpflow())
    flow.request.headers = http.Headers()
    flow.response = tutils.tresp(headers=http.Headers([(b"X-Debug", b"yes")]))
    assert f(flow) and not parse_filter("~hq X-Debug")(flow) and parse_filter("~hs X-Debug")(flow)
