"""The response side: stream Server-Sent Events to the client as they come.

mitmproxy buffers every response body unless told to stream it (mitmproxy
issue #4469), which turns a streamed chat completion into one late lump. For
flows the rules touched, responses that are `text/event-stream`, and every
response to a streaming request, are streamed chunk by chunk; a copy of the
first `stream_copy_limit` bytes is kept on the flow so mitmweb can show it.
An answer that may be retried (see `on_response`) is held until it is judged;
the answer of a retry that works is streamed to the client as it comes when the
request was a streaming one (addon/recovery/streamed.py, addon/mitm/httplayer.py). A streamed
answer that only a `first_event` rule could retry is streamed here like any other;
the recovery then holds it until its first event is judged.
"""

from __future__ import annotations

import re
import time

from mitmproxy import http

from addon.recovery.firstevent import is_sse
from addon.recovery.verdict import may_retry
from addon.request.rewriter import REPLAY_KEY, rewritten
from addon.runtime.loader import Runtime
from addon.util.comment import add_note


# the event that ends an OpenAI-style SSE stream: clients such as the `openai` SDK hang up once they have it
_DONE = re.compile(rb"(?:^|\n)data: ?\[DONE\]\r?\n")
_DONE_TAIL = 16  # bytes of the chunk before kept, so that an event cut in two is still found


class BodyCopy:
    """A response `stream` callable: passes chunks through unchanged, keeping a capped copy, and
    noting whether an SSE `data: [DONE]` event went through (`done`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.seen = 0
        self.done = False
        self._tail = b"\n"

    def __call__(self, chunk: bytes) -> bytes:
        self.seen += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        if chunk and not self.done:
            self.done = _DONE.search(self._tail + chunk) is not None
            self._tail = (self._tail + chunk)[-_DONE_TAIL:]
        return chunk


def keep_copy(flow: http.HTTPFlow) -> BodyCopy | None:
    """A streamed answer ended (whole, or broken off): the flow's body becomes the copy kept for
    mitmweb, with a note when the copy is not all of it. Returns the copy (None: none was kept)."""
    assert flow.response
    tap = flow.response.stream
    if not isinstance(tap, BodyCopy):
        return None
    flow.response.raw_content = bytes(tap.kept)
    flow.response.stream = True  # done: let the copy go, but say the body was streamed
    if tap.seen > len(tap.kept):
        note = f"streamed body: {tap.seen} bytes, the first {len(tap.kept)} kept"
        if "content-encoding" in flow.response.headers:
            note += " (compressed, so the part kept may not decode)"
        add_note(flow, note)
    return tap


def first_byte_after(flow: http.HTTPFlow) -> float:
    """Seconds from the client's request to its answer's first byte, if that byte leaves now."""
    return max(0.0, time.time() - flow.request.timestamp_start)


class StreamTap:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def responseheaders(self, flow: http.HTTPFlow) -> bool:
        """Stream the answer, or not; True when it is held because it may be retried."""
        assert flow.response
        record = rewritten(flow)
        if record is None:
            return False
        config = self.runtime.config
        if REPLAY_KEY in flow.metadata or flow.response.stream:
            return False  # a replay's answer goes on by the request that made it (addon/recovery/replay.py)
        if config and may_retry(config.on_response, flow.response.status_code, record.injected):
            return True  # held: the client must not see any of it before it is judged
        sse = is_sse(flow.response.headers)
        if sse or record.streaming:
            # its first bytes, the status line and headers, leave for the client now
            self.runtime.counters.first_event_seconds[False].observe(first_byte_after(flow))
            # mitmproxy 12.1+ keeps a streamed body itself when asked (store_streamed_bodies): a copy
            # of ours would only replace its whole body with the first stream_copy_limit bytes
            flow.response.stream = True if self.runtime.mitmproxy_stores_streamed else BodyCopy(self.runtime.stream_copy_limit)
        return False

    def response(self, flow: http.HTTPFlow) -> None:
        keep_copy(flow)
