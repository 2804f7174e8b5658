"""Refused requests recover by themselves: replay a refused request with the next token.

When an answer matches an `on_response` rule, the request is sent again through
mitmproxy itself (`ReplayHandler`: upstream and reverse modes, TLS options,
HTTP/2 and the other addons all apply, and each attempt is a flow of its own in
mitmweb), with only the token (and fresh values, such as the captcha) changed, or
with the same token and the values a `refresh` fetched anew. The client gets the
answer of the attempt that worked, or the last refusal when none did.

A retry that gets no whole answer within `retry_timeout` seconds is hung up
(its upstream connections are closed) and counts as a failed attempt.

The retry is a small state machine, in the manner of httpx's auth flows:
`verdict` decides what an answer means, `_next_values` what to try next,
`_attempt` performs one try, and `max_attempts` bounds the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler
from mitmproxy.flow import Error
from mitmproxy.hooks import UpdateHook

from addon.comment import add_note
from addon.config import REFRESH, ROTATE, Config
from addon.loader import RulesLoader
from addon.masking import mask
from addon.plan import apply_plan
from addon.rewriter import REPLAY_KEY, Rewriter, Sent
from addon.template import TOKEN
from addon.tokens import token_key
from addon.verdict import applies, retry_after, verdict

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3  # for captcha-only flows, when the file has no tokens section
HANG_UP_GRACE = 5.0  # seconds a hung-up replay gets to wind down before its task is cancelled


@dataclass(frozen=True)
class Action:
    """What an answer asks of the recovery: rotate (another token), or refresh these values (same token)."""

    kind: str  # ROTATE or REFRESH
    refresh: frozenset[str] = frozenset()  # for REFRESH: of the values the request used, those to fetch anew


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


class Recovery:
    def __init__(self, state: RulesLoader, rewriter: Rewriter) -> None:
        self.state = state
        self.rewriter = rewriter
        self.timeout = 120.0

    def load(self, loader) -> None:
        loader.add_option(
            "retry_timeout",
            int,
            120,
            "Seconds a retry of a refused request (see on_response in the rules) may take to "
            "get its whole answer. A retry that takes longer is hung up and counts as a failed "
            "attempt: the client gets the refusal it replaced.",
        )

    def configure(self, updated: set[str]) -> None:
        if "retry_timeout" in updated:
            if ctx.options.retry_timeout <= 0:
                raise exceptions.OptionsError("retry_timeout must be a positive number of seconds")
            self.timeout = float(ctx.options.retry_timeout)

    async def response(self, flow: http.HTTPFlow) -> None:
        if REPLAY_KEY in flow.metadata or flow.response is None:
            return  # our own replays are judged by the request that made them
        sent = self.rewriter.sent.pop(flow, None)
        config = self.state.config
        if sent is None or config is None:
            return
        action = self._action(config, flow.response, sent.values)
        if action is not None and flow.response.stream:
            # mitmproxy streamed it (stream_large_bodies, late): the client has it already
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} was "
                           "streamed to the client before it could be judged (stream_large_bodies)")
            return
        if action is None:
            self._settled(flow.response, sent.values, sent.at)
            return
        missing = sorted(sent.plan.uses - sent.values.keys())
        if action.kind == ROTATE and missing:
            # a value's source failed and the request went without it: that, not the token, is the
            # likely cause, and rotating would mark good tokens refused
            names, s = " and ".join(missing), "s" if len(missing) > 1 else ""
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} is not blamed on "
                           f"the token, as the request went without its {names} value{s} (the {names} source{s} failed)")
            return
        await self._recover(flow, sent, action, config)

    def error(self, flow: http.HTTPFlow) -> None:
        self.rewriter.sent.pop(flow, None)  # nothing to recover: the request never got an answer

    def _action(self, config: Config, response: http.Response, values: dict[str, str]) -> Action | None:
        """What this answer means for a request sent with these values (None: pass it on)."""
        rule = verdict(config.on_response, response)
        if not applies(rule, values):
            return None
        assert rule is not None
        if rule.action == ROTATE:
            return Action(ROTATE)
        return Action(REFRESH, frozenset(name for name in rule.refreshes if name in values))

    def _attempt_of(self, status: int | None, values: dict[str, str], refreshed: frozenset[str] = frozenset()) -> Attempt:
        if TOKEN in values:
            shown = mask(values[TOKEN])
        else:
            first = min(values, default=None)
            shown = f"{first} {self._show(first, values[first])}" if first is not None else ""
        news = ", ".join(f"new {name} {self._show(name, values[name])}" for name in sorted(refreshed))
        return Attempt(status, values, shown, news)

    def _show(self, name: str, value: str) -> str:
        source = self.state.values.get(name)
        return source.show(value) if source is not None else mask(value)

    def _settled(self, response: http.Response, values: dict[str, str], sent_at: float) -> None:
        if TOKEN in values and response.status_code < 400:
            self.state.tokens.succeeded(values[TOKEN], sent_at)

    async def _recover(self, flow: http.HTTPFlow, sent: Sent, action: Action, config: Config) -> None:
        max_attempts = config.tokens.max_attempts if config.tokens else DEFAULT_MAX_ATTEMPTS
        assert flow.response is not None
        attempts = [self._attempt_of(flow.response.status_code, sent.values)]
        last: http.Response = flow.response
        values = sent.values
        tried = {values[TOKEN]} if TOKEN in values else set()
        outcome = ""
        while True:
            if action.kind == ROTATE:
                if self.state.breaker.is_open:
                    outcome = "the breaker is open: refusals go to the client as they are"
                    break
                self._refused(values[TOKEN], last)
                if self.state.breaker.is_open:
                    outcome = "this refusal opened the breaker"
                    break
            if len(attempts) >= max_attempts:
                outcome = f"gave up after {max_attempts} attempts"
                break
            next_values = await self._next_values(action, values, tried)
            if isinstance(next_values, str):
                outcome = next_values
                break
            values = next_values
            sent_at = time.time()
            copy = await self._attempt(flow, sent, values, len(attempts) + 1)
            if copy.error or copy.response is None or copy.response.stream:
                attempts.append(self._attempt_of(None, values, action.refresh))
                why = copy.error.msg if copy.error else "the answer was too large to hold (stream_large_bodies)"
                outcome = f"attempt {len(attempts)} failed: {why}"
                break
            last = copy.response
            attempts.append(self._attempt_of(last.status_code, values, action.refresh))
            action = self._action(config, last, values)
            if action is None:
                self._settled(last, values, sent_at)
                break
        recovered = action is None and len(attempts) > 1
        if len(attempts) > 1:
            _take_response(flow, last)
        summary = " → ".join(a.describe() for a in attempts)
        if recovered:
            flow.marked = ":repeat:"
            logger.info(f"recovered {flow.request.method} {flow.request.pretty_url}: {summary}")
        else:
            logger.warning(f"not recovered {flow.request.method} {flow.request.pretty_url}: {summary} ({outcome})")
        add_note(flow, f"attempts: {summary}" + ("" if recovered else f" ({outcome})"))

    def _refused(self, token: str, response: http.Response) -> None:
        pool, key = self.state.tokens, token_key(token)
        before = pool.health[key].cooling_until if key in pool.health else 0.0
        if pool.refused(token, retry_after(response)):
            until = pool.health[key].cooling_until - pool.clock()
            logger.info(f"tokens: {mask(token)} refused ({response.status_code}); passed over for {until:.0f} s")
        undo = self.state.breaker.refused(key, before)
        if undo is not None:
            pool.restore(undo)

    async def _next_values(self, action: Action, values: dict[str, str], tried: set[str]) -> dict[str, str] | str:
        """The values for the next attempt, or why there are none (and then no value is fetched
        for a retry that will not be sent).

        rotate: another token, and fresh values from the commands the request used (a file or the
        environment gives what it holds now); a source that fails leaves its old value. refresh:
        the same token, and a new value for each value to refresh; if one cannot be had (its source
        fails, or a file does not change within its wait), no retry, and no token is blamed.
        """
        if action.kind == ROTATE and not self.state.tokens.has_replacement(values[TOKEN], exclude=tried):
            return "no other token to try"
        new = dict(values)
        names = sorted(action.refresh) if action.kind == REFRESH else sorted(n for n in values if n != TOKEN)
        sources = [self.state.values[n] for n in names if n in self.state.values]
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
        if action.kind == ROTATE:  # after the await: a token refused meanwhile is not chosen
            token = self.state.tokens.replacement(values[TOKEN], exclude=tried)
            if token is None:
                return "no other token to try"
            tried.add(token)
            new[TOKEN] = token
        return new

    async def _attempt(self, flow: http.HTTPFlow, sent: Sent, values: dict[str, str], n: int) -> http.HTTPFlow:
        """Send the request again through mitmproxy with new values; the copy is its own flow."""
        # not flow.copy(): that would copy the refused answer, and copying a connection costs more
        # than the rest of a retry's set-up. The client is the same one (ReplayHandler replays from a
        # copy of its own). The server is a new one, not yet connected, that mitmproxy replaces with
        # the connection it makes; it keeps the refused flow's route (`via`), which ReplayHandler sets
        # itself only when the first --mode is upstream mode.
        server = connection.Server(
            address=flow.server_conn.address,
            via=flow.server_conn.via,
            transport_protocol=flow.server_conn.transport_protocol,
        )
        copy = http.HTTPFlow(flow.client_conn, server)
        copy.request = flow.request.copy()
        copy.metadata = dict(flow.metadata)
        copy.is_replay = "request"
        copy.metadata[REPLAY_KEY] = {"of": flow.id, "attempt": n}
        apply_plan(sent.plan.dynamic, copy.request, values)
        shown = self._attempt_of(None, values).shown
        copy.comment = f"attempt {n} of flow {flow.id[:8]}, with {'token ' if TOKEN in values else ''}{shown}"
        handler = _Replay(copy, ctx.options)
        replay = asyncio.ensure_future(handler.replay())
        try:
            finished = (await asyncio.wait({replay}, timeout=self.timeout))[0]
        except asyncio.CancelledError:  # the proxy is shutting down: take the replay with us
            replay.cancel()
            raise
        if not finished:
            await _hang_up(handler, replay, copy)
            copy.error = Error(f"no whole answer within {self.timeout:g} s (retry_timeout)")
            await ctx.master.addons.trigger_event(UpdateHook([copy]))  # so mitmweb shows why
        elif not replay.cancelled() and replay.exception() is not None:
            copy.error = Error(f"the replay failed: {replay.exception()!r}")
        return copy


class _Replay(ReplayHandler):
    """mitmproxy's ReplayHandler, keeping the tasks that run its hooks, so that a hang-up can cancel
    one held in another addon's hook (mitmproxy 11 kept them per handler as `hook_tasks`; 12 keeps
    them in one set for the whole process, with no way to tell whose they are)."""

    def __init__(self, flow: http.HTTPFlow, options) -> None:
        super().__init__(flow, options)
        self.hook_runs: set[asyncio.Task] = set()

    async def hook_task(self, hook) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.hook_runs.add(task)
        try:
            await super().hook_task(hook)
        finally:
            self.hook_runs.discard(task)


async def _hang_up(handler: _Replay, replay: asyncio.Future, copy: http.HTTPFlow) -> None:
    """Stop a replay wherever it is: held in a hook (or intercepted), it is killed, so it is never
    sent; on the wire, its upstream connections are closed and mitmproxy ends it with an error."""
    copy.resume()
    if copy.killable:
        copy.kill()
    for io in handler.transports.values():
        if io.handler:
            io.handler.cancel()
    if not (await asyncio.wait({replay}, timeout=HANG_UP_GRACE))[0]:
        for task in list(handler.hook_runs):
            task.cancel()
        replay.cancel()


def _take_response(flow: http.HTTPFlow, response: http.Response) -> None:
    """Give the client the answer of the last attempt that had one (a retry's, or the flow's own when
    no retry got one), in the original flow's response object, ending now. mitmweb's time column is
    `response.timestamp_end - request.timestamp_start`: it then shows how long the client waited,
    every retry included, not how long the refusal took."""
    assert flow.response is not None
    if response is not flow.response:
        flow.response.status_code = response.status_code
        flow.response.reason = response.reason
        flow.response.headers = response.headers.copy()
        flow.response.raw_content = response.raw_content
        flow.response.trailers = response.trailers.copy() if response.trailers else None
        flow.response.timestamp_start = response.timestamp_start
    flow.response.timestamp_end = time.time()
