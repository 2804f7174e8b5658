"""The first event of a streamed answer: what an `on_response` rule's `first_event` regex searches.

A streamed answer is one to a streaming request, or any `text/event-stream` answer. Of a
`text/event-stream` answer, the first event is its first event block that carries data: the block's
lines as they came (`event:`, `data:`, `id:`, comments), joined by "\\n", without the blank line that
ends it. Blocks with no `data` line before it (comments sent as keep-alives, a lone `retry:`) are
skipped, as a browser's EventSource skips them. Of any other streamed answer, it is the first 64 KiB.
A stream that ends before that is judged by what came: an unfinished block with data is its first
event, and a stream that brought none is the empty string (`^$` matches it). A first event longer
than 64 KiB is judged by its first 64 KiB. The bytes are judged as they came (decoded as UTF-8, a
bad byte replaced): a compressed stream is not decoded.
"""

from __future__ import annotations

import re

from mitmproxy import http

from addon.util.fields import header_value

FIRST_EVENT_LIMIT = 64 * 1024  # bytes of a stream read at most before it is judged

_LINE_END = re.compile(rb"\r\n|\r|\n")


def is_sse(headers: http.Headers) -> bool:
    return (header_value(headers, b"content-type") or "").lower().startswith("text/event-stream")


class FirstEventReader:
    """Reads the start of a stream chunk by chunk until its first event is there (`done`); `text`
    is then what a `first_event` regex searches. Each byte is looked at once."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.done = False
        self.text = ""
        self.size = 0  # bytes read (at most FIRST_EVENT_LIMIT)
        self._pending = bytearray()  # SSE: the unfinished line; otherwise everything read
        self._block: list[bytes] = []  # SSE: the lines of the unfinished block
        self._has_data = False

    def feed(self, chunk: bytes) -> bool:
        """Read a chunk; True once the first event is there (the rest of the chunk is not needed)."""
        if self.done:
            return True
        chunk = chunk[: FIRST_EVENT_LIMIT - self.size]
        self.size += len(chunk)
        if self.sse and (_LINE_END.search(chunk) or self._pending.endswith(b"\r")):
            data, start = bytes(self._pending + chunk), 0
            self._pending.clear()
            for end in _LINE_END.finditer(data):
                if end.group() == b"\r" and end.end() == len(data):
                    break  # it may be the first half of a \r\n
                if self._line(data[start : end.start()]):
                    return True
                start = end.end()
            self._pending += data[start:]
        else:
            self._pending += chunk
        if self.size >= FIRST_EVENT_LIMIT:
            self._finish(self._unfinished())
        return self.done

    def end(self) -> None:
        """The stream ended: what came is all there is."""
        if self.done:
            return
        if not self.sse:
            self._finish(bytes(self._pending))
            return
        if self._pending.rstrip(b"\r"):
            self._line(bytes(self._pending.rstrip(b"\r")))
        if not self.done:
            self._finish(b"\n".join(self._block) if self._has_data else b"")

    def _line(self, line: bytes) -> bool:
        if line:
            self._block.append(line)
            self._has_data = self._has_data or line == b"data" or line.startswith(b"data:")
            return False
        if self._has_data:  # a blank line ends the block: the first event, if it has data
            self._finish(b"\n".join(self._block))
            return True
        self._block.clear()
        return False

    def _unfinished(self) -> bytes:
        if not self.sse:
            return bytes(self._pending)
        return b"\n".join([*self._block, bytes(self._pending)] if self._pending else self._block)

    def _finish(self, text: bytes) -> None:
        self.done = True
        self.text = text.decode("utf-8", errors="replace")


def first_event(body: bytes, sse: bool) -> str:
    """The first event of a whole body (an answer held to its end)."""
    reader = FirstEventReader(sse)
    reader.feed(body)
    reader.end()
    return reader.text
