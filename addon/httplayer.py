"""Streaming a retry's answer to the client: the one module that touches mitmproxy's private HTTP layer.

mitmproxy has no public way to send a client a response body that comes from another flow: once
a flow's `response` hook has run, its body is what the client gets. So that the answer of a
retry can reach the client as it arrives, this module steps into the HTTP layer of mitmproxy's
proxy core, for flows the addon marks with `hold()`, and nowhere else in the addon does.

- `install(nextlayer)`, from a `next_layer` hook: mitmproxy's own NextLayer addon is asked to
  choose the layers for the connection first (scripts run before it); each `HttpLayer` among them
  then becomes a `RelayingHttpLayer`, whose `make_stream` makes its streams `RelayingHttpStream`s.
- When a held answer's body is complete, the stream's `send_response` yields `HeldAnswerHook`, a
  blocking hook of the addon's own, with a `Handover` (addon/replay.py). The addon judges the
  answer and recovers within that hook, through mitmproxy's ReplayHandler as before. If a retry's
  answer is to be streamed, the addon copies its status and headers onto the client's response
  and sets `handover.streaming`; the stream sends the headers, then takes what has come of the
  body, and when nothing has, yields `RelayHook` to wait for the next piece (its argument is the
  handover, not the flow, so mitmweb is not updated per chunk). It sends each chunk on as it comes
  (through the response's `stream` callable, as mitmproxy does), and ends with mitmproxy's own
  `send_response(already_streamed=True)`: the `response` hook, trailers and the end of the flow
  run as for any streamed answer.
- The client leaving: a layer that waits for a blocking command queues the events that arrive
  meanwhile (`Layer._paused_event_queue`); the stream sees a `RequestProtocolError` as it arrives
  (`handle_event`), tells the handover (which hangs up the retry at once), and after each hook
  `check_killed`, which looks for it in that queue, ends the flow as mitmproxy does.
- A retry that breaks off mid-stream ends the client's stream through `handle_protocol_error` with
  a `ResponseProtocolError`: on HTTP/1 the connection closes before the last chunk (a truncated
  chunked body), on HTTP/2 the stream is reset.

The internals used, as in mitmproxy 11.0.2 and 12.3.1 (`check()` verifies them before `install`):
- `mitmproxy.proxy.layers.http`: `HttpLayer.make_stream(stream_id)` and `HttpLayer.streams`;
  `HttpStream.send_response(already_streamed=False)`, `HttpStream.check_killed(emit_error_hook)`,
  `HttpStream.handle_protocol_error(event)` (these read and set the stream's `client_state` and
  `server_state`), `HttpStream.flow`, `.stream_id`, `.context.client`; `SendHttp(event,
  connection)`; `ResponseHeaders(stream_id, response, end_stream)`, `ResponseData(stream_id,
  data)`, `ResponseProtocolError(stream_id, message, code)` (the code an int, an HTTP status, on
  11; an `ErrorCode` on 12), `RequestProtocolError`.
- `mitmproxy.proxy.layer`: `Layer.handle_event(event)` and `Layer._paused_event_queue`.
- `mitmproxy.proxy.commands.StartHook`: a blocking command that runs an addon hook.
- Back-pressure: `mitmproxy.proxy.server.ConnectionHandler.transports` (a `ConnectionIO` with its
  `writer`, an asyncio StreamWriter) of the client's handler, found in the proxyserver addon's
  `connections` by the client's id (`mode_servers.ServerManager.connections`): the relay waits while
  more than CLIENT_BACKLOG bytes sit in that writer's buffer. On the retry's side, addon/replay.py's
  handler overrides `ConnectionHandler.drain_writers()` and `hook_task(hook)`.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import ctx, http

from addon.replay import Handover

try:
    from mitmproxy.proxy.commands import StartHook
    from mitmproxy.proxy.layer import Layer
    from mitmproxy.proxy.mode_servers import ServerManager
    from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO
    from mitmproxy.proxy.layers.http import (
        HttpLayer,
        HttpStream,
        RequestProtocolError,
        ResponseData,
        ResponseHeaders,
        ResponseProtocolError,
        SendHttp,
    )

    _IMPORT_PROBLEM = None
except ImportError as e:  # this module must load on any mitmproxy; check() then says no
    _IMPORT_PROBLEM = f"cannot import what it needs: {e}"
    StartHook = HttpLayer = HttpStream = Layer = ConnectionHandler = ConnectionIO = ServerManager = object  # type: ignore[assignment,misc]

CLIENT_BACKLOG = 1 << 20  # bytes sent to a client but not yet on its socket; past it, the relay waits for it

_held: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
_departed: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()  # flows whose client left (closed, or reset the stream)
_on_departure: weakref.WeakKeyDictionary[http.HTTPFlow, Callable[[], None]] = weakref.WeakKeyDictionary()
_broken_off_code: object = None  # the ResponseProtocolError code for a retry that broke off; set by check()


def hold(flow: http.HTTPFlow) -> None:
    """Once this held answer is complete, hand it to the addon (HeldAnswerHook) before it is sent."""
    _held.add(flow)


def departed(flow: http.HTTPFlow) -> bool:
    """Did the client of this flow leave it (closed its connection or reset its HTTP/2 stream), as
    mitmproxy's HTTP layer saw it? Known for the connections `install` reached."""
    return flow in _departed


def on_departure(flow: http.HTTPFlow, callback: Callable[[], None]) -> None:
    """Call `callback` (once) when the client of this flow leaves it."""
    _on_departure[flow] = callback


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


class RelayingHttpLayer(HttpLayer):  # type: ignore[misc,valid-type]
    def make_stream(self, stream_id: int):
        yield from super().make_stream(stream_id)
        stream = self.streams.get(stream_id)
        if type(stream) is HttpStream:
            stream.__class__ = RelayingHttpStream


class RelayingHttpStream(HttpStream):  # type: ignore[misc,valid-type]
    handover: Handover | None = None

    def handle_event(self, event):
        if isinstance(event, RequestProtocolError) and getattr(self, "flow", None) is not None:
            _departed.add(self.flow)  # seen as it arrives, even while the flow waits in a hook
            if self.handover is not None:
                self.handover.client_left(event.message)
            callback = _on_departure.pop(self.flow, None)
            if callback is not None:
                callback()
        return super().handle_event(event)

    def send_response(self, already_streamed: bool = False):
        if already_streamed or self.flow not in _held:
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


def _client_writer(client) -> asyncio.StreamWriter | None:
    """The stream writer of a client's connection (its ConnectionHandler's, found through the
    proxyserver addon), to wait until the client takes what it was sent; None when there is none."""
    handler = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client.id)
    io = handler.transports.get(client) if handler is not None else None
    writer = getattr(io, "writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


# the version guard

_SIGNATURES = {  # parameters (with defaults) as in mitmproxy 11.0.2 and 12.3.1
    "HttpLayer.make_stream": "(self, stream_id)",
    "HttpStream.send_response": "(self, already_streamed=False)",
    "HttpStream.check_killed": "(self, emit_error_hook)",
    "HttpStream.handle_protocol_error": "(self, event)",
    "Layer.handle_event": "(self, event)",
    "SendHttp": "(event, connection)",
    "ResponseHeaders": "(stream_id, response, end_stream=False)",
    "ResponseData": "(stream_id, data)",
    "ConnectionHandler.drain_writers": "(self)",
    "ConnectionHandler.hook_task": "(self, hook)",
}
_ATTRIBUTES = {  # class: annotated attributes this module relies on
    "HttpLayer": ("streams",),
    "HttpStream": ("flow", "stream_id"),
    "Layer": ("_paused", "_paused_event_queue"),
    "ConnectionHandler": ("transports",),
    "ConnectionIO": ("writer",),
    "ServerManager": ("connections",),
}


def check() -> str | None:
    """Are mitmproxy's internals what this module was written for? None if so, else what differs.
    Remembers the ResponseProtocolError code to use."""
    global _broken_off_code
    if _IMPORT_PROBLEM:
        return _IMPORT_PROBLEM
    names = {"HttpLayer": HttpLayer, "HttpStream": HttpStream, "Layer": Layer, "SendHttp": SendHttp,
             "ResponseHeaders": ResponseHeaders, "ResponseData": ResponseData, "ConnectionHandler": ConnectionHandler,
             "ConnectionIO": ConnectionIO, "ServerManager": ServerManager}  # fmt: skip
    for path, expected in _SIGNATURES.items():
        owner, _, attribute = path.partition(".")
        target = getattr(names[owner], attribute, None) if attribute else names[owner]
        if target is None:
            return f"{path} is missing"
        found = _parameters(target)
        if found != expected:
            return f"{path} takes {found}, not {expected}"
    for owner, attributes in _ATTRIBUTES.items():
        annotated = inspect.get_annotations(names[owner])
        missing = [a for a in attributes if a not in annotated]
        if missing:
            return f"{owner} has no {', '.join(missing)}"
    if getattr(StartHook, "blocking", None) is not True:
        return "StartHook is not a blocking command"
    found = _parameters(ResponseProtocolError)
    try:
        code = inspect.signature(ResponseProtocolError, eval_str=True).parameters.get("code")
    except (NameError, TypeError, ValueError):
        code = None
    if found not in ("(stream_id, message, code)", "(stream_id, message, code=502)") or code is None:
        return f"ResponseProtocolError takes {found}, not (stream_id, message, code)"
    if code.annotation is int:  # 11: an HTTP status
        _broken_off_code = 502
    elif getattr(code.annotation, "GENERIC_SERVER_ERROR", None) is not None:  # 12: an ErrorCode
        _broken_off_code = code.annotation.GENERIC_SERVER_ERROR
    else:
        return f"ResponseProtocolError's code is a {code.annotation!r}, not an int or an ErrorCode"
    return None


def _parameters(target) -> str:
    """A callable's parameters as "(a, b=1)": names and defaults, not annotations."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return "(nothing it can read)"
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))
