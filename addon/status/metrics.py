"""`/metrics`: the runtime's counts and its pools' state in Prometheus's text format.

A collector of prometheus-client's (a custom collector, read when Prometheus scrapes): the hooks only
add to `Counters` (addon/runtime/counters.py), and the families are built here from them and from the
pools, so that a request costs nothing more for being watched. No label holds a token or a value:
labels are pool names, value names and fixed words. docs/operations.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from addon.runtime.counters import ACTIONS, FAILED, OK, RECOVERED, Histogram
from addon.runtime.loader import Runtime
from addon.tokens.health import STATES

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator:
        c = self.runtime.counters
        requests = CounterMetricFamily("mitm_rules_requests", "Requests the rules changed, by the pool of their "
                                       "token (pool=\"\": the request carried none).", labels=["pool"])  # fmt: skip
        for pool, n in sorted(c.requests.items()):
            requests.add_metric([pool], n)
        yield requests

        refusals = CounterMetricFamily("mitm_rules_refusals", "Answers an on_response rule refused, by what was "
                                       "done: rotate (retried with another token), refresh (retried with values "
                                       "fetched anew), disable (the token retired, another tried), pass (handed to "
                                       "the client as it came).", labels=["pool", "action"])  # fmt: skip
        for pool in sorted({pool for pool, _ in c.refusals}):
            for action in ACTIONS:
                refusals.add_metric([pool, action], c.refusals[pool, action])
        yield refusals

        retries = CounterMetricFamily("mitm_rules_retries", "Attempts sent after a refusal.", labels=["pool"])
        for pool, n in sorted(c.retries.items()):
            retries.add_metric([pool], n)
        yield retries

        recoveries = CounterMetricFamily("mitm_rules_recoveries", "Refused requests the proxy tried to recover, by "
                                         "how that ended: recovered (the client got an answer that was not a "
                                         "refusal) or failed.", labels=["pool", "outcome"])  # fmt: skip
        for pool in sorted({pool for pool, _ in c.recoveries}):
            for outcome in (RECOVERED, FAILED):
                recoveries.add_metric([pool, outcome], c.recoveries[pool, outcome])
        yield recoveries

        refreshes = CounterMetricFamily("mitm_rules_value_refreshes", "Named values (captcha, ...) fetched from their "
                                        "source on this proxy, by outcome: ok or failed.", labels=["value", "outcome"])  # fmt: skip
        for value in sorted({value for value, _ in c.value_refreshes}):
            for outcome in (OK, FAILED):
                refreshes.add_metric([value, outcome], c.value_refreshes[value, outcome])
        yield refreshes

        tokens = GaugeMetricFamily("mitm_rules_tokens", "Tokens of each pool by state.", labels=["pool", "state"])
        breaker = GaugeMetricFamily("mitm_rules_breaker_open", "1 while the pool's breaker is open (refusals go to "
                                    "the client as they are), else 0.", labels=["pool"])  # fmt: skip
        for pool in self.runtime.pools.values():
            counts = pool.tokens.state_counts()
            for state in STATES:
                tokens.add_metric([pool.name, state], counts[state])
            breaker.add_metric([pool.name], 1 if pool.breaker.is_open else 0)
        yield tokens
        yield breaker

        up = GaugeMetricFamily("mitm_rules_exit_up", "1 while the exit takes requests, 0 while it rests (refusals "
                               "through it looked like its address).", labels=["exit"])  # fmt: skip
        exit_refusals = CounterMetricFamily("mitm_rules_exit_refusals", "Refusals of tokens sent through the exit.",
                                            labels=["exit"])  # fmt: skip
        exit_failures = CounterMetricFamily("mitm_rules_exit_failures", "Requests that could not get through the exit "
                                            "(refused, timed out, its login refused).", labels=["exit"])  # fmt: skip
        for exit in self.runtime.exits:
            up.add_metric([exit.spec.name], 0 if exit.resting else 1)
            exit_refusals.add_metric([exit.spec.name], exit.refusals)
            exit_failures.add_metric([exit.spec.name], exit.failures)
        yield up
        yield exit_refusals
        yield exit_failures

        yield _histogram("mitm_rules_recovery_seconds", "What a recovery added to the client's wait: from the "
                         "refusal's arrival to the answer handed on (or its first byte, streamed).",
                         [([], c.recovery_seconds)])  # fmt: skip
        yield _histogram("mitm_rules_first_event_seconds", "From the client's request to the first byte of a "
                         "streamed answer, by whether it came from a recovery.", [
                             (["false"], c.first_event_seconds[False]), (["true"], c.first_event_seconds[True])],
                         labels=["recovered"])  # fmt: skip


def _histogram(name: str, doc: str, series: list[tuple[list[str], Histogram]], labels: list[str] | None = None):
    family = HistogramMetricFamily(name, doc, labels=labels or [])
    for values, h in series:
        family.add_metric(values, h.cumulative(), sum_value=h.sum)
    return family


def registry_of(runtime: Runtime) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one, which a reloaded script would fill twice)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
