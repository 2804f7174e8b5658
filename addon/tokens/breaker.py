"""The circuit breaker: when many different tokens are refused and none works, blame something else.

A 403 caused by the caller's IP, a stale captcha or a missing header refuses
every token alike; rotating through them would cool down every good token
(gpt-load issue #143). When `tokens` different tokens are refused within
`window` seconds with no success of any token in between, the breaker opens for
`pause` seconds: refusals then pass to the client as they are and no token cools
down. A token that works proves the cause is the refused tokens (revoked, say):
a success clears the count of the refusals counted before its request was sent
(one sent earlier, a long stream say, proves nothing about them).

The same rule is stated for a shared store in addon/tokens/lua/refuse.lua and succeed.lua
scripts; tests/tokens/test_breaker.py runs one table of cases against both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from addon.rules.records import BreakerSpec
from addon.tokens.pool import TokenPool
from addon.tokens.tokenfile import token_key
from mitmproxy.log import ALERT

logger = logging.getLogger(__name__)


class Breaker:
    def __init__(self, spec: BreakerSpec = BreakerSpec(), clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.clock = clock
        self.label = "tokens"  # how its log lines begin ("tokens arena" in a file of several pools)
        self.open_until = 0.0
        self.on_change: Callable[[], None] = lambda: None  # it opened or was closed: persist it
        self.last_success = 0.0  # the latest send time of a request that succeeded (here)
        self._recent: dict[str, tuple[float, Any]] = {}  # token key -> (time refused, cooldown before)

    @property
    def is_open(self) -> bool:
        return self.clock() < self.open_until

    def refused(self, key: str, cooling_before: Any) -> dict[str, Any] | None:
        """Count a refusal of the token with this key (`cooling_before`: its cooldown end
        before this refusal, or what TokenPool.restore takes). When this refusal opens the
        breaker, returns the cooldowns to put back for the tokens refused in the window:
        blame is not theirs."""
        now = self.clock()
        first_before = self._recent[key][1] if key in self._recent else cooling_before
        self._recent[key] = (now, first_before)
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] <= self.spec.window}
        if self.is_open or len(self._recent) < self.spec.tokens:
            return None
        restore = {k: before for k, (_, before) in self._recent.items()}
        self.opened(now + self.spec.pause)
        return restore

    def close(self) -> None:
        """Closed by hand (tokens.reset)."""
        self.open_until = 0.0
        self.on_change()

    def succeeded(self, sent_at: float) -> None:
        """A token worked for a request sent at `sent_at`: the refusals counted before it no longer
        count (the tokens refused are to blame, not what they have in common)."""
        self.last_success = max(self.last_success, sent_at)
        if self._recent:  # (a success comes with nearly every request; the window is mostly empty)
            self._recent = {k: v for k, v in self._recent.items() if v[0] >= sent_at}

    def opened(self, until: float, elsewhere: bool = False) -> None:
        """The breaker opened until `until`: here, or (`elsewhere`) on a proxy sharing the store."""
        self.open_until = until
        self._recent.clear()
        self.on_change()
        logger.log(ALERT, self.opened_elsewhere_text(until) if elsewhere else self.opened_text())
        if not elsewhere:
            self.on_open_here(until)

    def on_open_here(self, until: float) -> None:
        """It opened by this proxy's refusals (a shared store's breaker is opened in Redis instead)."""

    def opened_elsewhere_text(self, until: float) -> str:
        return (f"{self.label}: another proxy on the shared store opened the breaker; for {until - self.clock():.0f} s "
                "refusals go to the client as they are and no token is cooled down")

    def opened_text(self) -> str:
        """What the log says when this proxy's refusals opened it."""
        return (
            f"{self.label}: {self.spec.tokens} different tokens were refused within {self.spec.window:g} s and none worked "
            "in between; the cause is "
            f"probably not the tokens (headers, captcha, IP address). For the next {self.spec.pause:g} s refusals "
            "go to the client as they are and no token is cooled down (the cooldowns these refusals set are "
            "undone). Check the refused flows in mitmweb."
        )


def refuse_here(
    pool: TokenPool, breaker: Breaker, token: str, retry_after: float | None, retire: bool = False, status: int = 0
) -> bool:
    """A refusal judged on this proxy: the token cools down and may be retired (see TokenPool.refused,
    whose answer this is), the breaker counts it, and the refusals that open it have their cooldowns
    (and retirements) put back. With the breaker open, nothing changes (the refusal goes to the client
    as it is)."""
    if breaker.is_open:
        return False
    key = token_key(token)
    before = pool.health[key].undo_point if key in pool.health else (0.0, 0, 0.0, 0)
    marked = pool.refused(token, retry_after, retire, status)
    undo = breaker.refused(key, before)
    if undo is not None:
        pool.restore(undo)
    return marked
