"""What a shared store (shared.py) keeps in Redis: its keys, its Lua scripts, and token health records as text.

Keys, all under `mitm-rules:{NAMESPACE}:` (the braces make it a Redis Cluster hash tag, so a
script's keys are on one node): `health` (a hash: token key → "cooling_until refused_at disabled
successes refusals in_a_row retired_at retired_why"; records written before retirement have the
first five), `events` (a stream, trimmed to about EVENTS_KEPT entries), `rr` (the
rotation), `breaker` (open until), `recent`/`before` (the breaker's window), `value:NAME` and
`lock:NAME`, `exit:NAME` (until when an exit rests) with its window `exit:NAME:recent`/`:before`, `sessions` (a hash: token key → its renewed session value, sealed with tokens.session_key:
addon/tokens/sessions.py; each renewal is also a stream entry `s`, `v`). A token's key is a hash of it
(tokenfile.token_key): no token, nor any part of one, goes to Redis. Command values do: the README says so.
Times are the proxies' wall clocks, which are expected to agree (NTP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

EVENTS_KEPT = 100_000  # stream entries kept (about): a proxy that was gone longer reads the whole state


# The Lua scripts Redis runs, in addon/tokens/lua/ (each file says its KEYS and ARGV); those that
# read or write token records run after records.lua (get, put, num, forget_before). They state the
# rules of pool.TokenPool.refused/succeeded and breaker.Breaker for a shared store, and
# tests/tokens/test_breaker.py runs one table of cases against both.
def _lua(name: str) -> str:
    return (resources.files("addon.tokens") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


SCRIPTS = {name: (_lua("records") if name not in ("claim", "publish") else "") + _lua(name)
           for name in ("refuse", "succeed", "disable", "reset", "merge", "claim", "publish")}


class Keys:
    """The Redis keys of one namespace."""

    def __init__(self, namespace: str) -> None:
        base = f"mitm-rules:{{{namespace}}}:"
        self.health, self.events, self.rr = base + "health", base + "events", base + "rr"
        self.breaker, self.recent, self.before = base + "breaker", base + "recent", base + "before"
        self.value, self.lock = base + "value:", base + "lock:"
        self.sessions = base + "sessions"
        self.exit = base + "exit:"  # + an exit's name: until when it rests (addon/exits/health.py)

    def exit_window(self, name: str) -> tuple[str, str]:
        """The keys of an exit's breaker window, as `recent` and `before` are the pool's."""
        return f"{self.exit}{name}:recent", f"{self.exit}{name}:before"


def parse_record(text: str) -> tuple[float, float, bool, int, int, int, float, int] | None:
    """A health record as the `health` hash keeps it (one of 5 fields, written before retirement, reads
    with zeros); None (and one warning per kind of fault) when it is not sane numbers: finite, not
    negative and below MAX_NUMBER, `disabled` 0 or 1."""
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


class StoreUnreachable(Exception):
    """A store did not answer a one-off read; the message names it by its masked URL."""


def read_health(url: str, shown: str, namespace: str) -> tuple[dict[str, tuple], float]:
    """Every health record and the breaker's end in one namespace, read at once on a connection of its
    own (for `mitm-rules status`, with no proxy running: not the proxies' way, which follow the stream).

    Raises:
        StoreUnreachable: it does not answer within 5 s, or refuses the read.
    """
    import redis  # only here: a one-off client, not the proxies' asyncio ones

    keys = Keys(namespace)
    try:
        with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5) as client:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(keys.health)
            pipe.get(keys.breaker)
            records, breaker = pipe.execute()
    except redis.RedisError as e:
        raise StoreUnreachable(f"the store {shown} does not answer: {e}") from None
    health = {key: parsed for key, text in records.items() if (parsed := parse_record(text)) is not None}
    return health, (parse_time(breaker) or 0.0) if breaker else 0.0
