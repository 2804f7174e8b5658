"""One retry in flight, and the client's stream its answer may go to.

A retry is sent through mitmproxy's own `ReplayHandler`, and its answer is watched as it
arrives, through the retry flow's `response.stream` (mitmproxy's public way to see a body
chunk by chunk). Its headers must come within `retry_timeout` seconds of sending; then its
body may not go silent for more than `retry_idle_timeout`. The body is either held whole (it
may be a refusal to judge, or the client's answer is not streamed), or forwarded as it comes
to the client's stream waiting for it (a `Handover`, addon/mitm/handover.py). An answer that a
`first_event` rule may refuse is held until its first event is there (`FirstEventJudge`): then it
streams, or, refused, it is held whole (and judged whole by the recovery). A streamed answer is read
no faster than the client takes it (`room`; the handler, addon/mitm/replayhandler.py, waits in it).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from mitmproxy import ctx, http
from mitmproxy.flow import Error

from addon.mitm import helpers
from addon.mitm.handover import CLIENT_LEFT, Handover
from addon.mitm.replayhandler import RetryHandler
from addon.recovery.firstevent import FirstEventReader, is_sse

HANG_UP_GRACE = 5.0  # seconds a hung-up replay gets to wind down before its task is cancelled
FORWARD_BUFFER = 1 << 20  # bytes of a streamed retry's answer read ahead of the client; past it, reading waits


@dataclass(frozen=True)
class Limits:
    headers: float  # seconds from sending a retry to its response headers (retry_timeout)
    idle: float  # seconds a retry's body may go without data (retry_idle_timeout)


class FirstEventJudge(NamedTuple):
    """How a retry's answer that may be refused by its first event is judged before it may stream."""

    holds: Callable[[http.Response], bool]  # is this answer judged by its first event?
    refuses: Callable[[http.Response], bool]  # does a rule refuse it, by what came of its body?


class Replay:
    """One retry: a copy of the client's flow sent through mitmproxy, its answer watched as it comes.

    `run` sends it and waits for its answer: the headers, then, unless the answer is streamed to
    the client (`streaming`), the whole body. `failure` says why there is no usable answer; the
    retry is then hung up. The retry flow's hooks reach it through `Replay.of(flow)`."""

    # by flow id, weakly: a replay lives as long as the recovery that waits for it
    _running: weakref.WeakValueDictionary[str, Replay] = weakref.WeakValueDictionary()

    def __init__(
        self,
        flow: http.HTTPFlow,
        limits: Limits,
        client: Handover | None = None,
        streamable: Callable[[http.Response], bool] = lambda response: False,
        gone: Callable[[], bool] = lambda: False,
        first_event: FirstEventJudge | None = None,
    ) -> None:
        self.flow = flow
        self.limits = limits
        self.client = client  # the client's stream, when the answer may be streamed to it
        self.gone = gone  # has the client left? (then the retry is not sent, or is hung up: `wake` tells it)
        self.streamable = streamable  # would this answer be streamed to the client?
        self.first_event = first_event
        self._reader: FirstEventReader | None = None  # reading the answer's first event, to judge it
        self.handler = RetryHandler(flow, ctx.options, room=self.room)
        self.task: asyncio.Future | None = None
        self.streaming = False
        self.too_large = False
        self.failure: str | None = None
        self.complete = False  # the retry flow's response hook ran: the body is all there
        self.sent_at = self.data_at = 0.0  # loop time of sending, and of the last data
        self.headers_seen = False
        self._body = bytearray()  # held
        self._pending: list[bytes] = []  # forwarded, not yet taken by the client's stream
        self._pending_bytes = 0
        self._changed = asyncio.Event()
        self._hanging_up: asyncio.Future | None = None

    @classmethod
    def of(cls, flow: http.HTTPFlow) -> Replay | None:
        return cls._running.get(flow.id)

    def wake(self) -> None:
        self._changed.set()

    # the retry flow's hooks

    def response_headers(self) -> None:
        response = self.flow.response
        assert response is not None
        self.headers_seen = True
        self.data_at = _now()
        if self.client is not None and self.first_event is not None and self.first_event.holds(response):
            self._reader = FirstEventReader(is_sse(response.headers))
            response.stream = self._until_first_event
        elif self.client is not None and self.streamable(response):
            self.streaming = True
            self.handler.streams = True
            response.stream = self._forward
        elif response.stream:
            self.too_large = True  # mitmproxy streams it by size (stream_large_bodies): it cannot be held
        else:
            response.stream = self._hold
        self.wake()

    def response_done(self) -> None:
        response = self.flow.response
        assert response is not None
        if self._reader is not None:  # it ended before its first event was there
            self._reader.end()
            self._judge_first_event()
        if not self.streaming and not self.too_large:
            response.raw_content = bytes(self._body)
            response.stream = False
            self._body = bytearray()
        self.complete = True
        self.wake()

    def _hold(self, chunk: bytes) -> bytes:
        self._body += chunk
        self.data_at = _now()
        return b""  # nothing goes on to mitmproxy's stand-in client of the replay

    def _until_first_event(self, chunk: bytes) -> bytes:
        self._body += chunk
        self.data_at = _now()
        if chunk and self._reader is not None and self._reader.feed(chunk):
            self._judge_first_event()
        return b""

    def _judge_first_event(self) -> None:
        """Judge the answer by what came of it: refused, it is held whole; else it streams to the client."""
        response = self.flow.response
        assert response is not None and self.first_event is not None
        self._reader = None
        body, response.raw_content = response.raw_content, bytes(self._body)
        refused = self.first_event.refuses(response)
        response.raw_content = body
        if refused:
            response.stream = self._hold
        else:
            self.streaming = self.handler.streams = True
            if self._body:
                self._pending.append(bytes(self._body))
                self._pending_bytes += len(self._body)
            self._body = bytearray()
            response.stream = self._forward
        self.wake()

    def _forward(self, chunk: bytes) -> bytes:
        if chunk and not self._left():  # (for a client that left, nothing is kept: the retry is being hung up)
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            self.data_at = _now()
            self.wake()
        return b""

    async def room(self) -> None:
        """Wait until the client's stream has taken what came (but FORWARD_BUFFER bytes), so that the
        retry's upstream is read no faster than the client reads, as mitmproxy does for any stream."""
        while self._pending_bytes > FORWARD_BUFFER and not self._over():
            self._changed.clear()
            await self._changed.wait()

    def _take(self) -> list[bytes]:
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        self.wake()  # room for more
        return chunks

    # waiting

    async def run(self) -> None:
        """Send the retry, then wait for its answer (see the class); sets `failure` when there is none."""
        if self._left():
            self.failure = CLIENT_LEFT  # not sent at all
            return
        Replay._running[self.flow.id] = self
        if self.client is not None:
            self.client.replay = self  # told when the client leaves
        self.sent_at = self.data_at = _now()
        self.task = asyncio.ensure_future(self.handler.replay())
        self.task.add_done_callback(lambda _: self.wake())
        try:
            self.failure = await self._answer()
        except asyncio.CancelledError:  # the proxy is shutting down: take the replay with us
            self.task.cancel()
            raise
        if self.client is not None and self.failure is None and self.flow.response is not None:
            self.client.answered = True  # (the recovery gives the client this answer, or a later one)

    async def _answer(self) -> str | None:
        limits = self.limits
        if not await self._until(lambda: self.headers_seen or self._over(), limits.headers, lambda: self.sent_at):
            return await self.hang_up(f"no response headers within {limits.headers:g} s (retry_timeout)")
        if self._left():
            return await self.hang_up(CLIENT_LEFT)
        if not self.headers_seen:
            return self._ended_why()
        if self.too_large:
            return await self.hang_up("the answer was too large to hold (stream_large_bodies)")
        if self.streaming:
            return None
        if self._reader is not None:  # held for its first event: that, too, within retry_timeout of the headers
            headers_at = _now()
            first = lambda: self._over() or self._reader is None  # noqa: E731
            if not await self._until(first, limits.headers, lambda: headers_at):
                return await self.hang_up(f"its first event did not come within {limits.headers:g} s (retry_timeout)")
            if self.streaming:
                return None
        # (an answer judged by its first event may start streaming meanwhile)
        if not await self._until(lambda: self._over() or self.streaming, limits.idle, lambda: self.data_at):
            return await self.hang_up(f"no data for {limits.idle:g} s (retry_idle_timeout)")
        if self._left():
            return await self.hang_up(CLIENT_LEFT)
        return None if self.complete or self.streaming else self._ended_why()

    async def forwarded(self) -> tuple[list[bytes], bool, str | None]:
        """What came of a streamed answer since the last call, once something did: (chunks, ended, failure)."""
        ready = lambda: bool(self._pending) or self.complete or self._over()  # noqa: E731
        if not await self._until(ready, self.limits.idle, lambda: self.data_at):
            return [], False, await self.hang_up(f"no data for {self.limits.idle:g} s (retry_idle_timeout)")
        if self._left():
            return [], False, await self.hang_up(CLIENT_LEFT)
        chunks = self._take()
        if self.complete:
            return chunks, True, None
        if chunks:
            return chunks, False, None
        return [], False, self._ended_why()

    def forwarded_now(self) -> tuple[list[bytes], bool]:
        """What came of a streamed answer since the last call, without waiting: (chunks, ended)."""
        return self._take(), self.complete

    async def _until(self, ready: Callable[[], bool], limit: float, since: Callable[[], float]) -> bool:
        """Wait until `ready()`; False when `limit` seconds pass after `since()` first."""
        while not ready():
            remaining = since() + limit - _now()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return True

    def _left(self) -> bool:
        return (self.client is not None and self.client.left is not None) or self.gone()

    def _over(self) -> bool:
        """The replay ended, or the client it was for left."""
        return self._left() or (self.task is not None and self.task.done())

    def _ended_why(self) -> str:
        """Why a replay that ended gave no (whole) answer."""
        assert self.task is not None and self.task.done()
        if self.flow.error:
            return self.flow.error.msg
        if not self.task.cancelled() and self.task.exception() is not None:
            return f"the replay failed: {self.task.exception()!r}"
        return "the replay ended without a whole answer"

    def hang_up_soon(self, why: str) -> None:
        """`hang_up`, from code that cannot wait for it."""
        if self._hanging_up is None and self.task is not None and not self.task.done():
            self._hanging_up = asyncio.ensure_future(self.hang_up(why))

    async def hang_up(self, why: str) -> str:
        """Stop the replay wherever it is: held in a hook (or intercepted), it is killed, so it is
        never sent; on the wire, its upstream connections are closed and mitmproxy ends it with an
        error. Its flow's error says why (and mitmweb shows it); returns `why`. A replay that has
        ended already is left as it is."""
        assert self.task is not None
        if self.task.done():
            return why
        flow = self.flow
        flow.resume()
        if flow.killable:
            flow.kill()
        self.handler.cut_connections()
        if not (await asyncio.wait({self.task}, timeout=HANG_UP_GRACE))[0]:
            self.handler.cancel_hooks()
            self.task.cancel()
        flow.error = Error(why)
        await helpers.update([flow])
        return why


def _now() -> float:
    return asyncio.get_running_loop().time()
