"""The request hook: draw the values a request's plan needs, and apply the plan (addon/request/plan.py).

Named values come from their sources (addon/runtime/sources.py); `{token}` is drawn last, after every
await, so that a token refused meanwhile is never sent (but for a value each exit has its own: the token,
and so its exit, comes first).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from mitmproxy import http

from addon.exits.connect import send_through
from addon.exits.health import ExitHealth
from addon.exits.routing import Exits, routed as exits_of
from addon.request.apply import apply_plan_off_loop
from addon.request.plan import Plan, describe, plan_request_off_loop
from addon.rules.template import TOKEN
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool, clock_time, pool_of
from addon.runtime.sources import ValueSource
from addon.util.flowmap import FlowMap

logger = logging.getLogger(__name__)

METADATA_KEY = "rewrite"  # flow.metadata, for people (mitmweb, saved flows): Rewritten.shown()
REPLAY_KEY = "rewrite.attempt"  # flow.metadata of a copy the recovery replays: {"of": id, "attempt": n}


@dataclass(frozen=True)
class Rewritten:
    """What the request hook did to a flow, as the hooks after it read it (`rewritten(flow)`). The
    flow's metadata shows the same to people; no hook reads that back."""

    rules: tuple[str, ...]  # the names of the rules that applied
    streaming: bool  # a streaming request
    injected: frozenset[str]  # the values put into it: "token", "captcha", …

    def shown(self) -> dict:
        return {"rules": list(self.rules), "streaming": self.streaming, "injected": list(self._injected_in_order)}

    @functools.cached_property
    def _injected_in_order(self) -> tuple[str, ...]:
        return tuple(sorted(self.injected))

    @classmethod
    def of(cls, plan: Plan, values: dict[str, str]) -> Rewritten:
        """The record of a request that `plan` rewrote with `values` (one per plan and set of values' names)."""
        injected = frozenset(values)
        record = plan.records.get(injected)
        if record is None:
            record = plan.records[injected] = cls(tuple(r.name for r in plan.rules), plan.streaming, injected)
        return record


_REWRITTEN: FlowMap[http.HTTPFlow, Rewritten] = FlowMap()


def rewritten(flow: http.HTTPFlow) -> Rewritten | None:
    """What the request hook did to this flow; None when no rule applied (or it is a retry's copy)."""
    return _REWRITTEN.get(flow)


def mark(flow: http.HTTPFlow, record: Rewritten) -> None:
    """Keep what the request hook did to this flow for the later hooks, and show it in its metadata."""
    _REWRITTEN[flow] = record
    flow.metadata[METADATA_KEY] = record.shown()


class Sent(NamedTuple):
    """What went out with a flow: kept in memory only (it holds the values), so a
    refused request can be sent again with only the token or other values changed."""

    plan: Plan
    values: dict[str, str]
    at: float  # wall-clock time the values were drawn
    pool: Pool  # the token's pool (a reload since may have renamed or dropped it: it is this one still)

    @property
    def counted_in(self) -> str:
        """The pool its counts go to (addon/runtime/counters.py): its token's, or "" without a token."""
        return counted_pool(self.pool, self.values)


def counted_pool(pool: Pool, values: dict[str, str]) -> str:
    return pool.name if TOKEN in values else ""


def exit_note(exits: Exits, pool: Pool, token: str, exit: ExitHealth) -> str:
    """The comment's line for the exit a request left through: "via exit b", and why not its own."""
    assert pool.spec is not None
    home = exits.home(pool.spec, token)
    return f"via exit {exit.spec.name}" + ("" if home == exit.spec.name else f" (failover: exit {home} rests)")


class Rewriter:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sent: FlowMap[http.HTTPFlow, Sent] = FlowMap()

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or REPLAY_KEY in flow.metadata:
            return
        config, pools = self.runtime.config, self.runtime.pools  # as loaded now: a reload meanwhile is for later requests
        if config is None:
            return
        if flow.request.stream:
            # stream_large_bodies sent the headers before this hook: too late to change them
            if config.index.candidates(flow.request.host, flow.request.port):
                logger.warning(f"rules: not applied to {flow.request.pretty_url}: its body was streamed (stream_large_bodies)")
            return
        plan = await plan_request_off_loop(config, flow)  # a large body: read in the worker process
        if plan is None:
            return
        pool = pool_of(pools, plan.pool) or self.runtime.pool
        routed = TOKEN in plan.uses and exits_of(pool.spec)
        exit = None
        if routed and any((spec := config.values.get(name)) is not None and spec.per_exit for name in plan.named):
            # a value each exit has its own (its clearance): the token, and so its exit, comes first (a
            # token refused while the values are fetched is then sent once)
            token = pool.draw(partial(self.runtime.exits.leaves, pool.spec))
            if token is None:
                self._no_tokens(flow, pool)
                return
            exit = self.runtime.exits.route(pool.spec, token)
            values = await self._draw_values(plan, exit.spec.name if exit is not None else "")
            values[TOKEN] = token
        elif plan.named:
            values, wanted = self._values_at_hand(plan)
            if wanted:
                await self._fetch_values(values, wanted)
        else:
            values = {}
        # the token is drawn after the last await, so a token refused meanwhile is never sent
        if TOKEN in plan.uses and TOKEN not in values:
            token = pool.draw(partial(self.runtime.exits.leaves, pool.spec) if routed else None)
            if token is None:
                self._no_tokens(flow, pool)
                return
            values[TOKEN] = token
            if routed:
                exit = self.runtime.exits.route(pool.spec, token)
        # (a body over bodyworker.SMALL_BODY with edits is edited in the worker: an await after the
        # draw, about a second for 31 MB of JSON; a token refused meanwhile is then sent once)
        sessions = pool.sessions
        lines = await apply_plan_off_loop(plan, flow.request, sessions.applied(values))
        sessions.carried(flow, plan.token_cookies, values)
        if exit is not None:
            send_through(flow, exit.spec)
            lines.append(exit_note(self.runtime.exits, pool, values[TOKEN], exit))
        flow.comment = describe(plan, lines)
        mark(flow, Rewritten.of(plan, values))
        self.runtime.counters.requests[counted_pool(pool, values)] += 1
        if values:
            self.sent[flow] = Sent(plan, values, time.time(), pool)

    def take_sent(self, flow: http.HTTPFlow) -> Sent | None:
        """What went out with this flow, once (its answer is judged once); None: no values went out."""
        return self.sent.pop(flow, None)

    async def _draw_values(self, plan: Plan, exit: str = "") -> dict[str, str]:
        """The named values the plan uses (of `exit`, for a value each exit has its own): those at hand
        at once, the others fetched side by side. A value whose source failed, or that is an exit's
        and the request leaves through none, is left out (the edits that need it are skipped)."""
        values, wanted = self._values_at_hand(plan, exit)
        if wanted:
            await self._fetch_values(values, wanted)
        return values

    def _values_at_hand(self, plan: Plan, exit: str = "") -> tuple[dict[str, str], list[ValueSource]]:
        """The plan's named values at hand now, and the sources of those to fetch."""
        values: dict[str, str] = {}
        wanted = []
        for name in plan.named:
            source = self.runtime.source(name, exit)
            if source is None:
                continue
            value = source.cached()
            if value is not None:
                values[name] = value
            else:
                wanted.append(source)
        return values, wanted

    @staticmethod
    async def _fetch_values(values: dict[str, str], wanted: list[ValueSource]) -> None:
        """Fetch these sources' values side by side, into `values` (a failed one is left out)."""
        fetched = [await wanted[0].get()] if len(wanted) == 1 else await asyncio.gather(*(s.get() for s in wanted))
        for source, value in zip(wanted, fetched):
            if value is not None:
                values[source.name] = value

    def _no_tokens(self, flow: http.HTTPFlow, pool: Pool) -> None:
        file = pool.spec.file if pool.spec is not None else "(none)"
        names = pool.spec.exits if pool.spec is not None else ()
        resting = [h for h in self.runtime.exits if h.spec.name in names and h.resting]
        if resting:
            reason = (f"the exits its tokens leave through rest ({', '.join(h.spec.name for h in resting)}, until "
                      f"{clock_time(max(h.resting_until for h in resting))}: their addresses were refused)")
        elif len(pool.tokens):
            reason = f"no token in {file} is usable: each is disabled, retired or expired (tokens.status tells which)"
        else:
            reason = f"the tokens file {file} has no tokens"
        logger.warning(f"rules: answered 503 for {flow.request.pretty_url}: {reason}")
        flow.response = http.Response.make(
            503,
            f"mitmproxy rules addon: cannot send this request: {reason}.\n",
            {"Content-Type": "text/plain; charset=utf-8"},
        )
        flow.comment = f"answered 503 by the proxy: {reason}"
