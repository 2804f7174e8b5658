"""addon/tokens/health.py: health records from the state file, and the bounds of their numbers."""

import pytest

from addon.tokens.health import STATES, counts_text, health_from_state, state_counts


ENTRY = {"suffix": "…abcd", "cooling_until": 0.0, "refused_at": 0.0, "disabled": False, "successes": 1, "refusals": 0}


# issue 23, attack 9: numbers no health record holds skip the entry (before: OverflowError, and mitmdump exited)
@pytest.mark.parametrize(
    "field, number",
    [
        ("successes", float("inf")), ("successes", float("nan")), ("successes", -1), ("refusals", -5),
        ("refusals", 1e30), ("successes", 2**64), ("cooling_until", float("inf")), ("cooling_until", float("nan")),
        ("cooling_until", -1.0), ("cooling_until", 1e300), ("refused_at", float("-inf")), ("refused_at", "nan"),
    ],  # fmt: skip
)
def test_an_entry_with_a_number_out_of_range_is_skipped(caplog, field, number):
    health = health_from_state({"k1": {**ENTRY, field: number}, "k2": ENTRY})
    assert list(health) == ["k2"]
    assert caplog.messages == ["tokens: skipped a malformed entry in the state file (k1…)"]


def test_the_last_refusals_status_is_read_and_a_file_without_it_means_none_known():
    health = health_from_state({"k1": {**ENTRY, "last_status": 403}, "k2": ENTRY})
    assert (health["k1"].last_status, health["k2"].last_status) == (403, 0)
    assert health["k1"].to_entry()["last_status"] == 403  # and written back
    assert len(health["k1"].record) == 8  # a shared store keeps no status (its records stay as they were)


@pytest.mark.parametrize("status", [1000, -1, 99, float("inf"), "403", True, None, [403]])
def test_a_last_status_that_is_not_a_status_is_none_and_the_entry_is_kept(caplog, status):
    """The status is only shown: a bad one must not cost the token its cooldown or retirement."""
    health = health_from_state({"k1": {**ENTRY, "cooling_until": 5.0, "last_status": status}})
    assert (health["k1"].last_status, health["k1"].cooling_until) == (0, 5.0)
    assert caplog.messages == []


def test_state_counts_and_their_line():
    counts = state_counts(["active", "cooling", "active", "expired"])
    assert counts == {"active": 2, "on trial": 0, "cooling": 1, "retired": 0, "disabled": 0, "expired": 1}
    assert list(counts) == list(STATES)
    assert counts_text(counts) == "2 active, 1 cooling, 1 expired"
    assert counts_text(state_counts([])) == "no tokens"
