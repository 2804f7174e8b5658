"""The version guard of addon/mitm: are mitmproxy's internals what its modules were written for?
`check()` runs at every start with stream_retries on (addon/recovery/recovery.py); when it finds a
difference, the addon says what and falls back to the buffered retry.

The internals used, as in mitmproxy 11.0.2 and 12.3.1 (`check()` verifies them before `install`):
- `mitmproxy.proxy.layers.http`: `HttpLayer.make_stream(stream_id)`, whose three lines (fork the context,
  make an `HttpStream(ctx, stream_id)` into `HttpLayer.streams`, send it `events.Start()`) httplayer repeats
  with its own stream class, and `HttpLayer.event_to_child(child, event)`;
  `HttpStream.send_response(already_streamed=False)`, `HttpStream.check_killed(emit_error_hook)`,
  `HttpStream.handle_protocol_error(event)` (these read and set the stream's `client_state` and
  `server_state`), `HttpStream.start_response_stream()`, `HttpStream.state_stream_response_body(event)`,
  `HttpStream._handle_event(event)` (which hands server events to `server_state`, and protocol
  errors to `handle_protocol_error`),
  `HttpStream.flow`, `.stream_id`, `.context.client`, `.context.server`; `SendHttp(event,
  connection)`; `ResponseHeaders(stream_id, response, end_stream)`, `ResponseData(stream_id,
  data)`, `ResponseTrailers(stream_id, trailers)`, `ResponseEndOfMessage(stream_id)`,
  `ResponseProtocolError(stream_id, message, code)` and `RequestProtocolError(stream_id, message,
  code)` (the code an int, an HTTP status, on 11; an `ErrorCode` on 12).
- `mitmproxy.proxy.layer`: `Layer.handle_event(event)` and `Layer._paused_event_queue`, a deque made in
  `Layer.__init__` (`HttpStream.__init__(context, stream_id)` calls it), to which `handle_event` appends
  the events that come while the layer waits for a blocking command: httplayer's streams replace it
  with a deque of their own, which notices a client's departure as it comes.
- `mitmproxy.proxy.commands.StartHook`: a blocking command that runs an addon hook;
  `RequestWakeup(delay)`, answered by a `mitmproxy.proxy.events.Wakeup` with that `command`, which
  `HttpLayer` routes back to the stream that asked for it.
- Back-pressure: `mitmproxy.proxy.server.ConnectionHandler.transports` (a `ConnectionIO` with its
  `writer`, an asyncio StreamWriter) of the client's handler, found in the proxyserver addon's
  `connections` by the client's id (`mode_servers.ServerManager.connections`): the relay waits while
  more than CLIENT_BACKLOG bytes sit in that writer's buffer. On the retry's side, addon/mitm/replayhandler.py's
  handler overrides `ConnectionHandler.drain_writers()` and `hook_task(hook)`.
- `mitmproxy.addons.clientplayback.ReplayHandler(flow, options)`, which addon/mitm/replayhandler.py
  subclasses.
"""

from __future__ import annotations

import inspect

try:
    from mitmproxy.addons.clientplayback import ReplayHandler
    from mitmproxy.proxy.commands import RequestWakeup, StartHook
    from mitmproxy.proxy.events import Start, Wakeup
    from mitmproxy.proxy.layer import Layer
    from mitmproxy.proxy.layers.http import (
        HttpLayer,
        HttpStream,
        RequestProtocolError,
        ResponseData,
        ResponseEndOfMessage,
        ResponseHeaders,
        ResponseProtocolError,
        ResponseTrailers,
        SendHttp,
    )
    from mitmproxy.proxy.mode_servers import ServerManager
    from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO

    _IMPORT_PROBLEM = None
except ImportError as e:  # addon/mitm must load on any mitmproxy; check() then says no, and httplayer's classes
    # (made of these stand-ins) are never installed
    _IMPORT_PROBLEM = f"cannot import what it needs: {e}"
    ReplayHandler = RequestWakeup = StartHook = Start = Wakeup = Layer = HttpLayer = HttpStream = object  # type: ignore[assignment,misc]
    RequestProtocolError = ResponseData = ResponseEndOfMessage = ResponseHeaders = object  # type: ignore[assignment,misc]
    ResponseProtocolError = ResponseTrailers = SendHttp = ServerManager = ConnectionHandler = ConnectionIO = object  # type: ignore[assignment,misc]

_SIGNATURES = {  # parameters (with defaults) as in mitmproxy 11.0.2 and 12.3.1
    "HttpLayer.make_stream": "(self, stream_id)",
    "HttpStream.__init__": "(self, context, stream_id)",
    "HttpStream.send_response": "(self, already_streamed=False)",
    "HttpStream.check_killed": "(self, emit_error_hook)",
    "HttpStream.handle_protocol_error": "(self, event)",
    "HttpStream.start_response_stream": "(self)",
    "HttpStream.state_stream_response_body": "(self, event)",
    "HttpStream._handle_event": "(self, event)",
    "Layer.handle_event": "(self, event)",
    "SendHttp": "(event, connection)",
    "ResponseHeaders": "(stream_id, response, end_stream=False)",
    "ResponseData": "(stream_id, data)",
    "ConnectionHandler.drain_writers": "(self)",
    "ConnectionHandler.hook_task": "(self, hook)",
    "ResponseTrailers": "(stream_id, trailers)",
    "ResponseEndOfMessage": "(stream_id)",
    "RequestWakeup": "(delay)",
    "Wakeup": "(command)",
    "ReplayHandler": "(flow, options)",
}
_ATTRIBUTES = {  # class: annotated attributes this module relies on
    "HttpLayer": ("streams",),
    "HttpStream": ("flow", "stream_id"),
    "Layer": ("_paused", "_paused_event_queue"),
    "ConnectionHandler": ("transports",),
    "ConnectionIO": ("writer",),
    "ServerManager": ("connections",),
}


# the body of HttpLayer.make_stream in 11.0.2 and 12.3.1, line by line and nothing else, which
# RelayingHttpLayer.make_stream repeats with its own stream class
_MAKE_STREAM = (
    "ctx = self.context.fork()",
    "self.streams[stream_id] = HttpStream(ctx, stream_id)",
    "yield from self.event_to_child(self.streams[stream_id], events.Start())",
)


def check() -> tuple[str | None, tuple[object, object] | None]:
    """Are mitmproxy's internals what addon/mitm was written for? (None, the codes) if so: the
    ResponseProtocolError code for a retry that broke off, and the RequestProtocolError code that cuts
    a refused answer's upstream; else (what differs, None)."""
    if _IMPORT_PROBLEM:
        return _IMPORT_PROBLEM, None
    names = {"HttpLayer": HttpLayer, "HttpStream": HttpStream, "Layer": Layer, "SendHttp": SendHttp,
             "ResponseHeaders": ResponseHeaders, "ResponseData": ResponseData, "ResponseTrailers": ResponseTrailers,
             "ResponseEndOfMessage": ResponseEndOfMessage, "RequestWakeup": RequestWakeup, "Wakeup": Wakeup,
             "ConnectionHandler": ConnectionHandler, "ConnectionIO": ConnectionIO, "ServerManager": ServerManager,
             "ReplayHandler": ReplayHandler}  # fmt: skip
    for path, expected in _SIGNATURES.items():
        owner, _, attribute = path.partition(".")
        target = getattr(names[owner], attribute, None) if attribute else names[owner]
        if target is None:
            return f"{path} is missing", None
        found = _parameters(target)
        if found != expected:
            return f"{path} takes {found}, not {expected}", None
    for owner, attributes in _ATTRIBUTES.items():
        annotated = inspect.get_annotations(names[owner])
        missing = [a for a in attributes if a not in annotated]
        if missing:
            return f"{owner} has no {', '.join(missing)}", None
    try:
        routes_wakeups = "RequestWakeup" in inspect.getsource(HttpLayer.event_to_child)
    except (OSError, TypeError):
        routes_wakeups = False
    if not routes_wakeups:
        return "HttpLayer.event_to_child does not route a stream's RequestWakeup back to it", None
    if not _queues_while_paused():
        return "Layer.handle_event does not queue what comes while it waits in Layer._paused_event_queue", None
    if not _source_has(HttpStream._handle_event, "self.handle_protocol_error(event)"):
        return "HttpStream._handle_event does not hand a protocol error to handle_protocol_error", None
    try:
        making = inspect.getsource(HttpLayer.make_stream).splitlines()[1:]  # (after the `def` line)
    except (OSError, TypeError):
        making = []
    if tuple(s for line in making if (s := line.strip()) and not s.startswith("#")) != _MAKE_STREAM:
        return "HttpLayer.make_stream is not what httplayer.RelayingHttpLayer.make_stream repeats", None
    if getattr(StartHook, "blocking", None) is not True:
        return "StartHook is not a blocking command", None
    found, code = _code_parameter(ResponseProtocolError)
    if found not in ("(stream_id, message, code)", "(stream_id, message, code=502)") or code is None:
        return f"ResponseProtocolError takes {found}, not (stream_id, message, code)", None
    if code.annotation is int:  # 11: an HTTP status
        codes: tuple[object, object] = (502, 499)  # 499 Client Closed Request: HTTP/2 resets the stream with CANCEL
    elif getattr(code.annotation, "GENERIC_SERVER_ERROR", None) is not None and hasattr(code.annotation, "CANCEL"):
        codes = (code.annotation.GENERIC_SERVER_ERROR, code.annotation.CANCEL)  # 12: ErrorCodes
    else:
        return f"ResponseProtocolError's code is a {code.annotation!r}, not an int or an ErrorCode", None
    found, request_code = _code_parameter(RequestProtocolError)
    if found not in ("(stream_id, message, code)", "(stream_id, message, code=400)") or request_code is None:
        return f"RequestProtocolError takes {found}, not (stream_id, message, code)", None
    if request_code.annotation is not code.annotation:
        return f"RequestProtocolError's code is a {request_code.annotation!r}, not an int or an ErrorCode", None
    return None, codes


def _queues_while_paused() -> bool:
    """Does Layer make `_paused_event_queue` a deque, and its handle_event append to it (what httplayer's
    streams watch for a client's departure)?"""
    return (_source_has(Layer.__init__, "self._paused_event_queue = collections.deque()")
            and _source_has(Layer.handle_event, "self._paused_event_queue.append(event)"))


def _source_has(function, line: str) -> bool:
    try:
        return line in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def _code_parameter(error_class) -> tuple[str, inspect.Parameter | None]:
    """A protocol error's parameters (as `_parameters`), and its `code` parameter with its annotation resolved."""
    try:
        code = inspect.signature(error_class, eval_str=True).parameters.get("code")
    except (NameError, TypeError, ValueError):
        code = None
    return _parameters(error_class), code


def _parameters(target) -> str:
    """A callable's parameters as "(a, b=1)": names and defaults, not annotations."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return "(nothing it can read)"
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))
