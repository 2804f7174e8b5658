"""addon/runtime/counters.py: the histograms' buckets, a recovery's record, and the running totals."""

import pytest

from addon.runtime.counters import Counters, Histogram


@pytest.mark.parametrize(
    "value, bucket",
    [
        (0.0, 0),  # the first bucket: up to 0.001
        (0.001, 0),  # a value on a bound is in that bound's bucket (Prometheus's "le")
        (0.0011, 1),
        (1.0, 9),
        (60.0, 14),  # the last bound
        (60.5, 15),  # above every bound: +Inf
    ],
)
def test_an_observation_goes_to_the_first_bucket_whose_bound_it_does_not_exceed(value, bucket):
    histogram = Histogram()
    histogram.observe(value)
    assert len(histogram.counts) == len(histogram.bounds) + 1 == 16
    assert [i for i, n in enumerate(histogram.counts) if n] == [bucket]
    assert (sum(histogram.counts), histogram.sum) == (1, value)


def test_cumulative_counts_up_to_each_bound_as_prometheus_writes_them():
    histogram = Histogram(bounds=(0.5, 1.0, 2.5))
    for value in (0.1, 0.5, 0.7, 3.0, 9.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 0, 2]
    assert histogram.cumulative() == [("0.5", 2), ("1.0", 3), ("2.5", 3), ("+Inf", 5)]
    assert sum(histogram.counts) == 5 and histogram.sum == pytest.approx(13.3)


def test_two_histograms_do_not_share_their_counts():
    first, second = Histogram(), Histogram()
    first.observe(0.2)
    assert sum(second.counts) == 0
    counters = Counters()
    counters.first_event_seconds[True].observe(0.2)
    assert (sum(counters.first_event_seconds[False].counts), sum(counters.first_event_seconds[True].counts)) == (0, 1)


def test_a_recovery_is_counted_timed_and_listed_without_its_query():
    counters = Counters(clock=lambda: 5000.0)
    counters.recovery("arena", True, 0.3, "POST", "/v1/chat?key=sk-secret-0001", "403 with …1111 → 200 with …2222")
    counters.recovery("arena", False, 12.0, "GET", "/v1/models", "403 with …2222 → 403 with …3333")
    assert counters.recoveries == {("arena", "recovered"): 1, ("arena", "failed"): 1}
    assert sum(counters.recovery_seconds.counts) == 2 and counters.recovery_seconds.sum == pytest.approx(12.3)
    assert counters.recovery_seconds.cumulative()[7] == ("0.25", 0) and counters.recovery_seconds.cumulative()[8] == ("0.5", 1)
    first, second = counters.recent
    assert (first.at, first.method, first.path, first.attempts, first.recovered) == (
        5000.0, "POST", "/v1/chat", "403 with …1111 → 200 with …2222", True)  # fmt: skip
    assert (second.path, second.recovered) == ("/v1/models", False)


def test_only_the_last_recoveries_are_kept():
    counters = Counters()
    for n in range(25):
        counters.recovery("default", True, 0.1, "GET", f"/{n}", "")
    assert [r.path for r in counters.recent] == [f"/{n}" for n in range(5, 25)]
    assert counters.recoveries[("default", "recovered")] == 25  # the counts are all kept


def test_totals_are_requests_every_refusal_and_the_recoveries_that_worked():
    counters = Counters()
    assert counters.totals() == (0, 0, 0)
    counters.requests["arena"] += 3
    counters.requests[""] += 1  # a request with no token
    counters.refusals["arena", "rotate"] += 2
    counters.refusals["arena", "pass"] += 1
    counters.refusals["", "pass"] += 1
    counters.recovery("arena", True, 0.1, "GET", "/", "")
    counters.recovery("arena", False, 0.1, "GET", "/", "")
    assert counters.totals() == (4, 4, 1)
