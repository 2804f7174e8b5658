"""Which exit a token leaves through: rendezvous hashing, the same on every proxy and in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from addon.exits.binding import exit_order
from helpers import ROOT

EXITS = ("a", "b", "c", "d")
TOKENS = [f"tok-{i:06d}-account" for i in range(2000)]


def firsts(exits: tuple[str, ...]) -> dict[str, str]:
    return {t: exit_order(t, exits)[0] for t in TOKENS}


def test_order_is_a_permutation_and_deterministic():
    for token in TOKENS[:50]:
        order = exit_order(token, EXITS)
        assert sorted(order) == sorted(EXITS)
        assert exit_order(token, EXITS) == order
    assert len({exit_order(t, EXITS) for t in TOKENS}) > 1  # not one order for every token


@pytest.mark.parametrize("exits", [(), ("a",)], ids=["none", "one"])
def test_zero_or_one_exit_is_returned_as_is(exits):
    assert exit_order("tok-anything", exits) == exits


@pytest.mark.parametrize("removed", EXITS)
def test_removing_an_exit_moves_only_its_own_tokens(removed):
    before = firsts(EXITS)
    after = firsts(tuple(e for e in EXITS if e != removed))
    moved = {t for t in TOKENS if after[t] != before[t]}
    assert moved == {t for t in TOKENS if before[t] == removed}
    # they move to the next exit of their order
    assert all(after[t] == exit_order(t, EXITS)[1] for t in moved)


def test_adding_an_exit_moves_tokens_only_to_it():
    before = firsts(EXITS)
    after = firsts((*EXITS, "e"))
    moved = {t for t in TOKENS if after[t] != before[t]}
    assert moved and all(after[t] == "e" for t in moved)


def test_tokens_spread_evenly_over_the_exits():
    counts = Counter(firsts(EXITS).values())
    assert set(counts) == set(EXITS)
    assert all(0.15 <= n / len(TOKENS) <= 0.35 for n in counts.values()), counts


def test_the_order_is_the_same_in_another_process():
    """No per-process hash seed: a proxy restarted, or another one, sends each token out the same way."""
    sample = TOKENS[:200]
    code = ("import json; from addon.exits.binding import exit_order; "
            f"print(json.dumps([exit_order(t, {EXITS!r}) for t in {sample!r}]))")  # fmt: skip
    here = [list(exit_order(t, EXITS)) for t in sample]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, env=env, text=True)
        assert json.loads(out) == here
