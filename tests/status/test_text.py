"""addon/status/text.py: the status document as `mitm-rules status` prints it."""

import datetime
import re

import pytest

from addon.status.document import when
from addon.status.text import ago, rows
from addon.tokens.health import MAX_TIME

NOW = "2026-12-07T14:55:00+00:00"


@pytest.mark.parametrize(
    "at, shown",
    [
        # today: the time of day, and how far from now
        ("2026-12-07T14:59:00+00:00", "14:59:00 (in 4 min)"),
        ("2026-12-07T14:50:00+00:00", "14:50:00 (5 min ago)"),
        ("2026-12-07T14:55:30+00:00", "14:55:30 (in 30 s)"),
        ("2026-12-07T14:54:00+00:00", "14:54:00 (60 s ago)"),
        ("2026-12-07T12:55:00+00:00", "12:55:00 (2 h ago)"),
        # another day: the date too
        ("2026-12-05T14:55:00+00:00", "2026-12-05 14:55:00 (2 days ago)"),
        ("2026-12-08T02:55:00+00:00", "2026-12-08 02:55:00 (in 12 h)"),
        # in the offset it was written with
        ("2026-12-07T15:59:00+01:00", "15:59:00 (in 4 min)"),
        (None, ""),
    ],
)
def test_ago(at, shown):
    assert ago(at, datetime.datetime.fromisoformat(NOW)) == shown


def test_a_time_beyond_the_calendar_is_shown_not_a_crash():
    # the last time a state file may hold (health.MAX_TIME): no local date has room for it east of UTC
    shown = ago(when(MAX_TIME), datetime.datetime.fromisoformat(NOW))
    assert re.fullmatch(r"9999-12-3[01] \d\d:\d\d:\d\d \(in \d+ days\)", shown), shown


def token(suffix, state, successes=0, refusals=0, until=None, expires=None, last=None, retired=None):
    return {"token": suffix, "state": state, "until": until, "expires": expires, "successes": successes,
            "refusals": refusals, "last_refusal": last, "retired": retired}  # fmt: skip


def counts(**by_state):
    return {"active": 0, "on trial": 0, "cooling": 0, "retired": 0, "disabled": 0, "expired": 0,
            **{k.replace("_", " "): n for k, n in by_state.items()}}  # fmt: skip


BREAKER_CLOSED = {"open": False, "until": None, "opens_after": {"tokens": 3, "within_seconds": 60}, "pause_seconds": 300}


def test_rows_of_a_pool_from_its_state_file():
    document = {
        "now": NOW, "rules": "rules.yaml", "loaded": True,
        "pools": [{
            "name": "default", "file": "/srv/tokens.txt", "strategy": "round_robin",
            "health_kept_in": "state file /srv/tokens.state.json", "state_exists": True, "tokens_not_shown": 0,
            "counts": counts(active=1, cooling=1, retired=1),
            "tokens": [
                token("…1111", "cooling", 2, 1, until="2026-12-07T14:59:00+00:00",
                      last={"status": 403, "at": "2026-12-07T14:50:00+00:00"}),
                token("…2222", "retired", 0, 3, last={"status": None, "at": "2026-12-07T12:55:00+00:00"},
                      retired={"at": "2026-12-07T12:55:00+00:00", "reason": "refused 3 time(s) in a row"}),
                token("…3333", "active", 12),
            ],
            "breaker": BREAKER_CLOSED,
        }],
        "values": [{"name": "captcha", "source": "command ./fetch-captcha", "ttl_seconds": 110}],
        "counters": None,
    }  # fmt: skip
    assert rows(document) == [
        "rules.yaml, 2026-12-07 14:55:00 UTC",
        "",
        "pool default: /srv/tokens.txt (round_robin), health in state file /srv/tokens.state.json",
        "  token  state    until                     ok  refused  last refusal",
        "  …1111  cooling  14:59:00 (in 4 min)        2        1  403 at 14:50:00 (5 min ago)",
        "  …2222  retired  since 12:55:00 (2 h ago)   0        3  refused at 12:55:00 (2 h ago)  refused 3 time(s) in a row",
        "  …3333  active                             12        0",
        "  1 active, 1 cooling, 1 retired; breaker closed (opens when 3 different tokens are refused within 60 s)",
        "",
        "values:",
        "  captcha: command ./fetch-captcha, ttl 110 s",
    ]


def test_rows_of_a_running_proxy_with_an_open_breaker_an_expired_token_and_counts():
    document = {
        "now": NOW, "rules": "/etc/mitm-rules/rules.yaml", "loaded": True,
        "pools": [
            {
                "name": "arena", "file": "/srv/arena.txt", "strategy": "sticky",
                "health_kept_in": "store redis://127.0.0.1:6379/0 (namespace arena)",
                "counts": counts(active=3, expired=1),
                "tokens": [
                    token("…aaaa", "expired", 5, expires="2026-12-07T14:45:00+00:00"),
                    token("…bbbb", "active", 1),
                ],
                "tokens_not_shown": 2,  # (a running proxy lists the first ones of a long file)
                "breaker": {**BREAKER_CLOSED, "open": True, "until": "2026-12-07T15:00:00+00:00"},
            },
            {
                "name": "openai", "file": "/srv/openai.txt", "strategy": "round_robin", "health_kept_in": "memory only",
                "state_exists": False, "counts": counts(), "tokens": [], "tokens_not_shown": 0,
                "breaker": {"open": False, "until": None, "opens_after": None, "pause_seconds": None},
            },
        ],
        "values": [{
            "name": "captcha", "source": "file /srv/captcha.txt", "ttl_seconds": 0,
            "fetched_at": "2026-12-07T14:54:30+00:00", "expires_at": "2026-12-07T14:55:30+00:00",
            "failed_at": "2026-12-07T14:40:00+00:00", "runs": 3,
        }],
        "counters": {
            "since": "2026-12-07T13:55:00+00:00",
            "requests": {"arena": 10, "": 2},
            "refusals": {"arena": {"rotate": 2, "refresh": 0, "disable": 0, "pass": 1}, "": {"pass": 1}},
            "retries": {"arena": 2},
            "recoveries": {"arena": {"recovered": 2, "failed": 0}, "openai": {"recovered": 0, "failed": 1}},
            "value_refreshes": {},
            "last_recoveries": [],
        },
    }  # fmt: skip
    assert rows(document) == [
        "/etc/mitm-rules/rules.yaml, 2026-12-07 14:55:00 UTC",
        "",
        "pool arena: /srv/arena.txt (sticky), health in store redis://127.0.0.1:6379/0 (namespace arena)",
        "  token  state    until                        ok  refused  last refusal",
        "  …aaaa  expired  since 14:45:00 (10 min ago)   5        0",
        "  …bbbb  active                                 1        0",
        "  … and 2 more",
        "  3 active, 1 expired; breaker open until 15:00:00 (in 5 min): refusals go to the client as they are",
        "",
        "pool openai: /srv/openai.txt (round_robin), health in memory only",
        "  no state yet: every token is active until a proxy has run with this file",
        "  (the tokens file has no tokens)",
        "  no tokens; breaker closed",
        "",
        "values:",
        "  captcha: file /srv/captcha.txt; last value 14:54:30 (30 s ago), fetched anew at 14:55:30 (in 30 s); "
        "last failure 14:40:00 (15 min ago)",
        "",
        "since 13:55:00 (60 min ago): 12 requests rewritten, 4 refused, 2 recovered",
    ]


def test_rows_without_a_pool():
    document = {"now": NOW, "rules": "rules.yaml", "loaded": True, "pools": [], "values": [], "counters": None}
    assert rows(document) == ["rules.yaml, 2026-12-07 14:55:00 UTC", "no token pool (the rules file has no tokens: section)"]
