"""Command values on a shared store (shared.py): a command with a ttl (addon/runtime/sources.py) runs on
one proxy at a time, under a lock that expires, and its value is kept in Redis for its ttl; the others
take it from there (`value:NAME`, `lock:NAME`; the scripts lua/claim.lua and lua/publish.lua). That
one look is the only call a request waits on, for at most OP_TIMEOUT; when it is late, the command
runs here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from addon.tokens.storeconnection import FAILURES, StoreConnection, answered_late

logger = logging.getLogger(__name__)

OP_TIMEOUT = 0.05  # seconds: the most a request waits for Redis (a command value's look; socket and whole call)


class StoreValues(StoreConnection):
    async def claim(self, name: str, stale: str | None, lock_seconds: float) -> tuple | None:
        """A value another proxy keeps for `name` (not `stale`): ('value', value, seconds left); or
        ('run', lock): run the command, then `publish`; or ('wait',): another proxy runs it. None:
        Redis did not answer within OP_TIMEOUT (run it here; that alone does not turn sharing off)."""
        if not self.online or "claim" not in self._sha:
            return None
        lock = uuid.uuid4().hex
        self.round_trips += 1
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                got = await self._fast.evalsha(self._sha["claim"], 2, self.keys.value + name, self.keys.lock + name,
                                               stale or "", lock, int(lock_seconds * 1000))
        except FAILURES as e:
            if not answered_late(e):
                self._went_offline(e)
            else:  # Redis has most likely run it anyway: let go of the lock it may have taken for this proxy,
                # so that the others do not wait for a value that this one will not publish
                logger.debug(f"{name}: Redis at {self.spec.shown} answered late; the value is fetched here")
                self._background(self._slow.evalsha(self._sha["publish"], 2, self.keys.value + name,
                                                    self.keys.lock + name, lock, "", 1),
                                 f"{name}: letting go of a lock on the shared store")  # fmt: skip
            return None
        if got[0] == "value":
            return "value", got[1], max(int(got[2]), 0) / 1000
        return ("run", lock) if got[0] == "run" else ("wait",)

    def publish(self, name: str, lock: str, value: str | None, ttl: float) -> None:
        """Keep the value a command gave for `ttl` seconds (none: the run failed), and let go of the lock
        (in the background)."""
        if "publish" not in self._sha:
            return
        self._background(self._slow.evalsha(self._sha["publish"], 2, self.keys.value + name, self.keys.lock + name,
                                            lock, value or "", max(int(ttl * 1000), 1)),
                         f"{name}: publishing the value on the shared store")  # fmt: skip
