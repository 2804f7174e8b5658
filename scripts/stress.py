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

And of issue 23 (value commands):

  orphans   a captcha command (ttl 0, timeout 1 s) whose child keeps its output open for 20 s
            (`sleep 20 & wait`): how long 5 requests sent at once that need the value wait, and how
            many of the children are alive 3 s after they were sent
  flood     a captcha command (ttl 0, timeout 120 s) that prints 500 MiB: mitmdump's RSS before, at
            its peak and after one request that needs the value, and how long that request took

Traffic goes to a local upstream on 127.0.0.1 only. Prints one line per figure.
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
            [str(MITMDUMP), "-s", str(ROOT / "addon" / "main.py"), "--set", f"rules={rules}", "--listen-host",
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
    code = ("import resource, sys, time; from addon.config import load_config; t = time.perf_counter(); "
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
    from addon import statefile
    from addon.tokens import TokenPool, read_token_list

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
    from addon.tokens import token_key

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
    parser.add_argument("--only", nargs="*", choices=["rules", "bombs", "tokens", "switch", "orphans", "flood"])
    args = parser.parse_args()
    import mitmproxy.version

    print(f"mitmproxy {mitmproxy.version.VERSION}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    port = upstream()
    for name, fn in (("rules", measure_rules), ("bombs", measure_bombs), ("tokens", measure_tokens),
                     ("switch", measure_switch), ("orphans", measure_orphans), ("flood", measure_flood)):  # fmt: skip
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            fn(Path(folder), port) if name != "tokens" else fn(Path(folder))


if __name__ == "__main__":
    main()
