"""End to end: a short load soak through a real mitmdump, with the code of scripts/soak.

The full soak (20,000 requests) is `scripts/soak`; this one sends 1,500 and holds mitmdump to
the same criteria. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from soak import CHUNKS, Settings, read_answer, run


def test_short_soak_meets_the_criteria(tmp_path):
    report = run(Settings(requests=1_200, warmup=300, concurrency=16), tmp_path)
    print(report.text())
    assert report.failures == Counter()
    assert report.answers["unknown account"] == report.refused >= 100  # about one in ten, each refused once
    assert report.recovered == report.refused
    assert [c.name for c in report.criteria() if not c.ok] == []
    assert report.log_errors == 0


def test_refusals_handed_to_the_client_are_failures(tmp_path):
    """With one attempt per request the addon hands every refusal on: each must be counted."""
    report = run(Settings(requests=200, warmup=0, concurrency=8, max_attempts=1, idle=0.1), tmp_path)
    assert report.refused >= 10
    assert report.failures == Counter({"status 403": report.refused})
    assert report.recovered == 0
    assert "client-visible failures" in [c.name for c in report.criteria() if not c.ok]


def _sse(events: int, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps({"i": i}).encode() + b"\n\n" for i in range(events))
    return body + (b"data: [DONE]\n\n" if done else b"")


def _chunked(body: bytes, end: bool = True) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"%x\r\n%s\r\n" % (len(body), body) + (b"0\r\n\r\n" if end else b"")


def _sized(status: int, body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


COMPLETION = json.dumps({"object": "chat.completion"}).encode()


@pytest.mark.parametrize(
    ("raw", "streaming", "expected"),
    [
        # whole answers
        (_chunked(_sse(CHUNKS + 1)), True, (None, True)),
        (_sized(200, COMPLETION), False, (None, True)),
        (_sized(200, COMPLETION, b"Connection: close"), False, (None, False)),
        # what the client must count as failures
        (_chunked(_sse(CHUNKS)), True, ("incomplete event stream", True)),
        (_chunked(_sse(CHUNKS + 1, done=False)), True, ("incomplete event stream", True)),
        (_chunked(_sse(CHUNKS + 1), end=False), True, ("transport error (IncompleteReadError)", False)),
        (_sized(200, COMPLETION)[:-5], False, ("transport error (IncompleteReadError)", False)),
        (_sized(403, b'{"error": {"message": "unknown account"}}'), False, ("status 403", True)),
        (_sized(200, b'{"object": "error"}'), False, ("not a chat completion", True)),
        (b"", False, ("transport error (IncompleteReadError)", False)),
    ],
    ids=["stream", "json", "json, then close", "stream short of events", "stream without [DONE]",
         "stream cut off", "json cut off", "refusal", "wrong json", "connection closed"],
)  # fmt: skip
def test_the_client_judges_each_answer(raw, streaming, expected):
    async def judge():
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()  # the connection ends after `raw`
        return await read_answer(reader, streaming)

    assert asyncio.run(judge()) == expected
