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
- Every change of a token's health or of the breaker is also an entry of a stream, `events`. A
  follower task waits on that stream (`XREAD BLOCK`) and applies each entry as it comes: another
  proxy's refusal reaches this one's picture one trip from Redis after it was judged there.
- round_robin takes its places from one shared rotation (`INCRBY rr`), fetched ahead in the
  background: each draw uses a place fetched earlier, and asks for the next. A draw that finds none
  (the first ones, or a burst faster than the round trip) goes on with this proxy's own rotation.
- Successes are counted here and sent about once a second (at once when one ends a cooldown: the
  others then use the token again).
- A command value with a ttl (addon/runtime/sources.py) is run by one proxy at a time, under a lock that
  expires, and kept in Redis for its ttl; the others take it from there. That one look is the only
  call a request waits on, for at most OP_TIMEOUT; when it is late, the command runs here.
- `tokens.disable`, `enable` and `reset` change Redis too.

Keys, all under `mitm-rules:{NAMESPACE}:` (the braces make it a Redis Cluster hash tag, so a
script's keys are on one node): `health` (a hash: token key → "cooling_until refused_at disabled
successes refusals in_a_row retired_at retired_why"; records written before retirement have the
first five), `events` (a stream, trimmed to about EVENTS_KEPT entries), `rr` (the
rotation), `breaker` (open until), `recent`/`before` (the breaker's window), `value:NAME` and
`lock:NAME`, `sessions` (a hash: token key → its renewed session value, sealed with tokens.session_key:
addon/tokens/sessions.py; each renewal is also a stream entry `s`, `v`). A token's key is a hash of it (tokens.token_key): no token, nor any part of one, goes
to Redis. Command values do: the README says so. Times are the proxies' wall clocks, which are
expected to agree (NTP).

Connections are made and kept warm off the request path: by the keeper (every KEEP_EVERY it pings
the connection requests use, and tries to reconnect when Redis is out of reach), the follower, and
the background writes. Redis failing never fails a request. When a background call cannot reach
Redis (refused, broken, or no answer within SLOW_TIMEOUT), sharing is off, with one alert, and the
proxy goes on with its own picture; a request's late look at a command value is not an outage (a
busy event loop or a far Redis can make it late). When Redis answers again, the keeper sends what
changed here meanwhile (merged: the later cooldown wins, a disable stays), reads the shared state
back and says so in one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from importlib import resources
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mitmproxy.log import ALERT
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from addon.rules.config import StoreSpec
from addon.tokens.breaker import Breaker
from addon.tokens.pool import TokenPool, token_key
from addon.tokens.redisbound import BoundedParser

if TYPE_CHECKING:
    from addon.tokens.sessions import Sessions

logger = logging.getLogger(__name__)

OP_TIMEOUT = 0.05  # seconds: the most a request waits for Redis (a command value's look; socket and whole call)
SLOW_TIMEOUT = 5.0  # seconds, for what no request waits on: connecting, writes, reading the whole state, commands
KEEP_EVERY = 1.0  # seconds between the keeper's turns: send the successes, warm the request's connection, reconnect
FOLLOW_BLOCK = 1.0  # seconds the follower's XREAD waits for new entries before it asks again
EVENTS_KEPT = 100_000  # stream entries kept (about): a proxy that was gone longer reads the whole state
EVENTS_PER_READ = 1000
MERGE_CHUNK = 1000  # records sent per script call when a proxy comes back
READ_CHUNK = 10_000  # records applied per turn of the event loop when the whole state is read
PLACES_AT_MOST = 1000  # rotation places fetched in one round trip

FAILURES = (redis_errors.RedisError, OSError, asyncio.TimeoutError)

# The Lua scripts Redis runs, in addon/tokens/lua/ (each file says its KEYS and ARGV); those that
# read or write token records run after records.lua (get, put, num, forget_before). They state the
# rules of tokens.TokenPool.refused/succeeded and breaker.Breaker for a shared store, and
# tests/tokens/test_breaker.py runs one table of cases against both.
def _lua(name: str) -> str:
    return (resources.files("addon.tokens") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


SCRIPTS = {name: (_lua("records") if name not in ("claim", "publish") else "") + _lua(name)
           for name in ("refuse", "succeed", "disable", "reset", "merge", "claim", "publish")}


def _late(error: BaseException) -> bool:
    return isinstance(error, (redis_errors.TimeoutError, asyncio.TimeoutError))


def parse_record(text: str) -> tuple[float, float, bool, int, int, int, float, int] | None:
    """A health record as _RECORDS keeps it (one of 5 fields, written before retirement, reads with
    zeros); None (and one warning per kind of fault) when it is not sane numbers: finite, not negative
    and below MAX_NUMBER, `disabled` 0 or 1."""
    fields = text.split()
    if len(fields) not in (5, 8):
        return _bad_record(text, "it is not five or eight numbers")
    try:
        a, b, c, d, e, f, g, h = (float(x) for x in (fields + ["0", "0", "0"])[:8])
    except ValueError:  # one is not a number
        return _bad_record(text, "it is not five or eight numbers")
    if not all(0 <= x < MAX_NUMBER for x in (a, b, d, e, f, g, h)) or c not in (0, 1):  # NaN fails every comparison
        return _bad_record(text, "a number is out of range (negative, infinite, NaN or too large)")
    return a, b, c != 0, int(d), int(e), int(f), g, int(h)


def parse_time(text: str) -> float | None:
    """A time the store keeps (the breaker's end); None (and one warning) when it is not a sane number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value < MAX_NUMBER:
        return _bad_record(text, "a time is not a sane number")
    return value


MAX_NUMBER = 2.0**53  # above any time (seconds) or count a record can sanely hold
_warned: set[str] = set()


def _bad_record(text: str, why: str) -> None:
    if why not in _warned:  # one warning for each kind of fault, not one per record or per second
        _warned.add(why)
        logger.warning(f"tokens: a token health record in Redis is ignored: {why} ({text[:60]!r}); "
                       "further records like it are ignored without a word")
    return None


def format_record(record: Iterable[Any]) -> str:
    a, b, c, d, e, f, g, h = record
    return f"{float(a)!r} {float(b)!r} {int(bool(c))} {int(d)} {int(e)} {int(f)} {float(g)!r} {int(h)}"


class _Keys:
    def __init__(self, namespace: str) -> None:
        base = f"mitm-rules:{{{namespace}}}:"
        self.health, self.events, self.rr = base + "health", base + "events", base + "rr"
        self.breaker, self.recent, self.before = base + "breaker", base + "recent", base + "before"
        self.value, self.lock = base + "value:", base + "lock:"
        self.sessions = base + "sessions"


class SharedStore:
    def __init__(
        self, spec: StoreSpec, pool: TokenPool, breaker: Breaker, clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
    ) -> None:  # fmt: skip
        self.spec, self.pool, self.breaker, self.clock = spec, pool, breaker, clock
        self.sessions = sessions  # renewed session values, sealed on the store (addon/tokens/sessions.py)
        if sessions is not None:
            sessions.publish = self.publish_session
        self.keys = _Keys(spec.namespace)
        self.origin = uuid.uuid4().hex[:12]  # this proxy, in the breaker entries it causes
        self.online = False
        self.round_trips = 0  # calls a request waited on (command values' looks), for status and tests
        self.background_trips = 0  # calls no request waits on (writes, places, the follower's reads)
        options: dict[str, Any] = dict(
            decode_responses=True, retry=Retry(NoBackoff(), 0), health_check_interval=0,
            # a new connection sends no CLIENT SETINFO and no maintenance subscription (a Redis Cloud feature):
            # those are round trips before the first command
            driver_info=None, maint_notifications_config=MaintNotificationsConfig(enabled=False),
            parser_class=BoundedParser,  # no reply over its bound is read (a hostile Redis: `$2000000000`)
        )  # fmt: skip
        # three clients, so that a request never waits behind a slow call or the follower's blocking read
        # the request path's calls are bounded as a whole (asyncio.timeout); its socket timeout is for the keeper's ping
        self._fast = Redis.from_url(spec.url, socket_timeout=SLOW_TIMEOUT, socket_connect_timeout=SLOW_TIMEOUT, **options)
        self._slow = Redis.from_url(spec.url, socket_timeout=SLOW_TIMEOUT, socket_connect_timeout=SLOW_TIMEOUT, **options)
        self._follow = Redis.from_url(spec.url, socket_timeout=FOLLOW_BLOCK + SLOW_TIMEOUT,
                                      socket_connect_timeout=SLOW_TIMEOUT, **options)  # fmt: skip
        self._sha: dict[str, str] = {}
        self._last_id = "0-0"  # the last stream entry applied
        self._places: deque[int] = deque()  # places of the shared rotation fetched ahead
        self._wanted = 0  # draws since places were last asked for
        self._asking = False  # places are being fetched
        self._judging: Counter[str] = Counter()  # keys whose refusal Redis is judging: the stream's word on them waits
        self._skipped: set[str] = set()  # ... and those of them the stream spoke of meanwhile: read again after
        self._successes: dict[str, list[float]] = {}  # key -> [count, latest send time], not yet sent
        self._successes_due: float | None = None  # when to send them (monotonic); None: none waiting
        self._sessions_unsent: dict[str, str] = {}  # token key -> renewed session value, sealed, not yet in Redis
        self._stopped = False
        self._keeper: asyncio.Task | None = None
        self._follower: asyncio.Task | None = None
        self._wake = asyncio.Event()  # the keeper's sleep ends early (a success to send now)
        self._problem: str | None = None  # why sharing is off (logged once per outage)
        self._tasks: set[asyncio.Task] = set()

    # life

    def start(self) -> None:
        """Connect in the background; until then (and whenever Redis fails) this proxy is on its own."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="shared store keeper")

    def stop(self) -> None:
        """No more sharing (shut-down, or another store): the connections close in the background."""
        self._stopped = True
        for task in (self._keeper, self._follower):
            if task is not None:
                task.cancel()
        self.online = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._background(self._close(), "closing the shared store's connections")

    async def _close(self) -> None:
        for client in (self._fast, self._slow, self._follow):
            await client.aclose()

    async def settled(self) -> None:
        """Wait until the calls sent in the background so far have their answers (tests, shut-down)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def read_again(self) -> None:
        """Read every record again (the tokens file changed: some tokens may be new here)."""
        if self.online:
            self._background(self._read_all(), "tokens: reading the shared store")

    async def _keep(self) -> None:
        while True:
            try:
                if not self.online:
                    await self._connect()
                else:
                    await self._send_successes()
                    await self._fast.ping()  # the request path's connection: made and kept here, not by a request
                    self.background_trips += 1
            except FAILURES as e:
                self._went_offline(e)
            except Exception:  # a bug, not Redis: say so, and keep the keeper going
                logger.exception("tokens: the shared store's keeper failed")
            self._wake.clear()
            due = KEEP_EVERY
            if self.online and self._successes_due is not None:
                due = min(due, max(0.0, self._successes_due - time.monotonic()))
            try:
                async with asyncio.timeout(due):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _connect(self) -> None:
        try:
            for name, text in SCRIPTS.items():
                self._sha[name] = await self._slow.script_load(text)
            back = self._problem is not None
            empty = not await self._slow.exists(self.keys.health)
            # what changed here while Redis was out of reach; and when Redis has nothing (restarted without
            # persistence), every token cooling or disabled here. Not more: a proxy that was cut off must not
            # put back what the others have changed since (an enable, a reset, a cooldown ended).
            await self._merge(set(self.pool.take_changes()) | (self.pool.inactive if empty else frozenset()))
            await self._send_sessions()  # renewed here meanwhile: newer than what Redis holds
            count = await self._read_all(keep_changes=True)
            await self._fast.ping()
        except FAILURES as e:
            self._went_offline(e)
            return
        self._problem = None
        self.online = True
        self._places.clear()
        self._ask_places(1)
        self._follower = asyncio.get_running_loop().create_task(self._follow_events(), name="shared store follower")
        where = f"{self.spec.shown} (namespace {self.spec.namespace})"
        if back:
            logger.info(f"tokens: Redis at {where} is back: token health is shared again ({count} record(s))")
        else:
            logger.info(f"tokens: token health shared through Redis at {where}: {count} record(s)")

    def _went_offline(self, error: BaseException) -> None:
        if self.online:
            self.pool.take_changes()  # from now on, what changes here is merged in when Redis is back
        self.online = False
        if self._follower is not None and self._follower is not asyncio.current_task():
            self._follower.cancel()
        self._follower = None
        if self._problem is None and not self._stopped:
            self._problem = str(error).rstrip(".") or type(error).__name__
            if isinstance(error, redis_errors.NoScriptError):
                self._problem = "it lost the addon's scripts: restarted?"
                self._sha.clear()
            logger.log(ALERT, f"{self.pool.label}: Redis at {self.spec.shown} cannot be reached ({self._problem}); this proxy goes "
                       "on with its own token health, breaker and values, and tries again every second")

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
        last, records, open_until, sessions = await pipe.execute()
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
        if self.sessions is not None:
            for key, sealed in sessions.items():
                self.sessions.from_store(key, sealed)
        return len(records)

    async def _follow_events(self) -> None:
        """Apply the stream's entries as they come, for as long as Redis answers."""
        try:
            while self.online:
                read = await self._follow.xread({self.keys.events: self._last_id}, count=EVENTS_PER_READ,
                                                block=int(FOLLOW_BLOCK * 1000))  # fmt: skip
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

    def _breaker_until(self, until: float, quiet: bool = False, by_us: bool = False) -> None:
        if until == self.breaker.open_until or (by_us and self.breaker.is_open):
            return
        if until > self.clock() and not quiet:
            self.breaker.opened(until, elsewhere=not by_us)
        else:
            self.breaker.open_until = until

    # the request path: nothing here waits for Redis

    def draw(self) -> str | None:
        """The token for a request, from this proxy's picture: with round_robin, at the next place of
        the shared rotation fetched ahead (or this proxy's own next one when none has come)."""
        if not self.online or self.pool.strategy != "round_robin":
            return self.pool.draw()
        position = self._places.popleft() if self._places else None
        self._wanted += 1
        if not self._asking:
            self._ask_places(self._wanted)
        return self.pool.draw(position=position)

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

    def refused(self, token: str, retry_after: float | None, retire: bool = False) -> None:
        """Tell Redis of a refusal this proxy judged already (breaker.refuse_here): it is judged there
        for every proxy, in the background, and its answer becomes this proxy's record. `retire`: at
        once (a disable rule), as TokenPool.refused."""
        if not self.online or "refuse" not in self._sha:
            return
        k, spec, key = self.keys, self.breaker.spec, token_key(token)
        cooldown = max(self.pool.cooldown, retry_after or 0)
        self._judging[key] += 1

        async def refuse() -> None:
            try:
                _marked, record, open_until, opened = await self._slow.evalsha(
                    self._sha["refuse"], 5, k.health, k.events, k.breaker, k.recent, k.before, EVENTS_KEPT, key,
                    repr(self.clock()), repr(cooldown), repr(spec.window), spec.tokens, repr(spec.pause),
                    repr(self.breaker.last_success), self.pool.retire_after, int(retire), self.origin,
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
                self._breaker_until(until, by_us=bool(opened))

        self._background(refuse(), "tokens: a refusal sent to the shared store")

    def succeeded(self, token: str, sent_at: float) -> None:
        """Count a success here now, and in Redis within about a second; one that ends a cooldown is sent at once."""
        key = self.pool.key_of(token)
        health = self.pool.health.get(key)
        ends = health is not None and health.cooling_until > self.clock() and sent_at > health.refused_at
        self.pool.succeeded(token, sent_at)
        if self.online:
            self._count(key, 1, sent_at, 0.0 if ends else time.monotonic() + KEEP_EVERY)
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
            if not _late(e):  # not sent, most likely (a late answer was probably counted): send them later
                for key, (n, sent) in successes.items():
                    self._count(key, n, sent, time.monotonic() + KEEP_EVERY)
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

    def _background(self, call, what: str, changed: Iterable[str] = ()) -> None:
        """Run a call no request waits for; Redis failing turns sharing off (one alert), and the
        `changed` tokens' health (what the call was to tell) is merged in when Redis is back."""

        async def run() -> None:
            try:
                await call
            except FAILURES as e:
                if self.online:
                    self._went_offline(e)
                else:
                    logger.debug(f"{what} failed ({e}); it holds on this proxy only")
                for key in changed:  # (after going off, which starts the changes anew)
                    self.pool.changed_here(key)

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    # command values (addon/runtime/sources.py)

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
            if not _late(e):
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

    def describe(self) -> str:
        state = "shared" if self.online else f"not shared now: {self._problem or 'connecting'}"
        return f"token health on {self.spec.shown} (namespace {self.spec.namespace}): {state}"
