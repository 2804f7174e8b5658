"""The circuit breaker: when many different tokens are refused at once, blame something else.

A 403 caused by the caller's IP, a stale captcha or a missing header refuses
every token alike; rotating through them would cool down every good token
(gpt-load issue #143). When `tokens` different tokens are refused within
`window` seconds, the breaker opens for `pause` seconds: refusals then pass to
the client as they are and no token cools down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from addon.config import BreakerSpec
from mitmproxy.log import ALERT

logger = logging.getLogger(__name__)


class Breaker:
    def __init__(self, spec: BreakerSpec = BreakerSpec(), clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.clock = clock
        self.open_until = 0.0
        self._recent: dict[str, float] = {}  # token key -> time of its latest refusal

    @property
    def is_open(self) -> bool:
        return self.clock() < self.open_until

    def refused(self, key: str) -> bool:
        """Count a refusal of the token with this key; True when this refusal opens the breaker."""
        now = self.clock()
        self._recent[key] = now
        self._recent = {k: t for k, t in self._recent.items() if now - t <= self.spec.window}
        if self.is_open or len(self._recent) < self.spec.tokens:
            return False
        self.open_until = now + self.spec.pause
        self._recent.clear()
        logger.log(
            ALERT,
            f"tokens: {self.spec.tokens} different tokens were refused within {self.spec.window:g} s; the cause is "
            f"probably not the tokens (headers, captcha, IP address). For the next {self.spec.pause:g} s refusals "
            "go to the client as they are and no token is cooled down. Check the refused flows in mitmweb.",
        )
        return True
