"""The version guard of addon/mitm (addon/mitm/versioncheck.py), as addon/mitm/httplayer.py runs it.

It must pass on both supported lines and decline, saying what differs, when an internal it
relies on is not what it was written for.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from mitmproxy.addons import clientplayback
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers import http as mhttp
from mitmproxy.test import taddons
from mitmproxy.version import VERSION

from addon.mitm import httplayer, versioncheck
from addon.pipeline import Pipeline


def test_the_guard_passes_on_this_mitmproxy_and_picks_its_error_code():
    assert httplayer.check() is None
    if VERSION.startswith("11."):
        assert httplayer._broken_off_code == 502  # an HTTP status on 11
        assert httplayer._cut_code == 499  # (which HTTP/2 sends as a CANCEL)
    else:
        assert httplayer._broken_off_code is mhttp.ErrorCode.GENERIC_SERVER_ERROR
        assert httplayer._cut_code is mhttp.ErrorCode.CANCEL


@dataclasses.dataclass
class _CodeAsText(mhttp.HttpEvent):
    message: str
    code: str = "x"

    def __init__(self, stream_id: int, message: str, code: str):
        self.stream_id, self.message, self.code = stream_id, message, code


def _send_response(self):  # one parameter fewer than mitmproxy's
    yield from ()


BREAKS = [
    # a method with another signature
    (lambda mp: mp.setattr(mhttp.HttpStream, "send_response", _send_response),
     "HttpStream.send_response takes (self), not (self, already_streamed=False)"),
    (lambda mp: mp.setattr(mhttp.HttpLayer, "make_stream", lambda self, stream_id, extra: None),
     "HttpLayer.make_stream takes (self, stream_id, extra), not (self, stream_id)"),
    # a method or class that is gone
    (lambda mp: mp.delattr(mhttp.HttpStream, "check_killed"), "HttpStream.check_killed is missing"),
    (lambda mp: mp.setattr(versioncheck, "_IMPORT_PROBLEM", "cannot import what it needs: no SendHttp"),
     "cannot import what it needs: no SendHttp"),
    # an attribute that is no longer there
    (lambda mp: mp.delitem(layer.Layer.__annotations__, "_paused_event_queue"), "Layer has no _paused_event_queue"),
    # an error code of another kind
    (lambda mp: mp.setattr(versioncheck, "ResponseProtocolError", _CodeAsText),
     "ResponseProtocolError's code is a <class 'str'>, not an int or an ErrorCode"),
    # what holding an answer for its first event uses
    (lambda mp: mp.setattr(mhttp.HttpStream, "start_response_stream", lambda self, headers_sent: None),
     "HttpStream.start_response_stream takes (self, headers_sent), not (self)"),
    (lambda mp: mp.setattr(mhttp.HttpLayer, "event_to_child", _event_to_child),
     "HttpLayer.event_to_child does not route a stream's RequestWakeup back to it"),
    (lambda mp: mp.setattr(versioncheck, "RequestProtocolError", _CodeAsText),
     "RequestProtocolError's code is a <class 'str'>, not an int or an ErrorCode"),
    # the three lines RelayingHttpLayer.make_stream repeats
    (lambda mp: mp.setattr(mhttp.HttpLayer, "make_stream", _make_stream),
     "HttpLayer.make_stream is not what httplayer.RelayingHttpLayer.make_stream repeats"),
    (lambda mp: mp.setattr(mhttp.HttpLayer, "make_stream", _make_stream_and_more),
     "HttpLayer.make_stream is not what httplayer.RelayingHttpLayer.make_stream repeats"),
    # the queue of what comes while a stream waits, which httplayer's streams watch for a departure
    (lambda mp: mp.setattr(layer.Layer, "handle_event", _handle_event_unqueued),
     "Layer.handle_event does not queue what comes while it waits in Layer._paused_event_queue"),
    (lambda mp: mp.setattr(mhttp.HttpStream, "_handle_event", _handle_event_without_errors),
     "HttpStream._handle_event does not hand a protocol error to handle_protocol_error"),
    # what the retry's connection handler subclasses
    (lambda mp: mp.setattr(clientplayback.ReplayHandler, "__init__", lambda self, flow: None),
     "ReplayHandler takes (flow), not (flow, options)"),
]  # fmt: skip


def _handle_event_unqueued(self, event):  # one that never waits
    yield from self._handle_event(event)


def _handle_event_without_errors(self, event):  # one that no longer calls handle_protocol_error
    yield from self.server_state(event)


def _event_to_child(self, child, event):  # one that forgets which stream asked for a wakeup
    yield from child.handle_event(event)


def _make_stream(self, stream_id):  # one that makes its streams another way
    self.streams[stream_id] = mhttp.HttpStream(self.context.fork(), stream_id, "h2")
    yield from self.event_to_child(self.streams[stream_id], events.Start())


def _make_stream_and_more(self, stream_id):  # the same three lines, and one more
    ctx = self.context.fork()
    self.streams[stream_id] = HttpStream(ctx, stream_id)
    self.made = stream_id
    yield from self.event_to_child(self.streams[stream_id], events.Start())


HttpStream = mhttp.HttpStream  # (as _make_stream_and_more names it, as mitmproxy's module does)


@pytest.mark.parametrize("break_it, problem", BREAKS, ids=["signature", "extra parameter", "missing method",
                                                            "import", "attribute", "error code", "response stream",
                                                            "wakeups", "request error code", "make_stream",
                                                            "make_stream and more", "paused queue", "protocol errors",
                                                            "replay handler"])  # fmt: skip
def test_the_guard_declines_when_an_internal_differs(monkeypatch, break_it, problem):
    break_it(monkeypatch)
    assert httplayer.check() == problem


def test_a_declining_guard_turns_stream_retries_off_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(mhttp.HttpStream, "send_response", _send_response)
    pipeline = Pipeline()
    caplog.set_level(logging.WARNING)
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, stream_retries=True, retry_timeout=30)
        assert pipeline.recovery.stream_retries is False
        tctx.configure(pipeline, retry_timeout=40)  # other options change: nothing more is said
    warnings = [r.getMessage() for r in caplog.records if "stream_retries" in r.getMessage()]
    assert warnings == [
        f"stream_retries: off, as mitmproxy {VERSION} is not what it was written for (HttpStream.send_response "
        "takes (self), not (self, already_streamed=False)); a retried streaming request gets its answer whole, "
        "when it is complete"
    ]


def test_stream_retries_follow_the_option():
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, stream_retries=True)
        assert pipeline.recovery.stream_retries is True
        tctx.configure(pipeline, stream_retries=False)
        assert pipeline.recovery.stream_retries is False
