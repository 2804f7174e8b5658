"""One exit's health: refusals and failures through it make it rest, by the breaker's rule counted per exit."""

from __future__ import annotations

import logging

import pytest
from mitmproxy.log import ALERT

from addon.exits.health import ExitBreaker, ExitHealth
from addon.rules.records import BreakerSpec, ExitSpec

SPEC = ExitSpec(name="a", scheme="http", host="127.0.0.1", port=3128, shown="http://127.0.0.1:3128", cooldown=120)
BREAKER = BreakerSpec(tokens=2, window=60, pause=999)  # the pool's pause is not the exit's rest


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock) -> ExitHealth:
    return ExitHealth(SPEC, clock)


def test_counting_gives_its_breaker_with_the_exits_cooldown(health):
    breaker = health.counting(BREAKER)
    assert isinstance(breaker, ExitBreaker) and breaker is health.breaker
    assert breaker.spec == BreakerSpec(tokens=2, window=60, pause=120)
    health.counting(BREAKER)
    assert health.refusals == 2


def test_refusals_of_different_tokens_make_it_rest(health, clock, caplog):
    with caplog.at_level(logging.INFO):
        assert health.counting(BREAKER).refused("k1", 0.0) is None
        assert health.counting(BREAKER).refused("k1", 5.0) is None  # the same token counts once
        assert not health.resting
        clock.now += 10
        assert health.counting(BREAKER).refused("k2", 7.0) == {"k1": 0.0, "k2": 7.0}  # their cooldowns, put back
    assert health.resting and health.resting_until == clock.now + 120
    (alert,) = [r for r in caplog.records if r.levelno == ALERT]
    assert alert.getMessage().startswith("exit a: 2 different tokens were refused through it")
    assert "It rests for 120 s" in alert.getMessage()


def test_a_success_clears_the_refusals_before_it(health, clock):
    health.counting(BREAKER).refused("k1", 0.0)
    clock.now += 1
    health.succeeded(sent_at=clock.now)
    clock.now += 1
    assert health.counting(BREAKER).refused("k2", 0.0) is None
    assert not health.resting and health.successes == 1


def test_failures_to_connect_count_toward_its_rest(health, clock):
    health.failed("k1", "connection closed", BREAKER)
    assert not health.resting
    clock.now += 5
    health.failed("k2", "[Errno 111] Connect call failed ('127.0.0.1', 3128)", BREAKER)
    assert health.resting and health.resting_until == clock.now + 120
    assert health.failures == 2 and health.refusals == 0
    assert health.last_failure == "[Errno 111] Connect call failed ('127.0.0.1', 3128)"
    assert health.last_failure_at == clock.now


def test_failures_while_it_rests_neither_extend_it_nor_count_after(health, clock):
    health.failed("k1", "connection closed", BREAKER)
    health.failed("k2", "connection closed", BREAKER)
    until = health.resting_until
    clock.now += 100
    health.failed("k3", "exit timeout", BREAKER)
    assert health.resting_until == until and health.failures == 3 and health.last_failure == "exit timeout"
    clock.now = until + 1  # rested; k3, 21 s ago, is within the window but was not counted
    health.failed("k4", "connection closed", BREAKER)
    assert not health.resting


def test_failures_that_make_it_rest_give_back_the_refused_tokens_cooldowns(health, clock):
    three = BreakerSpec(tokens=3, window=60, pause=999)
    health.counting(three).refused("k1", 0.0)
    assert health.failed("f1", "connection closed", three) is None
    assert health.failed("f2", "exit timeout", three) == {"k1": 0.0}  # the token's; failures cooled none
    assert health.resting


def test_a_failure_of_an_unknown_pool_keeps_the_breaker_settings(health):
    health.counting(BreakerSpec(tokens=5, window=30, pause=1))
    health.failed("f1", "connection closed", None)  # a retry's attempt: its pool is not known here
    assert health.breaker.spec == BreakerSpec(tokens=5, window=30, pause=120)
