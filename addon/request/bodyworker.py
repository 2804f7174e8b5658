"""Large request bodies are decoded, parsed and written in a worker process, not on the event loop.

Parsing 31 MB of JSON takes the proxy's event loop for seconds, and a thread does not help: `json`
holds the interpreter lock while it works. So a body over SMALL_BODY bytes (as sent, or once decoded)
goes to a process of its own, started when the first one comes (a proxy that never sees one never
starts it): stream detection and `~b` filters (`judge`, one decoding for both) and body edits
(`jsonbody.edit`). A body at most SMALL_BODY long is read where it is, which costs well under a
millisecond.

The worker is a child Python process reading jobs on its stdin and writing results on its stdout:
each a length-prefixed pickle, and the body apart from it (sent a MiB per turn of the event loop, so
that no turn copies a large body whole but the one that joins it when it comes back); jobs go one at
a time. It runs in a session of its own, so that a Ctrl-C at the terminal reaches only
mitmdump, which closes it at shut-down (`close`); it leaves by itself when its stdin closes, so it
never outlives a mitmdump that was killed. A job that takes more than JOB_TIMEOUT, or a worker that
dies, is a `WorkerFailed`; the next job starts a new worker. (One internal: asyncio's subprocess
transport, `Process._transport`, closed at once by `close`, checked on Python 3.11 and 3.13.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

from addon.request.decoding import decode_body

logger = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024  # bytes, as sent and decoded: bodies up to this are read on the event loop
JOB_TIMEOUT = 30.0  # seconds a job may take before the worker is killed (31 MB of JSON: about 1 s)
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds addon/
_SERVE = f"import sys; sys.path.insert(0, {_ROOT!r}); import addon.request.bodyworker; addon.request.bodyworker.serve()"


class WorkerFailed(Exception):
    """The worker did not answer: it could not start, died, or took longer than JOB_TIMEOUT."""


def is_large(raw: bytes | None, content_encoding: str | None) -> bool:
    """Is the body over SMALL_BODY bytes, as sent or once decoded? A compressed body is decoded here
    only up to the bound; one that cannot be decoded counts as small (nothing reads it further)."""
    if not raw:
        return False
    if len(raw) > SMALL_BODY:
        return True
    if not content_encoding:
        return False
    try:
        return not decode_body(raw, content_encoding, SMALL_BODY).complete
    except ValueError:
        return False


class BodyWorker:
    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.jobs = 0  # jobs run, for tests and figures

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def run(self, job: str, body: bytes | None, *args: Any) -> tuple[bytes | None, Any]:
        """`job` (a name of JOBS) called with `body` and `args` in the worker: the body it gives back
        (None: none) and its other result; what it raises, raised here. Bodies travel outside the
        pickles, a CHUNK at a time, so that no turn of the event loop copies a large one whole but once,
        when it comes back.

        Raises:
            WorkerFailed: no answer.
        """
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # (a test's new event loop: a new worker too)
            self.close()
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            proc = await self._started()
            assert proc.stdin is not None and proc.stdout is not None
            answered = False
            try:
                async with asyncio.timeout(JOB_TIMEOUT):
                    await _send(proc.stdin, (job, args), body)
                    (ok, value), body = await _receive(proc.stdout)
                answered = True
            except TimeoutError:
                raise WorkerFailed(f"it took longer than {JOB_TIMEOUT:g} s, and was stopped") from None
            except (OSError, EOFError, asyncio.IncompleteReadError) as e:
                raise WorkerFailed(f"it stopped ({type(e).__name__})") from None
            finally:
                if not answered:  # (cancelled too: its answer, still to come, must not be the next job's)
                    self.close()
            self.jobs += 1
        if not ok:
            raise value
        return body, value

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _SERVE,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
                start_new_session=True,  # Ctrl-C at the terminal is for mitmdump, which closes the worker
                limit=2**20,
            )  # fmt: skip
        except OSError as e:
            raise WorkerFailed(f"it cannot start: {e.strerror}") from None
        logger.debug(f"rules: started the body worker (pid {self._proc.pid}) for bodies over {SMALL_BODY // 1024} KiB")
        return self._proc

    def close(self) -> None:
        """Stop the worker, if there is one (at once: shut-down does not wait for a job)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        # asyncio's transport, closed now (its pipes too) and not at garbage collection, when the loop
        # may be closed already; asyncio.subprocess.Process has no public close()
        transport = getattr(proc, "_transport", None)
        try:
            if transport is not None:
                transport.close()
            elif proc.stdin is not None:
                proc.stdin.close()
        except RuntimeError:  # the loop it belonged to is closed (a test's): nothing left to close
            pass


WORKER = BodyWorker()  # the one the hooks use; Pipeline.done closes it

# a message: its head (_HEAD: the pickle's length, the body's length or NO_BODY), the pickle, the body
_HEAD = struct.Struct("!QQ")
NO_BODY = 2**64 - 1
CHUNK = 2**20  # bytes of a body handed to the pipe at a time (a copy of this much per turn of the loop)


async def _send(writer: asyncio.StreamWriter, obj: Any, body: bytes | None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEAD.pack(len(data), NO_BODY if body is None else len(body)) + data)
    view = memoryview(body or b"")
    for at in range(0, len(view), CHUNK):
        writer.write(view[at : at + CHUNK])
        await writer.drain()  # waits until the pipe has taken most of it
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, bytes | None]:
    size, body_size = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    obj = pickle.loads(await reader.readexactly(size))
    if body_size == NO_BODY:
        return obj, None
    parts = []
    while body_size > 0:
        parts.append(await reader.readexactly(min(CHUNK, body_size)))
        body_size -= len(parts[-1])
    return obj, b"".join(parts)


# in the worker


def judge(raw: bytes, content_encoding: str | None, json_field: tuple[str, ...], flow_state: dict | None,
          filters: tuple[str, ...]) -> tuple[None, tuple[bool, bool, tuple[bool, ...]]]:  # fmt: skip
    """Stream detection and `~b` filters on one decoding: (no body, (streaming, decoded past the bound,
    whether each filter matches the flow whose state is `flow_state`, its request's body being `raw`))."""
    from mitmproxy import flowfilter, http

    from addon.request.decoding import decoded_request
    from addon.request.streamdetect import MAX_JSON_BODY, json_says_streaming

    body, overlong = raw, False
    if content_encoding:
        try:
            body, complete = decode_body(raw, content_encoding, MAX_JSON_BODY)
            overlong = not complete
        except ValueError:
            body = b""
    streaming = not overlong and len(raw) <= MAX_JSON_BODY and json_says_streaming(body, json_field)
    passes: tuple[bool, ...] = ()
    if filters and flow_state is not None:
        flow_state["request"]["content"] = raw  # sent once, as the body
        flow = http.HTTPFlow.from_state(flow_state)
        with decoded_request(flow.request, MAX_JSON_BODY):
            passes = tuple(bool(_filter(text, flowfilter)(flow)) for text in filters)
    return None, (streaming, overlong, passes)


_FILTERS: dict[str, Any] = {}


def _filter(text: str, flowfilter: Any) -> Any:
    if text not in _FILTERS:
        _FILTERS[text] = flowfilter.parse(text)
    return _FILTERS[text]


def _edit(*args: Any) -> Any:
    from addon.request.jsonbody import edit

    return edit(*args)


JOBS = {"judge": judge, "edit": _edit}


def serve() -> None:
    """The worker's loop: read a job, run it, write its result; until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # mitmdump decides when the worker ends
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe

    def read(n: int) -> bytes:
        data = stdin.read(n)
        if len(data) < n:
            os._exit(0)  # mitmdump closed the pipe, or is gone
        return data

    while True:
        size, body_size = _HEAD.unpack(read(_HEAD.size))
        data = read(size)
        body = None if body_size == NO_BODY else read(body_size)
        out = None
        try:
            job, args = pickle.loads(data)
            out, value = JOBS[job](body, *args)
            answer = pickle.dumps((True, value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # sent back and raised there: a NotEditable, or a bug
            out = None
            try:
                answer = pickle.dumps((False, e), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                answer = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
        stdout.write(_HEAD.pack(len(answer), NO_BODY if out is None else len(out)) + answer)
        if out is not None:
            stdout.write(out)
        stdout.flush()
