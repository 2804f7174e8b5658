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
        assert not breaker.refused("a")
        assert not breaker.refused("a")  # the same token again does not count twice
        clock.now += 30
        assert not breaker.refused("b")
        assert not breaker.is_open
        clock.now += 20
        assert breaker.refused("c")
    assert breaker.is_open
    assert caplog.text.count("3 different tokens were refused within 60 s") == 1
    assert not breaker.refused("d")  # already open: no second alert
    clock.now += 301
    assert not breaker.is_open


def test_refusals_outside_the_window_are_forgotten():
    clock = Clock()
    breaker = Breaker(BreakerSpec(tokens=3, window=60, pause=300), clock)
    breaker.refused("a")
    clock.now += 61
    breaker.refused("b")
    breaker.refused("c")
    assert not breaker.is_open
