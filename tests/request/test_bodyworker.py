"""addon/request/bodyworker.py, and the request side through it (plan_request_off_loop, apply_plan_off_loop):
a body over SMALL_BODY is read in the worker process, with the same outcome as here, while the event
loop goes on. That the loop goes on is shown without timing: the worker is frozen (SIGSTOP) while it
holds a job, and the loop must still turn."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal

import pytest

from addon.request import bodyworker
from addon.request import jsonbody
from addon.request.bodyworker import SMALL_BODY, BodyWorker, WorkerFailed, is_large
from addon.request.apply import apply_plan, apply_plan_off_loop
from addon.request.plan import plan_request, plan_request_off_loop
from addon.rules.config import load_config
from helpers import write_rules
from test_plan import RULES, VALUES, flow

PAD = "x" * 100


def big_json(stream: bool = True, messages: int = 2000, **fields) -> bytes:
    """A JSON object of about `messages` × 130 bytes (2,000: 260 KB, over SMALL_BODY)."""
    return json.dumps({"stream": stream, **fields, "messages": [{"role": "user", "content": PAD}] * messages}).encode()


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_VALUE", VALUES["cf"])
    return load_config(write_rules(tmp_path, RULES))


@pytest.fixture
def worker():
    w = BodyWorker()
    yield w
    w.close()


def run(main):
    return asyncio.run(main())


@pytest.mark.parametrize(
    "raw, encoding, large",
    [
        (b"", None, False),
        (b"{}" * (SMALL_BODY // 2), None, False),  # exactly the bound
        (b"{}" * (SMALL_BODY // 2) + b" ", None, True),
        (gzip.compress(b" " * SMALL_BODY), "gzip", False),  # small as sent, and decoded
        (gzip.compress(b" " * (SMALL_BODY + 1)), "gzip", True),  # small as sent, large decoded
        (b"not gzip", "gzip", False),  # cannot be decoded: nothing reads it further
    ],
    ids=["empty", "at-bound", "over", "gzip-small", "gzip-large-decoded", "broken"],
)
def test_is_large(raw, encoding, large):
    assert is_large(raw, encoding) is large


# the same outcome as on the event loop


@pytest.mark.parametrize("encoding", [None, "gzip", "br", "zstd"])
def test_a_large_body_is_planned_and_edited_as_on_the_loop(config, worker, encoding):
    from mitmproxy.net.encoding import encode

    body = big_json(model="client", debug=True)
    raw = encode(body, encoding) if encoding else body
    here, there = flow(), flow()
    for f in (here, there):
        f.request.raw_content = raw
        if encoding:
            f.request.headers["content-encoding"] = encoding

    async def main():
        plan = await plan_request_off_loop(config, there, worker)
        return plan, await apply_plan_off_loop(plan, there.request, VALUES, worker=worker)

    plan, lines = run(main)
    expected = plan_request(config, here)
    assert plan is expected and plan.streaming  # the same memoised plan, streaming read in the worker
    assert lines == apply_plan(expected, here.request, VALUES)
    assert there.request.raw_content == here.request.raw_content
    assert there.request.headers == here.request.headers
    assert worker.jobs == 2  # judged, edited: both in the worker
    assert json.loads(there.request.content)["recaptchaV3Token"] == VALUES["captcha"]


def test_a_large_body_that_is_not_an_object_is_left_with_the_reason(config, worker):
    f = flow(body=b"[" + b"1," * SMALL_BODY + b"1]")

    async def main():
        plan = await plan_request_off_loop(config, f, worker)
        return await apply_plan_off_loop(plan, f.request, VALUES, worker=worker)

    lines = run(main)
    assert lines[-1] == "body not edited by first, second: the body is JSON but not an object (it is a list)"
    assert worker.jobs == 2


def test_body_filters_on_a_large_body_are_judged_in_the_worker(tmp_path, worker):
    config = load_config(write_rules(tmp_path, """\
rules:
  - name: wants-gpt
    match: {host: a.example, filter: "~b gpt-4o & ~m POST"}
    headers: {X-Model: gpt}
  - name: wants-claude
    match: {host: a.example, filter: "~b claude"}
    headers: {X-Model: claude}
  - name: posts
    match: {host: a.example, filter: "~m POST"}
    headers: {X-Post: "yes"}
"""))  # fmt: skip
    f = flow(content_encoding="gzip")
    f.request.raw_content = gzip.compress(big_json(stream=False, model="gpt-4o"))
    f.metadata["another addon"] = lambda: None  # copies, does not pickle: it stays here

    async def main():
        return await plan_request_off_loop(config, f, worker)

    plan = run(main)
    assert [r.name for r in plan.rules] == ["wants-gpt", "posts"] and not plan.streaming
    assert worker.jobs == 1


def test_a_body_past_the_bound_decoded_in_the_worker_says_so(config, worker, caplog):
    f = flow(content_encoding="gzip")
    f.request.raw_content = gzip.compress(b'{"stream": true, "pad": "' + b" " * (33 * 2**20) + b'"}')

    plan = run(lambda: plan_request_off_loop(config, f, worker))
    assert not plan.streaming
    assert "decodes to more than 32 MiB (Content-Encoding: gzip); decoding stopped there" in caplog.text


# the loop goes on while the worker works


def test_the_event_loop_turns_while_the_worker_holds_a_large_body(config, worker):
    f = flow(body=big_json())

    async def main():
        await worker.run("judge", b"{}", None, ("stream",), None, ())  # started
        os.kill(worker.pid, signal.SIGSTOP)  # frozen: the job below cannot end until it is let go
        try:
            job = asyncio.ensure_future(plan_request_off_loop(config, f, worker))
            turns = 0
            for _ in range(20):
                await asyncio.sleep(0.01)
                turns += 1
            pending = not job.done()
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        return turns, pending, await job

    turns, pending, plan = run(main)
    assert turns == 20 and pending  # the loop turned twenty times while the job waited on the worker
    assert plan.streaming


# failures: a worker that dies or hangs, shut-down


def test_a_worker_that_dies_fails_the_job_and_the_next_job_starts_another(config, worker, caplog):
    f = flow(body=big_json())

    async def main():
        await worker.run("judge", b"{}", None, ("stream",), None, ())
        first = worker.pid
        os.kill(first, signal.SIGSTOP)
        job = asyncio.ensure_future(apply_plan_off_loop(plan_request(config, f), f.request, VALUES, worker=worker))
        await asyncio.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        lines = await job
        again = await worker.run("judge", b'{"stream": true}', None, ("stream",), None, ())
        return first, lines, again

    first, lines, again = run(main)
    assert lines[-1].startswith("body not edited by first, second: the body worker failed: it stopped")
    assert f.request.raw_content == big_json()  # as it came
    assert again == (None, (True, False, ())) and worker.pid != first
    assert "the body worker failed: it stopped" in caplog.text


def test_a_job_past_the_time_limit_stops_the_worker(worker, monkeypatch):
    async def main():
        await worker.run("judge", b"{}", None, ("stream",), None, ())  # started (imports take a while)
        monkeypatch.setattr(bodyworker, "JOB_TIMEOUT", 0.3)
        pid = worker.pid
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(WorkerFailed, match="it took longer than 0.3 s, and was stopped"):
            await worker.run("judge", b"{}", None, ("stream",), None, ())
        await asyncio.sleep(0.2)
        return pid

    pid = run(main)
    assert worker.pid is None and _gone(pid)  # killed (a stopped process too)


def test_not_editable_raised_in_the_worker_is_raised_here(worker):
    with pytest.raises(jsonbody.NotEditable, match="the body is not JSON"):
        run(lambda: worker.run("edit", b"x" * (SMALL_BODY + 1), None, ()))


def test_close_stops_the_worker_and_a_killed_parent_leaves_no_worker(worker, tmp_path):
    async def main():
        await worker.run("judge", b"{}", None, ("stream",), None, ())
        pid = worker.pid
        worker.close()
        await asyncio.sleep(0.1)
        return pid

    pid = run(main)
    assert _gone(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _zombie(pid)
