"""What the hooks count, for people and for Prometheus: requests rewritten, refusals and what was done
with them, retries, recoveries, refreshes of named values, and two distributions of times.

The hooks only add to these (a dict increment, a list index): the status command, the log's summary
line, `/metrics` and the status page read them when they are asked (addon/status/). Counts live as
long as the proxy runs; a reload of the rules file keeps them. No key ever holds a token or a value:
keys are pool names, value names, and the words of ACTIONS and OUTCOMES.
"""

from __future__ import annotations

import bisect
import collections
import time
from dataclasses import dataclass, field

from addon.rules.records import DISABLE, PASS, REFRESH, ROTATE

# what was done with a refusal: retried with another token, retried with values fetched anew, the
# token retired and another tried (an `on_response` rule with action disable), or handed to the
# client as it came (the breaker is open, nothing is left to try, the client left, …)
ACTIONS = (ROTATE, REFRESH, DISABLE, PASS)
RECOVERED, FAILED = "recovered", "failed"  # how a recovery ended
OK = "ok"  # a value's refresh: OK or FAILED

# seconds; Prometheus's default buckets, with finer ones below 5 ms (a recovery adds a round trip)
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECENT_RECOVERIES = 20  # the status page lists the last ones


@dataclass
class Histogram:
    """Counts of observations per bucket (upper bounds `bounds`, then one for the rest), and their sum."""

    bounds: tuple[float, ...] = TIME_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations up to it), the last "+Inf"."""
        total, out = 0, []
        for bound, n in zip([*map(repr, self.bounds), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True)
class Recovery:
    """One recovery, as the status page lists it (no token: the attempts line shows them masked)."""

    at: float  # seconds since the epoch, when it ended
    method: str
    path: str  # the URL's path, without its query (which may hold a secret)
    attempts: str  # as the flow comment: "403 with …a1b2 → 200 with …c3d4"
    recovered: bool


class Counters:
    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.requests: collections.Counter[str] = collections.Counter()  # by pool ("": no token)
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()  # (pool, action)
        self.retries: collections.Counter[str] = collections.Counter()  # attempts sent after the first, by pool
        self.recoveries: collections.Counter[tuple[str, str]] = collections.Counter()  # (pool, RECOVERED or FAILED)
        self.value_refreshes: collections.Counter[tuple[str, str]] = collections.Counter()  # (value, OK or FAILED)
        self.recovery_seconds = Histogram()  # what a recovery added to the client's wait
        self.first_event_seconds = {False: Histogram(), True: Histogram()}  # by recovered: request → first byte
        self.recent: collections.deque[Recovery] = collections.deque(maxlen=RECENT_RECOVERIES)

    def recovery(self, pool: str, recovered: bool, seconds: float, method: str, path: str, attempts: str) -> None:
        """A refused request's recovery ended, `seconds` after its first answer came."""
        self.recoveries[pool, RECOVERED if recovered else FAILED] += 1
        self.recovery_seconds.observe(seconds)
        self.recent.append(Recovery(self.clock(), method, path.split("?", 1)[0], attempts, recovered))

    def totals(self) -> tuple[int, int, int]:
        """Requests rewritten, refusals, recoveries that worked: the summary line's running totals."""
        return (sum(self.requests.values()), sum(self.refusals.values()),
                sum(n for (_, outcome), n in self.recoveries.items() if outcome == RECOVERED))  # fmt: skip
