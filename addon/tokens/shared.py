"""Token health, the breaker, the rotation and command values, shared by every proxy on one Redis store.

With `tokens.store: redis://…` each proxy keeps its own picture of the pool (the TokenPool and
Breaker of the loader), and the hooks read only that picture: no request waits for Redis to learn
which token to send, so a store 50 ms away costs a request nothing. Redis keeps the picture all
proxies agree on, and each proxy keeps its own current in the background:

- A refusal is judged here at once, as on a proxy alone, and sent to Redis at the same time, where
  one script (`lua/refuse.lua`) judges it for all: it cools the token down unless it is cooling already,
  counts it for the breaker and opens the breaker when the threshold is reached, undoing the
  cooldowns of the refusals that opened it, as breaker.py does on one proxy. Its answer replaces
  this proxy's record of the token. A success clears the breaker's count: this proxy's own at once
  (its latest success's send time goes with each refusal), another proxy's when its batch of
  successes reaches Redis (within about a second; until then that proxy's success is not "in between").
- Every change of a token's health or of the breaker is also an entry of a stream, `events`, which
  each proxy follows (follower.py).
- round_robin takes its places from one shared rotation (`INCRBY rr`), fetched ahead in the
  background: each draw uses a place fetched earlier, and asks for the next. A draw that finds none
  (the first ones, or a burst faster than the round trip) goes on with this proxy's own rotation.
- Successes are counted here and sent about once a second (at once when one ends a cooldown: the
  others then use the token again).
- A command value with a ttl (addon/runtime/sources.py) is run by one proxy at a time, under a lock that
  expires, and kept in Redis for its ttl; the others take it from there. That one look is the only
  call a request waits on, for at most OP_TIMEOUT; when it is late, the command runs here.
- `tokens.disable`, `enable` and `reset` change Redis too.

The keys and records: storerecords.py. The connections, and Redis out of reach: storeconnection.py. Command
values: storevalues.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from addon.rules.records import StoreSpec
from addon.tokens import storeconnection
from addon.tokens.breaker import Breaker
from addon.tokens.follower import StoreFollower
from addon.tokens.storevalues import StoreValues
from addon.tokens.pool import TokenPool
from addon.tokens.storeconnection import FAILURES, answered_late
from addon.tokens.storerecords import EVENTS_KEPT, parse_record, parse_time
from addon.tokens.tokenfile import token_key

if TYPE_CHECKING:
    from addon.tokens.sessions import Sessions

logger = logging.getLogger(__name__)

PLACES_AT_MOST = 1000  # rotation places fetched in one round trip


class SharedStore(StoreValues, StoreFollower):
    """One proxy's side of a shared store: what the hooks and commands call (see above)."""

    def __init__(
        self, spec: StoreSpec, pool: TokenPool, breaker: Breaker, clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
    ) -> None:  # fmt: skip
        super().__init__(spec, pool, breaker, clock, sessions)
        if sessions is not None:
            sessions.publish = self.publish_session
        self._places: deque[int] = deque()  # places of the shared rotation fetched ahead
        self._wanted = 0  # draws since places were last asked for
        self._asking = False  # places are being fetched
        self._successes: dict[str, list[float]] = {}  # key -> [count, latest send time], not yet sent
        self._successes_due: float | None = None  # when to send them (monotonic); None: none waiting
        self._sessions_unsent: dict[str, str] = {}  # token key -> renewed session value, sealed, not yet in Redis

    # Redis answers (again): see storeconnection.py

    async def _catch_up(self) -> int:
        empty = not await self._slow.exists(self.keys.health)
        # what changed here while Redis was out of reach; and when Redis has nothing (restarted without
        # persistence), every token cooling or disabled here. Not more: a proxy that was cut off must not
        # put back what the others have changed since (an enable, a reset, a cooldown ended).
        await self._merge(set(self.pool.take_changes()) | (self.pool.inactive if empty else frozenset()))
        await self._send_sessions()  # renewed here meanwhile: newer than what Redis holds
        return await self._read_all(keep_changes=True)

    def _came_online(self) -> None:
        self._places.clear()
        self._ask_places(1)

    # the request path: nothing here waits for Redis

    def draw(self, exclude: Iterable[str] = ()) -> str | None:
        """The token for a request, from this proxy's picture: with round_robin, at the next place of
        the shared rotation fetched ahead (or this proxy's own next one when none has come), or the
        next after it that is not in `exclude`."""
        if not self.online or self.pool.strategy != "round_robin":
            return self.pool.draw(exclude)
        position = self._places.popleft() if self._places else None
        self._wanted += 1
        if not self._asking:
            self._ask_places(self._wanted)
        return self.pool.draw(exclude, position=position)

    def _ask_places(self, n: int) -> None:
        """Fetch `n` places of the shared rotation in the background (as many as were drawn meanwhile)."""
        n = max(1, min(n, PLACES_AT_MOST))
        self._wanted, self._asking = 0, True

        async def ask() -> None:
            try:
                end = int(await self._slow.incrby(self.keys.rr, n))
                self.background_trips += 1
                self._places.extend(range(end - n, end))
            finally:
                self._asking = False

        self._background(ask(), "tokens: places of the shared rotation")

    def refused(self, token: str, retry_after: float | None, retire: bool = False, exit: str = "") -> None:
        """Tell Redis of a refusal this proxy judged already (breaker.refuse_here): it is judged there
        for every proxy, in the background, and its answer becomes this proxy's record. `retire`: at
        once (a disable rule), as TokenPool.refused. `exit`: it went through this exit, whose breaker
        judges it instead of the pool's (addon/exits/health.py), with its own keys in Redis."""
        if not self.online or "refuse" not in self._sha:
            return
        breaker = self.exits.get(exit) if exit else self.breaker
        if breaker is None:  # (an exit the pool no longer leaves through)
            return
        k, spec, key = self.keys, breaker.spec, token_key(token)
        shut, recent, before = (k.exit + exit, *k.exit_window(exit)) if exit else (k.breaker, k.recent, k.before)
        cooldown = max(self.pool.cooldown, retry_after or 0)
        self._judging[key] += 1

        async def refuse() -> None:
            try:
                _marked, record, open_until, opened = await self._slow.evalsha(
                    self._sha["refuse"], 5, k.health, k.events, shut, recent, before, EVENTS_KEPT, key,
                    repr(self.clock()), repr(cooldown), repr(spec.window), spec.tokens, repr(spec.pause),
                    repr(breaker.last_success), self.pool.retire_after, int(retire), self.origin, exit,
                )  # fmt: skip
                self.background_trips += 1
            except FAILURES as e:
                self._went_offline(e)
                self.pool.changed_here(key)  # after going off (which starts the changes anew): merged when it is back
                return
            finally:
                self._judging[key] -= 1
                if not self._judging[key]:
                    del self._judging[key]
            if self._judging[key]:  # another refusal of it is being judged: its answer settles the record
                pass
            elif key in self._skipped or not record:
                # the stream spoke of it meanwhile (a disable, a reset, the breaker's undo), or Redis changed
                # nothing (its breaker was open): Redis's record is the newer word, and this proxy's own
                # judgement of the refusal is not kept
                self._skipped.discard(key)
                self._background(self._read_record(key), "tokens: reading a token's record")
            elif (parsed := parse_record(record)) is not None:
                self.pool.put_health(key, parsed)
            until = parse_time(open_until)
            if until is not None and (opened or until > self.clock()):  # by this refusal, or open already elsewhere
                self._breaker_until(until, by_us=bool(opened), breaker=breaker)

        self._background(refuse(), "tokens: a refusal sent to the shared store")

    def succeeded(self, token: str, sent_at: float) -> None:
        """Count a success here now, and in Redis within about a second; one that ends a cooldown is sent at once."""
        key = self.pool.key_of(token)
        health = self.pool.health.get(key)
        ends = health is not None and health.cooling_until > self.clock() and sent_at > health.refused_at
        self.pool.succeeded(token, sent_at)
        if self.online:
            self._count(key, 1, sent_at, 0.0 if ends else time.monotonic() + storeconnection.KEEP_EVERY)
            if ends:
                self._wake.set()

    def _count(self, key: str, n: int, sent_at: float, due: float) -> None:
        counted = self._successes.setdefault(key, [0, 0.0])
        counted[0], counted[1] = counted[0] + n, max(counted[1], sent_at)
        self._successes_due = due if self._successes_due is None else min(self._successes_due, due)

    async def _send_successes(self) -> None:
        if self._successes_due is None or time.monotonic() < self._successes_due:
            return
        successes, self._successes, self._successes_due = self._successes, {}, None
        k = self.keys
        args = [a for key, (n, sent) in successes.items() for a in (key, int(n), repr(sent))]
        try:
            await self._slow.evalsha(self._sha["succeed"], 4, k.health, k.events, k.recent, k.before, EVENTS_KEPT,
                                     repr(self.clock()), *args)
            self.background_trips += 1
        except FAILURES as e:
            if not answered_late(e):  # not sent, most likely (a late answer was probably counted): send them later
                for key, (n, sent) in successes.items():
                    self._count(key, n, sent, time.monotonic() + storeconnection.KEEP_EVERY)
            raise

    # by hand

    def set_disabled(self, suffix: str, disabled: bool) -> list:
        """As TokenPool.set_disabled, here now and on every proxy of the store."""
        found = self.pool.set_disabled(suffix, disabled)
        keys, k = self.pool.keys_ending(suffix), self.keys
        if keys and self._by_hand("tokens.enable" if not disabled else "tokens.disable"):
            self._background(self._slow.evalsha(self._sha["disable"], 2, k.health, k.events, EVENTS_KEPT, int(disabled),
                                                *keys), "tokens: a disable or enable on the shared store",
                             changed=keys)  # fmt: skip
        return found

    def reset(self) -> None:
        """Clear every cooldown and close the breaker, here now and on every proxy of the store."""
        self.pool.reset()
        self.breaker.open_until = 0.0
        k = self.keys
        if self._by_hand("tokens.reset"):
            self._background(self._slow.evalsha(self._sha["reset"], 5, k.health, k.events, k.breaker, k.recent,
                                                k.before, EVENTS_KEPT), "tokens: a reset on the shared store")  # fmt: skip

    def _by_hand(self, command: str) -> bool:
        """Can a command by hand reach the store? (If not, it says what holds.)"""
        if not self.online:
            logger.warning(f"tokens: Redis at {self.spec.shown} cannot be reached: {command} holds on this proxy now; a "
                           "disable reaches the others when Redis is back, an enable or reset does not (run it again then)")
        return self.online

    def publish_session(self, key: str, sealed: str) -> None:
        """An account's renewed session value, sealed (sessions.py), for the other proxies: kept in the
        `sessions` hash and told on the stream, in the background."""
        self._sessions_unsent[key] = sealed  # until Redis has it (sent when it is back, if it is out of reach now)
        if self.online:
            self._background(self._send_sessions(), "tokens: sharing a renewed session value")

    async def _send_sessions(self) -> None:
        unsent, self._sessions_unsent = self._sessions_unsent, {}
        if not unsent:
            return
        try:
            pipe = self._slow.pipeline(transaction=True)
            pipe.hset(self.keys.sessions, mapping=unsent)
            for key, sealed in unsent.items():
                pipe.xadd(self.keys.events, {"s": key, "v": sealed, "by": self.origin}, maxlen=EVENTS_KEPT,
                          approximate=True)  # fmt: skip
            await pipe.execute()
        except BaseException:
            self._sessions_unsent = {**unsent, **self._sessions_unsent}
            raise

    def exit_rested(self, name: str, until: float) -> None:
        """An exit rests until `until`, as this proxy found (addon/exits/health.py): the other proxies are
        told on the stream, and `exit:NAME` keeps it for those that start meanwhile."""
        if not self.online:
            return

        async def tell() -> None:
            pipe = self._slow.pipeline(transaction=True)
            pipe.set(self.keys.exit + name, repr(until), px=max(1, int((until - self.clock()) * 1000)))
            pipe.xadd(self.keys.events, {"x": name, "u": repr(until), "by": self.origin}, maxlen=EVENTS_KEPT,
                      approximate=True)  # fmt: skip
            await pipe.execute()
            self.background_trips += 1

        self._background(tell(), f"exits: telling the shared store that exit {name} rests")
