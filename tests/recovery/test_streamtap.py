"""Streaming of event streams, and the capped copy kept for mitmweb."""

import pytest
from mitmproxy.test import taddons, tflow

from addon.recovery.streamtap import BodyCopy, StreamTap
from addon.request.rewriter import REPLAY_KEY, Rewritten, mark
from addon.runtime.loader import Runtime
from helpers import write_rules


@pytest.fixture
def tap(tmp_path):
    loader = Runtime()
    tap = StreamTap(loader)
    with taddons.context(loader, tap) as tctx:
        rules = write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n")
        tctx.configure(loader, stream_copy_limit="10", rules=str(rules))
        yield tap


def flow(matched=True, streaming=False, ctype="application/json", status=200, injected=()):
    f = tflow.tflow(resp=True)
    f.response.status_code = status
    f.response.headers["content-type"] = ctype
    if matched:
        mark(f, Rewritten(("r",), streaming, frozenset(injected)))
    return f


@pytest.mark.parametrize(
    "f, streamed",
    [
        (flow(ctype="text/event-stream; charset=utf-8"), True),
        (flow(streaming=True), True),  # whatever the answer to a streaming request is
        (flow(), False),
        (flow(matched=False, ctype="text/event-stream"), False),  # flows no rule touched are left alone
    ],
)
def test_which_responses_stream(tap, f, streamed):
    tap.responseheaders(f)
    assert isinstance(f.response.stream, BodyCopy) is streamed


def test_chunks_pass_unchanged_and_a_capped_copy_is_kept(tap):
    f = flow(ctype="text/event-stream")
    tap.responseheaders(f)
    chunks = [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [f.response.stream(c) for c in chunks] == chunks
    tap.response(f)
    assert f.response.raw_content == b"data: 1\n\nd"
    assert f.response.stream is True  # the copy is let go
    assert f.comment == "streamed body: 18 bytes, the first 10 kept"


def test_the_streamed_body_note_is_one_more_item_of_the_comment(tap):
    f = flow(ctype="text/event-stream")
    f.comment = "rules: sse (streaming request)\n· Accept ← sse"
    tap.responseheaders(f)
    f.response.stream(b"x" * 20)
    tap.response(f)
    assert f.comment == "rules: sse (streaming request)\n· Accept ← sse\n· streamed body: 20 bytes, the first 10 kept"


@pytest.mark.parametrize(
    "f, held",
    [
        (flow(status=403, injected=["token"], ctype="text/event-stream"), True),  # default on_response: rotate on 403
        (flow(status=403, injected=["captcha"], ctype="text/event-stream"), False),  # rotate needs a token
        (flow(status=200, injected=["token"], ctype="text/event-stream"), False),
    ],
)
def test_answers_that_may_be_retried_are_held(tap, f, held):
    assert tap.responseheaders(f) is held  # the recovery learns it holds them
    assert isinstance(f.response.stream, BodyCopy) is not held


def test_replayed_attempts_are_held(tap):
    f = flow(ctype="text/event-stream")
    f.metadata[REPLAY_KEY] = {"of": "x", "attempt": 2}
    tap.responseheaders(f)
    assert not f.response.stream


def test_existing_stream_setting_is_respected(tap):
    f = flow(ctype="text/event-stream")
    f.response.stream = True
    tap.responseheaders(f)
    assert f.response.stream is True


@pytest.mark.parametrize(
    "chunks, done",
    [
        ([b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"], True),
        ([b'data: {"a": 1}\n\ndata: [DO', b"NE]\n\n"], True),  # the event cut in two
        ([b"data:[DONE]\r\n\r\n"], True),
        ([b'data: {"text": "data: [DONE]"}\n\n'], False),  # inside another event's data
        ([b'data: {"a": 1}\n\n'], False),
    ],
    ids=["whole", "split", "no-space-crlf", "quoted", "none"],
)
def test_the_copy_notes_an_sse_done_event(chunks, done):
    copy = BodyCopy(limit=8)  # the cap on the copy does not hide it
    assert [copy(c) for c in chunks] == chunks
    assert copy.done is done


def test_the_first_byte_of_a_streamed_answer_is_timed_once(tap):
    seconds = tap.runtime.counters.first_event_seconds
    tap.responseheaders(flow())  # not streamed: its first byte leaves with the rest
    assert (sum(seconds[False].counts), sum(seconds[True].counts)) == (0, 0)
    tap.responseheaders(flow(ctype="text/event-stream"))
    assert (sum(seconds[False].counts), sum(seconds[True].counts)) == (1, 0)  # a first attempt's (a recovered one is Streams')
