"""Streaming a retry's answer to the client: the one module that touches mitmproxy's private HTTP layer.

mitmproxy has no public way to send a client a response body that comes from another flow: once
a flow's `response` hook has run, its body is what the client gets. So that the answer of a
retry can reach the client as it arrives, this module steps into the HTTP layer of mitmproxy's
proxy core, for flows the addon marks with `hold()`, and nowhere else in the addon does.

- `install(nextlayer)`, from a `next_layer` hook: mitmproxy's own NextLayer addon is asked to
  choose the layers for the connection first (scripts run before it); each `HttpLayer` among them
  then becomes a `RelayingHttpLayer`, whose `make_stream` makes its streams as `RelayingHttpStream`s.
- When a held answer's body is complete, the stream's `send_response` yields `HeldAnswerHook`, a
  blocking hook of the addon's own, with a `Handover` (addon/mitm/handover.py). The addon judges the
  answer and recovers within that hook, through mitmproxy's ReplayHandler as before. If a retry's
  answer is to be streamed, the addon copies its status and headers onto the client's response
  and sets `handover.streaming`; the stream sends the headers, then takes what has come of the
  body, and when nothing has, yields `RelayHook` to wait for the next piece (its argument is the
  handover, not the flow, so mitmweb is not updated per chunk). It sends each chunk on as it comes
  (through the response's `stream` callable, as mitmproxy does), and ends with mitmproxy's own
  `send_response(already_streamed=True)`: the `response` hook, trailers and the end of the flow
  run as for any streamed answer.
- The client leaving: a layer that waits for a blocking command queues the events that arrive
  meanwhile (`Layer._paused_event_queue`, which make_stream makes a `_DepartureWatch`); the stream
  sees a `RequestProtocolError` as it arrives (there, or in `handle_protocol_error`), tells the
  handover (which hangs up the retry at once), and after each hook `check_killed`, which looks for
  it in that queue, ends the flow as mitmproxy does.
- A retry that breaks off mid-stream ends the client's stream through `handle_protocol_error` with
  a `ResponseProtocolError`: on HTTP/1 the connection closes before the last chunk (a truncated
  chunked body), on HTTP/2 the stream is reset.
- A streamed answer judged by its first event (`hold_first_event()`, from the responseheaders
  hook, where the addon has set the response's `stream`): `start_response_stream` does not send
  the headers; the stream reads the body (`state_first_event`) until its first event is there, or
  its end, or 64 KiB (addon/recovery/firstevent.py), with a `RequestWakeup` of `retry_timeout` seconds as
  the bound, then yields `FirstEventHook` with what came (`handover.head`). If the answer passes,
  mitmproxy's own `start_response_stream` sends the headers, what came goes through
  `state_stream_response_body` chunk by chunk as it came, and the rest streams as any streamed
  answer. If a retry answered instead (`handover.answered`), the refused answer's upstream is cut
  (a `RequestProtocolError` sent to the server: HTTP/1 closes the connection, HTTP/2 resets the
  stream), whatever more of it comes is dropped (`_handle_held_event`, the hold's `_handle_event`),
  and the client gets the retry's answer streamed (`_relay`) or whole. An answer that ends without
  a body at all is judged the same way, from `send_response`.

Longer than 300 lines: one subclass of mitmproxy's HttpStream, whose states (held whole, waiting for
the first event, judging it, relaying a retry) hand the stream over to each other and share its
private fields; split apart, each part would reach into the others. The internals it uses, and the
check that they are as expected, are in addon/mitm/versioncheck.py.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mitmproxy import ctx, http

from addon.mitm import versioncheck
from addon.mitm.handover import Handover

from addon.mitm.versioncheck import (  # mitmproxy's internals, imported there once (stand-ins when they are missing)
    ConnectionHandler,
    ConnectionIO,
    HttpLayer,
    HttpStream,
    Layer,
    RequestProtocolError,
    RequestWakeup,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    ResponseTrailers,
    SendHttp,
    ServerManager,
    Start,
    StartHook,
    Wakeup,
)

CLIENT_BACKLOG = 1 << 20  # bytes sent to a client but not yet on its socket; past it, the relay waits for it

_held: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
_departed: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()  # flows whose client left (closed, or reset the stream)
_on_departure: weakref.WeakKeyDictionary[http.HTTPFlow, Callable[[], None]] = weakref.WeakKeyDictionary()
# streamed answers to hold until their first event: (the reader of their body, seconds to wait at most)
_first_event: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[FirstEventSource, float]] = weakref.WeakKeyDictionary()
_broken_off_code: object = None  # the ResponseProtocolError code for a retry that broke off; set by check()
_cut_code: object = None  # the RequestProtocolError code that cuts a refused answer's upstream; set by check()


def hold(flow: http.HTTPFlow) -> None:
    """Once this held answer is complete, hand it to the addon (HeldAnswerHook) before it is sent."""
    _held.add(flow)


def departed(flow: http.HTTPFlow) -> bool:
    """Did the client of this flow leave it (closed its connection or reset its HTTP/2 stream), as
    mitmproxy's HTTP layer saw it? Known for the connections `install` reached, but not once mitmproxy
    passes a stream through (a CONNECT tunnel, a protocol upgrade): no retry or held answer is then
    left to hang up."""
    return flow in _departed


def on_departure(flow: http.HTTPFlow, callback: Callable[[], None] | None) -> None:
    """Call `callback` (once) when the client of this flow leaves it; None: no longer."""
    if callback is None:
        _on_departure.pop(flow, None)
    else:
        _on_departure[flow] = callback


class FirstEventSource(Protocol):
    """Reads a streamed answer's body until its first event is there (addon/recovery/firstevent.py)."""

    def feed(self, chunk: bytes) -> bool: ...  # True: the first event is there

    def end(self) -> None: ...  # the body ended


def hold_first_event(flow: http.HTTPFlow, reader: FirstEventSource, timeout: float) -> None:
    """Send nothing of this streamed answer until `reader` has its first event (or `timeout` seconds
    have passed); then hand it to the addon (FirstEventHook)."""
    _first_event[flow] = (reader, timeout)


def first_event_held(flow: http.HTTPFlow) -> tuple[FirstEventSource, float] | None:
    """The reader and time limit this flow's answer waits with for its first event, if it does."""
    return _first_event.get(flow)


def install(nextlayer) -> None:
    """From a next_layer hook: make each HttpLayer mitmproxy chooses for this connection relay held answers."""
    if nextlayer.layer is None:
        chooser = ctx.master.addons.get("nextlayer")
        if chooser is None:
            return
        chooser.next_layer(nextlayer)
    for layer in nextlayer.context.layers:
        if type(layer) is HttpLayer:
            layer.__class__ = RelayingHttpLayer


@dataclass
class HeldAnswerHook(StartHook):  # type: ignore[misc,valid-type]
    """A held answer is complete and not yet sent: the addon may recover it, and stream a retry's
    answer by setting `handover.streaming`."""

    name = "mitm_rules_held_answer"
    handover: Handover


@dataclass
class RelayHook(StartHook):  # type: ignore[misc,valid-type]
    """The client's stream waits for the next piece of a streamed retry (`Handover.pull`)."""

    name = "mitm_rules_relay"
    handover: Handover


@dataclass
class FirstEventHook(StartHook):  # type: ignore[misc,valid-type]
    """A streamed answer's first event is there (`handover.head`: what came of the body), and nothing
    of it has been sent: the addon judges it, and may recover it as a refusal (`handover.answered`)."""

    name = "mitm_rules_first_event"
    handover: Handover


class _FirstEventHold:
    """A streamed answer held until its first event is there."""

    def __init__(self, reader: FirstEventSource, timeout: float) -> None:
        self.reader = reader
        self.chunks: list[bytes] = []  # as they came
        self.ended = False  # the whole answer came
        self.wakeup = RequestWakeup(timeout)
        self.cut = False  # refused: its upstream is cut, and what more comes of it is dropped


class RelayingHttpLayer(HttpLayer):  # type: ignore[misc,valid-type]
    def make_stream(self, stream_id: int):
        # mitmproxy's own make_stream (versioncheck.py checks that it is these three lines) with this
        # module's stream class, whose queue of what comes while it waits watches for a departure: a
        # stream made as mitmproxy's HttpStream and given another __class__ after would keep its
        # attributes in a dict of its own, and every event would read them slower
        self.streams[stream_id] = stream = RelayingHttpStream(self.context.fork(), stream_id)
        stream._paused_event_queue = watch = _DepartureWatch()  # (here rather than in an __init__: cheaper)
        watch.stream = stream
        yield from self.event_to_child(stream, Start())


class RelayingHttpStream(HttpStream):  # type: ignore[misc,valid-type]
    handover: Handover | None = None
    first: _FirstEventHold | None = None

    # mitmproxy's handle_event and _handle_event, unwrapped: an override would run for every event of
    # every stream. A departure is seen where it comes (the queue of a stream that waits in a hook, which
    # make_stream gives it, or handle_protocol_error), and a first-event hold swaps in its own
    # _handle_event while it lasts.

    def client_left(self, event) -> None:
        """The client left this stream (a RequestProtocolError), seen as it arrives, even while the flow
        waits in a hook: told once to the handover and to the flow's departure callback."""
        flow = getattr(self, "flow", None)
        if flow is None or flow in _departed:
            return
        _departed.add(flow)
        if self.handover is not None:
            self.handover.client_left(event.message)
        callback = _on_departure.pop(flow, None)
        if callback is not None:
            callback()

    def handle_protocol_error(self, event):
        if isinstance(event, RequestProtocolError):
            self.client_left(event)
        return super().handle_protocol_error(event)

    def _hold_first_event(self, hold: tuple[FirstEventSource, float]) -> _FirstEventHold:
        self.first = _FirstEventHold(*hold)
        self._handle_event = self._handle_held_event  # (an attribute of this stream, in front of the method)
        return self.first

    def _handle_held_event(self, event):
        first = self.first
        if isinstance(event, Wakeup):  # only a first-event hold asks for one on this stream
            ours = first is not None and event.command is first.wakeup
            # (not when the client left meanwhile: an HTTP/2 client may reset its stream and stay)
            if ours and self.server_state == self.state_first_event and self.flow.live:
                yield from self._judge_first_event(timed_out=True)
            return
        if first is not None and first.cut and isinstance(event, _FROM_SERVER):
            return  # more of a refused answer: none of it goes to the client
        yield from super()._handle_event(event)

    def start_response_stream(self):
        hold = _first_event.pop(self.flow, None)
        if hold is None:
            yield from super().start_response_stream()
            return
        self._hold_first_event(hold)  # the headers wait with the body
        self.server_state = self.state_first_event
        yield self.first.wakeup

    def state_first_event(self, event):
        first = self.first
        assert first is not None and self.flow.response
        if isinstance(event, ResponseData):
            first.chunks.append(event.data)
            if first.reader.feed(event.data):
                yield from self._judge_first_event()
        elif isinstance(event, ResponseTrailers):
            self.flow.response.trailers = event.trailers  # sent after the body, as mitmproxy does
        elif isinstance(event, ResponseEndOfMessage):
            first.ended = True
            first.reader.end()
            yield from self._judge_first_event()

    def _judge_first_event(self, timed_out: bool = False):
        first = self.first
        assert first is not None
        self.server_state = self.state_judging_first_event
        writer = _client_writer(self.context.client)
        handover = self.handover = Handover(self.flow, writer.drain if writer is not None else None)
        handover.head = b"".join(first.chunks)
        if timed_out:
            handover.unjudged = f"its first event did not come within {first.wakeup.delay:g} s (retry_timeout)"
        try:
            yield FirstEventHook(handover)
            killed = yield from self.check_killed(True)
            if killed or handover.answered:
                first.cut = True
                if not first.ended:
                    why = "the client left" if killed else "refused by its first event"
                    yield SendHttp(RequestProtocolError(self.stream_id, why, _cut_code), self.context.server)
            if killed:
                return
            if handover.streaming:
                yield from self._relay(handover)
            elif handover.answered:
                assert self.flow.response
                self.flow.response.stream = False  # the retry's answer, whole
                yield from super().send_response()
            else:  # it streams on, as mitmproxy streams any answer
                yield from super().start_response_stream()
                for chunk in first.chunks:
                    yield from self.state_stream_response_body(ResponseData(self.stream_id, chunk))
                if first.ended:
                    yield from self.state_stream_response_body(ResponseEndOfMessage(self.stream_id))
        finally:
            self.handover = None

    def state_judging_first_event(self, event):
        yield from ()  # (nothing comes here: the stream is paused while it judges)

    def send_response(self, already_streamed: bool = False):
        hold = None if already_streamed or not _first_event else _first_event.pop(self.flow, None)
        if hold is not None:  # a streamed answer that came whole (with no body at all, as a rule): judged the same way
            first = self._hold_first_event(hold)
            body = self.flow.response.raw_content if self.flow.response else None
            if body:
                first.chunks.append(body)
                first.reader.feed(body)
            first.ended = True
            first.reader.end()
            yield from self._judge_first_event()
            return
        if already_streamed or not _held or self.flow not in _held:
            yield from super().send_response(already_streamed)
            return
        _held.discard(self.flow)
        writer = _client_writer(self.context.client)
        handover = self.handover = Handover(self.flow, writer.drain if writer is not None else None)
        try:
            yield HeldAnswerHook(handover)
            if (yield from self.check_killed(True)):
                return  # the client left meanwhile
            if handover.streaming:
                yield from self._relay(handover)
            else:
                yield from super().send_response()
        finally:
            self.handover = None

    def _relay(self, handover: Handover):
        assert self.flow.response
        yield SendHttp(ResponseHeaders(self.stream_id, self.flow.response, end_stream=False), self.context.client)
        writer = _client_writer(self.context.client)
        while not handover.ended:
            backlog = writer.transport.get_write_buffer_size() if writer is not None else 0
            # the client has not taken what it was sent, or nothing has come yet: wait in a hook
            if backlog > CLIENT_BACKLOG or not handover.poll():
                yield RelayHook(handover)
                if (yield from self.check_killed(True)):
                    return
            chunks = handover.take()
            for chunk in chunks:
                yield from self._send_data(chunk)
            if handover.failure is not None or not (chunks or handover.ended):
                why = handover.failure or (f"the client left ({handover.left})" if handover.left else
                                           "the addon gave no data (was it unloaded?)")
                error = ResponseProtocolError(self.stream_id, f"the retry's answer broke off: {why}", _broken_off_code)
                yield from self.handle_protocol_error(error)
                return
        yield from self._send_data(b"")  # the end, for the `stream` callable
        yield from super().send_response(already_streamed=True)

    def _send_data(self, chunk: bytes):
        """Send a chunk on through the response's `stream` callable, as mitmproxy does."""
        assert self.flow.response
        stream = self.flow.response.stream
        out = stream(chunk) if callable(stream) else chunk
        for piece in [out] if isinstance(out, bytes) else out:
            if piece:
                yield SendHttp(ResponseData(self.stream_id, piece), self.context.client)


class _DepartureWatch(collections.deque):
    """A stream's `_paused_event_queue`, where mitmproxy's Layer keeps the events that come while the
    stream waits for a blocking command (a hook): a client's RequestProtocolError is told as it comes."""

    __slots__ = ("stream",)
    stream: RelayingHttpStream

    def append(self, event) -> None:
        if isinstance(event, RequestProtocolError):
            self.stream.client_left(event)
        super().append(event)


def _client_writer(client) -> asyncio.StreamWriter | None:
    """The stream writer of a client's connection (its ConnectionHandler's, found through the
    proxyserver addon), to wait until the client takes what it was sent; None when there is none."""
    handler = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client.id)
    io = handler.transports.get(client) if handler is not None else None
    writer = getattr(io, "writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


_FROM_SERVER = (ResponseData, ResponseTrailers, ResponseEndOfMessage, ResponseProtocolError)


def check() -> str | None:
    """Are mitmproxy's internals what this module was written for (addon/mitm/versioncheck.py)? None
    if so, else what differs. Remembers the protocol error codes to use."""
    global _broken_off_code, _cut_code
    problem, codes = versioncheck.check()
    if codes is not None:
        _broken_off_code, _cut_code = codes
    return problem
