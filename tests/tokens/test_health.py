"""addon/tokens/health.py: health records from the state file, and the bounds of their numbers."""

import pytest

from addon.tokens.health import health_from_state


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
