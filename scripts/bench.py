"""Benchmarks of the addon against bare mitmdump, on loopback only; writes BENCHMARKS.md.

Run it through `scripts/bench` (which sets up .venv and installs wrk and redis-server when they are missing):

    scripts/bench             # the full run on the venv's mitmproxy line: writes benchmarks/mitmproxy-VERSION.json
                              # (every figure, raw) and .md (every figure, readable), then BENCHMARKS.md from
                              # the runs of every line kept there
    scripts/bench --render    # BENCHMARKS.md again from benchmarks/, measuring nothing
    scripts/bench --quick     # under 2 minutes, fewer and shorter rounds; writes only a scratch copy
    scripts/bench --only 1,2  # some scenarios (numbers as in BENCHMARKS.md)
    scripts/bench --quick --addon ../other-worktree/addon/main.py   # measure a change kept elsewhere
    scripts/bench --only 1 --compare ../old-worktree/addon/main.py  # scenario 1 against another version, same rounds

Every process listens on 127.0.0.1 only; every run is bounded in requests or seconds.
On a machine with two cores or more, each mitmdump is pinned to the second core and the
load generator, the upstreams and this driver to the first, so that the proxy under test
has a core to itself and the numbers measure it, not the client.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers  # noqa: E402
import fake_upstream  # noqa: E402
from latency_relay import LatencyRelay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent  # the venv running this script
PYTHON = VENV / "python"
MITMDUMP = VENV / "mitmdump"
SERVERS = ROOT / "scripts" / "bench_servers.py"
ADDON_MAIN = ROOT / "addon" / "main.py"  # --addon: another checkout's, to compare a change

CPUS = sorted(os.sched_getaffinity(0))
PINNED = len(CPUS) >= 2
PROXY_CPUS = {CPUS[-1]} if PINNED else None
OTHER_CPUS = set(CPUS[:-1]) if PINNED else None

UA_BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
UA_SDK = "OpenAI/Python 1.54.0"
CHAT_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}],"stream":false}'
STREAM_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}],"stream":true}'
SDK_HEADERS = [
    ("User-Agent", UA_SDK), ("Accept", "application/json"), ("Content-Type", "application/json"),
    ("X-Stainless-Lang", "python"), ("X-Stainless-OS", "Linux"), ("X-Stainless-Runtime", "CPython"),
    ("X-Stainless-Package-Version", "1.54.0"), ("Cookie", "theme=dark; tracking=abc123; session=none"),
]  # fmt: skip


@dataclass
class Settings:
    quick: bool
    rounds: int  # interleaved rounds of the throughput and latency scenarios
    tput_seconds: float  # one wrk run, throughput
    lat_seconds: float  # one wrk run, latency
    connections: int  # wrk connections, throughput
    sse_rounds: int
    big_bytes: int  # scenario 5
    recovery_rounds: int  # scenario 6
    storm_rounds: int  # scenario 7
    captcha_rounds: int  # scenario 8
    startup_rounds: int  # scenario 9
    reload_rounds: int
    sse_recovery_rounds: int  # scenario 10
    shared_rounds: int  # scenario 11: throughput rounds (bare, file store, Redis store)
    shared_seconds: float  # one wrk run of scenario 11
    propagation_rounds: int  # scenario 11: refusals through proxy A with steady requests through proxy B
    idle_rounds: int  # scenario 11: the same with B idle for IDLE_GAP seconds


FULL = Settings(False, rounds=6, tput_seconds=8, lat_seconds=5, connections=10, sse_rounds=5, big_bytes=1 << 30,
                recovery_rounds=30, storm_rounds=8, captcha_rounds=3, startup_rounds=5, reload_rounds=5,
                sse_recovery_rounds=8, shared_rounds=5, shared_seconds=4, propagation_rounds=12, idle_rounds=5)
QUICK = Settings(True, rounds=2, tput_seconds=3, lat_seconds=2, connections=10, sse_rounds=2, big_bytes=256 << 20,
                 recovery_rounds=10, storm_rounds=2, captcha_rounds=1, startup_rounds=2, reload_rounds=2,
                 sse_recovery_rounds=3, shared_rounds=2, shared_seconds=2, propagation_rounds=4, idle_rounds=2)


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    fake_upstream.wait_for_port(port, timeout, proc, poll=0.005)


class Proc:
    """A child process with its output in a log file; stopped by its own pid only."""

    running: list[Proc] = []

    def __init__(self, name: str, args: list[str], workdir: Path, cpus: set[int] | None, port: int) -> None:
        self.name, self.args, self.cpus, self.port = name, [str(a) for a in args], cpus, port
        self.logfile = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, wait: bool = True) -> Proc:
        cpus = self.cpus
        log = open(self.logfile, "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        log.close()
        Proc.running.append(self)
        if wait:
            wait_for_port(self.port, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self) -> None:
        fake_upstream.stop_process(self.proc)
        if self in Proc.running:
            Proc.running.remove(self)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (utime + stime of /proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 (state) on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status_kib(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.running):
            p.stop()


class Proxy(Proc):
    def __init__(self, name: str, workdir: Path, rules: Path | None = None, extra: tuple[str, ...] = (),
                 main: Path | None = None) -> None:
        """`rules`: run the addon with that file; `main`: another checkout's addon/main.py than ADDON_MAIN
        (it puts its own checkout first on sys.path, so the `addon` package is that checkout's)."""
        port = free_port()
        args = [MITMDUMP, "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--set", f"confdir={workdir / 'mitmproxy-conf'}", "--set", "flow_detail=0"]  # fmt: skip
        if rules is not None:
            args += ["-s", main or ADDON_MAIN, "--set", f"rules={rules}"]
        super().__init__(name, [*args, *extra], workdir, PROXY_CPUS, port)
        self.rules = rules

    def errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if re.search(r"error|traceback|exception", line, re.I)]


def upstream(kind: str, workdir: Path, *extra: str) -> Proc:
    port = free_port()
    return Proc(f"upstream-{kind}", [PYTHON, SERVERS, kind, "--port", str(port), *extra], workdir, OTHER_CPUS, port).start()


# ----------------------------------------------------------------------------- HTTP clients


def build_request(method: str, port: int, path: str, headers: list[tuple[str, str]], body: bytes = b"",
                  absolute: bool = True) -> bytes:
    target = f"http://127.0.0.1:{port}{path}" if absolute else path
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class BodyReader:
    """Incremental HTTP/1.1 response parsing over a blocking socket: yields (arrival time, decoded bytes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}

    def _recv(self) -> float:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("connection closed early")
        self.buf += data
        return time.time()

    def head(self) -> None:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def body(self):
        now = time.time()
        if "chunked" in self.headers.get("transfer-encoding", ""):
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    now = self._recv()
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                del self.buf[: eol + 2]
                if size == 0:
                    while self.buf.find(b"\r\n") < 0:
                        self._recv()
                    return
                now = yield from self._exactly(size, now)
                while len(self.buf) < 2:
                    now = self._recv()
                del self.buf[:2]
        else:
            yield from self._exactly(int(self.headers.get("content-length", "0")), now)

    def _exactly(self, size: int, now: float):
        """Yield (arrival time, bytes) for the next `size` body bytes; return the last arrival time."""
        while size > 0:
            if not self.buf:
                now = self._recv()
            take = min(size, len(self.buf))
            yield now, bytes(self.buf[:take])
            del self.buf[:take]
            size -= take
        return now


def fetch(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes, float]:
    """One request on a fresh connection: (status, headers, body, seconds from connect to the last byte)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        reader = BodyReader(sock)
        reader.head()
        body = b"".join(piece for _, piece in reader.body())
    return reader.status, reader.headers, body, time.perf_counter() - t0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, body
            body += (await reader.readexactly(size + 2))[:-2]
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


def burst(port: int, per_connection: list[list[bytes]], timeout: float = 120) -> tuple[float, list[int], list[bytes]]:
    """Open one connection per list, then send each list's requests in turn on its connection, all
    connections at once. Returns the wall time from the first send to the last answer."""

    async def main():
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in per_connection))
        statuses: list[int] = []
        bodies: list[bytes] = []

        async def run(conn, requests):
            reader, writer = conn
            for req in requests:
                writer.write(req)
                status, body = await _read_response(reader)
                statuses.append(status)
                bodies.append(body)
            writer.close()

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(run(c, r) for c, r in zip(conns, per_connection))), timeout)
        return time.perf_counter() - t0, statuses, bodies

    return asyncio.run(main())


# scenario 11, propagation: tokens.cooldown of proxies A and B; seconds of B's requests looked at after each
# refusal through A (and 0.2 s before it); the idle variant's time without requests through B, and the
# Retry-After of its refusals (longer, so that the token still cools when B's request comes)
SHARED_COOLDOWN, SHARED_WINDOW, IDLE_GAP, IDLE_RETRY_AFTER = 2.0, 1.2, 2.0, 3


class SteadyClient:
    """One client sending requests through a proxy one after another on a kept-alive connection, while
    `go` is set; `sent[n]` is when request n left it. For scenario 11, in a thread of its own."""

    def __init__(self, port: int, request: Callable[[int], bytes]) -> None:
        self.port, self.request = port, request
        self.sent: dict[int, float] = {}
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.go, self.stop, self._idle = threading.Event(), threading.Event(), threading.Event()

    def pause(self) -> None:
        """Stop sending; returns once no request is under way."""
        self.go.clear()
        if not self._idle.wait(15):
            raise RuntimeError("steady client: a request did not end within 15 s")

    def run(self) -> None:
        sock: socket.socket | None = None
        n = 0
        try:
            while not self.stop.is_set():
                self._idle.clear()  # before looking at `go`, so that pause() waits for a request begun now
                if not self.go.is_set():
                    self._idle.set()
                    self.go.wait(0.05)
                    continue
                n += 1
                request = self.request(n)
                try:
                    if sock is None:
                        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.sent[n] = time.time()
                    sock.sendall(request)
                    reader = BodyReader(sock)
                    reader.head()
                    for _ in reader.body():
                        pass
                    self.statuses.append(reader.status)
                    if reader.headers.get("connection", "").lower() == "close":
                        sock.close()
                        sock = None
                except OSError as e:
                    self.errors.append(repr(e))
                    if sock is not None:
                        sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()
            self._idle.set()


class RefusalOnCue:
    """fake_upstream.ProtectedAPI for scenario 11: once armed, the next request from proxy A (header
    `X-Bench-Client: A`) has its token refused from then on, through every proxy."""

    def __init__(self, api: fake_upstream.ProtectedAPI) -> None:
        self.api = api
        self._armed = False
        self._since = 0  # api.received's length when armed
        self._token: str | None = None

    def arm(self) -> None:
        self._since, self._token, self._armed = len(self.api.received), None, True

    def taken(self) -> tuple[str | None, float, float | None]:
        """The token refused since arm(), when A's request with it reached the upstream (which answered
        403 at once), and when A's next request (its retry with another token) did."""
        mine = [rec for rec in self.api.received[self._since:] if rec.header("x-bench-client") == "A"]
        at = next((i for i, rec in enumerate(mine) if rec.status == 403 and rec.cookie("session") == self._token), None)
        if self._token is None or at is None:
            return None, 0.0, None
        return self._token, mine[at].at, mine[at + 1].at if at + 1 < len(mine) else None

    async def __call__(self, scope, receive, send) -> None:
        if self._armed and scope["type"] == "http" and (b"x-bench-client", b"A") in scope["headers"]:
            jar: SimpleCookie = SimpleCookie()
            for name, value in scope["headers"]:
                if name == b"cookie":
                    jar.load(value.decode("latin-1"))
            token = jar["session"].value if "session" in jar else None
            if token in self.api.tokens:
                self._armed, self._token = False, token
                self.api.tokens = self.api.tokens - {token}  # a new set: the driver's thread adds it back later
        await self.api(scope, receive, send)


# ----------------------------------------------------------------------------- wrk

NOOP_SCRIPT = '''"""The addon's addons with every hook they have, each doing nothing: what mitmproxy charges for
dispatching events to a script of that shape. Generated by scripts/bench from {main}."""

import importlib.util
import inspect
import logging

from mitmproxy import hooks

_spec = importlib.util.spec_from_file_location("_bench_real_addon", {main!r})
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
_NAMES = set(hooks.all_hooks) | {{"load", "configure", "running", "done", "requestheaders", "request",
                                  "responseheaders", "response", "error"}}


async def _async_nothing(self, *args):
    pass


def _nothing(self, *args):
    pass


def _stub(addon):
    kind = type(addon)
    methods = {{name: (_async_nothing if inspect.iscoroutinefunction(getattr(kind, name)) else _nothing)
               for name in dir(kind) if name in _NAMES and callable(getattr(kind, name))}}
    return type("Nothing" + kind.__name__, (), methods)()


addons = [_stub(a) for a in _real.addons]
logging.getLogger(__name__).info(f"bench: {{len(addons)}} do-nothing addons")
'''

WRK_LUA = """
wrk.method = "POST"
wrk.path = "{path}"
wrk.body = '{body}'
{headers}
done = function(summary, latency, requests)
  io.write(string.format("BENCH requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "p50=%d p90=%d p99=%d max=%d\\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class Scraper:
    """Reads a status server's /metrics and /status every second, as Prometheus and the page would,
    while a `with` block runs (port None: does nothing)."""

    def __init__(self, port: int | None) -> None:
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reads = 0
        self.problem: str | None = None

    def __enter__(self) -> Scraper:
        if self.port is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.port is not None:
            self.stop.set()
            self.thread.join()
            if self.problem or not self.reads:
                raise RuntimeError(self.problem or "the status server answered no read during the run")

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.read_once()
            except RuntimeError as e:
                self.problem = str(e)
                return

    def read_once(self) -> None:
        """Read /metrics and /status once (RuntimeError: the server did not answer them)."""
        assert self.port is not None
        for path in ("/metrics", "/status"):
            try:
                status, _, _, _ = fetch(self.port, build_request("GET", self.port, path, [], absolute=False))
            except OSError as e:
                raise RuntimeError(f"the status server did not answer {path}: {e}") from e
            if status != 200:
                raise RuntimeError(f"the status server answered {status} for {path}")
            self.reads += 1


CALLGRIND_REQUESTS = 200  # per count in scenario 12 (a quarter of it with --quick)
CALLGRIND_WARMUP = 30  # requests before the count is zeroed


def keep_alive(proxy_port: int, upstream_port: int, n: int) -> None:
    """Send scenario 1's request n times through the proxy on one kept-alive connection, one at a time."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=300)
    try:
        for _ in range(n):
            conn.request("POST", f"http://127.0.0.1:{upstream_port}/v1/chat/completions", body=CHAT_BODY,
                         headers={"Host": f"127.0.0.1:{upstream_port}", **dict(SDK_HEADERS)})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"status {answer.status} through the proxy on port {proxy_port}")
    finally:
        conn.close()


def instruction_rows(per: dict[str, list[float]], others: dict[str, list[float]], n: int) -> dict[float, Result]:
    """Scenario 12's rows from each proxy's instructions per request on the event loop's thread (`per`) and
    on its other threads (`others`), one figure per round."""
    m = lambda name, of=per: span([x / 1e6 for x in of[name]], " M", "{:.3f}")  # noqa: E731
    f = "{:.3f}"
    noop = per_round(per["bare"], per["noop-script"])
    rows: dict[float, Result] = {}
    for number, name, target in ((12, "addon-10", 0.95), (12.25, "addon-1000", 0.90)):
        ratios = per_round(per["bare"], per[name])
        rows[number] = Result(
            12, f"instructions per request (callgrind), {'10 rules' if number == 12 else '1,000 rules'}",
            "instructions per request, bare ÷ addon, same round", f"≥ {target:.2f}",
            f"{span(ratios, fmt=f, bold=True)}; addon {m(name)}, bare {m('bare')} instructions per request; for "
            f"scale, a script shaped like the addon with hooks that do nothing: {span(noop, fmt=f)} ({m('noop-script')}); "
            f"{n} requests per count, after {CALLGRIND_WARMUP}; on other threads than the event loop's, "
            f"per request: addon {m(name, others)}, bare {m('bare', others)}",
            med(ratios) >= target,
            raw={"instructions": per[name], "bare_instructions": per["bare"], "noop_script_instructions": per["noop-script"],
                 "ratios": ratios, "requests": n, "other_threads": {k: others[k] for k in (name, "bare")}},
            part="a" if number == 12 else "b", headline=f"{med(ratios):.3f}",
        )  # fmt: skip
    on = per_round(per["addon-10"], per["addon-10-status"])
    rows[12.5] = Result(
        12, "instructions per request, 10 rules with the status server on (/metrics and /status read once in the "
        "count) against off", "instructions per request, off ÷ on, same round", "≥ 0.99 (within 0.01)",
        f"{span(on, fmt=f, bold=True)}; on {m('addon-10-status')}, off {m('addon-10')}",
        med(on) >= 0.99, raw={"instructions": per["addon-10-status"], "off_instructions": per["addon-10"], "ratios": on},
        part="s", headline=f"{med(on):.3f}",
    )  # fmt: skip
    peers = {name: per_round(per[name], per["addon-10"]) for name in ("modify-headers", "handwritten")}
    extra = {name: [(a - b) / 1e6 for a, b in zip(per[name], per["bare"])]
             for name in ("addon-10", "modify-headers", "handwritten")}
    rows[12.75] = Result(
        12, "instructions per request, 10 rules: the addon against mitmproxy's modify_headers (the rules' fixed "
        "headers only) and a hand-written script doing the job (scripts/bench_peers.py)",
        "peer ÷ addon, same round (above 1: the addon costs less)", "> 1 for both",
        f"modify_headers {span(peers['modify-headers'], fmt=f, bold=True)}, hand-written "
        f"{span(peers['handwritten'], fmt=f, bold=True)}; above bare: addon {span(extra['addon-10'], ' M', '{:.3f}')}, "
        f"modify_headers {span(extra['modify-headers'], ' M', '{:.3f}')}, hand-written "
        f"{span(extra['handwritten'], ' M', '{:.3f}')} instructions per request",
        min(med(v) for v in peers.values()) > 1,
        raw={"modify_headers_instructions": per["modify-headers"], "handwritten_instructions": per["handwritten"],
             "ratios": peers},
        part="p", headline=f"{med(peers['modify-headers']):.3f} / {med(peers['handwritten']):.3f}",
    )  # fmt: skip
    return rows


def write_wrk_script(workdir: Path, upstream_port: int) -> Path:
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in [("Host", f"127.0.0.1:{upstream_port}"), *SDK_HEADERS])
    path = workdir / "chat.lua"
    path.write_text(WRK_LUA.format(path=f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                                   body=CHAT_BODY.decode(), headers=headers))
    return path


def wrk(proxy: Proxy, script: Path, seconds: float, connections: int) -> dict[str, float]:
    """One wrk run through the proxy: wrk's figures, "rps", and "cpu_per_request" (the proxy's CPU
    seconds during the run ÷ wrk's request count)."""
    cpu_before = proxy.cpu_seconds()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{proxy.port}/"],
        capture_output=True, text=True, timeout=seconds + 60,
        preexec_fn=(lambda: os.sched_setaffinity(0, OTHER_CPUS)) if OTHER_CPUS else None,
    )  # fmt: skip
    m = re.search(r"^BENCH (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    r = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    if errors:
        raise RuntimeError(f"wrk through {proxy.name}: {errors:g} errors ({m.group(1)})")
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["cpu_per_request"] = (proxy.cpu_seconds() - cpu_before) / r["requests"]
    return r


# ----------------------------------------------------------------------------- rules files


def realistic_rules(hosts: list[str]) -> list[str]:
    """The ten rules of scenario 1, as YAML list items."""
    h = json.dumps(hosts)
    return [
        f"""  - name: browser-like
    match: {{host: {h}, path: /v1/*}}
    headers:
      User-Agent: "{UA_BROWSER}"
      X-Stainless-Lang: null
      X-Stainless-OS: null
      X-Stainless-Runtime: null
      X-Stainless-Package-Version: null""",
        f"""  - name: browser-hints
    match: {{host: {h}, path: /v1/*}}
    headers:
      Sec-Ch-Ua: '"Chromium";v="126", "Not.A/Brand";v="24"'
      Sec-Ch-Ua-Platform: '"Linux"'
      Accept-Language: "en-US,en;q=0.9\"""",
        f"""  - name: origin
    match: {{host: {h}, method: [POST, PUT, PATCH]}}
    headers: {{Origin: "https://chat.example.com", Referer: "https://chat.example.com/"}}""",
        f"""  - name: stream-accept
    match: {{host: {h}, stream: true}}
    headers: {{Accept: text/event-stream}}""",
        f"""  - name: json-accept
    match: {{host: {h}, stream: false}}
    headers: {{Accept: application/json}}""",
        f"""  - name: account
    match: {{host: {h}, path: /v1/*, method: [GET, POST]}}
    headers: {{X-Captcha-Token: "{{captcha}}"}}
    cookies: {{session: "{{token}}", tracking: null}}""",
        f"""  - name: no-debug
    match: {{host: {h}, filter: "~h X-Debug"}}
    headers: {{X-Debug: null}}""",
        f"""  - name: uploads
    match: {{host: {h}, path: "/v1/files*", method: PUT}}
    headers: {{Content-Disposition: attachment}}""",
        f"""  - name: status-page
    match: {{host: status.example.com}}
    headers: {{User-Agent: "{UA_BROWSER}"}}""",
        """  - name: internal-tools
    match: {host: "*.internal.example.net", path: /api/*}
    headers: {X-Team: bench}""",
    ]


def other_rules(hosts: list[str], n: int) -> list[str]:
    """Rules that do not apply to the benchmark's requests: 4 % for the same host on other paths,
    the rest for other hosts (exact names, one in ten a wildcard, one in fifty with a filter)."""
    h = json.dumps(hosts)
    out = []
    for i in range(n):
        if i % 25 == 0:
            out.append(f"""  - name: tenant-{i}
    match: {{host: {h}, path: "/v2/tenant{i}/*", method: [GET, POST]}}
    headers: {{X-Tenant: t{i}}}""")
        elif i % 10 == 1:
            out.append(f"""  - name: wildcard-{i}
    match: {{host: "*.t{i}.example.org", path: /api/*}}
    headers: {{X-Rule: w{i}, User-Agent: "bench/{i}"}}""")
        elif i % 50 == 2:
            out.append(f"""  - name: filtered-{i}
    match: {{host: "api{i}.svc{i % 37}.example.com", filter: "~h X-Rule-{i} & ~m POST"}}
    headers: {{X-Rule: f{i}}}""")
        else:
            out.append(f"""  - name: host-{i}
    match: {{host: ["api{i}.svc{i % 37}.example.com", "api{i}.svc{i % 37}.example.com:8443"], path: /v1/*}}
    headers: {{X-Rule: h{i}, Accept: application/json}}
    cookies: {{region: r{i % 7}}}""")
    return out


def rules_file(path: Path, rules: list[str], tokens: Path, captcha: str, strategy: str = "round_robin",
               cooldown: float = 300, store: str | None = None, namespace: str = "default",
               breaker: str = "{tokens: 3, window: 60, pause: 300}", retire_after: int | None = None) -> Path:
    """`store`: a redis:// URL, token health there (in `namespace`) instead of in a state file.
    `retire_after`: written only when given (an addon older than retirement does not know the key)."""
    where = (f"store: {store}\n  namespace: {namespace}" if store
             else f"state_file: {tokens.stem}.{path.stem}.state.json")
    if retire_after is not None:
        where += f"\n  retire_after: {retire_after}"
    text = f"""# generated by scripts/bench
rules:
{chr(10).join(rules)}

stream:
  json_field: stream

tokens:
  file: {tokens.name}
  strategy: {strategy}
  max_attempts: 3
  cooldown: {cooldown:g}
  {where}
  breaker: {breaker}

on_response:
  - match: {{status: 403, body: "(?i)recaptcha validation failed"}}
    action: refresh_captcha
  - match: {{status: [401, 403]}}
    action: rotate

captcha:
{captcha}
"""
    path.write_text(text)
    return path


def thousand(hosts: list[str]) -> list[str]:
    real, other = realistic_rules(hosts), other_rules(hosts, 990)
    return other[:500] + real[:5] + other[500:] + real[5:]


# ----------------------------------------------------------------------------- statistics


def med(xs):
    return statistics.median(xs)


def span(xs, unit: str = "", fmt: str = "{:.0f}", bold: bool = False) -> str:
    middle = f"**{fmt.format(med(xs))}**" if bold else fmt.format(med(xs))
    return f"{middle}{unit} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def per_round(xs: list[float], ys: list[float]) -> list[float]:
    """Ratios of two variants measured in the same rounds, round by round."""
    return [x / y for x, y in zip(xs, ys)]


def checkout(main: Path) -> str:
    """The checkout of an addon/main.py, for the report: its folder and commit (and whether addon/ has
    uncommitted changes)."""
    folder = main.resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return str(folder)
    changed = git("status", "--porcelain", "--", "addon")
    return f"{folder} at {head}" + (" with uncommitted changes to addon/" if changed else "")


@dataclass
class Result:
    number: int
    scenario: str
    measure: str
    target: str
    result: str
    met: bool | None  # None: not judged
    details: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    part: str = ""  # a scenario with more rows: "a", "b", … (kept in Bench.results under number plus a fraction)
    headline: str = ""  # the one figure BENCHMARKS.md shows, judged against the target (the details: `result`)
    variant: str = ""  # what tells apart rows of one label measured more than once in a run (scenario 11's delays)

    @property
    def label(self) -> str:
        return f"{self.number}{self.part}"

    @property
    def key(self) -> str:
        """Unique within a run: the label, and the variant when there is one."""
        return f"{self.label} {self.variant}".strip()


def outage_text(outages: tuple[int, float, list[str]], who: str) -> str:
    """Scenario 11: how often sharing was off during the measurement (Bench._outages)."""
    count, seconds, why = outages
    if not count:
        return "sharing stayed on throughout"
    reasons = sorted({re.sub(r"127\.0\.0\.1:\d+", "Redis", w) for w in why})
    return (f"**{who} turned sharing off {count} time(s)** ({'; '.join(reasons)}), {seconds:.1f} s in all on its "
            "own picture, then back")


def rotate(items: list, r: int) -> list:
    """Round r runs the variants in a rotated order, so that no variant is always first."""
    return items[r % len(items):] + items[: r % len(items)]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- the bench


def _log_ms(line: str) -> float | None:
    """Milliseconds since midnight of a mitmdump log line (`[HH:MM:SS.mmm] …`)."""
    m = re.match(r"\[(\d+):(\d+):(\d+\.\d+)\]", line)
    return (int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])) * 1000 if m else None


def _told_after(a: Proxy, b: Proxy, token: str) -> float | None:
    """How long after A logged its refusal of `token` B logged that another proxy had refused it (ms;
    both logs have the same clock), or None when B never said so."""
    shown = f"…{token[-4:]}"
    refused = [_log_ms(x) for x in a.log().splitlines() if f"{shown} refused (" in x]
    heard = [_log_ms(x) for x in b.log().splitlines() if f"{shown} refused through another proxy" in x]
    if not refused or not heard or refused[-1] is None or heard[-1] is None:
        return None
    return (heard[-1] - refused[-1]) % 86_400_000


class Bench:
    def __init__(self, s: Settings, workdir: Path) -> None:
        self.s, self.w = s, workdir
        self.results: dict[float, Result] = {}  # by number (a scenario's further rows: number plus a fraction)
        self.notes: list[str] = []
        self.captcha_value = "cap-bench-" + os.urandom(8).hex()
        (workdir / "captcha.txt").write_text(self.captcha_value + "\n")
        (workdir / "tokens.txt").write_text("".join(f"tok-bench-{i:04d}-{os.urandom(4).hex()}\n" for i in range(4)))
        self.recovery_tokens = [f"tok-recovery-a-{os.urandom(6).hex()}", f"tok-recovery-b-{os.urandom(6).hex()}"]
        (workdir / "tokens-recovery.txt").write_text("\n".join(self.recovery_tokens) + "\n")
        self.fast: Proc | None = None
        self.protected: Proc | None = None
        self.proxies: dict[str, Proxy] = {}
        self.redis_delays: list[float] = [0.0, 0.005, 0.05]  # scenario 11: seconds added each way to Redis
        self.compare: Path | None = None  # --compare: another checkout's addon/main.py, in scenario 1's rounds

    # set-up

    def captcha_file(self) -> str:
        return "  file: captcha.txt\n  ttl: 110"

    def start_common(self) -> None:
        log("starting the fast upstream and the three proxies (bare, addon with 10 rules, addon with 1,000 rules)")
        self.fast = upstream("fast", self.w)
        hosts = self.hosts = ["api.example.com", f"127.0.0.1:{self.fast.port}", f"localhost:{self.fast.port}"]
        tokens = self.w / "tokens.txt"
        self.rules10 = rules_file(self.w / "rules10.yaml", realistic_rules(hosts), tokens, self.captcha_file())
        self.rules1000 = rules_file(self.w / "rules1000.yaml", thousand(hosts), tokens, self.captcha_file())
        # the first start creates mitmproxy's CA in the confdir; the others find it there
        self.proxies["bare"] = Proxy("bare", self.w).start()
        self.proxies["addon-10"] = Proxy("addon-10", self.w, self.rules10).start()
        self.proxies["addon-1000"] = Proxy("addon-1000", self.w, self.rules1000).start()
        self.check_rewrites()

    def check_rewrites(self) -> None:
        """Before measuring anything: the addon proxies apply the rules, bare mitmdump does not."""
        assert self.fast
        req = build_request("POST", self.fast.port, "/v1/echo", SDK_HEADERS, CHAT_BODY)
        for name, proxy in self.proxies.items():
            status, _, body, _ = fetch(proxy.port, req)
            got = {k.lower(): v.strip() for k, v in json.loads(body)["headers"]}
            rewritten = (got.get("user-agent") == UA_BROWSER and got.get("x-captcha-token") == self.captcha_value
                         and "session=tok-bench-" in got.get("cookie", "") and "tracking" not in got.get("cookie", "")
                         and "x-stainless-lang" not in got and got.get("origin") == "https://chat.example.com")
            if status != 200 or rewritten != name.startswith("addon"):
                raise RuntimeError(f"{name}: unexpected upstream view (status {status}): {got}")
        log("checked: the addon proxies rewrite the benchmark request (token, captcha, cookies, headers); bare does not")

    # scenarios 1 and 2

    def throughput(self) -> None:
        s = self.s
        assert self.fast
        script = write_wrk_script(self.w, self.fast.port)
        noop = self.w / "noop_script.py"
        noop.write_text(NOOP_SCRIPT.format(main=str(ADDON_MAIN)))
        self.proxies["noop-script"] = Proxy("noop-script", self.w, extra=("-s", str(noop))).start()
        names = ["bare", "noop-script", "addon-10", "addon-1000"]
        if self.compare:
            names.append(self._start_other())
        if (ADDON_MAIN.parent / "status" / "server.py").exists():  # (an addon measured with --addon may predate it)
            names.append(self._start_status())
        if (ADDON_MAIN.parent / "exits").is_dir():  # (nor exits)
            names += self._start_exit()
        for name in names:  # warm-up, not recorded
            wrk(self.proxies[name], script, 1, s.connections)
        rps: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}  # CPU seconds per request
        for r in range(s.rounds):
            for name in rotate(names, r):
                with Scraper(self.status_port if name == "addon-10-status" else None):
                    out = wrk(self.proxies[name], script, s.tput_seconds, s.connections)
                rps[name].append(out["rps"])
                cpu[name].append(out["cpu_per_request"])
            log(f"throughput round {r + 1}/{s.rounds}: " + ", ".join(f"{n} {rps[n][-1]:.0f} req/s" for n in names))
        if self.compare:
            self.note_errors("addon-10-other", self.proxies["addon-10-other"])
            self.proxies.pop("addon-10-other").stop()
            self.results[1.5] = self._compare_row(rps, cpu)
        if "addon-10-status" in names:
            self.note_errors("addon-10-status", self.proxies["addon-10-status"])
            self.proxies.pop("addon-10-status").stop()
            self.results[1.75] = self._status_row(rps, cpu)
        if "addon-10-exit" in names:
            for name in ("addon-10-exit", "bare-exit"):
                self.note_errors(name, self.proxies[name])
                self.proxies.pop(name).stop()
            self.exit_proxy.stop()
            self.results[1.875] = self._exit_row(rps, cpu)
        noop_log = self.proxies["noop-script"].log()
        found = re.search(r"bench: (\d+) do-nothing addons", noop_log)
        self.addon_count = int(found.group(1)) if found else "?"
        self.proxies.pop("noop-script").stop()
        noop_ratios = [a / b for a, b in zip(rps["noop-script"], rps["bare"])]
        for number, name, target in ((1, "addon-10", 0.95), (2, "addon-1000", 0.90)):
            ratios = [a / b for a, b in zip(rps[name], rps["bare"])]
            shape = f"{self.addon_count} addon object" + ("" if self.addon_count == 1 else "s")
            self.results[number] = Result(
                number,
                "small JSON POSTs, " + ("realistic rules file (10 rules)" if number == 1 else "1,000 rules (990 for other hosts/paths)"),
                "req/s addon ÷ req/s bare, same load",
                f"≥ {target:.2f}",
                f"**{med(ratios):.3f}** ({min(ratios):.3f}–{max(ratios):.3f}); addon {span(rps[name])} req/s, "
                f"bare {span(rps['bare'])} req/s; for scale, a script shaped like the addon ({shape}) with hooks "
                f"that do nothing: "
                f"{med(noop_ratios):.3f} ({min(noop_ratios):.3f}–{max(noop_ratios):.3f})",
                med(ratios) >= target,
                raw={"rps": rps[name], "bare_rps": rps["bare"], "noop_script_rps": rps["noop-script"], "ratios": ratios},
                headline=f"{med(ratios):.3f}",
            )

    def _start_other(self) -> str:
        """--compare: a proxy with the other checkout's addon and scenario 1's ten rules (a file of its own,
        so that it keeps its own state file; written without the keys an older addon does not know)."""
        log(f"starting a proxy with the addon of {checkout(self.compare)} (10 rules) to compare with")
        rules = rules_file(self.w / "rules10-other.yaml", realistic_rules(self.hosts), self.w / "tokens.txt",
                           self.captcha_file())
        self.proxies["addon-10-other"] = Proxy("addon-10-other", self.w, rules, main=self.compare).start()
        self.check_rewrites()  # it rewrites the benchmark request as this addon does
        return "addon-10-other"

    def _start_status(self) -> str:
        """A proxy like scenario 1's with the status server on (a rules file of its own, for its own
        state file); Scraper reads its /metrics and /status every second while wrk runs through it."""
        log("starting a proxy with the status server on (10 rules)")
        rules = rules_file(self.w / "rules10-status.yaml", realistic_rules(self.hosts), self.w / "tokens.txt",
                           self.captcha_file())
        self.status_port = free_port()
        self.proxies["addon-10-status"] = Proxy("addon-10-status", self.w, rules,
                                                extra=("--set", f"status_listen=127.0.0.1:{self.status_port}")).start()
        return "addon-10-status"

    def _start_exit(self) -> list[str]:
        """Row 1x: one exit, a real upstream proxy (Debian's tinyproxy, on the upstream's CPUs), and two
        mitmdumps in upstream mode through it: bare, with mitmproxy's upstream_auth; and scenario 1's addon
        with the exit in its rules (`exits:`, the pool's `exits: all`), which routes each request itself."""
        log("starting one exit (tinyproxy) and two proxies through it: bare in upstream mode, and the addon's exit")
        port, password = free_port(), "pw-" + os.urandom(6).hex()
        conf = self.w / "tinyproxy.conf"
        conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Warning\nMaxClients 200\n"
                        f"DisableViaHeader Yes\nBasicAuth bench {password}\n")  # fmt: skip
        program = shutil.which("tinyproxy")
        assert program, "tinyproxy is missing (scripts/bench installs Debian's tinyproxy-bin)"
        self.exit_proxy = Proc("exit-tinyproxy", [program, "-d", "-c", conf], self.w, OTHER_CPUS, port).start()
        rules = rules_file(self.w / "rules10-exit.yaml", realistic_rules(self.hosts), self.w / "tokens.txt",
                           self.captcha_file())
        text = rules.read_text().replace("\ntokens:\n", "\ntokens:\n  exits: all\n", 1)
        rules.write_text(f'exits:\n  - {{name: x, url: "http://bench:{password}@127.0.0.1:{port}"}}\n' + text)
        mode = ("--mode", f"upstream:http://127.0.0.1:{port}", "--set", f"upstream_auth=bench:{password}")
        self.proxies["bare-exit"] = Proxy("bare-exit", self.w, extra=mode).start()
        self.proxies["addon-10-exit"] = Proxy("addon-10-exit", self.w, rules, extra=mode).start()
        assert self.fast
        req = build_request("POST", self.fast.port, "/v1/echo", SDK_HEADERS, CHAT_BODY)
        for name in ("bare-exit", "addon-10-exit"):
            status, _, _, _ = fetch(self.proxies[name].port, req)
            if status != 200:
                raise RuntimeError(f"{name}: status {status} through the exit")
        if "exits: connection_strategy is set to lazy" not in self.proxies["addon-10-exit"].log():
            raise RuntimeError("addon-10-exit: the addon did not take the exit")
        return ["bare-exit", "addon-10-exit"]

    def _exit_row(self, rps: dict[str, list[float]], cpu: dict[str, list[float]]) -> Result:
        """Row 1x: the addon routing each request through its token's exit, against bare mitmdump in
        upstream mode through the same exit."""
        on, off, f = "addon-10-exit", "bare-exit", "{:.3f}"
        rps_ratios, cpu_ratios = per_round(rps[on], rps[off]), per_round(cpu[off], cpu[on])
        to_bare = per_round(rps[on], rps["bare"])
        without = per_round(rps["addon-10"], rps["bare"])  # scenario 1: the same rules, no exit
        return Result(
            1,
            "10 rules, each request through the token's exit (one tinyproxy), against bare mitmdump in upstream "
            "mode through the same tinyproxy",
            "req/s addon ÷ req/s bare upstream mode, same rounds",
            "≥ 0.95",
            f"req/s ratio {span(rps_ratios, fmt=f, bold=True)}; CPU per request bare ÷ addon {span(cpu_ratios, fmt=f)}; "
            f"req/s addon {span(rps[on])}, bare upstream mode {span(rps[off])}; the same ratio without an exit "
            f"(scenario 1, same rounds) {span(without, fmt=f)}; the addon through the exit ÷ bare mitmdump direct "
            f"{span(to_bare, fmt=f)}",
            med(rps_ratios) >= 0.95,
            raw={"rps": rps[on], "bare_upstream_rps": rps[off], "cpu_per_request": cpu[on],
                 "bare_upstream_cpu_per_request": cpu[off], "rps_ratios": rps_ratios, "cpu_ratios": cpu_ratios},
            part="x",
            headline=f"{med(rps_ratios):.3f}",
        )

    def _status_row(self, rps: dict[str, list[float]], cpu: dict[str, list[float]]) -> Result:
        """Row 1s: scenario 1's addon with the status server on (and scraped every second) against off."""
        on, off, f = "addon-10-status", "addon-10", "{:.3f}"
        rps_ratios, cpu_ratios = per_round(rps[on], rps[off]), per_round(cpu[off], cpu[on])
        return Result(
            1,
            "10 rules with the status server on, /metrics and /status read every second, against off",
            "req/s on ÷ req/s off, same rounds",
            "≥ 0.99 (the server costs under 1 %)",
            f"req/s ratio {span(rps_ratios, fmt=f, bold=True)}; CPU per request off ÷ on {span(cpu_ratios, fmt=f)}; "
            f"req/s on {span(rps[on])}, off {span(rps[off])}, bare {span(rps['bare'])}",
            med(rps_ratios) >= 0.99,
            raw={"rps": rps[on], "off_rps": rps[off], "cpu_per_request": cpu[on], "off_cpu_per_request": cpu[off],
                 "rps_ratios": rps_ratios, "cpu_ratios": cpu_ratios},
            part="s",
            headline=f"{med(rps_ratios):.3f}",
        )

    def _compare_row(self, rps: dict[str, list[float]], cpu: dict[str, list[float]]) -> Result:
        """Row 1c: scenario 1's addon against the other checkout's, by req/s and by CPU time per request,
        each per round; and both against bare mitmdump the same way."""
        assert self.compare
        this, other, f = "addon-10", "addon-10-other", "{:.3f}"
        rps_ratios, cpu_ratios = per_round(rps[this], rps[other]), per_round(cpu[this], cpu[other])
        to_bare = {(kind, n): per_round(d[n], d["bare"])
                   for kind, d in (("rps", rps), ("cpu", cpu)) for n in (this, other)}
        us = {n: span([1e6 * x for x in cpu[n]], " µs") for n in (this, other, "bare")}
        return Result(
            1,
            f"10 rules: this addon vs {checkout(self.compare)}",
            "req/s this ÷ req/s other, and CPU time per request this ÷ other (mitmdump's utime + stime over the "
            "wrk run ÷ wrk's requests), same rounds",
            "– (unchanged within noise)",
            f"req/s ratio {span(rps_ratios, fmt=f, bold=True)}; "
            f"CPU per request ratio {span(cpu_ratios, fmt=f, bold=True)}; "
            f"to bare, req/s: this {span(to_bare['rps', this], fmt=f)}, other {span(to_bare['rps', other], fmt=f)}; "
            f"CPU per request: this {span(to_bare['cpu', this], fmt=f)}, other {span(to_bare['cpu', other], fmt=f)}; "
            f"req/s this {span(rps[this])}, other {span(rps[other])}, bare {span(rps['bare'])}; CPU per request "
            f"this {us[this]}, other {us[other]}, bare {us['bare']}",
            None,
            raw={"other": str(self.compare), "rps": rps[this], "other_rps": rps[other], "bare_rps": rps["bare"],
                 "cpu_per_request": cpu[this], "other_cpu_per_request": cpu[other],
                 "bare_cpu_per_request": cpu["bare"], "rps_ratios": rps_ratios, "cpu_ratios": cpu_ratios},
            part="c",
            headline=f"{med(rps_ratios):.3f}",
        )

    # scenario 12

    def instructions(self) -> None:
        """Scenario 12: instructions per request, counted by valgrind's callgrind, which machine noise cannot
        move: each proxy runs under callgrind with counting off; counting is switched on for a warm-up,
        zeroed (callgrind_control), then CALLGRIND_REQUESTS of scenario 1's request go through it on one
        kept-alive connection, and the dump's total ÷ that count is its instructions per request. Rounds
        alternate the proxies, each started anew: bare; a script shaped like the addon whose hooks do
        nothing (for scale); 10 and 1,000 rules; 10 rules with the status server on (its /metrics and
        /status read once, halfway through the count); and the peers (scripts/bench_peers.py):
        mitmproxy's modify_headers with the part of the 10 rules it can express, and a hand-written script."""
        assert self.fast
        n = CALLGRIND_REQUESTS // (4 if self.s.quick else 1)
        noop = self.w / "noop_script.py"
        noop.write_text(NOOP_SCRIPT.format(main=str(ADDON_MAIN)))
        status_port = free_port()
        status_rules = rules_file(self.w / "rules10-cg-status.yaml", realistic_rules(self.hosts), self.w / "tokens.txt",
                                  self.captcha_file())
        script = bench_peers.handwritten_script(self.w / "handwritten.py", self.hosts, UA_BROWSER,
                                                self.w / "tokens.txt", self.w / "captcha.txt")
        specs = [a for spec in bench_peers.modify_headers_specs(self.hosts, UA_BROWSER)
                 for a in ("--set", f"modify_headers={spec}")]
        self.check_peers(script, specs)
        proxies: dict[str, tuple[Path | None, tuple[str, ...]]] = {
            "bare": (None, ()), "noop-script": (None, ("-s", str(noop))),
            "addon-10": (self.rules10, ()), "addon-1000": (self.rules1000, ()),
            "addon-10-status": (status_rules, ("--set", f"status_listen=127.0.0.1:{status_port}")),
            "modify-headers": (None, tuple(specs)), "handwritten": (None, ("-s", str(script))),
        }  # fmt: skip
        per: dict[str, list[float]] = {name: [] for name in proxies}  # on the event loop's thread
        others: dict[str, list[float]] = {name: [] for name in proxies}  # on other threads
        rounds = 1 if self.s.quick else 3
        for r in range(rounds):
            for name in rotate(list(proxies), r):
                rules, extra = proxies[name]
                halfway = (lambda: Scraper(status_port).read_once()) if name == "addon-10-status" else None
                loop_thread, other_threads = self._count_instructions(name, rules, n, extra, halfway)
                per[name].append(loop_thread)
                others[name].append(other_threads)
            log(f"instructions round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {v[-1] / 1e6:.3f} M (+{others[k][-1] / 1e6:.3f} M on other threads)" for k, v in per.items()))
        self.results.update(instruction_rows(per, others, n))

    def check_peers(self, script: Path, specs: list[str]) -> None:
        """Before counting: the hand-written script rewrites the benchmark request as the addon does (token,
        captcha, cookies, headers, Accept by the body's `stream`); modify_headers does the part it can (the
        fixed headers), and no token."""
        assert self.fast
        for name, extra in (("handwritten", ("-s", str(script))), ("modify-headers", tuple(specs))):
            proxy = Proxy(f"check-{name}", self.w, None, extra).start()
            try:
                for body, accept in ((CHAT_BODY, "application/json"), (STREAM_BODY, "text/event-stream")):
                    req = build_request("POST", self.fast.port, "/v1/echo", SDK_HEADERS, body)
                    status, _, answer, _ = fetch(proxy.port, req)
                    got = {k.lower(): v.strip() for k, v in json.loads(answer)["headers"]} if status == 200 else {}
                    headers = (got.get("user-agent") == UA_BROWSER and "x-stainless-lang" not in got
                               and got.get("origin") == "https://chat.example.com")
                    account = (got.get("x-captcha-token") == self.captcha_value and got.get("accept") == accept
                               and "session=tok-bench-" in got.get("cookie", "") and "tracking" not in got.get("cookie", ""))
                    if status != 200 or not headers or account != (name == "handwritten"):
                        raise RuntimeError(f"{name}: unexpected upstream view (status {status}): {got}")
            finally:
                proxy.stop()
        log("checked: the hand-written script rewrites the benchmark request as the addon does; modify_headers its headers")

    def _count_instructions(self, name: str, rules: Path | None, n: int, extra: tuple[str, ...] = (),
                            halfway: Callable[[], None] | None = None) -> tuple[float, float]:
        """Instructions per request of one proxy under callgrind (see `instructions`): on the thread that runs
        the event loop, where mitmproxy and the addon handle requests, and on the process's other threads (the
        addon writes its state file in a thread of its own, at most once a second whatever the load).
        `halfway` is called after half of the counted requests."""
        assert self.fast
        out = self.w / f"callgrind-{name}.out"
        # mitmproxy's own allocator (pymalloc), as users run it; one hash seed for every count: with a random one,
        # dicts and sets collide differently in each process, and a count moved by up to 3 % between starts
        valgrind = ("env", "PYTHONHASHSEED=0", "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    "--separate-threads=yes", f"--callgrind-out-file={out}")  # fmt: skip
        proxy = Proxy(f"callgrind-{name}", self.w, rules, extra)
        proxy.args = [*valgrind, *proxy.args]
        proxy.start(wait=False)
        wait_for_port(proxy.port, timeout=300, proc=proxy.proc)
        control = lambda *a: subprocess.run(["callgrind_control", *a, str(proxy.pid)], capture_output=True,  # noqa: E731
                                            text=True, timeout=120)  # fmt: skip
        totals: dict[tuple[int, int], int] = {}  # (dump, thread) -> instructions
        try:
            control("--instr=on")
            keep_alive(proxy.port, self.fast.port, CALLGRIND_WARMUP)
            control("--zero")
            keep_alive(proxy.port, self.fast.port, n // 2)
            if halfway is not None:
                halfway()
            keep_alive(proxy.port, self.fast.port, n - n // 2)
            control("--dump")
            for dump in self.w.glob(f"{out.name}.*-*"):  # <out>.<dump>-<thread>
                number = re.search(r"\.(\d+)-(\d+)$", dump.name)
                found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
                if number and found:
                    totals[int(number.group(1)), int(number.group(2))] = int(found.group(1))
        finally:
            proxy.stop()
            for dump in self.w.glob(f"{out.name}*"):
                dump.unlink()
        if not totals:
            raise RuntimeError(f"{name}: no callgrind total after {n} requests:\n{proxy.log()[-2000:]}")
        last = max(dump for dump, _ in totals)
        others = sum(count for (dump, thread), count in totals.items() if dump == last and thread != 1)
        return totals.get((last, 1), 0) / n, others / n

    # scenario 3

    def latency(self) -> None:
        s = self.s
        assert self.fast
        script = self.w / "chat.lua"
        if not script.exists():
            script = write_wrk_script(self.w, self.fast.port)
        names = ["bare", "addon-10", "addon-1000"]
        p50: dict[str, list[float]] = {n: [] for n in names}
        p99: dict[str, list[float]] = {n: [] for n in names}
        for r in range(s.rounds):
            for name in rotate(names, r):
                out = wrk(self.proxies[name], script, s.lat_seconds, 1)
                p50[name].append(out["p50"] / 1000)
                p99[name].append(out["p99"] / 1000)
            log(f"latency round {r + 1}/{s.rounds}: " + ", ".join(f"{n} p50 {p50[n][-1]:.3f} ms p99 {p99[n][-1]:.3f} ms" for n in names))
        d50 = [a - b for a, b in zip(p50["addon-10"], p50["bare"])]
        d99 = [a - b for a, b in zip(p99["addon-10"], p99["bare"])]
        d50k = [a - b for a, b in zip(p50["addon-1000"], p50["bare"])]
        d99k = [a - b for a, b in zip(p99["addon-1000"], p99["bare"])]
        f = "{:.3f}"
        self.results[3] = Result(
            3, "added latency at low load (1 connection, one request at a time)", "p50 and p99, addon − bare",
            "p50 ≤ 0.3 ms (10 and 1,000 rules; the worse shown)",
            f"10 rules: p50 **+{span(d50, ' ms', f)}**, p99 +{span(d99, ' ms', f)}; "
            f"1,000 rules: p50 +{span(d50k, ' ms', f)}, p99 +{span(d99k, ' ms', f)}; "
            f"bare p50 {span(p50['bare'], ' ms', f)}, p99 {span(p99['bare'], ' ms', f)}",
            med(d50) <= 0.3 and med(d50k) <= 0.3,
            raw={"p50": p50, "p99": p99},
            headline=f"{max(med(d50), med(d50k)):+.3f} ms",
        )

    # scenario 4

    def sse(self) -> None:
        s = self.s
        assert self.fast
        events, interval_ms = 50, 20
        path = f"/v1/chat/completions?events={events}&interval_ms={interval_ms}"
        warm_direct = build_request("GET", self.fast.port, "/v1/models", SDK_HEADERS[:2], absolute=False)
        warm_proxy = build_request("GET", self.fast.port, "/v1/models", SDK_HEADERS[:2])
        variants = {
            "direct": (self.fast.port, build_request("POST", self.fast.port, path, SDK_HEADERS, STREAM_BODY, absolute=False)),
            "addon-10": (self.proxies["addon-10"].port, build_request("POST", self.fast.port, path, SDK_HEADERS, STREAM_BODY)),
            "bare": (self.proxies["bare"].port, build_request("POST", self.fast.port, path, SDK_HEADERS, STREAM_BODY)),
            "bare-stream": (0, build_request("POST", self.fast.port, path, SDK_HEADERS, STREAM_BODY)),
        }
        streaming_bare = Proxy("bare-stream", self.w, extra=("--set", "stream_large_bodies=1")).start()
        variants["bare-stream"] = (streaming_bare.port, variants["bare-stream"][1])
        first: dict[str, list[float]] = {n: [] for n in variants}
        lags: dict[str, list[list[float]]] = {n: [] for n in variants}
        arrivals: dict[str, list[list[float]]] = {n: [] for n in variants}
        try:
            for r in range(s.sse_rounds):
                for name in rotate(list(variants), r):
                    port, req = variants[name]
                    f_, l_, a_ = self._sse_once(port, req, warm_direct if name == "direct" else warm_proxy)
                    if len(l_) != events:
                        raise RuntimeError(f"SSE through {name}: {len(l_)} events, expected {events}")
                    first[name].append(f_)
                    lags[name].append(l_)
                    arrivals[name].append(a_)
                log(f"SSE round {r + 1}/{s.sse_rounds}: first event " + ", ".join(f"{n} {first[n][-1]:.1f} ms" for n in variants))
        finally:
            streaming_bare.stop()
        # per event: when it arrived (from the request's start) through the addon, minus when the same
        # event arrived in the direct run of the same round; events leave the upstream on a fixed schedule
        late = [a - d for ra, rd in zip(arrivals["addon-10"], arrivals["direct"]) for a, d in zip(ra, rd)]
        late_stream = [a - d for ra, rd in zip(arrivals["bare-stream"], arrivals["direct"]) for a, d in zip(ra, rd)]
        extra = [a - d for ra, rd in zip(lags["addon-10"], lags["direct"]) for a, d in zip(ra, rd)]
        all_addon = [x for run in lags["addon-10"] for x in run]
        all_direct = [x for run in lags["direct"] for x in run]
        f = "{:.2f}"
        self.results[4] = Result(
            4, f"SSE: {events} events {interval_ms} ms apart", "first-event delay; per-event lag (arrival − upstream send) vs direct",
            "every event within 5 ms of direct",
            f"arrival vs direct, worst of {len(late)} events **+{max(late):.2f} ms** (median +{med(late):.2f} ms); "
            f"first event after the request: direct {span(first['direct'], ' ms', f)}, addon {span(first['addon-10'], ' ms', f)}, "
            f"bare mitmdump with stream_large_bodies=1 {span(first['bare-stream'], ' ms', f)} (its worst event +{max(late_stream):.2f} ms), "
            f"bare mitmdump as is {span(first['bare'], ' ms', '{:.0f}')} (it buffers the whole stream); "
            f"per-event lag after the upstream sent it: addon median {med(all_addon):.2f} ms, max {max(all_addon):.2f} ms, "
            f"direct median {med(all_direct):.2f} ms (addon − direct per event: worst +{max(extra):.2f} ms)",
            max(late) <= 5.0,
            raw={"first": first, "late": late, "late_bare_stream": late_stream, "extra_lag": extra},
            headline=f"{max(late):+.2f} ms",
        )

    def _sse_once(self, port: int, request: bytes, warm: bytes) -> tuple[float, list[float], list[float]]:
        """One stream on a kept-alive connection that has carried a small request first, as an SDK's
        connection pool would have it (a fresh connection through mitmproxy costs about 2 ms more)."""
        lags: list[float] = []
        arrivals: list[float] = []
        first = None
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(warm)
            warm_reader = BodyReader(sock)
            warm_reader.head()
            for _ in warm_reader.body():
                pass
            if warm_reader.buf:
                raise RuntimeError("SSE scenario: unexpected bytes after the warm-up answer")
            t0 = time.time()
            sock.sendall(request)
            reader = BodyReader(sock)
            reader.head()
            pending = b""
            for arrived, piece in reader.body():
                pending += piece
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    data = event.partition(b"data: ")[2]
                    if data == b"[DONE]":
                        continue
                    sent_at = json.loads(data)["sent_at"]
                    if first is None:
                        first = (arrived - t0) * 1000
                    lags.append((arrived - sent_at) * 1000)
                    arrivals.append((arrived - t0) * 1000)
        return first or 0.0, lags, arrivals

    # scenario 10

    def sse_recovery(self) -> None:
        """A stream refused once and recovered, against a first-attempt stream through the same addon."""
        s = self.s
        assert self.fast
        events, interval_ms = 50, 20
        port = self.fast.port
        path = f"/v1/chat/completions?events={events}&interval_ms={interval_ms}"
        tokens = self.w / "tokens-sse.txt"  # two tokens: no breaker (it needs three), and no cooldown to wait for
        tokens.write_text("".join(f"tok-sse-{i}-{os.urandom(4).hex()}\n" for i in range(2)))
        hosts = [f"127.0.0.1:{port}"]
        proxies = {}
        for name, extra in [("addon-sse-recovery", ()), ("addon-sse-held", ("--set", "stream_retries=false"))]:
            rules = rules_file(self.w / f"rules-{name}.yaml", realistic_rules(hosts), tokens, self.captcha_file(), cooldown=0,
                               retire_after=0)  # each round refuses a token: none may be retired
            proxies[name] = Proxy(name, self.w, rules, extra).start()
        streaming, held = proxies["addon-sse-recovery"].port, proxies["addon-sse-held"].port
        proxied = build_request("POST", port, path, SDK_HEADERS, STREAM_BODY)
        direct = build_request("POST", port, path, SDK_HEADERS, STREAM_BODY, absolute=False)
        warm = build_request("GET", port, "/health", SDK_HEADERS[:2])  # no /v1/ path: no rule draws a token
        warm_direct = build_request("GET", port, "/health", SDK_HEADERS[:2], absolute=False)
        kinds = ["direct", "first attempt", "recovered", "held", "refusal"]
        first: dict[str, list[float]] = {k: [] for k in kinds[:4]}
        lags: dict[str, list[list[float]]] = {k: [] for k in kinds[:4]}
        refusal: list[float] = []
        refused_before = self._refuse_next(count=0)["refused"]
        try:
            for r in range(-1, s.sse_recovery_rounds):  # round -1 warms each path up (the first retry of a
                for kind in rotate(kinds, r):          # proxy runs code nothing has run yet) and is not kept
                    if kind == "refusal":  # the refusal's round trip: a 403 fetched directly, on a fresh connection
                        self._refuse_next()
                        status, _, _, t = fetch(port, build_request("POST", port, "/v1/chat/completions", SDK_HEADERS,
                                                                    STREAM_BODY, absolute=False))  # fmt: skip
                        if status != 403:
                            raise RuntimeError(f"recovered SSE: the refusal on cue answered {status}")
                        refusal.append(t * 1000)
                        continue
                    if kind in ("recovered", "held"):
                        self._refuse_next()
                    target, request, warm_up = {
                        "direct": (port, direct, warm_direct), "first attempt": (streaming, proxied, warm),
                        "recovered": (streaming, proxied, warm), "held": (held, proxied, warm),
                    }[kind]  # fmt: skip
                    f_, l_, _ = self._sse_once(target, request, warm_up)
                    if len(l_) != events:
                        raise RuntimeError(f"recovered SSE, {kind}: {len(l_)} events, expected {events}")
                    first[kind].append(f_)
                    lags[kind].append(l_)
                if r < 0:
                    for kept in (first, lags):
                        for k in kept:
                            kept[k].clear()
                    refusal.clear()
                    continue
                log(f"recovered SSE round {r + 1}/{s.sse_recovery_rounds}: first event "
                    + ", ".join(f"{k} {first[k][-1]:.1f} ms" for k in first) + f"; refusal {refusal[-1]:.2f} ms")
        finally:
            for proxy in proxies.values():
                proxy.stop()
        refused = self._refuse_next(count=0)["refused"] - refused_before
        if refused != 3 * (s.sse_recovery_rounds + 1):
            raise RuntimeError(f"recovered SSE: the upstream refused {refused}, expected {3 * (s.sse_recovery_rounds + 1)}")
        for name, proxy in proxies.items():
            if f"recovered POST" not in proxy.log() or ("(streamed)" in proxy.log()) != (name == "addon-sse-recovery"):
                raise RuntimeError(f"recovered SSE: {name} did not recover as expected (see {proxy.logfile})")
        # per round: how much later the recovered stream's first event came than the first attempt's,
        # over that round's refusal round trip; and each event's lag (arrival − upstream send) against
        # the same event's in the first-attempt stream of the same round
        later = [rec - fa for rec, fa in zip(first["recovered"], first["first attempt"])]
        over = [d - rt for d, rt in zip(later, refusal)]
        extra = [a - b for ra, rb in zip(lags["recovered"], lags["first attempt"]) for a, b in zip(ra, rb)]
        rec_lags = [x for run in lags["recovered"] for x in run]
        fa_lags = [x for run in lags["first attempt"] for x in run]
        f = "{:.2f}"
        self.results[10] = Result(
            10, f"recovered SSE: {events} events {interval_ms} ms apart, refused once then retried",
            "first-event delay and per-event lag, recovered vs first-attempt stream (same addon)",
            "each event ≤ 5 ms later; first event ≤ refusal round trip + 5 ms later (the worse shown)",
            f"per event, lag recovered − first attempt: worst of {len(extra)} **+{max(extra):.2f} ms** "
            f"(median {med(extra):+.2f} ms); first event later by {span(later, ' ms', f)}, over the refusal's round "
            f"trip ({span(refusal, ' ms', f)}) by {med(over):+.2f} ms at the median round, **{max(over):+.2f} ms** at "
            f"the worst; first event after the request: "
            f"direct {span(first['direct'], ' ms', f)}, first attempt {span(first['first attempt'], ' ms', f)}, "
            f"recovered {span(first['recovered'], ' ms', f)}, recovered with stream_retries=false "
            f"{span(first['held'], ' ms', '{:.0f}')} (held whole); lag after the upstream sent it: recovered median "
            f"{med(rec_lags):.2f} ms, max {max(rec_lags):.2f} ms, first attempt median {med(fa_lags):.2f} ms, "
            f"max {max(fa_lags):.2f} ms; {s.sse_recovery_rounds} rounds",
            max(extra) <= 5.0 and max(over) <= 5.0,
            raw={"first": first, "refusal": refusal, "extra_lag": extra},
            headline=f"{max(max(extra), max(over)):+.2f} ms",
        )

    def _refuse_next(self, count: int = 1) -> dict:
        """Have the fast upstream refuse the next `count` chat requests; its refusal counters."""
        assert self.fast
        request = build_request("POST", self.fast.port, f"/__bench/refuse-next?count={count}", [], absolute=False)
        _, _, body, _ = fetch(self.fast.port, request)
        return json.loads(body)

    # scenario 5

    def memory(self) -> None:
        s = self.s
        assert self.fast
        proxy = Proxy("addon-10-memory", self.w, self.rules10).start()
        try:
            headers = [*SDK_HEADERS[:1], ("Accept", "text/event-stream"), *SDK_HEADERS[2:]]
            warm = build_request("GET", self.fast.port, "/v1/big?bytes=65536", headers)
            fetch(proxy.port, warm)
            time.sleep(0.5)
            idle = proxy.status_kib("VmRSS")
            try:
                Path(f"/proc/{proxy.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
                hwm_reset = True
            except OSError:
                hwm_reset = False
            peak = [idle]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        peak.append(proxy.status_kib("VmRSS"))
                    except (OSError, KeyError):
                        pass
                    stop.wait(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            req = build_request("GET", self.fast.port, f"/v1/big?bytes={s.big_bytes}", headers)
            t0 = time.perf_counter()
            got = 0
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
                sock.sendall(req)
                reader = BodyReader(sock)
                reader.head()
                for _, piece in reader.body():
                    got += len(piece)
            seconds = time.perf_counter() - t0
            stop.set()
            sampler.join()
            hwm = proxy.status_kib("VmHWM") if hwm_reset else max(peak)
            top = max(max(peak), hwm)
            after = proxy.status_kib("VmRSS")
        finally:
            proxy.stop()
        if got != s.big_bytes:
            raise RuntimeError(f"memory scenario: got {got} bytes of {s.big_bytes}")
        growth = (top - idle) / 1024
        size = f"{s.big_bytes / (1 << 30):g} GiB" if s.big_bytes >= 1 << 30 else f"{s.big_bytes >> 20} MiB"
        self.results[5] = Result(
            5, f"one {size} streamed response (SSE, through a token rule)", "mitmdump peak RSS over idle during the transfer",
            "< 50 MiB",
            f"**+{growth:.1f} MiB** (idle {idle / 1024:.1f} MiB, peak {top / 1024:.1f} MiB, after {after / 1024:.1f} MiB); "
            f"{s.big_bytes / seconds / (1 << 20):.0f} MiB/s",
            growth < 50,
            raw={"idle_kib": idle, "peak_kib": top, "seconds": seconds, "bytes": got},
            headline=f"{growth:+.1f} MiB",
        )

    # scenarios 6 and 7: the protected upstream

    def start_protected(self) -> None:
        a, b = self.recovery_tokens
        self.protected = upstream("protected", self.w, "--accept", a)
        self.accepted = a
        hosts = ["api.example.com", f"127.0.0.1:{self.protected.port}"]
        rules = rules_file(self.w / "rules-recovery.yaml", realistic_rules(hosts), self.w / "tokens-recovery.txt",
                           self.captcha_file(), strategy="sticky")
        self.proxies["addon-recovery"] = Proxy("addon-recovery", self.w, rules).start()
        # the first request makes token a the sticky one
        status, _, _, _ = fetch(self.proxies["addon-recovery"].port, self._sdk_request())
        if status != 200:
            raise RuntimeError(f"recovery set-up: status {status}")

    def _sdk_request(self) -> bytes:
        assert self.protected
        return build_request("POST", self.protected.port, "/v1/chat/completions", SDK_HEADERS, CHAT_BODY)

    def _ready_request(self, absolute: bool = True) -> bytes:
        """The request as the service wants it, for bare mitmdump and for the direct round trip."""
        assert self.protected
        headers = [("User-Agent", UA_BROWSER), ("Accept", "application/json"), ("Content-Type", "application/json"),
                   ("X-Captcha-Token", self.captcha_value), ("Cookie", f"theme=dark; session={self.accepted}")]
        return build_request("POST", self.protected.port, "/v1/chat/completions", headers, CHAT_BODY, absolute)

    def _control(self, path: str, body: bytes = b"") -> dict:
        assert self.protected
        _, _, answer, _ = fetch(self.protected.port, build_request("POST", self.protected.port, path, [], body, absolute=False))
        return json.loads(answer)

    def _flip(self) -> None:
        """The upstream now refuses the token the proxy uses and accepts the other one."""
        a, b = self.recovery_tokens
        self.accepted = b if self.accepted == a else a
        self._control("/__bench/accept", self.accepted.encode())

    def recovery(self) -> None:
        s = self.s
        assert self.protected
        proxy = self.proxies["addon-recovery"]
        lat: dict[str, list[float]] = {"direct": [], "plain": [], "recovered": []}
        self._control("/__bench/clear")
        for r in range(s.recovery_rounds):
            order = rotate(["direct", "recovered", "plain"], r)
            for kind in order:
                if kind == "direct":
                    status, _, _, t = fetch(self.protected.port, self._ready_request(absolute=False))
                elif kind == "plain":
                    status, _, _, t = fetch(proxy.port, self._sdk_request())
                else:
                    self._flip()
                    status, _, _, t = fetch(proxy.port, self._sdk_request())
                if status != 200:
                    raise RuntimeError(f"recovery scenario: {kind} request answered {status}")
                lat[kind].append(t * 1000)
        seen = self._control("/__bench/count")
        refused = seen["statuses"].count(403)
        if refused != s.recovery_rounds:
            raise RuntimeError(f"recovery scenario: the upstream refused {refused} requests, expected {s.recovery_rounds}")
        extra = [rec - pl for rec, pl in zip(lat["recovered"], lat["plain"])]
        budget = med(lat["direct"]) + 2
        f = "{:.2f}"
        self.results[6] = Result(
            6, "recovery: a request refused once, then served", "its latency − a plain request's (both through the addon)",
            "≤ one upstream round trip + 2 ms",
            f"**+{med(lat['recovered']) - med(lat['plain']):.2f} ms** (paired per round: {span(extra, ' ms', f)}); "
            f"budget {budget:.2f} ms = direct round trip {span(lat['direct'], ' ms', f)} + 2 ms; "
            f"plain {span(lat['plain'], ' ms', f)}, recovered {span(lat['recovered'], ' ms', f)}; "
            f"{s.recovery_rounds} rounds, fresh connection per request",
            med(lat["recovered"]) - med(lat["plain"]) <= budget,
            raw=lat,
            headline=f"{med(lat['recovered']) - med(lat['plain']):+.2f} ms (budget {budget:.2f} ms)",
        )

    def storm(self) -> None:
        s = self.s
        assert self.protected
        addon, bare = self.proxies["addon-recovery"], self.proxies["bare"]
        walls: dict[str, list[float]] = {"storm": [], "plain": [], "plain-400-connections": [], "addon-200-plain": []}
        refused_counts = []
        for r in range(s.storm_rounds):
            for kind in rotate(list(walls), r):
                self._control("/__bench/clear")
                if kind == "storm":
                    self._flip()
                    wall, statuses, _ = burst(addon.port, [[self._sdk_request()] for _ in range(200)])
                    expect = 200
                elif kind == "addon-200-plain":
                    wall, statuses, _ = burst(addon.port, [[self._sdk_request()] for _ in range(200)])
                    expect = 200
                elif kind == "plain-400-connections":
                    wall, statuses, _ = burst(bare.port, [[self._ready_request()] for _ in range(400)])
                    expect = 400
                else:
                    req = self._ready_request()
                    wall, statuses, _ = burst(bare.port, [[req, req] for _ in range(200)])
                    expect = 400
                seen = self._control("/__bench/count")
                if statuses.count(200) != expect:
                    raise RuntimeError(f"storm scenario ({kind}): {statuses.count(200)} of {expect} served")
                if kind == "storm":
                    refused_counts.append(seen["statuses"].count(403))
                walls[kind].append(wall * 1000)
                time.sleep(0.3)
            log(f"storm round {r + 1}/{s.storm_rounds}: storm {walls['storm'][-1]:.0f} ms "
                f"({refused_counts[-1]} refused), 400 plain through bare {walls['plain'][-1]:.0f} ms")
        ratios = [a / b for a, b in zip(walls["storm"], walls["plain"])]
        ratios400 = [a / b for a, b in zip(walls["storm"], walls["plain-400-connections"])]
        self.results[7] = Result(
            7, "storm: 200 concurrent requests refused with the same token", "wall time ÷ 400 plain requests through bare mitmdump",
            "all served; ≤ 1.5×",
            f"all 200 served every round; **{med(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}); "
            f"storm {span(walls['storm'], ' ms')}, plain {span(walls['plain'], ' ms')}; "
            f"refused (and replayed) per storm: {span(refused_counts)} of 200; "
            f"against 400 plain requests on 400 connections instead: {med(ratios400):.2f}× "
            f"({span(walls['plain-400-connections'], ' ms')}); 200 requests through the addon with no refusal: "
            f"{span(walls['addon-200-plain'], ' ms')}",
            med(ratios) <= 1.5,
            raw={**walls, "refused": refused_counts},
            headline=f"{med(ratios):.2f}×",
        )

    # scenario 8

    def captcha(self) -> None:
        s = self.s
        assert self.fast
        counter = self.w / "captcha-runs.txt"
        cmd = self.w / "bench-captcha.sh"
        cmd.write_text(f'#!/bin/sh\necho run >> "{counter}"\nsleep 0.2\necho "cap-cmd-$$-$(date +%s%N)"\n')
        cmd.chmod(0o755)
        hosts = ["api.example.com", f"127.0.0.1:{self.fast.port}"]
        rules = rules_file(self.w / "rules-captcha.yaml", realistic_rules(hosts), self.w / "tokens.txt",
                           f'  command: ["./{cmd.name}"]\n  ttl: 110\n  timeout: 10')
        runs, walls, distinct = [], [], []
        req = build_request("POST", self.fast.port, "/v1/echo", SDK_HEADERS, CHAT_BODY)
        for r in range(s.captcha_rounds):
            counter.write_text("")
            proxy = Proxy(f"addon-captcha-{r}", self.w, rules).start()
            try:
                wall, statuses, bodies = burst(proxy.port, [[req] for _ in range(100)])
            finally:
                proxy.stop()
            if statuses.count(200) != 100:
                raise RuntimeError(f"captcha scenario: {statuses.count(200)} of 100 answered 200")
            values = {dict((k.lower(), v.strip()) for k, v in json.loads(b)["headers"]).get("x-captcha-token") for b in bodies}
            runs.append(len(counter.read_text().split()))
            walls.append(wall * 1000)
            distinct.append(len(values))
        self.results[8] = Result(
            8, "captcha command (takes 0.2 s) with ttl, 100 concurrent requests", "command runs", "exactly 1",
            f"**{', '.join(map(str, runs))}** (one per round, {len(runs)} round(s), fresh proxy each); "
            f"distinct values sent: {', '.join(map(str, distinct))}; burst wall {span(walls, ' ms')}",
            all(n == 1 for n in runs) and all(d == 1 for d in distinct),
            raw={"runs": runs, "walls": walls},
            headline=f"{max(runs)} per burst",
        )

    # scenario 9

    def startup_reload(self) -> None:
        s = self.s
        assert self.fast
        names = {"bare": None, "addon-10": self.rules10, "addon-1000": self.rules1000}
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(s.startup_rounds):
            for name in rotate(list(names), r):
                p = Proxy(f"startup-{name}", self.w, names[name])
                p.start(wait=False)
                try:
                    wait_for_port(p.port, proc=p.proc)
                    times[name].append(time.perf_counter() - p.started_at)
                finally:
                    p.stop()
            log(f"start-up round {r + 1}/{s.startup_rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
        added = [a - b for a, b in zip(times["addon-1000"], times["bare"])]
        load = self._load_config_seconds(self.rules1000)
        reload = self._reload()
        f2 = "{:.2f}"
        f3 = "{:.3f}"
        self.results[9] = Result(
            9, "start-up of a 1,000-rule file", "seconds to listening, addon − bare", "< 1 s",
            f"added over bare **+{span(added, ' s', f2)}** (to listening: bare {span(times['bare'], ' s', f2)}, "
            f"10 rules {span(times['addon-10'], ' s', f2)}, 1,000 rules {span(times['addon-1000'], ' s', f2)}); "
            f"parsing the file: {load['first'] * 1000:.0f} ms cold, {load['warm'] * 1000:.0f} ms warm",
            med(added) < 1,
            raw={"startup": times, "load": load},
            part="a",
            headline=f"{med(added):+.2f} s",
        )
        self.results[9.5] = Result(
            9, "hot reload of a 1,000-rule file", "edit → applied (includes the watcher's 1 s poll); requests' stall",
            "applied < 2 s, stall < 1 s",
            f"edit → applied **{span(reload['applied'], ' s', f2)}**, "
            f"longest stall of requests during a reload {span(reload['stall'], ' s', f3)}",
            max(reload["applied"]) < 1.0 + 1.0 and med(reload["stall"]) < 1,
            raw={"reload": reload},
            part="b",
            headline=f"{max(reload['applied']):.2f} s",
        )

    def _load_config_seconds(self, rules: Path) -> dict[str, float]:
        code = (
            "import sys, time, json\n"
            f"sys.path.insert(0, {str(ADDON_MAIN.parent.parent)!r})\n"
            "t = time.perf_counter(); import addon.rules.config; imp = time.perf_counter() - t\n"
            "runs = []\n"
            "for _ in range(4):\n"
            f"    t = time.perf_counter(); addon.rules.config.load_config({str(rules)!r}); runs.append(time.perf_counter() - t)\n"
            "print(json.dumps({'import': imp, 'first': runs[0], 'warm': sorted(runs[1:])[1]}))\n"
        )
        out = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def _reload(self) -> dict[str, list[float]]:
        """Edit the 1,000-rule file under a running proxy; poll through it until the upstream sees the edit."""
        assert self.fast
        src = self.rules1000.read_text()
        path = self.w / "rules1000-reload.yaml"
        path.write_text(src)
        proxy = Proxy("addon-1000-reload", self.w, path).start()
        req = build_request("POST", self.fast.port, "/v1/echo", SDK_HEADERS, CHAT_BODY)
        applied, stall = [], []
        try:
            for r in range(self.s.reload_rounds):
                time.sleep(1.2)  # let a poll of the unchanged file pass
                marker = f"Safari/537.36 rev{r}"
                tmp = path.with_suffix(".tmp")
                tmp.write_text(src.replace("Safari/537.36", marker))
                t0 = time.perf_counter()
                os.replace(tmp, path)  # an editor's atomic save
                longest = 0.0
                while True:
                    status, _, body, t = fetch(proxy.port, req)
                    longest = max(longest, t)
                    got = {k.lower(): v.strip() for k, v in json.loads(body)["headers"]}
                    if marker in got.get("user-agent", ""):
                        applied.append(time.perf_counter() - t0)
                        break
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError(f"reload: the edit was not applied within 10 s\n{proxy.log()[-2000:]}")
                    time.sleep(0.005)
                # a few more requests after the reload, so the stall includes any slowness right after it
                for _ in range(5):
                    longest = max(longest, fetch(proxy.port, req)[3])
                stall.append(longest)
                log(f"reload round {r + 1}/{self.s.reload_rounds}: applied after {applied[-1]:.2f} s, longest request {longest * 1000:.0f} ms")
        finally:
            proxy.stop()
        return {"applied": applied, "stall": stall}

    # scenario 11: token health shared through Redis

    def shared_store(self) -> None:
        """Throughput with the Redis store against the file store and bare mitmdump, then how soon a
        refusal through one proxy is seen by another on the same store; with Redis on this host, and
        behind a relay that adds each of `redis_delays` (seconds each way: a Redis in another zone)."""
        from redis import Redis  # the addon's own requirement (addon/tokens/shared.py)

        port = free_port()
        server = shutil.which("redis-server") or "redis-server"
        self.redis = Proc("redis", [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                    "--dir", self.w, "--logfile", ""], self.w, OTHER_CPUS, port).start()  # fmt: skip
        self.redis_client = Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)
        try:
            for i, delay in enumerate(self.redis_delays):
                relay = LatencyRelay(port, delay).start() if delay else None
                self.redis_url = f"redis://127.0.0.1:{relay.port if relay else port}/0"
                self.redis_delay, self.redis_key = delay, i / 100
                log(f"shared store: Redis {'on this host' if not delay else f'{delay * 1000:g} ms away each way'}")
                try:
                    shared = self._shared_throughput()
                    self._propagation(shared)
                finally:
                    if relay is not None:
                        relay.stop()
        finally:
            self.redis_client.close()
            self.redis.stop()

    def _wait_shared(self, proxy: Proxy) -> None:
        """Until the proxy says it shares token health (it connects to Redis in the background)."""
        deadline = time.monotonic() + 15
        while "token health shared through Redis" not in proxy.log():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proxy.name} did not connect to Redis within 15 s (see {proxy.logfile})")
            time.sleep(0.05)

    def _outages(self, *proxies: Proxy) -> tuple[int, float, list[str]]:
        """How often the proxies turned sharing off (a Redis call over its time limit, say), the seconds
        they spent on their own picture, and why (as they logged it)."""
        count, seconds, why = 0, 0.0, []
        for proxy in proxies:
            since = None
            for line in proxy.log().splitlines():
                stamp = re.match(r"\[(\d+):(\d+):(\d+\.\d+)\]", line)
                at = int(stamp[1]) * 3600 + int(stamp[2]) * 60 + float(stamp[3]) if stamp else None
                if "cannot be reached (" in line and at is not None:
                    count, since = count + 1, at
                    why.append(line.split("cannot be reached (", 1)[1].split(");", 1)[0])
                elif "is back: token health is shared again" in line and since is not None and at is not None:
                    seconds += (at - since) % 86400
                    since = None
        return count, seconds, why

    def _redis_calls(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats), e.g. {'incrby': 12, 'xread': 12}."""
        stats = self.redis_client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def _shared_throughput(self) -> dict:
        s = self.s
        assert self.fast
        script = self.w / "chat.lua"
        if not script.exists():
            script = write_wrk_script(self.w, self.fast.port)
        hosts = ["api.example.com", f"127.0.0.1:{self.fast.port}", f"localhost:{self.fast.port}"]
        namespace = f"bench-throughput-{self.redis_key}"
        rules = rules_file(self.w / "rules10-redis.yaml", realistic_rules(hosts), self.w / "tokens.txt",
                           self.captcha_file(), store=self.redis_url, namespace=namespace)
        proxy = self.proxies["addon-10-redis"] = Proxy("addon-10-redis", self.w, rules).start()
        try:
            self._wait_shared(proxy)
            self.check_rewrites()  # the Redis proxy rewrites the request as the file-store one does
            names = ["bare", "addon-10", "addon-10-redis"]
            for name in names:  # warm-up, not recorded
                wrk(self.proxies[name], script, 1, s.connections)
            rps: dict[str, list[float]] = {n: [] for n in names}
            per_request: dict[str, list[float]] = {"xread": [], "incrby": [], "evalsha": []}
            redis_requests = 0
            rr_before = int(self.redis_client.get(f"mitm-rules:{{{namespace}}}:rr") or 0)
            for r in range(s.shared_rounds):
                for name in rotate(names, r):
                    before = self._redis_calls()
                    out = wrk(self.proxies[name], script, s.shared_seconds, s.connections)
                    rps[name].append(out["rps"])
                    if name == "addon-10-redis":
                        after = self._redis_calls()
                        for k in per_request:  # (the commands a script runs inside Redis count too, under
                            # their own names: only these three are the proxy's)
                            per_request[k].append((after.get(k, 0) - before.get(k, 0)) / out["requests"])
                        redis_requests += int(out["requests"])
                log(f"shared-store throughput round {r + 1}/{s.shared_rounds}: "
                    + ", ".join(f"{n} {rps[n][-1]:.0f} req/s" for n in names)
                    + f"; Redis round trips per request {per_request['xread'][-1]:.3f}")
            rr = int(self.redis_client.get(f"mitm-rules:{{{namespace}}}:rr") or 0) - rr_before
        finally:
            self.proxies.pop("addon-10-redis").stop()
        outages = self._outages(proxy)
        if rr < redis_requests and not outages[0]:  # every request drew at a place of the shared rotation
            raise RuntimeError(f"shared-store throughput: {redis_requests} requests but the shared rotation moved {rr}")
        return {"rps": rps, "per_request": per_request, "rr": rr, "redis_requests": redis_requests, "outages": outages}

    def _propagation(self, shared: dict) -> None:
        s = self.s
        tokens = [f"tok-shared-{i}-{os.urandom(4).hex()}" for i in range(4)]
        tokens_file = self.w / "tokens-shared.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        api = fake_upstream.ProtectedAPI(tokens=set(tokens))
        cue = RefusalOnCue(api)
        port = free_port()
        # in this process (pinned with the other upstreams), so that it can say when each request arrived
        server = fake_upstream.UpstreamServer(cue, port).start()  # type: ignore[arg-type]
        hosts = ["api.example.com", f"127.0.0.1:{port}"]
        # sticky: both proxies stay on one token until it is refused, so B sends it with every request until it
        # learns of A's refusal (with round_robin, the shared rotation comes back to it only 4 draws after A's).
        # Four tokens at most are ever refused at once: a breaker of five never opens.
        rules = rules_file(self.w / "rules-shared.yaml", realistic_rules(hosts), tokens_file, self.captcha_file(),
                           strategy="sticky", cooldown=SHARED_COOLDOWN, store=self.redis_url,
                           namespace=f"bench-propagation-{self.redis_key}",
                           breaker="{tokens: 5, window: 60, pause: 300}")
        a = Proxy("addon-shared-a", self.w, rules).start()
        b = Proxy("addon-shared-b", self.w, rules).start()

        def chat(client: str, seq: str = "") -> bytes:
            marks = [("X-Bench-Client", client)] + ([("X-Bench-Seq", seq)] if seq else [])
            return build_request("POST", port, "/v1/chat/completions", [*SDK_HEADERS, *marks], CHAT_BODY)

        stream = SteadyClient(b.port, lambda n: chat("B", str(n)))
        thread = threading.Thread(target=stream.run, daemon=True, name="steady client through B")
        lags: list[float | None] = []  # ms: last request from B with the token − A's refusal, at the upstream
        after: list[int] = []  # B's requests with the token that arrived after A's refusal, per round
        late: list[int] = []  # ... and that B's client sent after A's retry had reached the upstream
        judged: list[float] = []  # ms: A's refusal → A's retry, at the upstream
        b_after: list[int] = []  # B's requests (with any token) in the window after A's refusal
        b_rate: list[float] = []
        idle: list[bool] = []  # B's request after IDLE_GAP avoided the token
        idle_on_it: list[bool] = []  # B's last request before the pause carried it
        told: list[float | None] = []  # ms: A logged the refusal → B logged that another proxy refused it (B idle)
        try:
            self._wait_shared(a)
            self._wait_shared(b)
            thread.start()
            stream.go.set()
            time.sleep(0.3)
            for r in range(-1, s.propagation_rounds):  # round -1 warms up the refusal's path and is not kept
                n0, t0, sent0 = len(api.received), time.time(), len(stream.sent)
                time.sleep(0.2)  # B's requests of the last 0.2 s before the refusal count too (as negative times)
                refused, t_ref, t_retry = self._refuse_through(a, cue, chat("A"))
                time.sleep(max(0.0, t_ref + SHARED_WINDOW - time.time()))
                api.tokens = api.tokens | {refused}  # accepted again, before its cooldown ends
                seen = [rec for rec in api.received[n0:] if rec.header("x-bench-client") == "B"]
                with_it = [rec for rec in seen if rec.cookie("session") == refused]
                later = [rec for rec in with_it if rec.at >= t_ref]
                sent_late = [rec for rec in later if stream.sent[int(rec.header("x-bench-seq") or 0)] > t_retry]
                rate = (len(stream.sent) - sent0) / (time.time() - t0)
                if r >= 0:
                    b_after.append(sum(1 for rec in seen if rec.at >= t_ref))
                    lags.append((max(rec.at for rec in with_it) - t_ref) * 1000 if with_it else None)
                    after.append(len(later))
                    late.append(len(sent_late))
                    judged.append((t_retry - t_ref) * 1000)
                    b_rate.append(rate)
                    last = "never" if lags[-1] is None else f"{lags[-1]:+.2f} ms after A's refusal"
                    log(f"propagation round {r + 1}/{s.propagation_rounds}: B sent the refused token last "
                        f"{last} ({len(later)} request(s) after it, {len(sent_late)} "
                        f"sent after A's retry); A judged it in {judged[-1]:.2f} ms; B {rate:.0f} req/s")
                time.sleep(max(0.0, t_ref + SHARED_COOLDOWN + 0.2 - time.time()))  # the token is back for the next
            for r in range(s.idle_rounds):
                stream.pause()
                before = [rec for rec in api.received if rec.header("x-bench-client") == "B"]
                api.retry_after = str(IDLE_RETRY_AFTER)  # the token cools longer than B stays idle
                refused, t_ref, _ = self._refuse_through(a, cue, chat("A"))
                api.retry_after = None
                idle_on_it.append(bool(before) and before[-1].cookie("session") == refused)
                time.sleep(max(0.0, t_ref + IDLE_GAP - time.time()))
                n0 = len(api.received)
                status, _, _, _ = fetch(b.port, chat("B", f"idle-{r}"))
                first = next((rec for rec in api.received[n0:] if rec.header("x-bench-seq") == f"idle-{r}"), None)
                idle.append(status == 200 and first is not None and first.cookie("session") != refused)
                told.append(_told_after(a, b, refused))
                api.tokens = api.tokens | {refused}
                log(f"propagation, idle round {r + 1}/{s.idle_rounds}: B heard of A's refusal "
                    f"{'never' if told[-1] is None else f'{told[-1]:.0f} ms after A logged it'}; after {IDLE_GAP:g} s "
                    f"without requests, B's next request {'avoided' if idle[-1] else 'carried'} the refused token")
                if r + 1 < s.idle_rounds:
                    time.sleep(max(0.0, t_ref + IDLE_RETRY_AFTER + 0.2 - time.time()))
                stream.go.set()
        finally:
            stream.stop.set()
            thread.join(15)
            a.stop()
            b.stop()
            server.stop()
        outages = self._outages(a, b)
        bad = [code for code in stream.statuses if code != 200]
        if stream.errors or bad:
            raise RuntimeError(f"propagation: B's client got {len(bad)} answer(s) other than 200 "
                               f"({sorted(set(bad))}) and errors {stream.errors[:3]}")
        self._shared_rows(shared, {"lag_ms": lags, "after": after, "late": late, "judged_ms": judged,
                                   "b_rps": b_rate, "b_after": b_after, "idle": idle, "idle_on_it": idle_on_it,
                                   "told_ms": told,
                                   "outages": outages})

    def _refuse_through(self, proxy: Proxy, cue: RefusalOnCue, request: bytes) -> tuple[str, float, float]:  # noqa: D401
        """One request through `proxy` whose token the upstream refuses from then on (for every proxy);
        it must be recovered with another. The token, when its refusal and the retry reached the upstream."""
        cue.arm()
        status, _, _, _ = fetch(proxy.port, request)
        refused, refusal, retry = cue.taken()
        if status != 200 or refused is None or retry is None:
            raise RuntimeError(f"propagation: the request through {proxy.name} answered {status} "
                               f"(refused {refused is not None}, retried {retry is not None})")
        return refused, refusal, retry

    def _shared_rows(self, shared: dict, seen_by_b: dict[str, list]) -> None:
        s, rps, per = self.s, shared["rps"], shared["per_request"]
        lags, after, late, judged, idle = (seen_by_b[k] for k in ("lag_ms", "after", "late", "judged_ms", "idle"))
        redis_file = [a / b for a, b in zip(rps["addon-10-redis"], rps["addon-10"])]
        redis_bare = [a / b for a, b in zip(rps["addon-10-redis"], rps["bare"])]
        file_bare = [a / b for a, b in zip(rps["addon-10"], rps["bare"])]
        f3, f2 = "{:.3f}", "{:.2f}"
        away = f" {self.redis_delay * 1000:g} ms away (each way, through a relay)" if self.redis_delay else " on this host"
        self.results[11 + self.redis_key] = Result(
            11, f"shared store: small JSON POSTs (scenario 1: 10 rules, `{{token}}` from 4), token health on Redis{away}",
            "Redis round trips per request, all in the background (req/s with the store ÷ with the state file: in the "
            "details)",
            "≤ 1 Redis round trip per request, none of them waited on; the ratio has no target: it is what the "
            "store costs",
            f"**{med(redis_file):.3f}** ({min(redis_file):.3f}–{max(redis_file):.3f}); ÷ bare mitmdump: Redis "
            f"store {span(redis_bare, '', f3)}, file store {span(file_bare, '', f3)}; Redis store "
            f"{span(rps['addon-10-redis'])} req/s, file store {span(rps['addon-10'])} req/s, bare {span(rps['bare'])} "
            f"req/s; per request, in the background: `INCRBY` (places of the rotation) {span(per['incrby'], '', f3)}, "
            f"`XREAD` (the follower) {span(per['xread'], '', f3)}, `EVALSHA` "
            f"(successes, sent about once a second) {span(per['evalsha'], '', f3)}; "
            f"{s.shared_rounds} rounds of {s.shared_seconds:g} s, wrk -c{s.connections}; "
            + outage_text(shared["outages"], "the Redis proxy"),
            max(a + b for a, b in zip(per["incrby"], per["xread"])) <= 1 and not shared["outages"][0],
            raw={"rps": rps, "redis_per_request": per, "redis_vs_file": redis_file, "rotation_moves": shared["rr"],
                 "redis_requests": shared["redis_requests"], "outages": shared["outages"][:2]},
            part="a",
            headline=f"{max(a + b for a, b in zip(per['incrby'], per['xread'])):.3f} round trips",
            variant=f"({self.redis_delay * 1000:g} ms)",
        )
        seen = [x for x in lags if x is not None] or [float("nan")]  # rounds in which B sent the token near it
        idle_text = (f"; idle: {IDLE_GAP:g} s with no request through B, then one: it avoided the token in "
                     f"**{sum(idle)} of {len(idle)}** round(s) (B's last request before the pause had carried it in "
                     f"{sum(seen_by_b['idle_on_it'])})") if idle else ""
        told = [x for x in seen_by_b["told_ms"] if x is not None]
        told_text = (f"median **{med(told):.0f} ms**, max **{max(told):.0f} ms**" if told else "**never**") + (
            f" ({len(told)} of {len(seen_by_b['told_ms'])} idle round(s))")
        self.results[11.5 + self.redis_key] = Result(
            11, "shared store: the token in use refused through proxy A, proxy B on the same Redis"
            f"{away} (4 tokens, `sticky`: B stays on that token until it learns or is refused itself)",
            "A logs its refusal → B logs that another proxy refused the token (B idle; the logs' clock is one); "
            "and, with one client sending through B, B's last request with that token − A's refusal, at the upstream",
            "B knows within 1 s; B passes the token over after an idle pause",
            f"B knew after {told_text}; with B busy: last request with the token "
            f"median {med(seen):+.2f} ms, max {max(seen):+.2f} ms after A's refusal ({len(seen)} of {len(lags)} rounds "
            f"with the token in B's requests near the refusal: B was on it); B's requests with it that arrived after "
            f"A's refusal: {sum(after)} in {sum(1 for n in after if n)} round(s), of which sent by B's client after "
            f"A's retry had reached the upstream: {sum(late)}; A's refusal → its "
            f"retry at the upstream {span(judged, ' ms', f2)}; B ran at {span(seen_by_b['b_rps'], ' req/s')} (one "
            f"client, kept-alive connection), {span(seen_by_b['b_after'])} of its requests in the "
            f"{SHARED_WINDOW * 1000:.0f} ms after each refusal{idle_text}; "
            + outage_text(seen_by_b["outages"], "A or B"),
            bool(told) and len(told) == len(seen_by_b["told_ms"]) and max(told) <= 1000 and all(idle),
            raw={**seen_by_b, "outages": seen_by_b["outages"][:2]},
            part="b",
            headline=f"{max(told):.0f} ms" if told else "never",
            variant=f"({self.redis_delay * 1000:g} ms)",
        )

    # report

    def check_logs(self) -> None:
        for name, proxy in self.proxies.items():
            self.note_errors(name, proxy)

    def note_errors(self, name: str, proxy: Proxy) -> None:
        bad = [e for e in proxy.errors() if "error" in e.lower()]
        if bad:
            self.notes.append(f"`{name}` logged {len(bad)} error line(s), e.g. `{bad[0][:200]}`")


def cpu_busy_seconds() -> float:
    """Seconds of CPU time all processes used so far (from /proc/stat), to tell how much the rest of the
    machine took during the run."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest time is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / (1 << 20):.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    if shutil.which("wrk"):
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].split("Copyright")[0].strip()
    else:
        wrk_version = "wrk not installed (this run did not use it)"
    mitm = subprocess.run([str(PYTHON), "-c", "import mitmproxy.version as v; print(v.VERSION)"], capture_output=True, text=True).stdout.strip()
    pyver = subprocess.run([str(PYTHON), "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True).stdout.strip()
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f", kernel {platform.release()}"
    except OSError:
        pass
    redis_server = shutil.which("redis-server")
    redis_version = ""
    if redis_server:
        version = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"v=(\S+)", version)
        redis_version = f", Redis server {found.group(1)}" if found else ""
    return [
        f"{cpu}, {os.cpu_count()} logical CPUs{mem}",
        os_name,
        f"Python {pyver}, mitmproxy {mitm}, {wrk_version}{redis_version}",
        ("mitmdump pinned to CPU " + ",".join(map(str, sorted(PROXY_CPUS or ()))) + "; wrk, the upstreams and the "
         "driver to CPU " + ",".join(map(str, sorted(OTHER_CPUS or ())))) if PINNED else "one CPU: nothing pinned",
    ]


def versions() -> tuple[str, str]:
    """The Python and mitmproxy versions of the venv measured."""
    code = "import platform, mitmproxy.version as v; print(platform.python_version(), v.VERSION)"
    py, mitm = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return py, mitm


def run_record(bench: Bench, s: Settings, started: float, argv: list[str]) -> dict:
    """Everything one run measured, as written to benchmarks/mitmproxy-VERSION.json by a full run: the
    rows (headline, target, met, the details and the raw figures), the notes and the machine."""
    py, mitm = versions()
    return {
        "when": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "command": "scripts/bench" + (" " + " ".join(argv) if argv else ""),
        "settings": "quick" if s.quick else "full",
        "code": checkout(ADDON_MAIN),
        "python": py,
        "mitmproxy": mitm,
        "machine": machine(),
        "notes": bench.notes,
        "rows": [{"key": r.key, "label": r.label, "scenario": r.scenario, "measure": r.measure, "target": r.target,
                  "headline": r.headline, "met": r.met, "result": r.result, "raw": round_floats(r.raw)}
                 for _, r in sorted(bench.results.items())],
    }


MET = {True: "met", False: "**missed**", None: "–"}


def render_details(run: dict) -> str:
    """One run in full: every row with its details (ranges, the variants measured beside it), the notes
    and the machine. Written beside the run's JSON, and as the scratch report of a partial run."""
    out = [
        f"# Benchmarks on mitmproxy {run['mitmproxy']} (Python {run['python']}): every figure",
        "",
        f"One run of `{run['command']}` ({run['settings']} settings), {run['when']}, {run['minutes']} minutes, "
        f"code: {run['code']}. Figures are medians over the rounds, with the minimum and maximum in brackets; every "
        "ratio compares runs made side by side in the same run, alternating between the variants. The method is in "
        "[BENCHMARKS.md](../BENCHMARKS.md); the raw figures are in the JSON file of the same name.",
        "",
        "| # | scenario | measure | target | result | |",
        "|---|---|---|---|---|---|",
        *(f"| {r['key']} | {r['scenario']} | {r['measure']} | {r['target']} | {r['result']} | {MET[r['met']]} |"
          for r in run["rows"]),
        "",
    ]
    if run["notes"]:
        out += ["Notes from this run:", "", *(f"- {n}" for n in run["notes"]), ""]
    out += ["## Machine", "", *(f"- {line}" for line in run["machine"]), ""]
    return "\n".join(out)


def render_summary(runs: list[dict]) -> str:
    """BENCHMARKS.md: one row per scenario, one column per mitmproxy line, one figure per cell with its
    target met or missed; then how to reproduce it and the method. The details are in the runs' files."""
    runs = sorted(runs, key=lambda run: [int(x) for x in re.findall(r"\d+", run["mitmproxy"])], reverse=True)
    s = FULL
    keys: list[str] = []
    about: dict[str, dict] = {}
    for run in runs:
        for row in run["rows"]:
            if row["key"] not in about:
                keys.append(row["key"])
                about[row["key"]] = row
    cells = {(run["mitmproxy"], row["key"]): row for run in runs for row in run["rows"]}

    def cell(run: dict, key: str) -> str:
        row = cells.get((run["mitmproxy"], key))
        if row is None:
            return "not measured"
        return f"{row['headline']}, {MET[row['met']]}" if row["met"] is not None else row["headline"]

    lines = [f"mitmproxy {run['mitmproxy']}" for run in runs]
    out = [
        "# Benchmarks",
        "",
        "The addon against bare mitmdump, on loopback, one full run of `scripts/bench` per mitmproxy line. "
        "Each cell is the median over the run's rounds of the figure its target judges; every ratio and difference "
        "compares runs made side by side in the same run, alternating between the variants. Every figure of a run "
        "(ranges, the variants measured beside it, notes) and its raw data are in the files linked under the table; "
        "earlier rounds and the analysis of the targets missed are in [docs/performance.md](docs/performance.md).",
        "",
        "| # | scenario | measure | target | " + " | ".join(lines) + " |",
        "|---|---|---|---|" + "---|" * len(runs),
        *(f"| {k} | {about[k]['scenario']} | {about[k]['measure']} | {about[k]['target']} | "
          + " | ".join(cell(run, k) for run in runs) + " |" for k in keys),
        "",
        "Runs:",
        "",
        *(f"- mitmproxy {run['mitmproxy']}, Python {run['python']}: {run['when']}, {run['minutes']} minutes, "
          f"code {run['code'].split(' at ')[-1]}; every figure in [benchmarks/mitmproxy-{run['mitmproxy']}.md]"
          f"(benchmarks/mitmproxy-{run['mitmproxy']}.md), raw data in [benchmarks/mitmproxy-{run['mitmproxy']}.json]"
          f"(benchmarks/mitmproxy-{run['mitmproxy']}.json)" for run in runs),
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in runs[0]["machine"][:2]),
        *(f"- {run['machine'][2]}" for run in runs),
        *(f"- {line}" for line in runs[0]["machine"][3:]),
        "",
        "## Reproduce",
        "",
        "```sh",
        "scripts/bench            # the full run on .venv's line; writes benchmarks/mitmproxy-VERSION.{json,md}, then this file",
        "VENV=.venv-mitm11 PYTHON=python3.11 scripts/bench   # the same on mitmproxy 11.0.2",
        "scripts/bench --render   # rewrites this file from the runs in benchmarks/",
        "scripts/bench --quick    # under 2 minutes, to check a change; writes a scratch copy, prints the table",
        "scripts/bench --only 1,2 # some scenarios",
        "scripts/bench --quick --addon ../other/addon/main.py  # measure a change kept in another worktree",
        "scripts/bench --only 1 --compare ../old/addon/main.py # scenario 1 against another version (row 1c)",
        "```",
        "",
        "`scripts/bench` sets up the venv (`scripts/setup dev`) and, when `wrk` or `redis-server` is missing, "
        "installs it from the Debian/Ubuntu archive with `apt-get install wrk redis-server` (as root, or through "
        "sudo). Nothing else is needed; everything runs on 127.0.0.1 (scenario 11 starts its own `redis-server` on "
        "a free port, without persistence).",
        "",
        "## Method",
        "",
        f"- **Processes.** An upstream, the proxies, the load generator and the driver are separate processes on "
        "127.0.0.1. " + ("Each mitmdump is pinned to its own core and everything else to the other, so the proxy "
                         "under test never competes with the client for a CPU. " if PINNED else "")
        + "All proxies run with `--set flow_detail=0` (no per-flow output, which would otherwise dominate) and the "
        "default options otherwise; the addon proxies add `-s addon/main.py --set rules=…`.",
        "- **Upstreams.** `scripts/bench_servers.py fast`: a minimal asyncio HTTP/1.1 server (it serves about 100,000 "
        "small requests per second on one core, two orders of magnitude above mitmdump) answering a 300-byte chat "
        "completion, Server-Sent Events on a fixed schedule, or a large event stream. `scripts/bench_servers.py "
        "protected`: the demo's `ProtectedAPI` (scripts/fake_upstream.py) under hypercorn, with a control route "
        "that sets which tokens it accepts.",
        "- **The request.** A `POST /v1/chat/completions` as the OpenAI Python SDK sends it (SDK `User-Agent`, "
        "`X-Stainless-*` headers, cookies `theme`, `tracking`, `session`, a 100-byte JSON body with "
        "`\"stream\": false`), in absolute form to the proxy. Before measuring, the bench checks through a `/echo` "
        "route that the addon proxies rewrite it (browser `User-Agent`, `X-Stainless-*` removed, `Origin`, "
        "captcha header, `session` cookie set to a token, `tracking` removed) and bare mitmdump does not.",
        "- **Rules files.** The realistic file has 10 rules: browser headers, client-hint headers, `Origin` on "
        "POST/PUT/PATCH, `Accept` by stream detection on the JSON body (two rules), `{captcha}` from a file "
        "(ttl 110 s) and `{token}` (4 tokens, round robin) in a cookie with another cookie removed, a `filter:` "
        "rule, an upload rule (other path and method), and two rules for other hosts; 8 of them are checked against the "
        "request and 5 apply (12 header edits, 2 cookie edits). The 1,000-rule file adds 990: 40 for the same host "
        "on other paths, 851 for other exact hosts (20 of them with a filter), 99 with wildcard hosts "
        "(`*.tN.example.org`). Both files also have "
        "`on_response`, tokens with a state file and a breaker, as in rules.yaml.",
        f"- **1, 2: throughput.** `wrk -t1 -c{s.connections} -d{s.tput_seconds:g}s` with a Lua script that sends "
        f"the request above, through each proxy in turn (bare; a script made of the addon's own addons with every hook "
        "replaced by one that does nothing, to show what mitmproxy charges for any such script; 10 rules; 1,000 rules; the order rotates "
        "each round), "
        f"{s.rounds} rounds after a 1-second warm-up each. A run with any error or non-2xx answer is an error. The "
        "ratio is computed per round (addon ÷ bare of the same round), then its median is taken. Row 1s: one more "
        "proxy in the same rotation, scenario 1's with `--set status_listen=…` (the status server on), whose "
        "`/metrics` and `/status` the driver reads every second while wrk runs through it; its req/s ÷ that of "
        "scenario 1's proxy, per round. Row 1x: one exit, Debian's tinyproxy on the upstream's CPUs, and two "
        "more mitmdumps in the rotation, both `--mode upstream:` through it: bare with `upstream_auth`, and "
        "scenario 1's addon with that tinyproxy as its only exit (`exits:`, the pool's `exits: all`), which "
        "routes each request itself; the addon's req/s ÷ bare upstream mode's, per round. tinyproxy closes each "
        "plain-HTTP connection after one request, so both pay a new connection per request.",
        f"- **3: latency.** The same with one connection (`-c1`), {s.lat_seconds:g} s per run, {s.rounds} rounds: "
        "one request at a time, so nothing queues. p50 and p99 come from wrk's latency histogram (microseconds). "
        "The difference is taken per round.",
        f"- **4: SSE.** The upstream sends 50 events 20 ms apart, each stamped with its send time; the client "
        f"(this driver, a blocking socket) stamps each event's arrival. Lag = arrival − send. The same stream is "
        f"fetched directly, through the addon (10 rules; the JSON body says `\"stream\": true`), through bare "
        f"mitmdump with `stream_large_bodies=1` (mitmproxy streaming on its own, for scale) and through bare mitmdump "
        f"as is, {s.sse_rounds} rounds. Each stream goes on a kept-alive connection that has carried one small "
        "request first, as in an SDK's connection pool. The target is judged on every single event: its arrival time (from the "
        "start of the request) through the addon minus the arrival time of the same event in the direct run of the "
        "same round; the events leave the upstream on a fixed schedule from the moment the request reached it, so "
        "this includes the extra time the request took to get there.",
        f"- **10: recovered SSE.** The same 50-event stream from the fast upstream, which refuses (403) a chat "
        "request on cue. A proxy with the addon (10 rules, two tokens, round robin, `cooldown: 0`) and one more with "
        "`--set stream_retries=false`; each round, in rotated order: the stream directly; through the addon, accepted "
        "at once (first attempt); through the addon after the upstream was told to refuse the next request, so that it "
        "is refused and retried with the other token (recovered); the same through the second proxy (held whole); and "
        "the refusal's round trip (a 403 fetched directly on a fresh connection, as the retry's is). Each stream goes "
        "on a kept-alive connection warmed by a request no rule gives a token. Per event: its lag (arrival − upstream "
        "send) in the recovered stream minus the same event's in the first-attempt stream of the same round; the first "
        "event's delay from the request, recovered minus first attempt, minus that round's refusal round trip. "
        f"{s.sse_recovery_rounds} rounds after one that is not kept (a proxy's first retry runs code nothing has run "
        "yet); the bench checks the upstream refused exactly three requests per round and that only the first proxy "
        "streamed its recoveries.",
        f"- **5: memory.** A fresh addon proxy; after one small warm-up stream, idle RSS is read, the kernel's peak "
        f"counter is reset (`/proc/PID/clear_refs`), then {s.big_bytes >> 20} MiB of `text/event-stream` in 64 KiB "
        "events are fetched through it with `Accept: text/event-stream` (the `account` rule puts a token in, so the "
        "answer goes through the addon's retry check before it streams) while RSS is also sampled every 20 ms. Growth = peak − idle. "
        "Bare mitmdump is not measured here: without `stream_large_bodies` it holds the whole body in memory.",
        f"- **6: recovery.** Against the protected upstream, the addon with the 10 rules and two tokens "
        f"(`sticky`). Each round (the order rotates) makes three requests, each on a fresh connection: direct to "
        "the upstream with the headers it wants (the upstream round trip); through the addon, plain; and through "
        "the addon after the upstream was told to refuse the token in use, so that it is refused once and replayed "
        f"with the other token. {s.recovery_rounds} rounds; the bench checks that the upstream refused exactly one "
        "request per round. Target: median(recovered) − median(plain) ≤ median(direct) + 2 ms.",
        f"- **7: storm.** The upstream is told to refuse the sticky token, then 200 connections (opened first) "
        "each send one request through the addon at once; every one must end in a 200. Against it: the same 200 "
        "connections each sending two ready-made requests (the headers and token the upstream wants) through bare "
        "mitmdump: 400 requests, 400 upstream answers, like the storm's 200 refusals plus 200 replays. "
        "For context, also measured in the same rounds: 400 ready-made requests on 400 connections through bare "
        "mitmdump, and 200 SDK requests through the addon that are not refused. "
        f"Wall time from the first send to the last answer; {s.storm_rounds} rounds, alternating. The storm's "
        "row also says how many of the 200 were actually refused: a request that draws its token after the "
        "first refusal was handled already gets the next token and is not refused at all.",
        f"- **8: captcha.** The captcha source is a command that appends to a counter file and sleeps 0.2 s "
        f"(`ttl: 110`). A fresh proxy per round, 100 connections opened, then one request each at once; the "
        "counter must say 1 and the upstream must have seen one value.",
        f"- **9: start-up and reload.** Start-up: from spawning mitmdump to its port accepting connections, bare, "
        f"10 rules and 1,000 rules, {s.startup_rounds} rounds; the addon's share is the difference to bare mitmdump "
        "of the same round. Parsing: `load_config` on the 1,000-rule file in a fresh interpreter, first call and "
        f"warm. Reload: under a running proxy the file is replaced (atomic rename) with one header value changed; "
        "requests through the proxy every 5 ms tell when the upstream first sees the new value (this includes the "
        "watcher's 1-second poll), and the slowest of those requests is the stall the reload caused; "
        f"{s.reload_rounds} rounds. Met when the added start-up is under 1 s, the edit is applied within the "
        "poll interval plus 1 s, and the stall is under 1 s.",
        f"- **12: instructions per request.** Each proxy runs under `valgrind --tool=callgrind --instr-atstart=no` "
        "with `PYTHONHASHSEED=0` (one hash seed for all: with random ones, counts moved by up to 3 % between "
        "starts) and mitmproxy's own allocator, started anew for each count; counting is switched on, "
        f"{CALLGRIND_WARMUP} of scenario 1's requests warm it up, `callgrind_control --zero`, then "
        f"{CALLGRIND_REQUESTS} more on one kept-alive connection, one at a time, and `callgrind_control --dump`: "
        "the total on the thread that runs the event loop ÷ the requests is the proxy's instructions per request "
        "(waiting costs none; work done once a second is a small share: with the requests spaced 0.4 s apart, six "
        "times the time, the event loop's count rose by 1.4 % for the addon and 0.2 % for bare; the state file's "
        "writer thread is counted apart, and the headline is the event loop's thread). The proxies: bare "
        "mitmdump; a script shaped like the addon whose hooks do nothing (for scale); the addon with 10 and "
        "with 1,000 rules; with 10 rules and the status server on, its /metrics and /status read once halfway "
        "through the count (12s); and the peers of scripts/bench_peers.py (12p): mitmproxy's `modify_headers` "
        "with the part of the 10 rules it can express (fixed headers set and removed, under the same conditions "
        "as flow filters; no token, captcha or single cookie, and no Accept by the body, which its hook sees "
        "before the body has come), and a hand-written script doing the job "
        "(headers, Accept by the body's `stream`, captcha, the next token in the `session` cookie, a 403 sent "
        "again with the next token); before counting, the bench checks through `/echo` that each does its "
        "part. 3 rounds in rotated order; ratios per round, then the median. Instruction counts do not move "
        "with the machine's load.",
        f"- **11: shared store.** A `redis-server` of the bench's own (`--save '' --appendonly no`, on a free port, "
        "pinned with the upstreams). (a) Throughput: scenario 1's request and 10-rule file through bare mitmdump, "
        "the addon with the state file (scenario 1's proxy) and the addon with the same file plus `store: "
        f"redis://…` (its own namespace), `wrk -t1 -c{s.connections} -d{s.shared_seconds:g}s` each, in rotated "
        f"order, {s.shared_rounds} rounds after a 1-second warm-up; ratios per round, then medians. Redis's "
        "`INFO commandstats` before and after each run through the Redis proxy, divided by wrk's request count, "
        "gives the commands per request; every round trip of a draw carries exactly one `XREAD`, so `XREAD` calls "
        "are its round trips. The bench checks the shared rotation (`INCRBY`) moved by at least the number of "
        "requests. (b) Propagation: two addon proxies, A and B, with one rules file (the 10 rules, 4 tokens, "
        f"`strategy: sticky`, `cooldown: {SHARED_COOLDOWN:g}`, a breaker of 5 tokens so it never opens) on the same "
        "store, in front of "
        "scripts/fake_upstream.py's `ProtectedAPI` run in the driver's process, which notes when each request "
        "arrived and with which token. One client sends requests through B one after another on a kept-alive "
        "connection, each marked with its number and the time it was sent. Each round the upstream is told to "
        "refuse, from the next request through A on, that request's token for everyone; A's request is refused "
        "(403) and recovered with another token. Both proxies are on that token (`sticky`), so until B learns of "
        "the refusal every request through B carries it; with `round_robin` the shared rotation would come back "
        "to it only four draws after A's, which hides a slow propagation. Measured at the upstream: the last request "
        "from B with the "
        f"refused token minus A's refused request (B's requests from 0.2 s before to {SHARED_WINDOW:g} s after it; "
        "≤ 0: B's next request already avoided it). B's requests with the token that B's client sent after A's retry "
        "reached the upstream drew their token after the refusal was in Redis: that count is the target (0). "
        f"{s.propagation_rounds} rounds after one that is not kept, the token accepted again after each. Idle "
        f"variant, {s.idle_rounds} round(s): B's client pauses, A's request is refused with "
        f"`Retry-After: {IDLE_RETRY_AFTER}`, and after {IDLE_GAP:g} s one request through B must not carry that "
        "token. Both proxies run on the proxies' core.",
        "",
        "",
    ]
    return "\n".join(out)


KEEP_MARKER = "<!-- written by hand below this line; scripts/bench keeps it when it rewrites the file -->"
RUNS = ROOT / "benchmarks"  # a full run's figures, one pair of files per mitmproxy line


def write_summary() -> Path:
    """BENCHMARKS.md from the full runs in benchmarks/; what is written by hand below KEEP_MARKER stays."""
    runs = [json.loads(f.read_text()) for f in sorted(RUNS.glob("mitmproxy-*.json"))]
    if not runs:
        raise SystemExit(f"no full run in {RUNS}: run scripts/bench first")
    report = render_summary(runs)
    out = ROOT / "BENCHMARKS.md"
    if out.exists() and KEEP_MARKER in out.read_text():
        report += "\n" + KEEP_MARKER + out.read_text().split(KEEP_MARKER, 1)[1]
    out.write_text(report)
    return out


def round_floats(o):
    if isinstance(o, float):
        return round(o, 4)
    if isinstance(o, dict):
        return {k: round_floats(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [round_floats(v) for v in o]
    return o


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (under 2 minutes)")
    parser.add_argument("--only", help="comma-separated scenario numbers (1-12)")
    parser.add_argument("--rounds", type=int, help="rounds of the throughput and latency scenarios")
    parser.add_argument("--out", type=Path, help="where to write the run's report (default: for a full run of every "
                                                 "scenario benchmarks/mitmproxy-VERSION.md beside its .json, and "
                                                 "BENCHMARKS.md is rewritten; a scratch file otherwise)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new one under /tmp/bench)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, rules files)")
    parser.add_argument("--addon", type=Path, help="the addon's main.py to measure (default: this checkout's); "
                                                   "to try a change kept in another worktree")
    parser.add_argument("--compare", type=Path, metavar="OTHER_MAIN_PY",
                        help="another checkout's addon/main.py: scenarios 1 and 2 also run a proxy with it (10 rules) "
                             "in the same rounds, and row 1c compares this addon with it by req/s and CPU per request")
    parser.add_argument("--redis-delays", default="0,5,50", help="scenario 11: milliseconds added to each way between "
                        "the proxies and Redis, one run for each (default 0,5,50)")
    parser.add_argument("--render", action="store_true", help="measure nothing: rewrite BENCHMARKS.md from the full "
                                                                "runs kept in benchmarks/")
    args = parser.parse_args()
    if args.render:
        print(f"written {write_summary()}")
        return 0
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 13))
    if args.compare and 1 not in only:
        parser.error("--compare compares scenario 1: give --only with 1 in it, or no --only")
    if only & {1, 2, 3, 11} and not shutil.which("wrk"):  # the throughput and latency scenarios use it
        print("wrk is not installed; run scripts/bench (it installs it) or apt-get install wrk", file=sys.stderr)
        return 2
    if 11 in only and not shutil.which("redis-server"):  # the shared-store scenario starts one
        print("redis-server is not installed; run scripts/bench (it installs it) or apt-get install redis-server",
              file=sys.stderr)
        return 2
    global ADDON_MAIN
    if args.addon:
        ADDON_MAIN = args.addon.resolve()
    s = QUICK if args.quick else FULL
    if args.rounds:
        s.rounds = args.rounds
    if args.workdir:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.gettempdir()) / "bench"
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    if OTHER_CPUS:
        os.sched_setaffinity(0, OTHER_CPUS)
    started = time.monotonic()
    busy0, own0 = cpu_busy_seconds(), own_cpu_seconds()
    bench = Bench(s, workdir)
    if args.addon:
        bench.notes.append(f"The addon measured is {ADDON_MAIN}, not this checkout's.")
    if args.compare:
        bench.compare = args.compare.resolve()
        bench.notes.append(
            f"Row 1c: a proxy with {bench.compare} ({checkout(bench.compare)}) and scenario 1's ten rules (a rules "
            f"file of its own, for its own state file) ran in the rotation of scenarios 1 and 2, against {ADDON_MAIN} "
            f"({checkout(ADDON_MAIN)}). CPU per request: the mitmdump's utime + stime (/proc/PID/stat) after the wrk "
            "run minus before it, ÷ wrk's request count; ratios per round, then the median.")
    argv = [a for a in sys.argv[1:]]
    log(f"{'quick' if s.quick else 'full'} run of scenarios {sorted(only)}; scratch folder {workdir}")
    ok = False
    try:
        bench.start_common()
        if 1 in only or 2 in only:
            bench.throughput()
            if 2 not in only:
                bench.results.pop(2)
            if 1 not in only:
                bench.results.pop(1)
                bench.results.pop(1.5, None)
                bench.results.pop(1.75, None)
                bench.results.pop(1.875, None)
        if 3 in only:
            bench.latency()
        if 4 in only:
            bench.sse()
        if 10 in only:
            bench.sse_recovery()
        if 11 in only:
            bench.redis_delays = [float(ms) / 1000 for ms in args.redis_delays.split(",")]
            bench.shared_store()
        if 6 in only or 7 in only:
            bench.start_protected()
            if 6 in only:
                bench.recovery()
            if 7 in only:
                bench.storm()
        if 8 in only:
            bench.captcha()
        if 9 in only:
            bench.startup_reload()
        if 5 in only:
            bench.memory()
        if 12 in only:
            bench.instructions()
        bench.check_logs()
        ok = True
    finally:
        Proc.stop_all()
        wall = time.monotonic() - started
        foreign = max(0.0, (cpu_busy_seconds() - busy0) - (own_cpu_seconds() - own0))
        bench.notes.append(
            f"Other processes on the machine used {foreign:.0f} CPU-seconds during the {wall:.0f} s run "
            f"({100 * foreign / wall:.0f}% of one CPU)" + ("; figures may be disturbed by them." if foreign / wall > 0.05 else ".")
        )
        if bench.results:
            run = run_record(bench, s, started, argv)
            report = render_details(run)
            full = not s.quick and only == set(range(1, 13)) and ok and not args.addon and not args.compare
            scratch = Path(tempfile.gettempdir()) / "bench" / ("BENCHMARKS-quick.md" if s.quick else "BENCHMARKS-partial.md")
            out = args.out or (RUNS / f"mitmproxy-{run['mitmproxy']}.md" if full else scratch)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(report)
            if full:
                out.with_suffix(".json").write_text(json.dumps(run, ensure_ascii=False, indent=1) + "\n")
                write_summary()
            print()
            print("\n".join(line for line in report.splitlines() if line.startswith("|")))
            print(f"\nreport written to {out}" + (" and BENCHMARKS.md" if full else "")
                  + f"; took {(time.monotonic() - started) / 60:.1f} min")
        if ok and not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
