"""Each token's health record: its states, the records as a state file keeps them, and their numbers' bounds.

A token is active, cooling down (passed over until a time), on trial (its cooldown is over, and it has
not worked since), retired (refused `retire_after` times in a row, or by a `disable` rule), disabled
(by hand) or expired (a JWT, or a session value carrying one, past its expiry less `expiry_margin`:
see expiry.py; TokenPool.status tells it). A token has a health record only once something happened
to it (pool.py keeps them, by token_key).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

STATES = ("active", "on trial", "cooling", "retired", "disabled", "expired")  # as TokenPool.status tells them


def state_counts(states: Iterable[str]) -> dict[str, int]:
    """How many tokens are in each state (every state, in STATES' order)."""
    counts = dict.fromkeys(STATES, 0)
    for state in states:
        counts[state] += 1
    return counts


def counts_text(counts: Mapping[str, int]) -> str:
    """ "4 active, 1 cooling, 1 retired": the states some token is in; "no tokens" for none."""
    return ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state]) or "no tokens"


# why a token was retired (Health.retired_why; a number, as a shared store keeps it)
IN_A_ROW, BY_RULE = 1, 2


@dataclass(slots=True)
class Health:
    suffix: str  # masked, for people: "…a1b2"
    cooling_until: float = 0.0  # wall-clock seconds; in the past means active
    refused_at: float = 0.0  # when it was last marked as refused
    disabled: bool = False
    successes: int = 0
    refusals: int = 0
    in_a_row: int = 0  # refusals that cooled it down since it last worked
    retired_at: float = 0.0  # 0: not retired
    retired_why: int = 0  # IN_A_ROW or BY_RULE
    last_status: int = 0  # the HTTP status of the last refusal judged here (0: none); not kept by a shared store
    expires_at: float = 0.0  # read from the token (not kept: see TokenList.expiry); set by TokenPool.status

    @property
    def out(self) -> bool:
        """Never drawn: retired or disabled."""
        return self.disabled or self.retired_at > 0

    def state(self, now: float) -> str:
        if self.disabled:
            return "disabled"
        if self.retired_at:
            return "retired"
        if self.cooling_until > now:
            return "cooling"
        return "on trial" if self.in_a_row else "active"

    @property
    def retired_reason(self) -> str:
        if self.retired_why == BY_RULE:
            return "an on_response rule with action disable"
        return f"refused {self.in_a_row} time(s) in a row"

    @property
    def record(self) -> tuple[float, float, bool, int, int, int, float, int]:
        """As a shared store keeps it (see TokenPool.put_health): no suffix, nothing of the token."""
        return (self.cooling_until, self.refused_at, self.disabled, self.successes, self.refusals,
                self.in_a_row, self.retired_at, self.retired_why)  # fmt: skip

    @property
    def undo_point(self) -> tuple[float, int, float, int]:
        """What a refusal changes that the breaker may put back (see TokenPool.restore)."""
        return self.cooling_until, self.in_a_row, self.retired_at, self.retired_why

    def to_entry(self) -> dict[str, Any]:
        return {
            "suffix": self.suffix,
            "cooling_until": self.cooling_until,
            "refused_at": self.refused_at,
            "disabled": self.disabled,
            "successes": self.successes,
            "refusals": self.refusals,
            "in_a_row": self.in_a_row,
            "retired_at": self.retired_at,
            "retired_why": self.retired_why,
            "last_status": self.last_status,
        }


class Changes(Mapping[str, Health]):
    """Keys whose health changed, and the records they name, looked up when read. The writer's thread
    reads the records while the event loop may change them again: a record read half old, half new is
    written again at the next save, as its change marks it changed again."""

    def __init__(self, keys: set[str], health: dict[str, Health]) -> None:
        self._keys, self._health = keys, health

    def __getitem__(self, key: str) -> Health:
        if key not in self._keys:
            raise KeyError(key)
        return self._health[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in list(self._keys) if k in self._health)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def health_from_state(state: dict[str, Any]) -> dict[str, Health]:
    """Health records from state-file entries; entries that do not look right (numbers out of range
    among them: 1e400, NaN, a negative count) are skipped."""
    health = {}
    for key, entry in state.items():
        try:
            health[key] = Health(
                suffix=str(entry["suffix"]),
                cooling_until=_in_range(float(entry["cooling_until"]), MAX_TIME),
                refused_at=_in_range(float(entry.get("refused_at", 0.0)), MAX_TIME),
                disabled=bool(entry["disabled"]),
                successes=_in_range(int(entry["successes"]), MAX_COUNT),
                refusals=_in_range(int(entry["refusals"]), MAX_COUNT),
                in_a_row=_in_range(int(entry.get("in_a_row", 0)), MAX_COUNT),  # not in a state file written before retirement
                retired_at=_in_range(float(entry.get("retired_at", 0.0)), MAX_TIME),
                retired_why=int(entry.get("retired_why", 0)),
                last_status=_status(entry.get("last_status")),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            logger.warning(f"tokens: skipped a malformed entry in the state file ({key[:8]}…)")
    return health


def _status(value: Any) -> int:
    """A refusal's HTTP status as a state file keeps it; 0 for none or one that is not a status (it is only
    shown: a bad one does not cost the token's health). Not in a file written before statuses were kept."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999 else 0


MAX_TIME = 253402300799.0  # 9999-12-31 23:59:59 UTC, the last time a date can show
MAX_COUNT = 2**63 - 1
N = TypeVar("N", int, float)


def _in_range(number: N, top: float) -> N:
    """The number, when it is from 0 to top (not NaN).

    Raises:
        ValueError: it is not.
    """
    if not 0 <= number <= top:
        raise ValueError(f"{number} is out of range")
    return number
