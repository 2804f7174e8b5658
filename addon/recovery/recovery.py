"""Refused requests recover by themselves: replay a refused request with the next token.

When an answer matches an `on_response` rule, the request is sent again through
mitmproxy itself (`ReplayHandler`: upstream and reverse modes, TLS options,
HTTP/2 and the other addons all apply, and each attempt is a flow of its own in
mitmweb), with only the token (and fresh values, such as the captcha) changed, or
with the same token and the values a `refresh` fetched anew. The client gets the
answer of the attempt that worked, or the last refusal when none did.

A streaming request's held answer is recovered before it is sent (in the
HeldAnswerHook of addon.mitm.httplayer), so that the answer of the retry that works
reaches the client as it arrives. Other answers are recovered in the `response`
hook and handed over whole; so are all of them with `stream_retries` off, or
when addon.mitm.httplayer finds mitmproxy's internals are not what it was written for.

A streamed answer that a `first_event` rule could retry is held only until its first event is
there (the FirstEventHook of addon.mitm.httplayer, `mitm_rules_first_event`), judged by it, and either
streams on or is recovered as a refusal, of which the client sees nothing.

A retry whose response headers do not come within `retry_timeout` seconds, or
whose body goes silent for `retry_idle_timeout` seconds, is hung up (its
upstream connections are closed); before its answer is taken that is a failed
attempt, after (mid-stream) the client's stream ends with a protocol error.

The retry is a small state machine, in the manner of httpx's auth flows:
`verdict` decides what an answer means, `_next_values` what to try next,
`_attempt` performs one try (addon/recovery/replay.py), and `max_attempts` bounds the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from addon.mitm import helpers, httplayer
from addon.mitm.handover import Handover
from addon.recovery.firstevent import FirstEventReader, is_sse
from addon.recovery.replay import FirstEventJudge, Limits, Replay
from addon.recovery.streamtap import BodyCopy, keep_copy
from addon.recovery.verdict import applies, holds_for_first_event, may_retry, retry_after, verdict
from addon.request.plan import apply_plan_off_loop
from addon.request.rewriter import REPLAY_KEY, Rewriter, Sent, rewritten
from addon.rules.records import DISABLE, REFRESH, ROTATE, Config
from addon.rules.template import TOKEN
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool
from addon.tokens.breaker import refuse_here
from addon.tokens.tokenfile import token_key
from addon.util.comment import add_note
from addon.util.masking import mask

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


class Recovery:
    def __init__(self, runtime: Runtime, rewriter: Rewriter) -> None:
        self.runtime = runtime
        self.rewriter = rewriter
        self.limits = Limits(headers=120.0, idle=300.0)
        self.stream_retries = False  # asked for, and addon.mitm.httplayer's check passed
        # client flows whose answer streams from a retry, until it ends
        self.streamed: weakref.WeakKeyDictionary[http.HTTPFlow, _Streamed] = weakref.WeakKeyDictionary()
        self._updates: set[asyncio.Task] = set()  # mitmweb updates sent from hooks that cannot wait

    def load(self, loader) -> None:
        loader.add_option(
            "retry_timeout",
            int,
            120,
            "Seconds a retry of a refused request (see on_response in the rules) may take to get "
            "its response headers. A retry that takes longer is hung up and counts as a failed "
            "attempt: the client gets the refusal it replaced. It also bounds how long a streamed answer "
            "is held for its first event (first_event in on_response): one that has not come by then goes on unjudged.",
        )
        loader.add_option(
            "retry_idle_timeout",
            int,
            300,
            "Seconds a retry's answer may go without data once its headers came. A retry that is "
            "silent for longer is hung up: before its answer is taken that is a failed attempt; "
            "when its answer is being streamed to the client, the client's stream ends with an error "
            "(no token is blamed).",
        )
        loader.add_option(
            "stream_retries",
            bool,
            True,
            "Stream the answer of a retried streaming request to the client as it arrives. This "
            "reaches into mitmproxy's HTTP layer (checked against mitmproxy 11.0.2 and 12.3.1); "
            "when it is off, or mitmproxy is not what it was written for, the retry's answer is "
            "handed over whole when it is complete.",
        )

    def configure(self, updated: set[str]) -> None:
        for name in ("retry_timeout", "retry_idle_timeout"):
            if name in updated and getattr(ctx.options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be a positive number of seconds")
        if updated & {"retry_timeout", "retry_idle_timeout"}:
            self.limits = Limits(headers=float(ctx.options.retry_timeout), idle=float(ctx.options.retry_idle_timeout))
        if "stream_retries" in updated:
            problem = httplayer.check() if ctx.options.stream_retries else None
            if problem:
                logger.warning(f"stream_retries: off, as mitmproxy {MITMPROXY_VERSION} is not what it was written for "
                               f"({problem}); a retried streaming request gets its answer whole, when it is complete")
            self.stream_retries = ctx.options.stream_retries and problem is None

    def next_layer(self, nextlayer) -> None:
        if self.stream_retries:
            httplayer.install(nextlayer)

    def responseheaders(self, flow: http.HTTPFlow, held: bool) -> None:
        """`held`: the stream tap holds this answer, as it may be retried."""
        if REPLAY_KEY in flow.metadata:
            replay = Replay.of(flow)
            if replay is not None:
                replay.response_headers()
        elif held and self.stream_retries and (record := rewritten(flow)) is not None and record.streaming:
            httplayer.hold(flow)  # recovered before it is sent: see mitm_rules_held_answer
        elif not held:
            self._hold_for_first_event(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        if REPLAY_KEY in flow.metadata:
            replay = Replay.of(flow)  # our own replays are judged by the request that made them
            if replay is not None:
                replay.response_done()
            return
        if flow in self.streamed:
            self._streamed_end(flow, self.streamed.pop(flow))
            return
        await self._judge(flow)

    async def mitm_rules_held_answer(self, handover: Handover) -> None:
        """A streaming request's held answer, before it is sent: judged and recovered here, so
        that the answer of a retry can be streamed to the client (addon.mitm.httplayer)."""
        await self._judge(handover.flow, handover)

    async def mitm_rules_relay(self, handover: Handover) -> None:
        await handover.pull()

    def _hold_for_first_event(self, flow: http.HTTPFlow) -> None:
        """A streamed answer that a `first_event` rule could refuse is held until its first event
        is there (mitm_rules_first_event); without stream_retries, held whole and judged when complete."""
        config, record, response = self.runtime.config, rewritten(flow), flow.response
        if config is None or record is None or response is None or not response.stream:
            return  # (the stream tap streams every streamed answer the rules concern)
        sse = is_sse(response.headers)
        if not (sse or record.streaming) or not holds_for_first_event(config.on_response, response.status_code,
                                                                    record.injected):  # fmt: skip
            return
        if self.stream_retries:
            httplayer.hold_first_event(flow, FirstEventReader(sse), self.limits.headers)
        else:
            response.stream = False  # the buffered fallback: judged in the response hook, by its first event

    def _first_event_judge(self, config: Config, values: dict[str, str], streaming: bool) -> FirstEventJudge:
        """How a retry's answer is judged by its first event, before it may stream to the client."""
        injected = set(values)
        return FirstEventJudge(
            holds=lambda r: (streaming or is_sse(r.headers))
            and not may_retry(config.on_response, r.status_code, injected)
            and holds_for_first_event(config.on_response, r.status_code, injected),
            refuses=lambda r: self._action(config, r, values, streaming) is not None,
        )

    async def mitm_rules_first_event(self, handover: Handover) -> None:
        """A streamed answer's first event is there, and nothing of it has been sent (addon.mitm.httplayer):
        judged by what came of it (`handover.head`), and recovered when a rule refuses it. If a retry
        answers (`handover.answered`), nothing of this answer reaches the client; otherwise it streams on."""
        flow = handover.flow
        assert flow.response is not None
        if handover.unjudged is not None:
            if self.rewriter.take_sent(flow) is not None:
                logger.warning(f"not judged {flow.request.method} {flow.request.pretty_url}: {handover.unjudged}")
                add_note(flow, f"not judged: {handover.unjudged}")
            return
        stream, body = flow.response.stream, flow.response.raw_content
        flow.response.stream, flow.response.raw_content = False, handover.head  # judged as if that were all
        try:
            await self._judge(flow, handover)
        finally:
            if not handover.answered:  # it streams on
                flow.response.stream, flow.response.raw_content = stream, body

    def error(self, flow: http.HTTPFlow) -> None:
        self.rewriter.take_sent(flow)  # nothing to recover: the request never got an answer
        if flow in self.streamed:
            self._streamed_end(flow, self.streamed.pop(flow))

    async def _judge(self, flow: http.HTTPFlow, client: Handover | None = None) -> None:
        """Judge a client's first answer, and recover when it needs it (see `_recover` for `client`)."""
        sent = self.rewriter.take_sent(flow)
        config = self.runtime.config
        if sent is None or config is None or flow.response is None:
            return
        action = self._first_action(flow, sent, config)
        if action is not None:
            await self._recover(flow, sent, action, config, client)

    def _first_action(self, flow: http.HTTPFlow, sent: Sent, config: Config) -> Action | None:
        """What the first answer means: an action to recover with, or None to let it go to the client."""
        assert flow.response is not None
        action = self._action(config, flow.response, sent.values, sent.plan.streaming)
        if action is not None and flow.response.stream:
            # mitmproxy streamed it (stream_large_bodies, late): the client has it already
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} was "
                           "streamed to the client before it could be judged (stream_large_bodies)")
            return None
        if action is None:
            self._settled(sent.pool, flow.response, sent.values, sent.at)
            return None
        missing = sorted(sent.plan.uses - sent.values.keys())
        if action.kind == ROTATE and missing:
            # a value's source failed and the request went without it: that, not the token, is the
            # likely cause, and rotating would mark good tokens refused
            names, s = " and ".join(missing), "s" if len(missing) > 1 else ""
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} is not blamed on "
                           f"the token, as the request went without its {names} value{s} (the {names} source{s} failed)")
            return None
        return action

    def _action(
        self, config: Config, response: http.Response, values: dict[str, str], streaming: bool = False
    ) -> Action | None:
        """What this answer means for a request sent with these values (None: pass it on);
        `streaming`: the request was a streaming one (see verdict)."""
        rule = verdict(config.on_response, response, streaming)
        if not applies(rule, values):
            return None
        assert rule is not None
        if rule.action in (ROTATE, DISABLE):
            return Action(ROTATE, retire=rule.action == DISABLE)
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
        source = self.runtime.values.get(name)
        return source.show(value) if source is not None else mask(value)

    def _settled(self, pool: Pool, response: http.Response, values: dict[str, str], sent_at: float) -> None:
        if TOKEN in values and response.status_code < 400:
            pool.succeeded(values[TOKEN], sent_at)

    async def _recover(
        self, flow: http.HTTPFlow, sent: Sent, action: Action, config: Config, client: Handover | None = None
    ) -> None:
        """Retry until an answer needs no retry, or attempts or tokens run out. With `client` (the
        client's stream waits in addon.mitm.httplayer), an answer that cannot be a refusal is streamed to
        it as it comes."""
        pool = sent.pool  # the pool of the request's token
        max_attempts = pool.spec.max_attempts if pool.spec is not None else DEFAULT_MAX_ATTEMPTS
        assert flow.response is not None
        attempts = [self._attempt_of(flow.response.status_code, sent.values)]
        last: http.Response = flow.response
        values = sent.values
        tried = {values[TOKEN]} if TOKEN in values else set()
        outcome = ""
        streamed: Replay | None = None
        previous = flow  # the flow whose answer `last` is
        while True:
            if action.kind == ROTATE:
                if pool.breaker.is_open:
                    outcome = "the breaker is open: refusals go to the client as they are"
                    break
                self._refused(pool, values[TOKEN], last, action.retire)
                if pool.breaker.is_open:
                    outcome = "this refusal opened the breaker"
                    break
            if _client_gone(flow, client):  # no retry for nobody: it would only cool more tokens
                outcome = "the client left"
                break
            if len(attempts) >= max_attempts:
                outcome = f"gave up after {max_attempts} attempts"
                break
            next_values = await self._next_values(pool, action, values, tried)
            if isinstance(next_values, str):
                outcome = next_values
                break
            if len(attempts) == 1:
                self._show_refused(flow, attempts[0])
            values = next_values
            sent_at = time.time()
            replay = await self._attempt(flow, sent, values, len(attempts) + 1, config, client, pool)
            if replay.failure is not None or replay.flow.response is None:
                attempts.append(self._attempt_of(None, values, action.refresh))
                outcome = f"attempt {len(attempts)} failed: {replay.failure}"
                break
            if last is not flow.response:  # the refusal before this answer goes to nobody: mitmweb keeps a copy
                self._keep_little(previous)
            last, previous = replay.flow.response, replay.flow
            attempts.append(self._attempt_of(last.status_code, values, action.refresh))
            if replay.streaming:  # it cannot be a refusal (see may_retry): it goes to the client as it comes
                streamed, action = replay, None
            else:
                action = self._action(config, last, values, sent.plan.streaming)
            if action is None:
                self._settled(pool, last, values, sent_at)
                break
        recovered = action is None and len(attempts) > 1
        summary = " → ".join(a.describe() for a in attempts)
        if streamed is not None:
            assert client is not None
            await self._stream_from(flow, client, streamed, summary)
            return
        if len(attempts) > 1:
            _take_response(flow, last)
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

    async def _stream_from(self, flow: http.HTTPFlow, client: Handover, replay: Replay, summary: str) -> None:
        """The client gets this retry's status and headers now and its body as it comes; the
        attempts line is written when the stream ends (`_streamed_end`)."""
        assert flow.response is not None and replay.flow.response is not None
        _take_head(flow, replay.flow.response)
        flow.response.stream = BodyCopy(self.runtime.stream_copy_limit)  # the copy mitmweb shows, as for any stream
        flow.marked = ":repeat:"
        replay.flow.comment += f"; its body went to flow {flow.id[:8]} as it came"
        self.streamed[flow] = _Streamed(summary, replay, client)
        client.stream_from(replay)
        await helpers.update([flow])  # mitmweb shows the answer that worked

    def _streamed_end(self, flow: http.HTTPFlow, streamed: _Streamed) -> None:
        """A recovered stream ended: whole (the response hook), or with an error (the error hook).
        An error is not a break when the client hung up once it had what it wanted: the upstream's
        answer was complete, or an SSE `data: [DONE]` had gone to it (the `openai` SDK, for one,
        closes the response as soon as it reads that event)."""
        where, summary = f"{flow.request.method} {flow.request.pretty_url}", streamed.summary
        copy = keep_copy(flow) if flow.response is not None else None  # on error, no response hook keeps it
        if flow.error is not None and not streamed.replay.complete:  # (killed, say): nobody reads the retry on
            streamed.replay.hang_up_soon("the client's flow ended")
        if flow.error is None:
            logger.info(f"recovered {where}: {summary} (streamed)")
            note = f"attempts: {summary} (streamed)"
        elif streamed.replay.complete or (streamed.client.left is not None and copy is not None and copy.done):
            why = "its answer was complete" if streamed.replay.complete else "it had the stream's data: [DONE]"
            logger.info(f"recovered {where}: {summary} (streamed; the client hung up once {why})")
            note = f"attempts: {summary} (streamed; the client hung up once {why})"
            flow.error = None  # not a broken stream: mitmweb shows the answer that worked
            self._update_later(flow)
        else:
            flow.marked = ""
            logger.warning(f"recovered {where}, then its stream broke off: {summary} ({flow.error.msg})")
            note = f"attempts: {summary} (streamed; {flow.error.msg})"
        if flow.response is not None:
            flow.response.timestamp_end = time.time()  # mitmweb's time: as long as the client waited
        add_note(flow, note)

    def _update_later(self, flow: http.HTTPFlow) -> None:
        """Tell mitmweb a flow changed, from a hook that cannot wait (the error hook)."""
        task = asyncio.get_running_loop().create_task(helpers.update([flow]))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    def _refused(self, pool: Pool, token: str, response: http.Response, retire: bool = False) -> None:
        tokens, key, wait = pool.tokens, token_key(token), retry_after(response)
        was_retired = key in tokens.health and tokens.health[key].retired_at > 0
        # judged here at once; and, with a shared store, there for all (its answer comes in the background)
        marked = refuse_here(tokens, pool.breaker, token, wait, retire)
        if pool.shared is not None:
            pool.shared.refused(token, wait, retire)
        health = tokens.health.get(key)
        if pool.breaker.is_open or health is None:  # (an opened breaker says so itself)
            return
        if health.retired_at and not was_retired:  # once: by the proxy whose refusal retired it
            logger.warning(f"{pool.label}: {mask(token)} retired ({health.retired_reason}, the last {response.status_code}); "
                           f"it is not used again until tokens.enable {mask(token)}")
        elif marked:
            until = health.cooling_until - tokens.clock()
            logger.info(f"{pool.label}: {mask(token)} refused ({response.status_code}); passed over for {until:.0f} s")

    async def _next_values(
        self, pool: Pool, action: Action, values: dict[str, str], tried: set[str]
    ) -> dict[str, str] | str:
        """The values for the next attempt, or why there are none (and then no value is fetched
        for a retry that will not be sent).

        rotate: another token, and fresh values from the commands the request used (a file or the
        environment gives what it holds now); a source that fails leaves its old value. refresh:
        the same token, and a new value for each value to refresh; if one cannot be had (its source
        fails, or a file does not change within its wait), no retry, and no token is blamed.
        """
        if action.kind == ROTATE and not pool.tokens.has_replacement(values[TOKEN], exclude=tried):
            return "no other token to try"
        new = dict(values)
        names = sorted(action.refresh) if action.kind == REFRESH else sorted(n for n in values if n != TOKEN)
        sources = [self.runtime.values[n] for n in names if n in self.runtime.values]
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
            token = pool.tokens.replacement(values[TOKEN], exclude=tried)
            if token is None:
                return "no other token to try"
            tried.add(token)
            new[TOKEN] = token
        return new

    async def _attempt(
        self, flow: http.HTTPFlow, sent: Sent, values: dict[str, str], n: int, config: Config, client: Handover | None,
        pool: Pool,
    ) -> Replay:
        """Send the request again through mitmproxy with new values; the copy is its own flow.
        With `client`, an answer that cannot be a refusal is streamed to it (see Replay)."""
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
        sessions = pool.sessions
        await apply_plan_off_loop(sent.plan.dynamic, copy.request, sessions.applied(values))  # a large body: in the worker
        sessions.carried(copy, sent.plan.token_cookies, values)
        shown = self._attempt_of(None, values).shown
        copy.comment = f"attempt {n} of flow {flow.id[:8]}, with {'token ' if TOKEN in values else ''}{shown}"
        injected = set(values)
        streamable = lambda r: not may_retry(config.on_response, r.status_code, injected)  # noqa: E731
        judge = self._first_event_judge(config, values, sent.plan.streaming)
        replay = Replay(copy, self.limits, client, streamable, gone=lambda: _client_gone(flow, client), first_event=judge)
        httplayer.on_departure(flow, replay.wake)  # a client that leaves hangs up the retry at once
        try:
            await replay.run()
        finally:  # (the callback holds the replay, which holds the flow: it must not outlive the wait)
            httplayer.on_departure(flow, None)
        return replay


def _client_gone(flow: http.HTTPFlow, client: Handover | None) -> bool:
    """Has the client left this request: closed its connection, or (as mitmproxy's HTTP layer saw it,
    addon.mitm.httplayer) reset its HTTP/2 stream?"""
    if (client is not None and client.left is not None) or httplayer.departed(flow):
        return True
    return not flow.is_replay and not flow.client_conn.connected  # (a replay from mitmweb has no client waiting)


@dataclass(frozen=True)
class _Streamed:
    """A client's stream that a retry's answer goes to, until it ends."""

    summary: str  # the attempts line
    replay: Replay
    client: Handover


def _take_head(flow: http.HTTPFlow, response: http.Response) -> None:
    """Give the client the status and headers of another attempt, whose body is streamed after them."""
    assert flow.response is not None
    flow.response.http_version = response.http_version
    flow.response.status_code = response.status_code
    flow.response.reason = response.reason
    flow.response.headers = response.headers.copy()
    flow.response.raw_content = b""  # not the refusal's: the body streams (and a capped copy is kept)
    flow.response.timestamp_start = response.timestamp_start


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
