"""Upstreams for scripts/bench, each in a process of its own, on 127.0.0.1 only.

    python scripts/bench_servers.py fast --port 9001
    python scripts/bench_servers.py protected --port 9002 --accept tok-a

`fast` is a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length bodies), so that
the throughput scenarios measure the proxy and not the upstream:

- any path: a small chat-completion JSON answer (about 300 bytes);
- a path ending in `/echo`: the request line and headers it received, as JSON (the bench checks that the
  rules were applied before it measures anything);
- a POST whose JSON body has `"stream": true`, or any request with `Accept: text/event-stream`:
  Server-Sent Events, `?events=N&interval_ms=M` (default 50 events 20 ms apart), each event
  carrying `sent_at`, the upstream's time.time() just before it was written;
- a path ending in `/big`, `?bytes=N`: N bytes of `text/event-stream` in 64 KiB events, written as fast as the
  reader takes them (flow control honoured), for the memory scenario;
- `POST /__bench/refuse-next?count=N` (default 1): the next N POSTs to `/v1/chat/completions` are answered
  403 (a refused token), later ones as usual: refusals on cue, for the recovered-stream scenario. It
  answers how many are still to be refused and how many were (`{"pending": n, "refused": m}`).

`protected` is scripts/fake_upstream.py's ProtectedAPI under hypercorn, plus a control
route for the bench: `POST /__bench/accept` (body: accepted tokens, one per line) sets
`ProtectedAPI.tokens`, and `GET /__bench/count` answers how many requests it received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

SMALL = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the bench upstream"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
}).encode()
SMALL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(SMALL)).encode() + b"\r\n\r\n" + SMALL
)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
BIG_EVENT = 64 * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


REFUSAL = json.dumps({"error": {"message": "unknown account", "type": "forbidden"}}).encode()
REFUSAL_RESPONSE = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(REFUSAL)).encode() + b"\r\n\r\n" + REFUSAL
)


class FastHTTP(asyncio.Protocol):
    refusals = {"pending": 0, "refused": 0}  # refusals on cue, for every connection

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a streamed answer is being written: later requests wait in buf
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc) -> None:
        self.can_write.set()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._serve()

    def _serve(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, target, _ = (head[0].split(" ") + ["", ""])[:3]
            path, _, query = target.partition("?")
            if "://" in path:  # absolute form: keep the path
                path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
            self._respond(method, path, parse_qs(query), headers, body, head)
            if headers.get("connection", "").lower() == "close" and not self.busy and self.transport:
                self.transport.close()

    def _respond(self, method, path, query, headers, body, head) -> None:
        assert self.transport is not None
        if path.endswith("/echo"):
            data = json.dumps({"request_line": head[0], "headers": [line.split(":", 1) for line in head[1:]]}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(data), data))
            return
        if path == "/__bench/refuse-next":
            FastHTTP.refusals["pending"] += int(query.get("count", ["1"])[0])
            data = json.dumps(FastHTTP.refusals).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(data), data))
            return
        if method == "POST" and path == "/v1/chat/completions" and FastHTTP.refusals["pending"]:
            FastHTTP.refusals["pending"] -= 1
            FastHTTP.refusals["refused"] += 1
            self.transport.write(REFUSAL_RESPONSE)
            return
        if path.endswith("/big"):
            self._stream(self._big(int(query.get("bytes", ["1048576"])[0])))
            return
        wants_sse = "text/event-stream" in headers.get("accept", "")
        if wants_sse or (method == "POST" and (b'"stream": true' in body or b'"stream":true' in body)):
            events = int(query.get("events", ["50"])[0])
            interval = int(query.get("interval_ms", ["20"])[0]) / 1000
            self._stream(self._sse(events, interval))
            return
        self.transport.write(SMALL_RESPONSE)

    def _stream(self, writer) -> None:
        self.busy = True
        task = asyncio.get_running_loop().create_task(writer)
        task.add_done_callback(self._streamed)

    def _streamed(self, task: asyncio.Task) -> None:
        self.busy = False
        if not task.cancelled() and task.exception() is not None and self.transport:
            self.transport.abort()
            return
        self._serve()

    async def _sse(self, events: int, interval: float) -> None:
        t = self.transport
        t.write(SSE_HEAD)
        start = time.monotonic()
        for i in range(events):
            # a fixed schedule (not sleep-after-write), so one late event does not shift the rest
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.transport is None:
                return
            event = json.dumps({"i": i, "sent_at": time.time(), "choices": [{"delta": {"content": f"w{i} "}}]})
            t.write(_chunk(b"data: " + event.encode() + b"\n\n"))
        t.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def _big(self, total: int) -> None:
        t = self.transport
        t.write(SSE_HEAD)
        payload = b"data: " + b"x" * (BIG_EVENT - 8) + b"\n\n"
        left = total
        while left > 0:
            await self.can_write.wait()
            if self.transport is None:
                return
            piece = payload if left >= len(payload) else b"data: " + b"x" * max(0, left - 8) + b"\n\n"
            t.write(_chunk(piece))
            left -= len(piece)
        t.write(b"0\r\n\r\n")


async def serve_fast(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastHTTP, "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"fast upstream listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def serve_protected(port: int, accept: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_upstream import ProtectedAPI, read_body  # noqa: E402
    from hypercorn.asyncio import serve  # noqa: E402
    from hypercorn.config import Config  # noqa: E402

    api = ProtectedAPI(tokens=set(accept))

    async def app(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/__bench/"):
            body = await read_body(receive)
            if scope["path"] == "/__bench/accept":
                api.tokens = {t for t in body.decode().split() if t}
                answer = {"accepted": len(api.tokens)}
            else:
                answer = {"received": len(api.received), "statuses": [r.status for r in api.received]}
                if scope["path"] == "/__bench/clear":
                    api.received.clear()
            data = json.dumps(answer).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        await api(scope, receive, send)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.backlog = 1024
    print(f"protected upstream listening on http://127.0.0.1:{port}", flush=True)
    asyncio.run(serve(app, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["fast", "protected"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accept", action="append", default=[], help="protected: a token it accepts (repeatable)")
    args = parser.parse_args()
    if args.kind == "fast":
        asyncio.run(serve_fast(args.port))
    else:
        serve_protected(args.port, args.accept)


if __name__ == "__main__":
    main()
