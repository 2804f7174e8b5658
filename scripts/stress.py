"""The attacks of issues 15 and 23 that have figures, measured against a real mitmdump on this line.

    .venv/bin/python scripts/stress.py [--only NAME ...]      (and with .venv-mitm11/bin/python)

  rules     load a 100,000-rule file: time and peak memory of `load_config` in a fresh process, then
            as a reload of a running proxy, with the latency of requests sent while it reloads
  bombs     a brotli and a zstd request body that decode to 1.5 GiB: mitmdump's RSS before and
            after, and the latency of another client while the bomb is judged
  tokens    a 100,000-token file: reading and hashing it, a draw with all active and with all but
            one cooling, and a write of the state file with an entry per token
  switch    a proxy with 1,000,000 tokens and a state entry for each, whose tokens file is replaced
            by a 2-token one: request latency and RSS after the switch, and the state file's size
  json      (issue 23) a 46 KiB gzip body that decodes to 31 MiB of JSON (4 million small objects):
            one and four at once, without and with a `body:` edit; the latency of another client
            meanwhile (its max: the stall), and the RSS of mitmdump and of its children (with
            STRESS_EXTRA_SCRIPT=scripts/loop_lag_probe.py, also how late mitmdump's loop ran)
  reader    (issue 23, attack 5) clients whose streaming request is refused, then recovered with a
            retry that streams 256 MiB as fast as it can, and that read nothing after the first
            bytes for 20 s: what the upstream got to send meanwhile, and mitmdump's RSS
  departed  (issue 23, attack 7) 5 clients that leave after 2 s while every token is refused (each
            refusal after 50 ms; 1,000 tokens, max_attempts 1,000, a breaker that never opens): the
            upstream requests made for them in the 10 s after they left

And of issue 23 (value commands):

  orphans   a captcha command (ttl 0, timeout 1 s) whose child keeps its output open for 20 s
            (`sleep 20 & wait`): how long 5 requests sent at once that need the value wait, and how
            many of the children are alive 3 s after they were sent
  flood     a captcha command (ttl 0, timeout 120 s) that prints 500 MiB: mitmdump's RSS before, at
            its peak and after one request that needs the value, and how long that request took

Traffic goes to a local upstream on 127.0.0.1 only. Prints one line per figure. STRESS_ADDON=path/to/main.py
measures another checkout's addon (the code before a fix, say) with these attacks.
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from fake_upstream import stop_process, wait_for_port  # noqa: E402

MITMDUMP = Path(sys.executable).with_name("mitmdump")
MiB = 2**20


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go in two writes: no 40 ms wait for a delayed ACK

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def upstream() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    def __init__(self, rules: Path) -> None:
        extra = ["-s", os.environ["STRESS_EXTRA_SCRIPT"]] if os.environ.get("STRESS_EXTRA_SCRIPT") else []
        self.port = free_port()
        self.log = rules.with_name("mitmdump.log")
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(MITMDUMP), "-s", os.environ.get("STRESS_ADDON", str(ROOT / "addon" / "main.py")), "--set", f"rules={rules}", "--listen-host",
             "127.0.0.1", "--listen-port", str(self.port), "--set", "flow_detail=0",
             "--set", f"confdir={rules.parent / 'conf'}", *extra],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        wait_for_port(self.port, timeout=600, proc=self.proc)
        self.client = httpx.Client(proxy=f"http://127.0.0.1:{self.port}", timeout=120)

    def rss(self) -> tuple[float, float]:
        """(RSS, peak RSS) in MiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def wait_for(self, text: str, count: int = 1, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(text) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(text)
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)
        self._out.close()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latencies(proxy: Proxy, url: str, until: threading.Event, at_most: int = 100_000) -> list[float]:
    out = []
    while not until.is_set() and len(out) < at_most:
        out.append(timed(lambda: proxy.client.get(url)))
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(x * 1000 for x in ms)
    if not ms:
        return "no requests"
    p99 = ms[min(len(ms) - 1, math.ceil(len(ms) * 0.99) - 1)]
    return (f"{len(ms)} requests, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
            f"max {ms[-1]:.1f} ms")  # fmt: skip


def rules_text(port: int, n: int) -> str:
    lines = ["rules:", f"  - {{name: here, match: {{host: '127.0.0.1:{port}'}}, headers: {{X-Here: '1'}}}}"]
    lines += [f"  - name: rule-{i}\n    match: {{host: h{i}.example.com, path: /v1/*}}\n"
              f"    headers: {{X-Rule: \"r{i}\", User-Agent: Mozilla/5.0}}" for i in range(n)]  # fmt: skip
    return "\n".join(lines) + "\n"


def measure_rules(folder: Path, port: int) -> None:
    big = folder / "big.yaml"
    big.write_text(rules_text(port, 100_000))
    code = ("import resource, sys, time; from addon.rules.config import load_config; t = time.perf_counter(); "
            "c = load_config(sys.argv[1]); print(time.perf_counter() - t, len(c.rules), "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, cwd=ROOT, check=True)
    seconds, count, peak = out.stdout.split()
    print(f"rules: load_config of {count} rules ({big.stat().st_size / MiB:.1f} MiB): {float(seconds):.1f} s, "
          f"peak RSS {float(peak):.0f} MiB (the whole process)")
    rules = folder / "rules.yaml"
    rules.write_text(rules_text(port, 1))
    proxy = Proxy(rules)
    try:
        url = f"http://127.0.0.1:{port}/v1/x"
        proxy.wait_for("rules: loaded")
        done = threading.Event()
        before = latencies(proxy, url, done, at_most=300)
        print(f"rules: before the reload: {summary(before)}; RSS {proxy.rss()[0]:.0f} MiB")
        results: list[float] = []
        sender = threading.Thread(target=lambda: results.extend(latencies(proxy, url, done)))
        started = time.perf_counter()
        os.replace(big, rules)
        sender.start()
        proxy.wait_for("rules: loaded", count=2)
        took = time.perf_counter() - started
        done.set()
        sender.join()
        print(f"rules: reload of the 100,000-rule file under traffic took {took:.1f} s (from the file's change); "
              f"meanwhile {summary(results)}; RSS after {proxy.rss()[0]:.0f} MiB, peak {proxy.rss()[1]:.0f} MiB")
    finally:
        proxy.stop()


def measure_bombs(folder: Path, port: int) -> None:
    import brotli
    from mitmproxy.net.encoding import encode

    rules = folder / "rules.yaml"
    rules.write_text(rules_text(port, 0))
    c = brotli.Compressor(quality=5)
    pad = b" " * MiB
    br = c.process(b'{"stream": true, "pad": "') + b"".join(c.process(pad) for _ in range(1536)) + c.process(b'"}') + c.finish()
    frame = encode(b" " * (16 * MiB), "zstd")
    zstd = encode(b'{"stream": true, "pad": "', "zstd") + frame * 96 + encode(b'"}', "zstd")
    proxy = Proxy(rules)
    try:
        url = f"http://127.0.0.1:{port}/v1/x"
        proxy.client.get(url)
        for name, body in (("br", br), ("zstd", zstd)):
            rss, _ = proxy.rss()
            done = threading.Event()
            others: list[float] = []
            sender = threading.Thread(target=lambda: others.extend(latencies(proxy, url, done)))
            sender.start()
            took = timed(lambda: proxy.client.post(url, content=body, headers={"Content-Encoding": name}))
            done.set()
            sender.join()
            after, peak = proxy.rss()
            print(f"bombs: {name}, {len(body) / 1024:.1f} KiB decoding to 1.5 GiB: the request took {took * 1000:.0f} ms; "
                  f"RSS {rss:.0f} -> {after:.0f} MiB (peak so far {peak:.0f}); another client meanwhile: {summary(others)}")
    finally:
        proxy.stop()


def measure_tokens(folder: Path) -> None:
    from addon.tokens import statefile
    from addon.tokens.pool import TokenPool
    from addon.tokens.tokenfile import read_token_list

    path = folder / "tokens.txt"
    tokens = [f"tok-{i:07d}-{os.urandom(8).hex()}" for i in range(100_000)]
    path.write_text("\n".join(tokens) + "\n")
    t = time.perf_counter()
    token_list = read_token_list(path)
    print(f"tokens: read and hash 100,000 tokens: {(time.perf_counter() - t) * 1000:.0f} ms (in the reload's thread)")
    now = [time.time()]
    pool = TokenPool(clock=lambda: now[0])
    t = time.perf_counter()
    pool.replace(token_list)
    print(f"tokens: swap the list in (on the event loop): {(time.perf_counter() - t) * 1e6:.0f} µs")
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        pool.draw()
    print(f"tokens: draw, all active: {(time.perf_counter() - t) / n * 1e6:.2f} µs")
    for tok in tokens[:-1]:
        pool.refused(tok)
    t = time.perf_counter()
    for _ in range(n):
        pool.draw()
    print(f"tokens: draw, 99,999 of 100,000 cooling: {(time.perf_counter() - t) / n * 1e6:.2f} µs")
    pool.refused(tokens[-1])
    t = time.perf_counter()
    for _ in range(n):
        pool.draw()
    print(f"tokens: draw, all cooling (the soonest ready): {(time.perf_counter() - t) / n * 1e6:.2f} µs")
    store = statefile.StateStore(folder / "tokens.state.json", {}, 86400)
    t = time.perf_counter()
    changes = pool.take_changes()
    handed = time.perf_counter() - t
    store.update(changes, pool.list, pool.listed_at, now[0])
    t = time.perf_counter()
    store.write()
    first = time.perf_counter() - t
    handed_one = []
    for i in range(100):
        pool.succeeded(tokens[i], now[0])
        t = time.perf_counter()
        changes = pool.take_changes()
        handed_one.append(time.perf_counter() - t)
    handed_one = statistics.median(handed_one)
    store.update(changes, pool.list, pool.listed_at, now[0])
    t = time.perf_counter()
    store.write()
    again = time.perf_counter() - t
    size = store.path.stat().st_size / MiB
    print(f"tokens: save of 100,000 entries ({size:.1f} MiB): on the event loop {handed * 1000:.0f} ms to hand over all "
          f"100,000 changes, {handed_one * 1e6:.0f} µs for one; in the writer's thread {first * 1000:.0f} ms the first "
          f"time, {again * 1000:.0f} ms after one change")


def measure_switch(folder: Path, port: int) -> None:
    from addon.tokens.tokenfile import token_key

    tokens_file = folder / "tokens.txt"
    tokens = [f"tok-{i:07d}-{os.urandom(8).hex()}" for i in range(1_000_000)]
    tokens_file.write_text("\n".join(tokens) + "\n")
    state = {token_key(t): {"suffix": "…" + t[-4:], "cooling_until": 0.0, "refused_at": 0.0, "disabled": False,
                            "successes": 1, "refusals": 0} for t in tokens}  # fmt: skip
    rules = folder / "rules.yaml"
    rules.write_text(f"rules:\n  - {{name: t, match: {{host: '127.0.0.1:{port}'}}, cookies: {{session: '{{token}}'}}}}\n"
                     "tokens: {file: tokens.txt}\n")
    (folder / "two.txt").write_text("tok-two-0000000000000001\ntok-two-0000000000000002\n")
    rules.write_text(rules.read_text().replace("tokens.txt", "two.txt"))
    proxy = Proxy(rules)
    try:
        url = f"http://127.0.0.1:{port}/v1/x"
        proxy.wait_for("rules: loaded")
        done = threading.Event()
        threading.Timer(10, done.set).start()
        print(f"switch: 2 tokens from the start, for comparison: {summary(latencies(proxy, url, done))}; "
              f"RSS {proxy.rss()[0]:.0f} MiB")
    finally:
        proxy.stop()
    rules.write_text(rules.read_text().replace("two.txt", "tokens.txt"))
    (folder / "tokens.state.json").write_text(json.dumps({"version": 1, "tokens": state}))
    del state
    started = time.perf_counter()
    proxy = Proxy(rules)
    try:
        proxy.wait_for("rules: loaded")
        print(f"switch: start-up with 1,000,000 tokens and their state: {time.perf_counter() - started:.1f} s")
        done = threading.Event()
        threading.Timer(10, done.set).start()
        print(f"switch: with 1,000,000 tokens: {summary(latencies(proxy, url, done))}; RSS {proxy.rss()[0]:.0f} MiB")
        tokens_file.write_text("tok-two-0000000000000001\ntok-two-0000000000000002\n")
        started = time.perf_counter()
        done = threading.Event()
        results: list[float] = []
        sender = threading.Thread(target=lambda: results.extend(latencies(proxy, url, done)))
        sender.start()
        proxy.wait_for("re-read")
        switched = time.perf_counter() - started
        time.sleep(20)
        done.set()
        sender.join()
        size = (folder / "tokens.state.json").stat().st_size / MiB
        print(f"switch: to 2 tokens (re-read {switched:.1f} s after the change); the 20 s after it: {summary(results)}; "
              f"RSS {proxy.rss()[0]:.0f} MiB, peak {proxy.rss()[1]:.0f} MiB; state file {size:.0f} MiB "
              "(the health of the 999,998 others is kept for a day)")
    finally:
        proxy.stop()


def slow_json_gzip(size: int = 31 * MiB) -> bytes:
    """`{"stream": true, "model": "client", "messages": [{"n":0}, …]}` of about `size` bytes, gzip (31 KB)."""
    import zlib

    chunk = b'{"n":0},' * 100_000
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(b'{"stream": true, "model": "client", "messages": [')]
    parts += [z.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, z.compress(b'{"n":0}]}'), z.flush()])


def children_rss(pid: int, field: str = "VmRSS") -> float:
    """The RSS (or with "VmHWM" the peak RSS) of the children of `pid` (the body worker), in MiB."""
    total = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
                total += int(status[field].split()[0])
        except (OSError, KeyError, ValueError):
            continue
    return total / 1024


def measure_json(folder: Path, port: int) -> None:
    body = slow_json_gzip()
    for edit in (False, True):
        rules = folder / "rules.yaml"
        rules.write_text(f"rules:\n  - {{name: here, match: {{host: '127.0.0.1:{port}'}}, headers: {{X-Here: '1'}}"
                         + (", body: {model: edited}}\n" if edit else "}\n"))
        proxy = Proxy(rules)
        try:
            url = f"http://127.0.0.1:{port}/v1/x"
            proxy.client.get(url)
            for n in (1, 4):
                rss = proxy.rss()[0]
                done = threading.Event()
                others: list[float] = []
                sender = threading.Thread(target=lambda: others.extend(latencies(proxy, url, done)))
                sender.start()

                def post() -> None:
                    with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", timeout=300) as c:
                        c.post(url, content=body, headers={"Content-Encoding": "gzip"})

                posts = [threading.Thread(target=post) for _ in range(n)]
                took = timed(lambda: [[t.start() for t in posts], [t.join() for t in posts]])
                done.set()
                sender.join()
                after, peak = proxy.rss()
                print(f"json: {n} × {len(body) / 1024:.0f} KiB gzip of 31 MiB JSON{' with a body: edit' if edit else ''}: "
                      f"took {took:.1f} s; another client meanwhile: {summary(others)}; mitmdump RSS {rss:.0f} -> "
                      f"{after:.0f} MiB (peak so far {peak:.0f}); its children {children_rss(proxy.proc.pid):.0f} MiB "
                      f"(peak so far {children_rss(proxy.proc.pid, 'VmHWM'):.0f})")
        finally:
            proxy.stop()
        for line in proxy.log.read_text(errors="replace").splitlines():
            if "loop lag probe:" in line:  # with STRESS_EXTRA_SCRIPT=scripts/loop_lag_probe.py
                print(f"json: {'with' if edit else 'without'} the body: edit, inside mitmdump, {line.split('probe: ', 1)[1]}")


RECOVERY_RULES = """\
rules:
  - name: account
    match: {{host: "127.0.0.1:{port}"}}
    headers: {{User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0", Accept: "{accept}", X-Captcha-Token: cap-x}}
    cookies: {{session: "{{token}}"}}
tokens: {{file: tokens.txt, max_attempts: {attempts}, breaker: {{tokens: 100000, window: 1, pause: 1}}}}
on_response:
  - match: {{status: 403}}
    action: rotate
"""


def _recovery_setup(folder: Path, listed: list[str], attempts: int, accept: str, **app):
    """A fake upstream (scripts/fake_upstream.py) with these settings, and a proxy whose rules rotate on a 403."""
    from fake_upstream import ProtectedAPI, UpstreamServer

    server = UpstreamServer(ProtectedAPI(**app), free_port()).start()
    (folder / "tokens.txt").write_text("\n".join(listed) + "\n")
    rules = folder / "rules.yaml"
    rules.write_text(RECOVERY_RULES.format(port=server.port, attempts=attempts, accept=accept))
    return server, Proxy(rules)


def measure_reader(folder: Path, port: int) -> None:
    body = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
    for clients in (1, 8):
        tokens = [f"tok-reader-{i}-0000000" for i in range(16)]
        # every other request refused: each client's stream is recovered (none is a first attempt)
        server, proxy = _recovery_setup(folder, tokens, 3, "text/event-stream", tokens=set(tokens), refuse_odd=True,
                                        firehose=256 * MiB)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
            rss = proxy.rss()[0]
            streams = []
            for _ in range(clients):
                c = httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", timeout=120)
                response = c.send(c.build_request("POST", url, content=body), stream=True)
                chunks = response.iter_raw()  # kept: a generator that goes away closes the response
                next(chunks)  # the first bytes; then nothing more is read
                streams.append((c, response, chunks))
            time.sleep(20)
            after, peak = proxy.rss()
            recovered = proxy.log.read_text(errors="replace").count("refused (403)")
            print(f"reader: {clients} client(s) ({recovered} recovered) reading nothing of a recovered 256 MiB stream for 20 s: the upstream "
                  f"sent {server.app.firehose_sent / MiB:.0f} MiB; mitmdump RSS {rss:.0f} -> {after:.0f} MiB "
                  f"(peak {peak:.0f})")
            for c, response, _ in streams:
                response.close()
                c.close()
        finally:
            proxy.stop()
            server.stop()


def measure_departed(folder: Path, port: int) -> None:
    tokens = [f"tok-departed-{i:04d}-0000" for i in range(1000)]
    server, proxy = _recovery_setup(folder, tokens, 1000, "application/json", tokens=set(), refusal_delay=0.05)
    try:
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions"

        def leave() -> None:
            with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", timeout=2) as c:
                try:
                    c.post(url, content=b'{"model": "m", "messages": []}')
                except httpx.TimeoutException:
                    pass

        threads = [threading.Thread(target=leave) for _ in range(5)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        at_leave = len(server.app.received)
        time.sleep(10)
        after = len(server.app.received) - at_leave
        cooled = proxy.log.read_text(errors="replace").count("refused (403)")
        print(f"departed: 5 clients left after 2 s ({at_leave} upstream requests by then); in the next 10 s the proxy "
              f"sent {after} more for them; {cooled} token(s) cooled in all")
    finally:
        proxy.stop()
        server.stop()


def command_rules(port: int, command: list[str], timeout: float) -> str:
    return (f"rules:\n  - {{name: c, match: {{host: '127.0.0.1:{port}', path: /v1/*}}, "
            "headers: {X-Captcha: '{captcha}'}}\n"
            f"captcha: {{command: {json.dumps(command)}, ttl: 0, timeout: {timeout}}}\n")  # fmt: skip


ORPHAN_SECONDS = "20.0311"  # a length of sleep that names the children of this measure


def orphans_alive() -> list[int]:
    """The pids of the children `orphans` started that are still running (not zombies)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", ORPHAN_SECONDS.encode()]:
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(proc.name))
        except (OSError, ValueError):
            pass
    return pids


def measure_orphans(folder: Path, port: int) -> None:
    rules = folder / "rules.yaml"
    rules.write_text(command_rules(port, ["sh", "-c", f"sleep {ORPHAN_SECONDS} & wait"], timeout=1))
    proxy = Proxy(rules)
    try:
        url = f"http://127.0.0.1:{port}/v1/x"
        proxy.wait_for("rules: loaded")
        waits: list[float] = []
        send = lambda: waits.append(timed(lambda: proxy.client.get(url)))  # noqa: E731
        senders = [threading.Thread(target=send) for _ in range(5)]
        for sender in senders:
            sender.start()
        time.sleep(3)
        alive = len(orphans_alive())
        for sender in senders:
            sender.join()
        print(f"orphans: 5 requests at once needing a value whose command (timeout 1 s) leaves a child holding its "
              f"output for 20 s: they waited {min(waits):.2f}-{max(waits):.2f} s; children alive 3 s after they were "
              f"sent: {alive}, after the last answer: {len(orphans_alive())}")
    finally:
        proxy.stop()
        for pid in orphans_alive():  # (the old code left them running)
            os.kill(pid, 9)


def measure_flood(folder: Path, port: int) -> None:
    rules = folder / "rules.yaml"
    code = "import sys\nchunk = b'x' * 2**20\nfor _ in range(500):\n    sys.stdout.buffer.write(chunk)\n"
    rules.write_text(command_rules(port, [sys.executable, "-c", code], timeout=120))
    proxy = Proxy(rules)
    try:
        url = f"http://127.0.0.1:{port}"
        proxy.wait_for("rules: loaded")
        proxy.client.get(f"{url}/elsewhere")  # a request no rule touches: warm up
        before, _ = proxy.rss()
        Path(f"/proc/{proxy.proc.pid}/clear_refs").write_text("5")  # reset the peak
        took = timed(lambda: proxy.client.get(f"{url}/v1/x"))
        after, peak = proxy.rss()
        print(f"flood: a request needing a value whose command prints 500 MiB took {took:.2f} s; "
              f"mitmdump RSS {before:.0f} MiB before, peak {peak:.0f} MiB, {after:.0f} MiB after")
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=["rules", "bombs", "tokens", "switch", "json", "orphans", "flood",
                                                      "reader", "departed"])
    args = parser.parse_args()
    import mitmproxy.version

    print(f"mitmproxy {mitmproxy.version.VERSION}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    port = upstream()
    for name, fn in (("rules", measure_rules), ("bombs", measure_bombs), ("tokens", measure_tokens),
                     ("switch", measure_switch), ("json", measure_json), ("orphans", measure_orphans),
                     ("flood", measure_flood), ("reader", measure_reader), ("departed", measure_departed)):  # fmt: skip
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            fn(Path(folder), port) if name != "tokens" else fn(Path(folder))


if __name__ == "__main__":
    main()
