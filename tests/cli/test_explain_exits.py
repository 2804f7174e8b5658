"""`explain` with exits: the exit a request's token leaves through (its URL masked), the token's order
of exits, and the value of that exit when each exit has its own."""

from __future__ import annotations

import urllib.parse

import pytest

from addon.cli.explain import explain, make_flow, stand_in_values
from addon.exits.binding import exit_order
from addon.rules.config import load_config
from addon.util.masking import mask
from helpers import POOLS, TOKENS, TWO_EXITS, write_rules

PASSWORD = "Zq9:exit/pw!#7"
ENVIRON = {"EXIT_PW": PASSWORD}
EXITS = TWO_EXITS
SHOWN = {"a": "http://exit-user:****@127.0.0.1:3128", "b": "https://10.0.0.2:8443"}
ONE_POOL = EXITS + """\
values:
  cf: {file: "clearance/{exit}.txt"}
rules:
  - name: arena
    match: {host: arena.example}
    cookies: {cf_clearance: "{cf}", session: "{token}"}
tokens: {file: tokens.txt, exits: all, failover: false}
"""
NAMED_POOLS = EXITS + POOLS.replace("arena: {file: tokens.txt, strategy: sticky}",
                                    "arena: {file: tokens.txt, exits: all}")
CLEARANCE = {"a": "cf-clearance-of-a-0000aaaa", "b": "cf-clearance-of-b-0000bbbb"}
CANDIDATES = [f"tok-exits-{i:08d}" for i in range(64)]
BOUND_TO = {home: next(t for t in CANDIDATES if exit_order(t, ("a", "b"))[0] == home) for home in ("a", "b")}


def load(tmp_path, text: str, tokens: list[str] | None = None):
    (tmp_path / "clearance").mkdir()
    for name, value in CLEARANCE.items():
        (tmp_path / "clearance" / f"{name}.txt").write_text(value + "\n")
    (tmp_path / "openai.txt").write_text("sk-openai-0000cccc\n")
    return load_config(write_rules(tmp_path, text, tokens=tokens), environ=ENVIRON)


def drawn(values: dict[str, str]) -> str:
    """The token the stand-ins were drawn with (they hold it masked)."""
    (token,) = [t for t in [*TOKENS, *CANDIDATES] if mask(t) == values["token"]]
    return token


def lines_of(config, url: str, values: dict[str, str]) -> list[str]:
    return list(explain(config, make_flow("GET", url, [], None), values))


@pytest.mark.parametrize("home, failover", [("a", False), ("b", False), ("b", True)],
                         ids=["exit a", "exit b", "failover on"])  # fmt: skip
def test_explain_says_which_exit_the_token_leaves_through(tmp_path, home, failover):
    config = load(tmp_path, ONE_POOL.replace("failover: false", f"failover: {str(failover).lower()}"), [BOUND_TO[home]])
    values = stand_in_values(config)
    order = exit_order(drawn(values), ("a", "b"))
    assert order[0] == home
    assert values["exits:default"] == ", ".join(order)
    lines = lines_of(config, "https://arena.example/x", values)
    said = [line for line in lines if "exit" in line]
    assert said == [f"  leaves through exit {order[0]} ({SHOWN[order[0]]}); the token's order: {', '.join(order)} "
                    f"(failover {'on' if failover else 'off'})"]  # fmt: skip
    text = "\n".join(lines) + repr(values)
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


@pytest.mark.parametrize("home", ["a", "b"])
def test_a_value_of_each_exit_is_the_tokens_exits(tmp_path, home):
    config = load(tmp_path, ONE_POOL, tokens=[BOUND_TO[home]])
    values = stand_in_values(config)
    assert exit_order(drawn(values), ("a", "b"))[0] == home
    assert values[f"cf@{home}"] == mask(CLEARANCE[home])  # each exit's, by name; explain takes the token's exit's
    lines = lines_of(config, "https://arena.example/x", values)
    cookie = next(line for line in lines if line.startswith("    Cookie:"))
    assert cookie.startswith(f"    Cookie: cf_clearance={mask(CLEARANCE[home])}; session={values['token']}")


@pytest.mark.parametrize("url, leaves", [("https://arena.example/x", True), ("https://api.example/v1", False)],
                         ids=["pool with exits", "pool without"])  # fmt: skip
def test_only_a_pool_with_exits_leaves_through_one(tmp_path, url, leaves):
    config = load(tmp_path, NAMED_POOLS)
    values = stand_in_values(config)
    order = exit_order(drawn({"token": values["token:arena"]}), ("a", "b"))
    assert values["exits:arena"] == ", ".join(order) and "exits:openai" not in values
    said = [line for line in lines_of(config, url, values) if line.startswith("  leaves through")]
    assert said == ([f"  leaves through exit {order[0]} ({SHOWN[order[0]]}); the token's order: {', '.join(order)} "
                     "(failover off)"] if leaves else [])  # fmt: skip


def test_a_request_without_a_token_names_no_exit(tmp_path):
    config = load(tmp_path, ONE_POOL.replace(', session: "{token}"', ""))
    assert not any("exit" in line for line in lines_of(config, "https://arena.example/x", stand_in_values(config)))


# as the proxy (addon/request/rewriter.py): a value each exit has its own is that of the exit of the token the
# request carries, and none when it carries no token


def test_a_value_of_each_exit_is_that_of_the_exit_of_the_requests_pool(tmp_path):
    text = NAMED_POOLS.replace("  openai: {file: openai.txt}", "  openai: {file: openai.txt, exits: [b]}").replace(
        "  arena: {file: tokens.txt, exits: all}", "  arena: {file: tokens.txt, exits: [a]}").replace(
        'headers: {Authorization: "Bearer {token:openai}"}',
        'headers: {Authorization: "Bearer {token:openai}"}\n    cookies: {cf_clearance: "{cf}"}').replace(
        "rules:", 'values:\n  cf: {file: "clearance/{exit}.txt"}\nrules:')  # fmt: skip
    config = load(tmp_path, text)
    lines = lines_of(config, "https://api.example/v1", stand_in_values(config))
    assert f"  leaves through exit b ({SHOWN['b']}); the token's order: b (failover off)" in lines
    # as the proxy sends it
    assert f"    Cookie: cf_clearance={mask(CLEARANCE['b'])}   (cf_clearance ← openai)" in lines


def test_a_value_of_each_exit_is_left_out_of_a_request_without_a_token(tmp_path):
    config = load(tmp_path, ONE_POOL.replace(', session: "{token}"', ""))
    lines = lines_of(config, "https://arena.example/x", stand_in_values(config))
    assert "  note: cookie cf_clearance not set by arena: no cf value" in lines  # as the proxy's flow comment says
