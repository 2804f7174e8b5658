"""The contract between the client's stream in mitmproxy's HTTP layer (addon/mitm/httplayer.py) and
the retry whose answer it is to carry (addon/recovery/replay.py): a `Handover`, made by the stream and
passed to the addon in its hooks, and what the stream needs of a retry (`RetrySource`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from mitmproxy import http

CLIENT_LEFT = "the client left"


class RetrySource(Protocol):
    """A retry in flight whose answer may be streamed to a client (addon/recovery/replay.py's Replay)."""

    flow: http.HTTPFlow

    def wake(self) -> None: ...

    def hang_up_soon(self, why: str) -> None: ...

    def forwarded_now(self) -> tuple[list[bytes], bool]: ...

    async def forwarded(self) -> tuple[list[bytes], bool, str | None]: ...


class Handover:
    """A client's stream waiting for the answer of a retry, shared by that stream (addon.mitm.httplayer
    creates it for a held answer and passes it to the addon in its hooks) and the recovery.

    The recovery sets `streaming` once a retry's answer is to be streamed to this client; the
    stream then takes what has come already (`poll`), or waits for it (`pull`, in a hook). It
    ends the client's answer when `ended` is set, or with a protocol error when `failure` is. It
    calls `client_left` when the client goes away, which hangs up the retry at once."""

    def __init__(self, flow: http.HTTPFlow, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        self.flow = flow  # the client's flow
        self.drain = drain  # waits until the client's connection has taken what it was sent (addon.mitm.httplayer)
        self.replay: RetrySource | None = None  # the retry in flight, and, once streaming, the one streamed
        self.streaming = False
        self.chunks: list[bytes] = []
        self.ended = False
        self.failure: str | None = None
        self.left: str | None = None  # the client went away (mitmproxy's reason)
        # an answer judged by its first event (addon.mitm.httplayer's FirstEventHook):
        self.head = b""  # what came of its body: the first event (or its end, or 64 KiB)
        self.unjudged: str | None = None  # why it goes on unjudged (its first event did not come in time)
        self.answered = False  # a retry answered: the client gets that answer instead, and nothing of this one

    def client_left(self, reason: str) -> None:
        if self.left is None:
            self.left = reason
            if self.replay is not None:
                self.replay.wake()
                if self.streaming:  # nobody waits on it any more: hang it up here
                    self.replay.hang_up_soon(CLIENT_LEFT)

    def stream_from(self, replay: RetrySource) -> None:
        self.replay, self.streaming = replay, True

    def take(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks

    def poll(self) -> bool:
        """Take what has come already, without waiting; False when nothing has (or the client left)."""
        if self.left is not None or self.replay is None or not self.streaming:
            return False
        chunks, ended = self.replay.forwarded_now()
        self.chunks += chunks
        if ended:
            self._end()
        return bool(chunks) or ended

    async def pull(self) -> None:
        """Wait until the client has taken what it was sent, then for more of the streamed answer:
        chunks, its end, a stall, or the client leaving."""
        assert self.replay is not None and self.streaming
        if self.drain is not None:
            try:
                await self.drain()
            except OSError as e:  # the client's connection broke: mitmproxy ends the flow
                self.client_left(str(e) or type(e).__name__)
                return
            if self.poll():
                return
        chunks, ended, failure = await self.replay.forwarded()
        self.chunks += chunks
        self.failure = failure
        if ended:
            self._end()

    def _end(self) -> None:
        assert self.replay is not None
        self.ended = True
        trailers = self.replay.flow.response.trailers if self.replay.flow.response else None
        self.flow.response.trailers = trailers.copy() if trailers else None
