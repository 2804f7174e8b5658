"""The exits in the status: the document's "exits" (live and offline) and each token's "exit", the
"exits:" section and the exit column of `mitm-rules status`, and the exit metrics. No password anywhere."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import Counter

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from addon.exits.binding import exit_order
from addon.rules.config import load_config
from addon.rules.records import BreakerSpec
from addon.runtime.loader import Runtime
from addon.status import text
from addon.status.document import live, offline, when
from addon.status.metrics import exposition, registry_of
from helpers import CLOCK, TWO_EXITS, write_rules

PASSWORD = "Zq9:exit/pw!#7"
RULES = TWO_EXITS + """\
    cooldown: 60
rules:
  - match: {host: arena.example}
    cookies: {session: "{token:arena}"}
  - match: {host: api.example}
    headers: {Authorization: "Bearer {token:openai}"}
tokens:
  arena: {file: tokens.txt, exits: all}
  openai: {file: openai.txt, exits: [b]}
"""
SHOWN = {"a": "http://exit-user:****@127.0.0.1:3128", "b": "https://10.0.0.2:8443"}
ARENA = [f"tok-exits-{i:08d}" for i in range(12)]
OPENAI = ["sk-openai-0000bbbb"]
HOME = Counter(exit_order(t, ("a", "b"))[0] for t in ARENA)  # arena's tokens by their exit
BREAKER = BreakerSpec(tokens=2)


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


@pytest.fixture
def rules(tmp_path, monkeypatch):
    monkeypatch.setenv("EXIT_PW", PASSWORD)
    (tmp_path / "openai.txt").write_text("".join(t + "\n" for t in OPENAI))
    return write_rules(tmp_path, RULES, tokens=ARENA)


@pytest.fixture
def runtime(rules):
    loader = Runtime()
    with taddons.context(Proxyserver(), loader) as tctx:  # (exits set connection_strategy: Proxyserver's option)
        tctx.configure(loader, rules=str(rules))
        yield loader


def rest_a_and_refuse_through_b(runtime) -> None:
    """Exit a rests (two tokens could not connect through it); a token was refused through b."""
    a, b = runtime.exits.by_name["a"], runtime.exits.by_name["b"]
    a.failed("k1", "connection closed", BREAKER)
    a.failed("k2", "connection closed", BREAKER)
    b.counting(BREAKER).refused("k3", 0.0)
    assert a.resting and not b.resting


def test_the_tokens_are_spread_over_both_exits():
    assert set(HOME) == {"a", "b"}  # (else the counts below would prove less)


def test_live_shows_each_exit_its_tokens_and_what_happened_through_it(runtime):
    rest_a_and_refuse_through_b(runtime)
    a = runtime.exits.by_name["a"]
    doc = live(runtime, "rules.yaml")
    assert doc["exits"] == [
        {"name": "a", "url": SHOWN["a"], "cooldown_seconds": 300, "tokens": {"arena": HOME["a"]}, "state": "resting",
         "until": when(a.resting_until), "successes": 0, "refusals": 0, "failures": 2,
         "last_failure": {"at": when(a.last_failure_at), "why": "connection closed"}},
        {"name": "b", "url": SHOWN["b"], "cooldown_seconds": 60, "tokens": {"arena": HOME["b"], "openai": 1},
         "state": "up", "until": None, "successes": 0, "refusals": 1, "failures": 0, "last_failure": None},
    ]  # fmt: skip
    arena, openai = doc["pools"]
    assert [t["exit"] for t in arena["tokens"]] == [exit_order(t, ("a", "b"))[0] for t in ARENA]
    assert [t["exit"] for t in openai["tokens"]] == ["b"]
    assert_no_password(json.dumps(doc, ensure_ascii=False))


def test_an_exit_whose_rest_ended_is_up_again(runtime):
    rest_a_and_refuse_through_b(runtime)
    runtime.exits.by_name["a"].breaker.open_until = time.time() - 1
    states = [(e["name"], e["state"], e["until"]) for e in live(runtime)["exits"]]
    assert states == [("a", "up", None), ("b", "up", None)]


def test_offline_binds_the_tokens_but_knows_no_state(rules):
    doc = offline(load_config(rules), "rules.yaml")
    assert doc["exits"] == [
        {"name": "a", "url": SHOWN["a"], "cooldown_seconds": 300, "tokens": {"arena": HOME["a"]}, "state": None},
        {"name": "b", "url": SHOWN["b"], "cooldown_seconds": 60, "tokens": {"arena": HOME["b"], "openai": 1},
         "state": None},
    ]  # fmt: skip
    assert [t["exit"] for t in doc["pools"][0]["tokens"]] == [exit_order(t, ("a", "b"))[0] for t in ARENA]
    lines = text.rows(doc)
    assert lines[lines.index("exits:") + 1:][:2] == [
        f"  a: {SHOWN['a']}, {HOME['a']} of pool arena bound to it (its state is a running proxy's: its status "
        "server's /status and page)",
        f"  b: {SHOWN['b']}, {HOME['b']} of pool arena, 1 of pool openai bound to it (its state is a running "
        "proxy's: its status server's /status and page)",
    ]  # fmt: skip
    assert_no_password(json.dumps(doc, ensure_ascii=False) + "\n".join(lines))


def test_the_status_text_has_an_exits_section_and_an_exit_column(runtime):
    rest_a_and_refuse_through_b(runtime)
    lines = text.rows(live(runtime, "rules.yaml"))
    a, b = lines[lines.index("exits:") + 1:][:2]
    assert re.fullmatch(rf"  a: {re.escape(SHOWN['a'])}, resting until {CLOCK} \(in [45] min\); {HOME['a']} of "
                        rf"pool arena; 0 ok, 0 refused, 2 could not connect \(last at {CLOCK} \(\d+ s ago\): "
                        r"connection closed\)", a), a  # fmt: skip
    assert b == (f"  b: {SHOWN['b']}, up; {HOME['b']} of pool arena, 1 of pool openai; 0 ok, 1 refused, "
                 "0 could not connect")
    header = lines[lines.index(next(line for line in lines if line.startswith("pool arena:"))) + 1]
    assert header.split()[:4] == ["token", "exit", "state", "until"]
    first = lines[lines.index(header) + 1].split()
    assert first[:3] == ["…0000", exit_order(ARENA[0], ("a", "b"))[0], "active"]
    assert_no_password("\n".join(lines))


def test_metrics_say_which_exit_is_up_and_count_through_each(runtime):
    rest_a_and_refuse_through_b(runtime)
    exposed = exposition(registry_of(runtime)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exposed) for s in family.samples}  # fmt: skip
    assert samples[("mitm_rules_exit_up", (("exit", "a"),))] == 0.0
    assert samples[("mitm_rules_exit_up", (("exit", "b"),))] == 1.0
    assert samples[("mitm_rules_exit_refusals_total", (("exit", "a"),))] == 0
    assert samples[("mitm_rules_exit_refusals_total", (("exit", "b"),))] == 1
    assert samples[("mitm_rules_exit_failures_total", (("exit", "a"),))] == 2
    assert samples[("mitm_rules_exit_failures_total", (("exit", "b"),))] == 0
    assert 'mitm_rules_exit_up{exit="a"} 0.0' in exposed.splitlines()
    assert_no_password(exposed)


def test_without_exits_there_is_no_exits_section_nor_column(tmp_path):
    rules = "rules:\n  - match: {host: a.example}\n    cookies: {session: '{token}'}\ntokens: {file: tokens.txt}\n"
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, rules)))
        doc = live(loader)
    assert doc["exits"] == [] and all(t["exit"] is None for t in doc["pools"][0]["tokens"])
    lines = text.rows(doc)
    header = lines[lines.index(next(line for line in lines if line.startswith("pool "))) + 1]
    assert "exits:" not in lines and header.split()[:2] == ["token", "state"]
