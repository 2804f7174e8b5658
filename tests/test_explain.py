"""`explain`, in process: what it says about removals is what the flow comment says."""

import asyncio

import pytest
from mitmproxy.test import taddons

from addon.config import load_config
from addon.explain import explain, make_flow
from addon.loader import RulesLoader
from addon.rewriter import Rewriter
from helpers import write_rules

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

    loader = RulesLoader()
    rewriter = Rewriter(loader)
    with taddons.context(loader, rewriter) as tctx:
        tctx.configure(loader, rules=str(rules))
        f = make_flow("GET", "http://a.example/x", headers, None)
        f.live = True  # as a flow from a client
        asyncio.run(rewriter.request(f))
    assert f.comment.startswith("rules: strip (non-streaming request)\n")
    assert [line for line in f.comment.splitlines() if "removed" in line] == commented
