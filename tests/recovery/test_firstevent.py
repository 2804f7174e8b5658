"""The first event of a streamed answer, read chunk by chunk or from a whole body."""

from __future__ import annotations

import pytest

from addon.recovery.firstevent import FIRST_EVENT_LIMIT, FirstEventReader, first_event

ERROR = b'event: error\ndata: {"error": "x"}\n\n'


@pytest.mark.parametrize(
    "body, text",
    [
        # the first block with data, its lines as they came, without the blank line that ends it
        (ERROR + b"data: 2\n\n", 'event: error\ndata: {"error": "x"}'),
        (b"data: 1\ndata: 2\n\ndata: 3\n\n", "data: 1\ndata: 2"),
        (b"data\n\n", "data"),  # a data field with no value
        (b"id: 7\nevent: x\ndata: 1\n\n", "id: 7\nevent: x\ndata: 1"),
        # blocks without data before it are skipped: keep-alive comments, a lone retry or event
        (b": ping\n\n: ping\n\nretry: 5\n\nevent: e\n\ndata: 1\n\n", "data: 1"),
        (b": ping\ndata: 1\n\n", ": ping\ndata: 1"),  # a comment inside the event is part of it
        # every line ending SSE allows
        (b"data: 1\r\ndata: 2\r\n\r\n", "data: 1\ndata: 2"),
        (b"data: 1\rdata: 2\r\rdata: 3\r\r", "data: 1\ndata: 2"),
        # a stream that ends first: an unfinished event with data, or nothing
        (b"data: 1", "data: 1"),
        (b"data: 1\n", "data: 1"),
        (b"data: 1\r", "data: 1"),
        (b"", ""),
        (b": ping\n\n", ""),
        (b"event: error\n", ""),  # no data: no event
        # bad UTF-8 replaced
        (b"data: \xff\n\n", "data: \ufffd"),
    ],
)
def test_the_first_event_of_an_event_stream(body, text):
    assert first_event(body, sse=True) == text


def test_any_other_stream_is_judged_by_its_first_64_kib():
    assert first_event(b'{"n": 1}\n{"n": 2}\n', sse=False) == '{"n": 1}\n{"n": 2}\n'
    assert first_event(b"x" * (FIRST_EVENT_LIMIT + 10), sse=False) == "x" * FIRST_EVENT_LIMIT


def test_a_first_event_longer_than_64_kib_is_judged_by_its_start():
    reader = FirstEventReader(sse=True)
    assert not reader.feed(b"data: " + b"x" * 1000)
    assert reader.feed(b"x" * FIRST_EVENT_LIMIT)  # done at the limit, before the event ends
    assert reader.text == "data: " + "x" * (FIRST_EVENT_LIMIT - 6)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_chunks_of_any_size_give_the_same_event_and_stop_at_its_end(size):
    stream = b": ping\r\n\r\n" + ERROR.replace(b"\n", b"\r\n") + b"data: later\r\n\r\n"
    reader = FirstEventReader(sse=True)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    done_at = next(i for i, chunk in enumerate(chunks) if reader.feed(chunk))
    assert reader.text == 'event: error\ndata: {"error": "x"}'
    # done once the blank line after the event is there (a \r may still be followed by \n: it waits for the next byte)
    assert (done_at + 1) * size >= len(b": ping\r\n\r\n" + ERROR.replace(b"\n", b"\r\n")) - 1
    assert (done_at + 1) * size < len(stream) - len(b"data: later\r\n")


def test_a_stream_that_ends_before_its_first_event_is_judged_by_what_came():
    reader = FirstEventReader(sse=True)
    assert not reader.feed(b": ping\n\ndata: 1")
    reader.end()
    assert reader.done and reader.text == "data: 1"
