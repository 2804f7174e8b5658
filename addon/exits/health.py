"""One exit's health on this proxy: whether it rests, and what happened through it.

An exit rests when refusals through it look like its address, by the breaker's rule (addon/tokens/breaker.py)
counted per exit: `breaker.tokens` different tokens refused through it within `breaker.window` seconds,
with no success through it in between (the settings of the pool whose token was refused). It then rests
for the exit's `cooldown`, and the refusals that made it rest blame no token. An exit that cannot be
connected to (refused, timed out, a 407 from it) counts the same way, one failure a token: the
addon cannot tell a dead exit from a blocked one, and either way its tokens are better elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from addon.rules.records import BreakerSpec, ExitSpec
from addon.tokens.breaker import Breaker

FAILURE = "failure:"  # the breaker counts a failure to connect under this prefix and the token's key


class ExitBreaker(Breaker):
    """The breaker of one exit: when it opens, the exit rests (for its cooldown), and the proxies that
    share a store with this one are told (`publish`: addon/tokens/shared.py's SharedStore.exit_rested)."""

    publish: Callable[[float], None] = staticmethod(lambda until: None)

    def on_open_here(self, until: float) -> None:
        self.publish(until)

    def opened_elsewhere_text(self, until: float) -> str:
        return (f"{self.label}: another proxy on the shared store found its address blocked; it rests for "
                f"{until - self.clock():.0f} s: its tokens wait, or leave through their next exit with failover: true")

    def opened_text(self) -> str:
        return (
            f"{self.label}: {self.spec.tokens} different tokens were refused through it (or could not connect) within "
            f"{self.spec.window:g} s and none worked in between; its address is probably blocked. It rests for "
            f"{self.spec.pause:g} s: its tokens wait, or leave through their next exit with failover: true, and "
            "none of them is blamed for these refusals."
        )


class ExitHealth:
    def __init__(self, spec: ExitSpec, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.breaker = ExitBreaker(clock=clock)
        self.breaker.label = f"exit {spec.name}"
        self.refusals = 0  # answers that refused a token sent through it
        self.failures = 0  # attempts that could not connect through it
        self.successes = 0
        self.last_failure = ""  # mitmproxy's words for the latest failure to connect
        self.last_failure_at = 0.0

    @property
    def resting(self) -> bool:
        return self.breaker.is_open

    @property
    def resting_until(self) -> float:
        return self.breaker.open_until

    def counting(self, spec: BreakerSpec) -> Breaker:
        """Its breaker, to count a refusal of a token sent through it, by the breaker settings of that
        token's pool (and the exit's own rest)."""
        self.refusals += 1
        self.breaker.spec = replace(spec, pause=self.spec.cooldown)
        return self.breaker

    def failed(self, key: str, why: str, spec: BreakerSpec | None) -> dict[str, object] | None:
        """A request with this token (by its key) could not connect through this exit; `spec`: the breaker
        settings of the token's pool (None: not known, those of the last count stay). Like
        Breaker.refused: when this makes the exit rest, the cooldowns to put back for the tokens whose
        refusals through it counted (failures cooled none)."""
        self.failures += 1
        self.last_failure, self.last_failure_at = why, self.breaker.clock()
        if self.resting:
            return None
        self.breaker.spec = replace(spec or self.breaker.spec, pause=self.spec.cooldown)
        undo = self.breaker.refused(FAILURE + key, None)
        return {k: v for k, v in undo.items() if not k.startswith(FAILURE)} if undo else None

    def succeeded(self, sent_at: float) -> None:
        self.successes += 1
        self.breaker.succeeded(sent_at)


