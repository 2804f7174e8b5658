"""A small local service that behaves like a protected, streaming chat API.

It refuses (403) requests that do not look the way the real service demands:
a browser User-Agent, `Accept: text/event-stream` on streaming calls and
`application/json` on the others, an `X-Captcha-Token` that starts with `cap-`,
and an account token in the `session` cookie from its list of known tokens.
Accepted calls to `/v1/chat/completions` answer like OpenAI's API, streamed as
Server-Sent Events when the JSON body says `"stream": true`.

Under `/nextjs-api/stream/` it behaves like a chat front-end of the kind issue 16
describes: the account token in the `arena-auth-prod-v1` cookie, a Cloudflare
clearance in the `cf_clearance` cookie (when `clearances` is set; otherwise a
challenge page, "Just a moment..."), and the reCAPTCHA token in the JSON body's
`recaptchaV3Token` (the body may be gzip- or deflate-encoded).

Every request it receives is recorded (and printed with `--log`), so the demo
and the tests can show exactly what arrived. Serves HTTP/1.1, and with a
certificate HTTPS with HTTP/2. Only ever listens on loopback.

    python scripts/fake_upstream.py --port 8765 --tokens demo/tokens.txt --log
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import secrets
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config


@dataclass
class Received:
    method: str
    path: str
    query: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float
    status: int | None = None  # what the upstream answered
    client: str = ""  # the address the request came from (through an upstream proxy: that proxy's)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def cookie(self, name: str) -> str | None:
        jar = SimpleCookie()
        for value in self.header_all("cookie"):
            jar.load(value)
        return jar[name].value if name in jar else None

    def decoded_body(self) -> bytes:
        """The body without its Content-Encoding (gzip or deflate); ValueError when it does not decode."""
        coding = (self.header("content-encoding") or "").strip().lower()
        try:
            if coding == "gzip":
                return gzip.decompress(self.body)
            if coding == "deflate":
                return zlib.decompress(self.body)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"the {coding} body does not decode: {e}") from None
        if coding not in ("", "identity"):
            raise ValueError(f"unknown content encoding {coding}")
        return self.body

    def json(self):
        return json.loads(self.decoded_body())


@dataclass
class ProtectedAPI:
    """The ASGI app. `tokens`: accepted account tokens; `protect=False` accepts anything."""

    tokens: set[str] = field(default_factory=set)
    protect: bool = True
    rejected_captchas: set[str] = field(default_factory=set)  # refused as "recaptcha validation failed"
    retry_after: str | None = None  # sent with every refusal of an account token
    refuse_all: str | None = None  # refuse every request with this message (like an IP ban)
    banned: set[str] = field(default_factory=set)  # addresses whose every request is refused (403 "address banned")
    revoked: set[str] = field(default_factory=set)  # account tokens answered 401 "session revoked" (not 403)
    refusal_delay: float = 0.0  # seconds a refusal waits before it is sent (keeps requests in flight with one token)
    padding: dict[int, int] = field(default_factory=dict)  # status -> bytes of filler in JSON answers
    # the chat front-end under /nextjs-api/stream/: the cf_clearance cookies it accepts (None: it asks for
    # none), and what to call when it answers with a challenge page (a stand-in for a browser solving it)
    clearances: set[str] | None = None
    clearance_by_address: dict[str, str] | None = None  # or: the one cf_clearance each address may use
    on_challenge: Callable[[], None] | None = None
    chunks: int = 5
    interval: float = 0.2  # seconds between streamed events
    stall_after: int | None = None  # a stream goes silent after this many events, until the client hangs up
    linger: float = 0.0  # seconds a stream waits after its `data: [DONE]` before it ends (unless the client left)
    refuse_odd: bool = False  # refuse the 1st, 3rd, 5th… request: each one then recovers with one retry
    firehose: int = 0  # a stream is this many bytes of 64 KiB events, sent as fast as the connection takes them
    firehose_sent: int = 0  # bytes of them sent so far, all streams together
    error_first: set[str] = field(default_factory=set)  # tokens whose 200 stream starts with an error event
    # keep sessions alive, as the LMArena bridges see `arena-auth-prod-v1` refreshed: every accepted
    # request is answered with `Set-Cookie: session=<new value>`, and from then on only the new value is accepted
    renew_sessions: bool = False
    renewed: dict[str, str] = field(default_factory=dict)  # old value -> the value that replaced it
    log: bool = False
    received: list[Received] = field(default_factory=list)
    events_sent: int = 0  # streamed events, all streams together
    hung_up: threading.Event = field(default_factory=threading.Event)  # a client left a stream before its end

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        body = await read_body(receive)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        rec = Received(
            scope["method"], scope["path"], scope["query_string"].decode(), scope["http_version"], headers, body, time.time(),
            client=(scope.get("client") or ("",))[0],
        )
        self.received.append(rec)
        if self.log:
            print(f"upstream got {rec.method} {rec.path} HTTP/{rec.http_version}", flush=True)
            for k, v in rec.headers:
                print(f"    {k}: {v}", flush=True)
        rec.status = 200
        if rec.path.startswith(ARENA_PATH):
            return await self._arena(send, rec)
        if rec.path == "/echo":
            return await self._json(send, 200, {"method": rec.method, "headers": rec.headers, "body": body.decode(errors="replace")})
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        streaming = isinstance(payload, dict) and payload.get("stream") is True
        refusal = self.refusal(rec, streaming) if self.protect else None
        if refusal == "unknown account" and rec.cookie("session") in self.revoked:
            rec.status = 401
            return await self._json(send, 401, {"error": {"message": "session revoked", "type": "unauthorized"}})
        if refusal:
            rec.status = 403
            extra = [(b"retry-after", self.retry_after.encode())] if self.retry_after and refusal == "unknown account" else []
            await asyncio.sleep(self.refusal_delay)
            return await self._json(send, 403, {"error": {"message": refusal, "type": "forbidden"}}, extra)
        renewal = self._renew(rec.cookie("session")) if self.renew_sessions else []
        if rec.path == "/v1/chat/completions" and streaming:
            return await self._stream(send, receive, payload, rec.cookie("session") in self.error_first, renewal)
        if rec.path == "/v1/chat/completions":
            return await self._json(send, 200, completion(payload), renewal)
        return await self._json(send, 200, {"ok": True, "path": rec.path}, renewal)

    def _renew(self, old: str | None) -> list[tuple[bytes, bytes]]:
        """A new session value for an accepted one: it replaces the old in `tokens`, and a Set-Cookie says so."""
        if old is None:
            return []
        new = f"sess-{len(self.renewed) + 1:03d}-{secrets.token_hex(8)}"
        self.tokens.discard(old)
        self.tokens.add(new)
        self.renewed[old] = new
        return [(b"set-cookie", f"session={new}; Path=/; HttpOnly; Secure".encode())]

    def refusal(self, rec: Received, streaming: bool) -> str | None:
        """Why the real service would refuse this request, or None."""
        if self.refuse_all:
            return self.refuse_all
        if rec.client in self.banned:
            return "address banned"
        if self.refuse_odd and len(self.received) % 2:
            return "unknown account"
        if "Mozilla/5.0" not in (rec.header("user-agent") or ""):
            return "browser required"
        wanted = "text/event-stream" if streaming else "application/json"
        if wanted not in (rec.header("accept") or ""):
            return f"Accept must be {wanted}"
        captcha = rec.header("x-captcha-token") or ""
        if not captcha.startswith("cap-") or captcha in self.rejected_captchas:
            return "recaptcha validation failed"
        if rec.cookie("session") not in self.tokens:
            return "unknown account"
        return None

    async def _arena(self, send, rec: Received) -> None:
        """The chat front-end: a challenge page without a good clearance, else its own refusals, else an answer."""
        why = self.arena_refusal(rec) if self.protect else None
        if why == CHALLENGE:
            rec.status = 403
            if self.on_challenge is not None:
                self.on_challenge()
            page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>Checking your browser</body></html>"
            headers = [(b"content-type", b"text/html; charset=UTF-8"), (b"content-length", str(len(page)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": page})
            return
        if why:
            rec.status = 403
            await asyncio.sleep(self.refusal_delay)
            return await self._json(send, 403, {"error": why})
        return await self._json(send, 200, {"ok": True, "path": rec.path, "id": rec.json().get("id")})

    def arena_refusal(self, rec: Received) -> str | None:
        if "Mozilla/5.0" not in (rec.header("user-agent") or ""):
            return "browser required"
        if self.clearances is not None and rec.cookie("cf_clearance") not in self.clearances:
            return CHALLENGE
        if self.clearance_by_address is not None and rec.cookie("cf_clearance") != self.clearance_by_address.get(rec.client):
            return CHALLENGE
        if rec.cookie("arena-auth-prod-v1") not in self.tokens:
            return "unknown account"
        try:
            body = rec.json()
        except ValueError:
            return "bad body"
        captcha = body.get("recaptchaV3Token") if isinstance(body, dict) else None
        if not isinstance(captcha, str) or not captcha.startswith("cap-") or captcha in self.rejected_captchas:
            return "recaptcha validation failed"
        return None

    async def _json(self, send, status: int, obj, extra_headers=()) -> None:
        if self.padding.get(status):
            obj = {**obj, "padding": "x" * self.padding[status]}
        data = json.dumps(obj).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra_headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, send, receive, payload, error_first: bool = False, extra_headers=()) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *extra_headers]})
        disconnect = asyncio.ensure_future(receive())  # once the body is read, this waits for the client to leave
        try:
            if self.firehose:
                return await self._firehose(send, disconnect)
            if error_first:  # a 200 that fails inside, as chat front-ends answer; the events still follow
                error = {"error": {"message": "upstream session expired", "type": "server_error"}}
                await send({"type": "http.response.body", "body": f"event: error\ndata: {json.dumps(error)}\n\n".encode(),
                            "more_body": True})
            words = [f"word{i} " for i in range(self.chunks)]
            for i, word in enumerate(words):
                if i and await self._left(disconnect, None if i == self.stall_after else self.interval):
                    return
                event = chunk(payload, {"content": word}, None, time.time())
                await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True})
                self.events_sent += 1
            end = chunk(payload, {}, "stop", time.time())
            last = f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()
            await send({"type": "http.response.body", "body": last, "more_body": bool(self.linger)})
            if self.linger and not await self._left(disconnect, self.linger):
                await send({"type": "http.response.body", "body": b""})
        finally:
            disconnect.cancel()

    async def _firehose(self, send, disconnect: asyncio.Future) -> None:
        event = b"data: " + b"x" * (65536 - 8) + b"\n\n"
        for _ in range(self.firehose // len(event)):
            if disconnect.done():
                self.hung_up.set()
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
            self.firehose_sent += len(event)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _left(self, disconnect: asyncio.Future, wait: float | None) -> bool:
        """Wait `wait` seconds (None: for ever); True, and `hung_up` set, when the client left meanwhile."""
        done, _ = await asyncio.wait({disconnect}, timeout=wait)
        if done:
            self.hung_up.set()
        return bool(done)


ARENA_PATH = "/nextjs-api/stream/"
CHALLENGE = "challenge"  # the refusal that is answered with a challenge page


def completion(payload) -> dict:
    return {
        "id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()),
        "model": payload.get("model", "local") if isinstance(payload, dict) else "local",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }


def chunk(payload, delta: dict, finish: str | None, sent_at: float) -> dict:
    # sent_at lets a client compare when each event left the upstream with when it arrived
    return {
        "id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(sent_at), "sent_at": sent_at,
        "model": payload.get("model", "local"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class UpstreamServer:
    """Runs the app with hypercorn in a background thread (for tests and the demo)."""

    def __init__(self, app: ProtectedAPI, port: int, certfile: str | None = None, keyfile: str | None = None) -> None:
        self.app, self.port = app, port
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{port}"]
        self.config.accesslog = None
        self.config.errorlog = None
        if certfile:
            self.config.certfile, self.config.keyfile = certfile, keyfile
            self.config.alpn_protocols = ["h2", "http/1.1"]
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()

        async def main() -> None:
            self._ready.set()
            await serve(self.app, self.config, shutdown_trigger=self._stop.wait)

        self._loop.run_until_complete(main())

    def start(self) -> UpstreamServer:
        self._thread.start()
        self._ready.wait(10)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


def demo_tokens(path: Path) -> set[str]:
    """The tokens of a tokens file that the demo upstream accepts: all but the 'expired' ones."""
    lines = (t.strip() for t in path.read_text().splitlines())
    return {t for t in lines if t and not t.startswith("#") and "expired" not in t}


def wait_for_port(port: int, timeout: float = 15.0, proc=None, poll: float = 0.05) -> None:
    """Return once something accepts connections on 127.0.0.1:port (`proc`: fail early if it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s") from None
            time.sleep(poll)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Ask a child process to end (SIGTERM, so mitmdump runs its shut-down hooks); kill it after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def read_body(receive) -> bytes:
    """The whole request body of an ASGI request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tokens", type=Path, help="file of account tokens, one per line; those with 'expired' in them are refused")
    parser.add_argument("--log", action="store_true", help="print every request received")
    parser.add_argument("--renew-sessions", action="store_true",
                        help="answer every accepted request with Set-Cookie: session=<new value>, and accept only "
                        "the new value from then on (a session kept alive)")
    args = parser.parse_args()
    tokens = set()
    if args.tokens:
        tokens = demo_tokens(args.tokens)
    server = UpstreamServer(ProtectedAPI(tokens=tokens, log=args.log, renew_sessions=args.renew_sessions), args.port).start()
    print(f"fake upstream listening on http://127.0.0.1:{args.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
