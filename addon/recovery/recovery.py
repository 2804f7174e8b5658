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


The retry loop is addon/recovery/retry.py (Retrier); what the client's flow is given of a retry,
addon/recovery/streamed.py.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from addon.exits.connect import failure
from addon.exits.health import ExitHealth
from addon.mitm import httplayer
from addon.mitm.handover import Handover
from addon.recovery.firstevent import FirstEventReader, is_sse
from addon.recovery.replay import FirstEventJudge, Limits, Replay
from addon.recovery.retry import Action, Attempt, Retrier
from addon.recovery.streamed import Streams
from addon.recovery.verdict import applies, holds_for_first_event, may_retry, verdict
from addon.request.rewriter import REPLAY_KEY, Rewriter, Sent, rewritten
from addon.rules.records import DISABLE, PASS, REFRESH, ROTATE, Config
from addon.rules.template import TOKEN
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool
from addon.tokens.tokenfile import token_key
from addon.util.comment import add_note
from addon.util.masking import mask

logger = logging.getLogger(__name__)


class Recovery:
    def __init__(self, runtime: Runtime, rewriter: Rewriter) -> None:
        self.runtime = runtime
        self.rewriter = rewriter
        self.limits = Limits(headers=120.0, idle=300.0)
        self.stream_retries = False  # asked for, and addon.mitm.httplayer's check passed
        self.streams = Streams(runtime)
        self.retrier = Retrier(  # the limits as the options are now, and the judging below
            runtime, self.streams, lambda: self.limits,
            self._action, self._attempt_of, self._settled, self._first_event_judge,
        )  # fmt: skip

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
        if self.streams.ended(flow):
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
        config, response = self.runtime.config, flow.response
        if config is None or response is None or not response.stream:
            return  # (the stream tap streams every streamed answer the rules concern)
        record = rewritten(flow)
        if record is None:
            return
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
        sent = self.rewriter.take_sent(flow)  # nothing to recover: the request never got an answer
        self.streams.ended(flow)
        exit = self.runtime.exits.of_flow(flow)
        why = failure(flow) if exit is not None else None
        if exit is not None and why is not None:
            self._exit_failed(flow, exit, why, sent)

    def _exit_failed(self, flow: http.HTTPFlow, exit: ExitHealth, why: str, sent: Sent | None) -> None:
        """A request could not get through its exit: the exit's failure, no token's (a retry's copy
        counts by its flow: it has no Sent). When that rests the exit, the tokens refused through it
        meanwhile are not to blame either."""
        pool = sent.pool if sent is not None else None
        spec = pool.spec.breaker if pool is not None and pool.spec is not None else None
        key = token_key(sent.values[TOKEN]) if sent is not None and TOKEN in sent.values else flow.id
        undo = exit.failed(key, why, spec)
        for each in self.runtime.pools.values() if undo else ():
            each.tokens.restore(undo)  # (keys of other pools' tokens are passed over)
        logger.warning(f"exit {exit.spec.name}: {flow.request.method} {flow.request.pretty_url} could not get through "
                       f"{exit.spec.shown}: {why} (no token is blamed)")
        add_note(flow, f"exit {exit.spec.name} failed: {why} (no token is blamed)")

    async def _judge(self, flow: http.HTTPFlow, client: Handover | None = None) -> None:
        """Judge a client's first answer, and recover when it needs it (see `Retrier.recover` for `client`)."""
        sent = self.rewriter.take_sent(flow)
        config = self.runtime.config
        if sent is None or config is None or flow.response is None:
            return
        action = self._first_action(flow, sent, config)
        if action is not None:
            await self.retrier.recover(flow, sent, action, config, client)

    def _first_action(self, flow: http.HTTPFlow, sent: Sent, config: Config) -> Action | None:
        """What the first answer means: an action to recover with, or None to let it go to the client."""
        assert flow.response is not None
        action = self._action(config, flow.response, sent.values, sent.plan.streaming)
        if action is not None and flow.response.stream:
            # mitmproxy streamed it (stream_large_bodies, late): the client has it already
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} was "
                           "streamed to the client before it could be judged (stream_large_bodies)")
            self._passed(sent)
            return None
        if action is None:
            self._settled(sent.pool, flow.response, sent.values, sent.at, self.runtime.exits.of_flow(flow))
            return None
        missing = sorted(sent.plan.uses - sent.values.keys())
        if action.kind == ROTATE and missing:
            # a value's source failed and the request went without it: that, not the token, is the
            # likely cause, and rotating would mark good tokens refused
            names, s = " and ".join(missing), "s" if len(missing) > 1 else ""
            logger.warning(f"not retried {flow.request.pretty_url}: the {flow.response.status_code} is not blamed on "
                           f"the token, as the request went without its {names} value{s} (the {names} source{s} failed)")
            self._passed(sent)
            return None
        return action

    def _passed(self, sent: Sent) -> None:
        """A refusal goes to the client as it came, with no retry: count it."""
        self.runtime.counters.refusals[sent.counted_in, PASS] += 1

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

    def _settled(
        self, pool: Pool, response: http.Response, values: dict[str, str], sent_at: float, exit: ExitHealth | None = None
    ) -> None:
        if TOKEN in values and response.status_code < 400:
            pool.succeeded(values[TOKEN], sent_at)
            if exit is not None:
                exit.succeeded(sent_at)
