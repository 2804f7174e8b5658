"""A shared store's picture kept current (shared.py): the whole state read, the event stream followed, merged.

Every change of a token's health or of the breaker is an entry of a stream, `events`. A follower task
waits on that stream (`XREAD BLOCK`) and applies each entry as it comes: another proxy's refusal reaches
this one's picture one trip from Redis after it was judged there. Connecting, and when the tokens file
changes, the whole state is read; what changed here while Redis was out of reach is merged into it (the
later cooldown wins, a disable stays).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from addon.rules.records import StoreSpec
from addon.tokens import storeconnection
from addon.tokens.breaker import Breaker
from addon.tokens.pool import TokenPool
from addon.tokens.storeconnection import FAILURES, StoreConnection
from addon.tokens.storerecords import EVENTS_KEPT, format_record, parse_record, parse_time

if TYPE_CHECKING:
    from addon.tokens.sessions import Sessions

logger = logging.getLogger(__name__)

EVENTS_PER_READ = 1000
MERGE_CHUNK = 1000  # records sent per script call when a proxy comes back
READ_CHUNK = 10_000  # records applied per turn of the event loop when the whole state is read


class StoreFollower(StoreConnection):
    """Redis's word on token health, the breaker and session values, taken into this proxy's picture."""

    def __init__(
        self, spec: StoreSpec, pool: TokenPool, breaker: Breaker, clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
    ) -> None:  # fmt: skip
        super().__init__(spec, pool)
        self.breaker, self.clock = breaker, clock
        self.sessions = sessions  # renewed session values, sealed on the store (addon/tokens/sessions.py)
        self.origin = uuid.uuid4().hex[:12]  # this proxy, in the breaker entries it causes
        self._last_id = "0-0"  # the last stream entry applied
        self._judging: Counter[str] = Counter()  # keys whose refusal Redis is judging: the stream's word on them waits
        self._skipped: set[str] = set()  # ... and those of them the stream spoke of meanwhile: read again after
        self.exits: dict[str, Breaker] = {}  # the breakers of the exits the pool leaves through, by name

    def read_again(self) -> None:
        """Read every record again (the tokens file changed: some tokens may be new here)."""
        if self.online:
            self._background(self._read_all(), "tokens: reading the shared store")

    async def _merge(self, keys: Iterable[str]) -> None:
        """Merge these tokens' health as this proxy has it into Redis (the later cooldown wins, a disable stays)."""
        pairs = [(k, format_record(self.pool.health[k].record)) for k in keys if k in self.pool.health]
        k = self.keys
        for at in range(0, len(pairs), MERGE_CHUNK):
            args = [a for pair in pairs[at : at + MERGE_CHUNK] for a in pair]
            await self._slow.evalsha(self._sha["merge"], 2, k.health, k.events, EVENTS_KEPT, *args)

    async def _read_all(self, keep_changes: bool = False) -> int:
        """Read every record and the breaker, and where the stream stands, at one moment. `keep_changes`
        (coming back): a token whose health changed here meanwhile keeps it, and it is merged in."""
        pipe = self._slow.pipeline(transaction=True)
        pipe.xrevrange(self.keys.events, count=1)
        pipe.hgetall(self.keys.health)
        pipe.get(self.keys.breaker)
        pipe.hgetall(self.keys.sessions)
        exits = list(self.exits)
        for name in exits:
            pipe.get(self.keys.exit + name)
        last, records, open_until, sessions, *rests = await pipe.execute()
        self._last_id = last[0][0] if last else "0-0"
        meanwhile = self.pool.changed if keep_changes else frozenset()
        for n, (key, text) in enumerate(records.items(), 1):
            if key not in meanwhile and (record := parse_record(text)) is not None:
                self.pool.put_health(key, record)
            if n % READ_CHUNK == 0:
                await asyncio.sleep(0)  # a big store: let requests through between chunks
        if meanwhile:
            await self._merge(self.pool.take_changes())
        self._breaker_until(float(open_until or 0), quiet=True)
        for name, until in zip(exits, rests):
            if (at := parse_time(until or "0")) is not None:
                self._breaker_until(at, quiet=True, breaker=self.exits[name])
        if self.sessions is not None:
            for key, sealed in sessions.items():
                self.sessions.from_store(key, sealed)
        return len(records)

    async def _follow_events(self) -> None:
        """Apply the stream's entries as they come, for as long as Redis answers."""
        try:
            while self.online:
                read = await self._follow.xread({self.keys.events: self._last_id}, count=EVENTS_PER_READ,
                                                block=int(storeconnection.FOLLOW_BLOCK * 1000))  # fmt: skip
                self.background_trips += 1
                self._apply(read)
        except FAILURES as e:
            self._went_offline(e)
        except Exception as e:  # a bug: say so, and let the keeper connect again (which reads everything anew)
            logger.exception("tokens: the shared store's follower failed")
            self._went_offline(e)

    def _apply(self, read: list) -> None:
        """Apply stream entries: token records and breaker changes, in order."""
        for _stream, entries in read:
            for entry_id, fields in entries:
                self._last_id = entry_id
                if "h" in fields:
                    key = fields["h"]
                    if self._judging[key]:  # the refusal's answer comes later: the record is read then
                        self._skipped.add(key)
                    elif (record := parse_record(fields.get("r", ""))) is not None:
                        self._put_health(key, record)
                elif "b" in fields:
                    until = parse_time(fields["b"])
                    if until is not None:
                        self._breaker_until(until, by_us=fields.get("by") == self.origin)
                elif "x" in fields and fields["x"] in self.exits:  # an exit rests (addon/exits/health.py)
                    until = parse_time(fields.get("u", ""))
                    if until is not None:
                        self._breaker_until(until, by_us=fields.get("by") == self.origin, breaker=self.exits[fields["x"]])
                elif "s" in fields and self.sessions is not None and fields.get("by") != self.origin:
                    self.sessions.from_store(fields["s"], fields.get("v", ""))

    async def _read_record(self, key: str) -> None:
        """Take Redis's record of one token as this proxy's (none: nothing happened to it there)."""
        text = await self._slow.hget(self.keys.health, key)
        record = parse_record(text) if text else (0.0, 0.0, False, 0, 0, 0, 0.0, 0)
        if record is not None and not self._judging[key]:
            self.pool.put_health(key, record)

    def _put_health(self, key: str, record: tuple[float, float, bool, int, int, int, float, int]) -> None:
        """Take another proxy's word on a token; say so when it is a refusal that cools it here."""
        now, health = self.clock(), self.pool.health.get(key)
        was_cooling = health is not None and health.cooling_until > now
        self.pool.put_health(key, record)
        health = self.pool.health.get(key)
        if health is not None and not was_cooling and health.cooling_until > now and not self.breaker.is_open:
            logger.info(f"{self.pool.label}: {health.suffix} refused through another proxy; passed over for "
                        f"{health.cooling_until - now:.0f} s")

    def _breaker_until(self, until: float, quiet: bool = False, by_us: bool = False, breaker: Breaker | None = None) -> None:
        """The pool's breaker (or an exit's) is open until `until`, as the store says."""
        breaker = breaker or self.breaker
        if until == breaker.open_until or (by_us and breaker.is_open):
            return
        if until > self.clock() and not quiet:
            breaker.opened(until, elsewhere=not by_us)
        else:
            breaker.open_until = until
