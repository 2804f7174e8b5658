"""`check`: the summary of a rules file that loads."""

from __future__ import annotations

from addon.cli.check import check
from helpers import write_rules

RULES = """\
rules:
  - match: {host: api.example.com}
    headers: {Authorization: "Bearer {token}"}
tokens: {file: tokens.txt}
on_response:
  - {match: {status: 200, first_event: "^event: error"}, action: rotate}
  - {match: {status: 200, first_event: "^$"}, action: rotate}
  - {match: {status: 403}, action: rotate}
"""


def test_the_summary_counts_the_rules_that_judge_a_stream_by_its_first_event(tmp_path):
    ok, (line,) = check(write_rules(tmp_path, RULES))
    assert ok and line == (
        f"ok: 1 rule(s) for 1 host(s) (api.example.com), 3 token(s) from {tmp_path}/tokens.txt (round_robin), "
        "2 on_response rule(s) judging a stream by its first event (held until it comes)"
    )
