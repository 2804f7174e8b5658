"""What the client's flow is given of a retry: its whole answer (`take_response`), or its status and
headers now and its body as it streams from the retry (`Streams`, until the stream ends)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mitmproxy import http

from addon.mitm import helpers
from addon.mitm.handover import Handover
from addon.recovery.replay import Replay
from addon.recovery.streamtap import BodyCopy, first_byte_after, keep_copy
from addon.runtime.loader import Runtime
from addon.util.comment import add_note
from addon.util.flowmap import FlowMap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Streamed:
    """A client's stream that a retry's answer goes to, until it ends."""

    summary: str  # the attempts line
    replay: Replay
    client: Handover


class Streams:
    """The client's streams that a retry's answer goes to, from `stream_from` until each ends (`ended`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # client flows whose answer streams from a retry, until it ends
        self.streamed: FlowMap[http.HTTPFlow, _Streamed] = FlowMap()
        self._updates: set[asyncio.Task] = set()  # mitmweb updates sent from hooks that cannot wait

    async def stream_from(self, flow: http.HTTPFlow, client: Handover, replay: Replay, summary: str) -> None:
        """The client gets this retry's status and headers now and its body as it comes; the
        attempts line is written when the stream ends (`ended`)."""
        assert flow.response is not None and replay.flow.response is not None
        _take_head(flow, replay.flow.response)
        self.runtime.counters.first_event_seconds[True].observe(first_byte_after(flow))
        flow.response.stream = BodyCopy(self.runtime.stream_copy_limit)  # the copy mitmweb shows, as for any stream
        flow.marked = ":repeat:"
        replay.flow.comment += f"; its body went to flow {flow.id[:8]} as it came"
        self.streamed[flow] = _Streamed(summary, replay, client)
        client.stream_from(replay)
        await helpers.update([flow])  # mitmweb shows the answer that worked

    def ended(self, flow: http.HTTPFlow) -> bool:
        """Is this a client's flow whose answer streamed from a retry? Then its stream ended (see `_end`)."""
        if not self.streamed or flow not in self.streamed:
            return False
        self._end(flow, self.streamed.pop(flow))
        return True

    def _end(self, flow: http.HTTPFlow, streamed: _Streamed) -> None:
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


def _take_head(flow: http.HTTPFlow, response: http.Response) -> None:
    """Give the client the status and headers of another attempt, whose body is streamed after them."""
    assert flow.response is not None
    flow.response.http_version = response.http_version
    flow.response.status_code = response.status_code
    flow.response.reason = response.reason
    flow.response.headers = response.headers.copy()
    flow.response.raw_content = b""  # not the refusal's: the body streams (and a capped copy is kept)
    flow.response.timestamp_start = response.timestamp_start


def take_response(flow: http.HTTPFlow, response: http.Response) -> None:
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
