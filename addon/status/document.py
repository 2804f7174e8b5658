"""The status document: each pool's tokens and breaker, the value sources, and (from a running proxy)
its counts. One structure, read three ways: `mitm-rules status` (text or `--json`), the status
server's `/status` and page, and `/metrics` (addon/status/metrics.py).

`live` reads a running proxy's runtime; `offline` reads a rules file and where its pools keep their
health (the state file, or the shared store), so that no running proxy is needed. Times are ISO 8601
with the local offset, to the second. Nothing in it holds a token or a value: tokens appear as their
last four characters, as everywhere else.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from addon.exits.binding import exit_order
from addon.exits.routing import Exits
from addon.rules.records import Config, TokensSpec, ValueSpec
from addon.runtime.counters import ACTIONS, FAILED, OK, RECOVERED, Counters
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool
from addon.runtime.sources import ValueSource
from addon.tokens import statefile
from addon.tokens.health import health_from_state, state_counts
from addon.tokens.pool import TokenPool
from addon.tokens.storerecords import StoreUnreachable, read_health
from addon.tokens.tokenfile import TokensFileError, read_token_list


class StatusUnavailable(Exception):
    """The health of a pool cannot be read (its store does not answer, say); the message says why."""


def when(timestamp: float | None) -> str | None:
    """A time as the document gives it: ISO 8601, local, to the second (None for none)."""
    if not timestamp:
        return None
    try:
        return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "9999-12-31T23:59:59+00:00"  # with an offset, as every other time here (text.ago subtracts it from now)


# the parts


def pool_part(name: str, spec: TokensSpec | None, tokens: TokenPool, breaker_open_until: float, kept_in: str,
              now: float, rows_shown: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One pool: its counts by state, its tokens (the first `rows_shown` of them; None: all) and breaker."""
    rows, statuses = [], tokens.status()
    routed = spec is not None and bool(spec.exits)
    for (state, health), token in zip(statuses[:rows_shown], tokens.list.tokens):
        rows.append({
            "token": health.suffix,
            "state": state,
            "exit": exit_order(token, spec.exits)[0] if routed else None,
            "until": when(health.cooling_until) if state == "cooling" else None,
            "expires": when(health.expires_at),
            "successes": health.successes,
            "refusals": health.refusals,
            "last_refusal": {"status": health.last_status or None, "at": when(health.refused_at)}
            if health.refused_at else None,
            "retired": {"at": when(health.retired_at), "reason": health.retired_reason} if health.retired_at else None,
        })  # fmt: skip
    breaker = spec.breaker if spec is not None else None
    return {
        "name": name,
        "file": str(spec.file) if spec is not None else None,
        "strategy": tokens.strategy,
        "health_kept_in": kept_in,
        "counts": state_counts(state for state, _ in statuses),
        "tokens": rows,
        "tokens_not_shown": len(statuses) - len(rows),
        "breaker": {
            "open": breaker_open_until > now,
            "until": when(breaker_open_until) if breaker_open_until > now else None,
            "opens_after": {"tokens": breaker.tokens, "within_seconds": breaker.window} if breaker else None,
            "pause_seconds": breaker.pause if breaker else None,
        },
    }


def exits_part(config: Config | None, exits: Exits | None, pools: Iterable[tuple[TokensSpec, TokenPool]],
               now: float) -> list[dict[str, Any]]:  # fmt: skip
    """Each exit: its proxy (password masked), its state (None: not known here, with no proxy running),
    what happened through it, and how many tokens of each pool are bound to it."""
    if config is None or not config.exits:
        return []
    bound: dict[str, dict[str, int]] = {name: {} for name in config.exits}
    for spec, tokens in pools:
        if spec.exits:
            for token in tokens.list.tokens:
                home = exit_order(token, spec.exits)[0]
                bound[home][spec.name] = bound[home].get(spec.name, 0) + 1
    out = []
    for name, spec in config.exits.items():
        health = exits.by_name.get(name) if exits is not None else None
        part: dict[str, Any] = {"name": name, "url": spec.shown, "cooldown_seconds": spec.cooldown, "tokens": bound[name],
                                "state": None}  # fmt: skip
        if health is not None:
            resting = health.resting_until > now
            part.update(state="resting" if resting else "up", until=when(health.resting_until) if resting else None,
                        successes=health.successes, refusals=health.refusals, failures=health.failures,
                        last_failure={"at": when(health.last_failure_at), "why": health.last_failure}
                        if health.last_failure else None)  # fmt: skip
        out.append(part)
    return out


def value_part(spec: ValueSpec, source: ValueSource | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"name": spec.label, "source": spec.describe(), "ttl_seconds": spec.ttl}
    if source is not None:
        part.update(fetched_at=when(source.fetched_at), expires_at=when(source.expires_at),
                    failed_at=when(source.failed_at), runs=source.runs)  # fmt: skip
    return part


def counters_part(counters: Counters) -> dict[str, Any]:
    def by_pool(counter: Mapping[tuple[str, str], int], kinds: Iterable[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (first, kind), n in counter.items():
            out.setdefault(first, dict.fromkeys(kinds, 0))[kind] = n
        return out

    return {
        "since": when(counters.started),
        "requests": dict(counters.requests),
        "refusals": by_pool(counters.refusals, ACTIONS),
        "retries": dict(counters.retries),
        "recoveries": by_pool(counters.recoveries, (RECOVERED, FAILED)),
        "value_refreshes": by_pool(counters.value_refreshes, (OK, FAILED)),
        "last_recoveries": [
            {"at": when(r.at), "method": r.method, "path": r.path, "attempts": r.attempts, "recovered": r.recovered}
            for r in reversed(counters.recent)
        ],
    }


# the documents


LIVE_ROWS = 1000  # tokens listed per pool by a running proxy (every one is counted): a page, not a dump


def live(runtime: Runtime, rules: str | None = None) -> dict[str, Any]:
    """A running proxy's status: its pools as it sees them (the first LIVE_ROWS tokens of each listed),
    its value sources and its counts."""
    now = time.time()
    config = runtime.config
    pools = [_live_pool(pool, now) for pool in runtime.pools.values()]
    values = [value_part(source.spec, source) for source in runtime.values.values()]
    return {
        "now": when(now),
        "rules": rules,
        "loaded": config is not None,
        "pools": pools,
        "exits": exits_part(config, runtime.exits, ((p.spec, p.tokens) for p in runtime.pools.values() if p.spec), now),
        "values": values,
        "counters": counters_part(runtime.counters),
    }


def _live_pool(pool: Pool, now: float) -> dict[str, Any]:
    if pool.shared is not None:
        kept_in = pool.shared.describe()
    elif pool.saver.path is not None:
        kept_in = f"state file {pool.saver.path}"
    else:
        kept_in = "memory only (the state file is another proxy's, or cannot be written)"
    return pool_part(pool.name, pool.spec, pool.tokens, pool.breaker.open_until, kept_in, now, LIVE_ROWS)


def offline(config: Config, rules: str) -> dict[str, Any]:
    """A rules file's status as its state files or its store keep it, with no proxy running.

    Raises:
        StatusUnavailable: a pool's store does not answer.
    """
    now = time.time()
    stored = [_stored_pool(spec, now) for spec in config.pools.values()]
    return {
        "now": when(now),
        "rules": rules,
        "loaded": True,
        "pools": [part for part, _ in stored],
        "exits": exits_part(config, None, ((spec, tokens) for spec, (_, tokens) in zip(config.pools.values(), stored)), now),
        "values": [value_part(spec) for spec in config.values.values()],
        "counters": None,  # a running proxy's own: its status server has them
    }


def _stored_pool(spec: TokensSpec, now: float) -> tuple[dict[str, Any], TokenPool]:
    try:
        tokens = TokenPool(read_token_list(spec.file), strategy=spec.strategy, cooldown=spec.cooldown,
                           retire_after=spec.retire_after, expiry_margin=spec.expiry_margin)  # fmt: skip
    except TokensFileError as e:
        raise StatusUnavailable(str(e)) from None
    if spec.store is not None:
        try:
            health, open_until = read_health(spec.store.url, spec.store.shown, spec.store.namespace)
        except StoreUnreachable as e:
            raise StatusUnavailable(str(e)) from None
        for key, record in health.items():
            tokens.put_health(key, record)
        kept_in = f"store {spec.store.shown} (namespace {spec.store.namespace})"
        part = pool_part(spec.name, spec, tokens, open_until, kept_in, now)
    else:
        assert spec.state_file is not None
        found = os.path.exists(spec.state_file)  # (False, not an error, for a folder it may not look into)
        entries, open_until = statefile.read_state(spec.state_file) if found else ({}, 0.0)
        tokens.load_health(health_from_state(entries))
        kept_in = f"state file {spec.state_file}"
        part = pool_part(spec.name, spec, tokens, open_until, kept_in, now)
        part["state_exists"] = found
    return part, tokens
