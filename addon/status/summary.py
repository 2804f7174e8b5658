"""A line in the proxy's log, at most once a minute and only when something changed, for whoever runs
`mitmdump` with no console to ask: each pool's tokens by state, and what the last minute brought.

    tokens: arena 4 active, 1 cooling, 1 retired; last minute 120 requests, 3 refused, 3 recovered
"""

from __future__ import annotations

import asyncio
import logging

from addon.runtime.loader import Runtime
from addon.runtime.pools import pools_line

logger = logging.getLogger(__name__)

EVERY = 60.0  # seconds between two looks


class LogSummary:
    def __init__(self, runtime: Runtime, every: float = EVERY) -> None:
        self.runtime = runtime
        self.every = every
        self._task: asyncio.Task | None = None
        self._totals = runtime.counters.totals()  # at the last look
        self._pools = ""  # the pools' part of the last line logged

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._every_minute(), name="status summary")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _every_minute(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.look()

    def look(self) -> str | None:
        """Log the line when the pools changed, or the last minute saw any request; returns it (None: no line)."""
        totals = self.runtime.counters.totals()
        requests, refused, recovered = (now - before for now, before in zip(totals, self._totals))
        self._totals = totals
        pools = pools_line(self.runtime.pools.values()) if self.runtime.pools else ""
        if pools == self._pools and not (requests or refused or recovered):
            return None
        self._pools = pools
        line = (f"tokens: {pools}; " if pools else "rules: ") + (
            f"last minute {requests} requests, {refused} refused, {recovered} recovered")
        logger.info(line)
        return line
