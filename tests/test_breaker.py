import logging

from addon.breaker import Breaker
from addon.config import BreakerSpec


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
