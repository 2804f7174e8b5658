"""Load soak: many mixed requests through the addon while it recovers refusals; does mitmdump hold up?

A local protected upstream (scripts/fake_upstream.py's ProtectedAPI) refuses 2 of the 20 account
tokens. The addon draws tokens round robin with no cooldown, so about one request in ten goes out
with a refused token and must be replayed with the next one behind the client's back. The client
keeps a fixed number of connections busy; every fourth request is a streamed chat completion
(Server-Sent Events, read to the end), the others plain JSON; every answer is checked.

Criteria (issue 6), each compared with mitmdump after a warm-up:
- no client-visible failure: a status other than 200, a transport error, a wrong or cut-off body;
- mitmdump's resident memory after the soak within 30 MiB of its memory after the warm-up;
- no growth in its open file descriptors or pending asyncio tasks (+2 allowed for ones that are
  legitimately transient, such as a state-file write or a connection still being torn down);
- and, so that a pass means something: at least 5 % of the requests were refused once.

    scripts/soak                                   # 20,000 requests at concurrency 32 (about 40 s on 2 cores)
    scripts/soak --requests 2000 --concurrency 8   # a shorter run
    scripts/soak --markdown soak.md                # also write the report as markdown tables

mitmdump's figures come from scripts/soak_probe.py, loaded beside the addon: it answers requests
to http://soak-probe.invalid/ itself. Everything else listens on and talks to 127.0.0.1 only.
Exits with status 1 when a criterion is not met (the mitmdump log is then kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_upstream import ProtectedAPI, Received, UpstreamServer, stop_process, wait_for_port  # noqa: E402
from soak_probe import PROBE_HOST  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).with_name("mitmdump")  # of the venv running this
PROBE = ROOT / "scripts" / "soak_probe.py"

TOKENS = [f"soak-token-{i:02d}-000000000{i:02d}" for i in range(20)]
# 10 % refused; ten places apart, so the retry after one (the next token) is never the other
REFUSED = {TOKENS[0], TOKENS[10]}
CAPTCHA = "cap-soak-captcha-value-0001"
CHUNKS = 5  # content events in a streamed answer (a final event and [DONE] follow)
STREAM_EVERY = 4  # every 4th request streams
REQUEST_TIMEOUT = 30.0  # seconds for one whole answer

RSS_SLACK_MIB = 30
COUNT_SLACK = 2  # fds and tasks: a state-file write or a connection still closing is transient
MIN_REFUSED = 0.05  # share of requests that must have been refused for the soak to test recovery
SAMPLES, SAMPLE_GAP = 3, 0.5  # probes per sample, seconds apart

RULES = """\
rules:
  - name: account
    match: {{host: "127.0.0.1:{port}", path: /v1/*}}
    headers:
      User-Agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
      X-Captcha-Token: "{{captcha}}"
    cookies: {{session: "{{token}}"}}
  - name: sse-accept
    match: {{host: "127.0.0.1:{port}", stream: true}}
    headers: {{Accept: text/event-stream}}
  - name: json-accept
    match: {{host: "127.0.0.1:{port}", stream: false}}
    headers: {{Accept: application/json}}
tokens:
  file: tokens.txt
  strategy: round_robin
  max_attempts: {max_attempts}
  cooldown: 0       # a refused token comes round again: one request in ten keeps being refused
  retire_after: 0   # and is never retired
  breaker: {{tokens: 5, window: 60, pause: 300}}   # only 2 tokens are ever refused: it never opens
captcha: {{file: captcha.txt, ttl: 300}}
"""


@dataclass
class Settings:
    requests: int = 20_000  # after the warm-up
    concurrency: int = 32  # connections, each sending its requests one after the other
    warmup: int = 1_000
    max_attempts: int = 3  # tries per request in the rules file; 1 hands every refusal to the client
    idle: float = 2.0  # seconds of quiet before mitmdump is sampled


@dataclass(frozen=True)
class Sample:
    rss_kib: int
    fds: int
    tasks: int


@dataclass
class CountingAPI(ProtectedAPI):
    """ProtectedAPI that counts its answers instead of keeping every request (a soak sends tens of thousands)."""

    answers: Counter[str] = field(default_factory=Counter)  # "ok", or why it refused
    refused_ids: set[int] = field(default_factory=set)  # X-Soak-Id of the requests refused at least once

    def refusal(self, rec: Received, streaming: bool) -> str | None:
        why = super().refusal(rec, streaming)
        self.answers[why or "ok"] += 1
        if why:
            self.refused_ids.add(int(rec.header("x-soak-id") or -1))
        self.received.clear()  # `rec` is the only one in it: it was appended just before this call
        return why


@dataclass
class Tally:
    """What the client saw."""

    total: int  # requests to send, warm-up included
    progress: bool = False  # print a line to stderr at every tenth of the total
    done: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # request id -> what was wrong

    def record(self, request_id: int, problem: str | None) -> None:
        self.done += 1
        if problem:
            self.failed[request_id] = problem
        if self.progress and self.done % max(1, self.total // 10) == 0:
            print(f"  {self.done:,} of {self.total:,} requests, {len(self.failed):,} failures",
                  file=sys.stderr, flush=True)  # fmt: skip


@dataclass(frozen=True)
class Criterion:
    name: str
    target: str
    result: str
    ok: bool


@dataclass
class Report:
    settings: Settings
    seconds: float  # the soak, after the warm-up
    total_seconds: float  # the whole run, start-up and samples included
    answers: Counter[str]  # the upstream's answers: "ok", or why it refused
    refused: int  # requests (warm-up included) the upstream refused at least once
    recovered: int  # of those, the ones the client got whole and with a 200
    failures: Counter[str]  # client-visible failures by kind
    warm: Sample
    after: Sample
    log_errors: int  # lines of mitmdump's log that mention an error, exception or traceback

    @property
    def sent(self) -> int:
        return self.settings.warmup + self.settings.requests

    def criteria(self) -> list[Criterion]:
        failures = sum(self.failures.values())
        rss = (self.after.rss_kib - self.warm.rss_kib) / 1024
        fds, tasks = self.after.fds - self.warm.fds, self.after.tasks - self.warm.tasks
        return [
            Criterion("client-visible failures", "0", f"{failures:,}", failures == 0),
            Criterion("RSS growth after warm-up", f"≤ {RSS_SLACK_MIB} MiB", f"{rss:+.1f} MiB", rss <= RSS_SLACK_MIB),
            Criterion("open fds growth", f"≤ +{COUNT_SLACK}", f"{fds:+d}", fds <= COUNT_SLACK),
            Criterion("pending asyncio tasks growth", f"≤ +{COUNT_SLACK}", f"{tasks:+d}", tasks <= COUNT_SLACK),
            Criterion("recovery exercised (refused once)", f"≥ {MIN_REFUSED:.0%} of requests",
                      f"{self.refused / self.sent:.1%}", self.refused >= MIN_REFUSED * self.sent),
        ]  # fmt: skip

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.criteria())

    def facts(self) -> list[tuple[str, str]]:
        s, w, a = self.settings, self.warm, self.after
        refusals = {why: n for why, n in self.answers.items() if why != "ok"}
        kinds = ", ".join(f"{n:,} {why}" for why, n in sorted(refusals.items()))
        failures = ", ".join(f"{n:,} × {kind}" for kind, n in self.failures.most_common())
        return [
            ("requests", f"{s.requests:,} after a {s.warmup:,}-request warm-up; concurrency {s.concurrency}; "
                         f"every {STREAM_EVERY}th streamed (SSE)"),
            ("wall time", f"{self.seconds:.1f} s for the soak ({s.requests / self.seconds:.0f} req/s); "
                          f"{self.total_seconds:.1f} s in all"),
            ("upstream answers", f"{sum(self.answers.values()):,}: {self.answers['ok']:,} ok, "
                                 f"{sum(refusals.values()):,} refused" + (f" ({kinds})" if kinds else "")),
            ("refusals recovered", f"{self.recovered:,} of {self.refused:,} requests refused at least once"),
            ("client-visible failures", f"{sum(self.failures.values()):,}" + (f": {failures}" if failures else "")),
            ("mitmdump RSS", f"{w.rss_kib / 1024:.1f} → {a.rss_kib / 1024:.1f} MiB"),
            ("mitmdump open fds", f"{w.fds} → {a.fds}"),
            ("mitmdump asyncio tasks", f"{w.tasks} → {a.tasks}"),
            ("mitmdump log", f"{self.log_errors} line(s) with an error, exception or traceback"),
        ]  # fmt: skip

    def text(self) -> str:
        lines = [f"  {name:<26}{value}" for name, value in self.facts()]
        lines += ["", f"  {'criterion':<36}{'target':<24}{'result':<12}"]
        lines += [f"  {c.name:<36}{c.target:<24}{c.result:<12}{'pass' if c.ok else 'FAIL'}" for c in self.criteria()]
        verdict = "passed" if self.passed else "FAILED"
        return "\n".join([f"load soak {verdict} (after-warm-up figures → after the soak; least of {SAMPLES} "
                          f"probes after {self.settings.idle:g} s idle)", *lines])  # fmt: skip

    def markdown(self) -> str:
        rows = ["| measure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in self.facts())]
        rows += ["", "| criterion | target | result | |", "|---|---|---|---|"]
        rows += [f"| {c.name} | {c.target} | {c.result} | {'met' if c.ok else '**missed**'} |" for c in self.criteria()]
        return "\n".join(["# Load soak", "", *rows, ""])


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_files(folder: Path, upstream_port: int, max_attempts: int) -> Path:
    """The rules file, with tokens.txt and captcha.txt beside it."""
    (folder / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    (folder / "captcha.txt").write_text(CAPTCHA + "\n")
    rules = folder / "rules.yaml"
    rules.write_text(RULES.format(port=upstream_port, max_attempts=max_attempts))
    return rules


class Mitmdump:
    """`mitmdump -s addon/main.py -s scripts/soak_probe.py` on a free loopback port; output in a log file."""

    def __init__(self, rules: Path, workdir: Path) -> None:
        self.port = free_port()
        self.logfile = workdir / "mitmdump.log"
        self.args = [
            str(MITMDUMP), "-s", str(ROOT / "addon" / "main.py"), "-s", str(PROBE), "--set", f"rules={rules}",
            "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
            "--set", f"confdir={workdir / 'mitmproxy-conf'}", "--set", "flow_detail=0",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mitmdump:
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT)  # fmt: skip
        wait_for_port(self.port, timeout=30, proc=self.proc)
        return self

    def probe(self) -> Sample:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"http://{PROBE_HOST}/")  # absolute form: a proxy request
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise RuntimeError(f"the probe answered {answer.status}: {body[:200]!r}")
        return Sample(**json.loads(body))

    def sample(self, idle: float) -> Sample:
        """mitmdump at rest: after `idle` seconds of quiet, the least of a few probes for each figure
        (whatever is in flight only adds to a figure; what stays is in every probe)."""
        time.sleep(idle)
        probes = []
        for n in range(SAMPLES):
            if n:
                time.sleep(SAMPLE_GAP)
            probes.append(self.probe())
        return Sample(*(min(values) for values in zip(*((p.rss_kib, p.fds, p.tasks) for p in probes))))

    def log_errors(self) -> int:
        text = self.logfile.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if re.search(r"error|exception|traceback", line, re.I))

    def stop(self) -> None:
        stop_process(self.proc)


# ----------------------------------------------------------------------------- the client

# what a broken or cut-off answer raises while it is read (TimeoutError is an OSError; a bad chunk size a ValueError)
TRANSPORT_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, ValueError)


def build_request(upstream_port: int, request_id: int, streaming: bool) -> bytes:
    """A chat completion as an SDK sends it to a proxy (absolute form), tagged with X-Soak-Id."""
    body = json.dumps({"model": "soak", "messages": [{"role": "user", "content": f"request {request_id}"}],
                       "stream": streaming}).encode()  # fmt: skip
    head = (
        f"POST http://127.0.0.1:{upstream_port}/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{upstream_port}\r\n"
        f"User-Agent: soak-client\r\nContent-Type: application/json\r\nX-Soak-Id: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: status, the whole body, and whether the connection can carry another request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    reusable = headers.get("connection") != "close"
    if "chunked" in headers.get("transfer-encoding", ""):
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return status, bytes(body), reusable
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), reusable
    return status, await reader.read(), False  # no length: the body ends with the connection


def problem(status: int, body: bytes, streaming: bool) -> str | None:
    """What is wrong with an answer as the client sees it, or None when it is whole and good."""
    if status != 200:
        return f"status {status}"
    if streaming:
        whole = body.count(b"data: {") == CHUNKS + 1 and body.endswith(b"data: [DONE]\n\n")
        return None if whole else "incomplete event stream"
    try:
        whole = json.loads(body)["object"] == "chat.completion"
    except (ValueError, KeyError, TypeError):
        whole = False
    return None if whole else "not a chat completion"


async def read_answer(reader: asyncio.StreamReader, streaming: bool) -> tuple[str | None, bool]:
    """Read one answer: what is wrong with it (None: nothing) and whether the connection can be used again."""
    try:
        status, body, reusable = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
    except TRANSPORT_ERRORS as e:
        return f"transport error ({type(e).__name__})", False
    return problem(status, body, streaming), reusable


async def client(proxy_port: int, upstream_port: int, todo: Iterator[int], tally: Tally) -> None:
    """One kept-alive connection, sending requests one after the other (a new one after a transport error)."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for request_id in todo:
        streaming = request_id % STREAM_EVERY == 0
        if conn is None:
            try:
                conn = await asyncio.open_connection("127.0.0.1", proxy_port)
            except OSError as e:
                tally.record(request_id, f"cannot connect ({type(e).__name__})")
                continue
        reader, writer = conn
        writer.write(build_request(upstream_port, request_id, streaming))
        why, reusable = await read_answer(reader, streaming)
        tally.record(request_id, why)
        if not reusable:
            await hang_up(writer)
            conn = None
    if conn is not None:
        await hang_up(conn[1])


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def load(proxy_port: int, upstream_port: int, ids: range, concurrency: int, tally: Tally) -> None:
    """Send the requests `ids` on `concurrency` connections, then close them all."""
    todo = iter(ids)  # shared: each client takes the next id when it is free
    await asyncio.gather(*(client(proxy_port, upstream_port, todo, tally) for _ in range(min(concurrency, len(ids)))))


# ----------------------------------------------------------------------------- the run


def run(settings: Settings, workdir: Path, progress: bool = False) -> Report:
    """Start an upstream and mitmdump, warm up, sample, soak, sample; stop both."""
    started = time.monotonic()
    app = CountingAPI(tokens=set(TOKENS) - REFUSED, chunks=CHUNKS, interval=0.002)
    upstream = UpstreamServer(app, free_port()).start()
    proxy = Mitmdump(write_files(workdir, upstream.port, settings.max_attempts), workdir)
    tally = Tally(settings.warmup + settings.requests, progress)
    try:
        proxy.start()
        asyncio.run(load(proxy.port, upstream.port, range(settings.warmup), settings.concurrency, tally))
        warm = proxy.sample(settings.idle)
        soak_started = time.monotonic()
        ids = range(settings.warmup, settings.warmup + settings.requests)
        asyncio.run(load(proxy.port, upstream.port, ids, settings.concurrency, tally))
        seconds = time.monotonic() - soak_started
        after = proxy.sample(settings.idle)
    finally:
        proxy.stop()
        upstream.stop()
    return Report(
        settings=settings,
        seconds=seconds,
        total_seconds=time.monotonic() - started,
        answers=app.answers,
        refused=len(app.refused_ids),
        recovered=len(app.refused_ids - tally.failed.keys()),
        failures=Counter(tally.failed.values()),
        warm=warm,
        after=after,
        log_errors=proxy.log_errors(),
    )


def main() -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=defaults.requests,
                        help="requests after the warm-up (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="connections, each sending one request at a time (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="requests before the first sample of mitmdump (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown tables to this file")
    args = parser.parse_args()
    settings = Settings(requests=args.requests, concurrency=args.concurrency, warmup=args.warmup)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"load soak: {settings.warmup:,} + {settings.requests:,} requests at concurrency {settings.concurrency}; "
          f"scratch folder {workdir}", file=sys.stderr)  # fmt: skip
    try:
        report = run(settings, workdir, progress=True)
    except BaseException:
        print(f"mitmdump's log and the rules are kept in {workdir}", file=sys.stderr)
        raise
    print(report.text())
    if args.markdown:
        args.markdown.write_text(report.markdown())
    if not report.passed:
        print(f"mitmdump's log and the rules are kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
