"""A shared store's connections to Redis (shared.py): making them, keeping them, going offline and back.

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
from collections.abc import Iterable
from typing import Any

from mitmproxy.log import ALERT
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from addon.rules.records import StoreSpec
from addon.tokens.pool import TokenPool
from addon.tokens.redisbound import BoundedParser
from addon.tokens.storerecords import SCRIPTS, Keys

logger = logging.getLogger(__name__)

SLOW_TIMEOUT = 5.0  # seconds, for what no request waits on: connecting, writes, reading the whole state, commands
KEEP_EVERY = 1.0  # seconds between the keeper's turns: send the successes, warm the request's connection, reconnect
FOLLOW_BLOCK = 1.0  # seconds the follower's XREAD waits for new entries before it asks again

FAILURES = (redis_errors.RedisError, OSError, asyncio.TimeoutError)


def answered_late(error: BaseException) -> bool:
    """Is this failure a time-out (Redis most likely did what it was asked, later)?"""
    return isinstance(error, (redis_errors.TimeoutError, asyncio.TimeoutError))


class StoreConnection:
    """The clients of one Redis, the keeper that keeps them, and the calls sent in the background.
    What is done on them is the store's (follower.py, shared.py): `_catch_up` and `_came_online` when
    Redis answers (again), `_follow_events` while it does, and `_send_successes` at the keeper's turns."""

    _successes_due: float | None  # when the keeper sends the successes counted here (monotonic); None: none waiting

    def __init__(self, spec: StoreSpec, pool: TokenPool) -> None:
        self.spec, self.pool = spec, pool
        self.keys = Keys(spec.namespace)
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
            count = await self._catch_up()
            await self._fast.ping()
        except FAILURES as e:
            self._went_offline(e)
            return
        self._problem = None
        self.online = True
        self._came_online()
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

    def describe(self) -> str:
        state = "shared" if self.online else f"not shared now: {self._problem or 'connecting'}"
        return f"token health on {self.spec.shown} (namespace {self.spec.namespace}): {state}"

    # what is done on the connections: the store's (follower.py, shared.py)

    async def _catch_up(self) -> int:
        """Redis answers (again): bring it and this proxy's picture together; the number of records read."""
        raise NotImplementedError

    def _came_online(self) -> None:
        """Sharing is on (again), the follower about to start."""
        raise NotImplementedError

    async def _follow_events(self) -> None:
        """Apply the stream's entries as they come, for as long as Redis answers."""
        raise NotImplementedError

    async def _send_successes(self) -> None:
        """Send the successes counted here, when they are due."""
        raise NotImplementedError
