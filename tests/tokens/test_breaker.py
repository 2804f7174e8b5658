import asyncio
import logging

import pytest

from addon.rules.records import BreakerSpec, StoreSpec
from addon.tokens.breaker import Breaker, refuse_here
from addon.tokens.pool import TokenPool
from addon.tokens.shared import SharedStore
from addon.tokens.storerecords import parse_record
from addon.tokens.tokenfile import token_key


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_opens_when_enough_different_tokens_are_refused_in_the_window(caplog):
    clock = Clock()
    breaker = Breaker(BreakerSpec(tokens=3, window=60, pause=300), clock)
    with caplog.at_level(logging.INFO):
        assert breaker.refused("a", 0.0) is None
        assert breaker.refused("a", 1300.0) is None  # the same token again does not count twice
        clock.now += 30
        assert breaker.refused("b", 50.0) is None
        assert not breaker.is_open
        clock.now += 20
        # the cooldowns to put back: as they were before these refusals
        assert breaker.refused("c", 0.0) == {"a": 0.0, "b": 50.0, "c": 0.0}
    assert breaker.is_open
    assert caplog.text.count("3 different tokens were refused within 60 s") == 1
    assert breaker.refused("d", 0.0) is None  # already open: no second alert
    clock.now += 301
    assert not breaker.is_open


def test_refusals_outside_the_window_are_forgotten():
    clock = Clock()
    breaker = Breaker(BreakerSpec(tokens=3, window=60, pause=300), clock)
    breaker.refused("a", 0.0)
    clock.now += 61
    breaker.refused("b", 0.0)
    breaker.refused("c", 0.0)
    assert not breaker.is_open


# One rule, stated twice: in Python (breaker.py, with the pool) for a proxy on its own, and in Redis's
# Lua scripts (addon/tokens/lua/refuse.lua and succeed.lua) for proxies sharing a store. The same table runs against
# both, so that they cannot disagree. Steps: ("refused", token), ("ok", token): a success of a request
# sent just now, ("ok early", token): one sent before every refusal (a long stream), ("disable", token):
# a refusal by an on_response rule with action disable, ("wait", seconds). Each step is one second
# after the one before. Breaker: 3 tokens, 60 s window, 300 s pause. Expected: the breaker open, the
# tokens cooling, the tokens retired.
RULE_CASES = {
    # when every token is refused, the cause is not the tokens: it opens, and no token is cooled down
    "three tokens refused, none works": ([("refused", "a"), ("refused", "b"), ("refused", "c")], True, set(), set()),
    "open: a refusal passes untouched": ([("refused", "a"), ("refused", "b"), ("refused", "c"), ("refused", "d")], True, set(), set()),
    "a success sent before the refusals proves nothing":
        ([("refused", "a"), ("refused", "b"), ("ok early", "x"), ("refused", "c")], True, set(), set()),
    "a success does not close an open breaker":
        ([("refused", "a"), ("refused", "b"), ("refused", "c"), ("ok", "x"), ("refused", "d")], True, set(), set()),
    # a token that works puts the blame on the refused ones: they cool down
    "a success in between": ([("refused", "a"), ("ok", "x"), ("refused", "b"), ("refused", "c")], False, {"a", "b", "c"}, set()),
    "revoked tokens among good ones, round robin":
        ([("ok", "x"), ("refused", "a"), ("ok", "x"), ("refused", "b"), ("ok", "x"), ("refused", "c"), ("ok", "x"),
          ("refused", "d")], False, {"a", "b", "c", "d"}, set()),
    "three more after the success open it, the one before stays cooling":
        ([("refused", "a"), ("ok", "x"), ("refused", "b"), ("refused", "c"), ("refused", "d")], True, {"a"}, set()),
    # the window and the tokens
    "the same token again counts once": ([("refused", "a"), ("refused", "a"), ("refused", "b")], False, {"a", "b"}, set()),
    "refusals outside the window are forgotten":
        ([("refused", "a"), ("wait", 61), ("refused", "b"), ("refused", "c")], False, {"a", "b", "c"}, set()),
    # retirement (retire_after 3; cooldown 300): refusals in a row, each after a cooldown
    "refused three times in a row: retired":
        ([("refused", "a"), ("wait", 300), ("refused", "a"), ("wait", 300), ("refused", "a")], False, {"a"}, {"a"}),
    "a success starts the count again":
        ([("refused", "a"), ("wait", 300), ("refused", "a"), ("ok", "a"), ("refused", "a")], False, {"a"}, set()),
    "refusals while cooling do not count": ([("refused", "a"), ("refused", "a"), ("refused", "a")], False, {"a"}, set()),
    "a disable rule retires at once": ([("disable", "a"), ("ok", "x"), ("disable", "b")], False, {"a", "b"}, {"a", "b"}),
    "a disable that opens the breaker retires nobody":
        ([("disable", "a"), ("disable", "b"), ("disable", "c")], True, set(), set()),
}  # fmt: skip
RULE_TOKENS = {name: f"tok-rule-{name}-000000{n}" for n, name in enumerate("abcdx")}
RULE_SPEC = BreakerSpec(tokens=3, window=60, pause=300)


class Here:
    """A proxy on its own: what recovery.py and retry.py do with a success and a refusal."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pool = TokenPool(list(RULE_TOKENS.values()), cooldown=300, clock=clock)
        self.breaker = Breaker(RULE_SPEC, clock)

    async def refused(self, token: str, retire: bool = False) -> None:
        refuse_here(self.pool, self.breaker, token, None, retire)

    async def succeeded(self, token: str, sent_at: float) -> None:
        self.pool.succeeded(token, sent_at)
        self.breaker.succeeded(sent_at)

    async def outcome(self) -> tuple[bool, set[str], set[str]]:
        health = {n: self.pool.health.get(token_key(t)) for n, t in RULE_TOKENS.items()}
        cooling = {n for n, h in health.items() if h is not None and h.cooling_until > self.clock.now}
        retired = {n for n, h in health.items() if h is not None and h.retired_at > 0}
        return self.breaker.is_open, cooling, retired


class OnRedis:
    """Proxies on a shared store, judged in Redis. `other`: the successes are another proxy's, and
    count once its batch has reached Redis (waited for); else this proxy's own, which go with its
    next refusal."""

    def __init__(self, clock: Clock, server, other: bool) -> None:
        self.clock, self.server = clock, server
        self.stores = [self._store() for _ in range(2 if other else 1)]
        self.refusing, self.succeeding = self.stores[0], self.stores[-1]

    def _store(self) -> SharedStore:
        pool = TokenPool(list(RULE_TOKENS.values()), cooldown=300, clock=self.clock)
        return SharedStore(StoreSpec(self.server.url, self.server.url), pool, Breaker(RULE_SPEC, self.clock), self.clock)

    async def start(self) -> None:
        for s in self.stores:
            s.start()
        while not all(s.online for s in self.stores):
            await asyncio.sleep(0.01)

    async def refused(self, token: str, retire: bool = False) -> None:
        self.refusing.refused(token, None, retire)  # judged in Redis, in the background
        await self.refusing.settled()

    async def succeeded(self, token: str, sent_at: float) -> None:
        s = self.succeeding
        s.succeeded(token, sent_at)
        s.breaker.succeeded(sent_at)
        if s is not self.refusing:
            key, redis = token_key(token), self.server.client()
            counted = lambda: int((redis.hget(s.keys.health, key) or "0 0 0 0 0").split()[3])  # noqa: E731
            before = counted()
            for _ in range(1000):
                await asyncio.sleep(0.01)
                if counted() > before:
                    break
            else:
                raise AssertionError("the success did not reach Redis")

    async def outcome(self) -> tuple[bool, set[str], set[str]]:
        redis, keys = self.server.client(), self.refusing.keys
        cooling, retired = set(), set()
        for name, token in RULE_TOKENS.items():
            record = redis.hget(keys.health, token_key(token))
            if record is not None and parse_record(record)[0] > self.clock.now:
                cooling.add(name)
            if record is not None and parse_record(record)[6] > 0:
                retired.add(name)
        for s in self.stores:
            s.stop()
        return float(redis.get(keys.breaker) or 0) > self.clock.now, cooling, retired


@pytest.mark.parametrize("where", ["here", "redis", "redis, successes of another proxy"])
@pytest.mark.parametrize("case", RULE_CASES, ids=list(RULE_CASES))
def test_the_breaker_rule_holds_alike_here_and_on_a_shared_store(case, where, request):
    steps, opens, cooling, retired = RULE_CASES[case]
    clock = Clock()
    clock.now = 10_000.0
    early = clock.now - 100

    async def main():
        side = Here(clock) if where == "here" else OnRedis(clock, request.getfixturevalue("redis_server"), "another" in where)
        if isinstance(side, OnRedis):
            await side.start()
        for what, arg in steps:
            clock.now += 1
            if what == "wait":
                clock.now += arg
            elif what in ("refused", "disable"):
                await side.refused(RULE_TOKENS[arg], retire=what == "disable")
            else:
                await side.succeeded(RULE_TOKENS[arg], early if what == "ok early" else clock.now)
        return await side.outcome()

    assert asyncio.run(main()) == (opens, cooling, retired)
