"""The retry loop of a refused request: replay it with the next token, or with values fetched anew.

The retry is a small state machine, in the manner of httpx's auth flows:
`verdict` decides what an answer means, `next_values` what to try next,
`_attempt` performs one try (addon/recovery/replay.py), and `max_attempts` bounds the loop.
What an answer means and how an attempt is shown are the addon's (addon/recovery/recovery.py),
handed to the `Retrier` as functions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from mitmproxy import connection, http

from addon.exits.connect import send_through
from addon.exits.health import ExitHealth
from addon.exits.routing import routed
from addon.mitm import helpers, httplayer
from addon.mitm.handover import Handover
from addon.recovery.replay import FirstEventJudge, Limits, Replay
from addon.recovery.streamed import Streams, take_response
from addon.recovery.verdict import may_retry, retry_after
from addon.request.apply import apply_plan_off_loop
from addon.request.rewriter import REPLAY_KEY, Sent
from addon.rules.records import DISABLE, PASS, REFRESH, ROTATE, Config
from addon.rules.template import TOKEN
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool
from addon.util.comment import add_note

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3  # for captcha-only flows, when the file has no tokens section


@dataclass(frozen=True)
class Action:
    """What an answer asks of the recovery: rotate (another token), or refresh these values (same token)."""

    kind: str  # ROTATE or REFRESH
    refresh: frozenset[str] = frozenset()  # for REFRESH: of the values the request used, those to fetch anew
    retire: bool = False  # for ROTATE: retire the refused token at once (action disable)


@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no answer (the attempt failed)
    values: dict[str, str]
    shown: str = ""  # the token, or the first value, as the comment and the log may show it
    refreshed: str = ""  # e.g. "new cf_clearance …wxyz", when this attempt followed a refresh

    def describe(self) -> str:
        status = str(self.status) if self.status is not None else "error"
        text = f"{status} with {self.shown}" if self.shown else status
        return f"{text} ({self.refreshed})" if self.refreshed else text


class Retrier:
    """Retries a refused request (`recover`), with what the addon (Recovery) judges and shows."""

    def __init__(
        self,
        runtime: Runtime,
        streams: Streams,
        limits: Callable[[], Limits],  # the retry_timeout and retry_idle_timeout now
        action: Callable[..., Action | None],  # what an answer means (Recovery._action)
        attempt_of: Callable[..., Attempt],  # an attempt as the log shows it (Recovery._attempt_of)
        settled: Callable[..., None],  # an answer that needs no retry (Recovery._settled)
        first_event_judge: Callable[..., FirstEventJudge],  # (Recovery._first_event_judge)
    ) -> None:
        self.runtime = runtime
        self.streams = streams
        self.limits = limits
        self._action = action
        self._attempt_of = attempt_of
        self._settled = settled
        self._first_event_judge = first_event_judge

    async def recover(
        self, flow: http.HTTPFlow, sent: Sent, action: Action, config: Config, client: Handover | None = None
    ) -> None:
        """Retry until an answer needs no retry, or attempts or tokens run out. With `client` (the
        client's stream waits in addon.mitm.httplayer), an answer that cannot be a refusal is streamed to
        it as it comes."""
        pool = sent.pool  # the pool of the request's token
        max_attempts = pool.spec.max_attempts if pool.spec is not None else DEFAULT_MAX_ATTEMPTS
        assert flow.response is not None
        counters, pool_name, began = self.runtime.counters, sent.counted_in, time.monotonic()
        attempts = [self._attempt_of(flow.response.status_code, sent.values)]
        last: http.Response = flow.response
        values = sent.values
        tried = {values[TOKEN]} if TOKEN in values else set()
        outcome = ""
        streamed: Replay | None = None
        previous = flow  # the flow whose answer `last` is
        # with exits, each exit's breaker judges the refusals through it (addon/exits/health.py): one
        # that rests leaves the others, and the retry goes on with a token of another exit
        exit = self.runtime.exits.of_flow(flow) if routed(pool.spec) else None
        while True:
            if action.kind == ROTATE:
                if exit is None and pool.breaker.is_open:
                    outcome = "the breaker is open: refusals go to the client as they are"
                    break
                pool.refused(values[TOKEN], last.status_code, retry_after(last), action.retire, exit)
                if exit is None and pool.breaker.is_open:
                    outcome = "this refusal opened the breaker"
                    break
            if _client_gone(flow, client):  # no retry for nobody: it would only cool more tokens
                outcome = "the client left"
                break
            if len(attempts) >= max_attempts:
                outcome = f"gave up after {max_attempts} attempts"
                break
            next_values = await self.next_values(pool, action, values, tried, exit)
            if isinstance(next_values, str):
                outcome = next_values
                break
            if len(attempts) == 1:
                self._show_refused(flow, attempts[0])
            counters.refusals[pool_name, _counted(action)] += 1
            counters.retries[pool_name] += 1
            values = next_values
            sent_at = time.time()
            keep = exit if action.kind == REFRESH else None  # a refresh: the values of the exit that was refused
            replay = await self._attempt(flow, sent, values, len(attempts) + 1, config, client, pool, keep)
            if replay.failure is not None or replay.flow.response is None:
                attempts.append(self._attempt_of(None, values, action.refresh))
                outcome = f"attempt {len(attempts)} failed: {replay.failure}"
                action = None  # (no refusal is left unanswered: the last one was retried)
                break
            if last is not flow.response:  # the refusal before this answer goes to nobody: mitmweb keeps a copy
                self._keep_little(previous)
            last, previous = replay.flow.response, replay.flow
            exit = self.runtime.exits.of_flow(replay.flow) if exit is not None else None
            attempts.append(self._attempt_of(last.status_code, values, action.refresh))
            if replay.streaming:  # it cannot be a refusal (see may_retry): it goes to the client as it comes
                streamed, action = replay, None
            else:
                action = self._action(config, last, values, sent.plan.streaming)
            if action is None:
                self._settled(pool, last, values, sent_at, exit)
                break
        recovered = action is None and len(attempts) > 1 and not outcome
        summary = " → ".join(a.describe() for a in attempts)
        if action is not None:  # the last refusal goes to the client as it came
            counters.refusals[pool_name, PASS] += 1
        if len(attempts) > 1:  # a recovery: a retry went out (none did when the breaker was open, say)
            counters.recovery(pool_name, recovered, time.monotonic() - began, flow.request.method, flow.request.path,
                              summary)  # fmt: skip
        if streamed is not None:
            assert client is not None
            await self.streams.stream_from(flow, client, streamed, summary)
            return
        if len(attempts) > 1:
            take_response(flow, last)
        if recovered:
            flow.marked = ":repeat:"
            logger.info(f"recovered {flow.request.method} {flow.request.pretty_url}: {summary}")
        else:
            logger.warning(f"not recovered {flow.request.method} {flow.request.pretty_url}: {summary} ({outcome})")
        add_note(flow, f"attempts: {summary}" + ("" if recovered else f" ({outcome})"))

    def _show_refused(self, flow: http.HTTPFlow, first: Attempt) -> None:
        """A retry is about to be sent: the client's flow will show the answer that works, so its
        refused first attempt becomes a flow of its own in mitmweb (and mitmproxy's console), with
        its request as it was sent and its refusal. Every flow of the family names the client's
        flow's short id, so that a filter selects them all."""
        assert flow.response is not None
        family = f"~comment {flow.id[:8]}"
        add_note(flow, f"refused ({first.describe()}), then retried; this flow and each attempt: {family}")
        view = helpers.flow_list()
        if view is None:  # mitmdump: no flow list (the log has the attempts line)
            return
        refused = http.HTTPFlow(flow.client_conn, flow.server_conn)
        refused.request = flow.request.copy()
        refused.response = flow.response.copy()
        token = "token " if TOKEN in first.values else ""
        refused.comment = f"attempt 1 of flow {flow.id[:8]}, with {token}{first.shown}: refused, then retried ({family})"
        refused.marked = ":no_entry:"
        self._keep_little(refused)
        view.add([refused])

    def _keep_little(self, flow: http.HTTPFlow) -> None:
        """A refusal that goes to no client: keep what mitmweb shows of it (the first stream_copy_limit
        bytes of its body), so that a long recovery holds one refusal's body at a time, not one each."""
        response, limit = flow.response, self.runtime.stream_copy_limit
        if response is None or response.raw_content is None or len(response.raw_content) <= limit:
            return
        add_note(flow, f"refusal's body: {len(response.raw_content)} bytes, the first {limit} kept")
        response.raw_content = response.raw_content[:limit]

    async def next_values(
        self, pool: Pool, action: Action, values: dict[str, str], tried: set[str], exit: ExitHealth | None = None
    ) -> dict[str, str] | str:
        """The values for the next attempt, or why there are none (and then no value is fetched
        for a retry that will not be sent).

        rotate: another token, and fresh values from the commands the request used (a file or the
        environment gives what it holds now); a source that fails leaves its old value. refresh:
        the same token, and a new value for each value to refresh; if one cannot be had (its source
        fails, or a file does not change within its wait), no retry, and no token is blamed. A value
        each exit has its own is the refused attempt's exit's (`exit`) for a refresh, and the new token's
        for a rotation (which then chooses the token first).
        """
        if action.kind == ROTATE and not pool.tokens.has_replacement(values[TOKEN], exclude=tried):
            return "no other token to try"
        new = dict(values)
        names = sorted(action.refresh) if action.kind == REFRESH else sorted(n for n in values if n != TOKEN)
        usable = partial(self.runtime.exits.leaves, pool.spec) if routed(pool.spec) else None
        config = self.runtime.config
        if action.kind == ROTATE and usable and config and any(config.values[n].per_exit for n in names if n in config.values):
            token = pool.replacement(values[TOKEN], tried, usable)
            if token is None:
                return "no other token to try (the exits of the others rest)"
            new[TOKEN] = token
            exit = self.runtime.exits.route(pool.spec, token)
        exit_name = exit.spec.name if exit is not None else ""
        sources = [source for n in names if (source := self.runtime.source(n, exit_name)) is not None]
        if action.kind == REFRESH:
            fresh = await asyncio.gather(*(s.refresh(stale=values[s.name]) for s in sources))
        else:
            fresh = await asyncio.gather(*(s.fresh(stale=values[s.name]) for s in sources))
        for source, value in zip(sources, fresh):
            if value is not None:
                new[source.name] = value
            elif action.kind == REFRESH:
                return f"no new {source.name} value"
        if action.kind == REFRESH and not sources:
            return "nothing to refresh"
        if action.kind == ROTATE and new[TOKEN] == values[TOKEN]:  # after the await: a token refused meanwhile is not chosen
            token = pool.replacement(values[TOKEN], tried, usable)
            if token is None:
                return "no other token to try" + (" (the exits of the others rest)" if usable else "")
            new[TOKEN] = token
        return new

    async def _attempt(
        self, flow: http.HTTPFlow, sent: Sent, values: dict[str, str], n: int, config: Config, client: Handover | None,
        pool: Pool, exit: ExitHealth | None = None,
    ) -> Replay:
        """Send the request again through mitmproxy with new values; the copy is its own flow.
        With `client`, an answer that cannot be a refusal is streamed to it (see Replay)."""
        # not flow.copy(): that would copy the refused answer, and copying a connection costs more
        # than the rest of a retry's set-up. The client is the same one (ReplayHandler replays from a
        # copy of its own). The server is a new one, not yet connected, that mitmproxy replaces with
        # the connection it makes; it keeps the refused flow's route (`via`), which ReplayHandler sets
        # itself only when the first --mode is upstream mode.
        server = connection.Server(address=flow.server_conn.address, via=flow.server_conn.via,
                                   transport_protocol=flow.server_conn.transport_protocol)
        copy = http.HTTPFlow(flow.client_conn, server)
        copy.request = flow.request.copy()
        # with exits: `exit` (a refresh's), or the token's own, resting or not (upstream mode's ReplayHandler
        # resets the route: see below)
        if exit is None and routed(pool.spec) and TOKEN in values:
            exit = self.runtime.exits.route_or_home(pool.spec, values[TOKEN])
        if exit is not None:
            send_through(copy, exit.spec)
        copy.metadata = dict(flow.metadata)
        copy.is_replay = "request"
        copy.metadata[REPLAY_KEY] = {"of": flow.id, "attempt": n}
        sessions = pool.sessions
        await apply_plan_off_loop(sent.plan.dynamic, copy.request, sessions.applied(values))  # a large body: in the worker
        sessions.carried(copy, sent.plan.token_cookies, values)
        shown = self._attempt_of(None, values).shown
        copy.comment = f"attempt {n} of flow {flow.id[:8]}, with {'token ' if TOKEN in values else ''}{shown}"
        if exit is not None:
            copy.comment += f", via exit {exit.spec.name}"
        injected = set(values)
        streamable = lambda r: not may_retry(config.on_response, r.status_code, injected)  # noqa: E731
        judge = self._first_event_judge(config, values, sent.plan.streaming)
        replay = Replay(copy, self.limits(), client, streamable, gone=lambda: _client_gone(flow, client), first_event=judge)
        if exit is not None:
            copy.server_conn.via = exit.spec.via  # (not connected yet: mitmproxy connects it when the replay runs)
        httplayer.on_departure(flow, replay.wake)  # a client that leaves hangs up the retry at once
        try:
            await replay.run()
        finally:  # (the callback holds the replay, which holds the flow: it must not outlive the wait)
            httplayer.on_departure(flow, None)
        return replay


def _counted(action: Action) -> str:
    """What a refusal retried with this action counts as (addon/runtime/counters.py)."""
    if action.kind == REFRESH:
        return REFRESH
    return DISABLE if action.retire else ROTATE


def _client_gone(flow: http.HTTPFlow, client: Handover | None) -> bool:
    """Has the client left this request: closed its connection, or (as mitmproxy's HTTP layer saw it,
    addon.mitm.httplayer) reset its HTTP/2 stream?"""
    if (client is not None and client.left is not None) or httplayer.departed(flow):
        return True
    return not flow.is_replay and not flow.client_conn.connected  # (a replay from mitmweb has no client waiting)
