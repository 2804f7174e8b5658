"""End to end: what a rules file, an upstream or a client sends cannot crash or stall the proxy.

Each test is an attack of issue 15, made small to write and big when it expands: a rules file
nested 50,000 deep, a rules file whose aliases expand to four million values, a rules file that
blocks when read, a body regex that backtracks for ever, and request bodies that decode to far more
than the proxy will look at. The assertions are that the error is the located one, and that other
clients are answered while the bad thing is there.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ROOT, run_mitmdump
from helpers import TOKENS, compressed_json, write_rules
from scripted_upstream import Request, ScriptedUpstream, answer
from test_recovery_e2e import rules_for

RULES = """\
rules:
  - name: marker
    match: {{host: "127.0.0.1:{port}"}}
    headers: {{X-Rules: "{version}"}}
"""
NESTED = "rules: " + "[" * 50_000 + "]" * 50_000 + "\n"
NESTED_ERROR = "rules.yaml:1:71: collections are nested more than 64 deep here (a rules file needs about 6)"
HOSTS = "hosts: &h [" + ", ".join(f"h{i}.example.com" for i in range(2000)) + "]\n"
ALIASES = HOSTS + "rules:\n" + "  - {match: {host: *h}, headers: {X: y}}\n" * 2000  # 123 KB, 4 million values
ALIASES_ERROR = ("rules.yaml:52:20: with the alias *h, aliases add more than 100,000 values to the document (each "
                 "alias counts every value in what it names): write the values out, or use fewer aliases")


@pytest.fixture
def scripted():
    server = ScriptedUpstream()
    yield server
    server.stop()


def get(proxy, port: int, **kwargs) -> httpx.Response:
    with httpx.Client(proxy=proxy.url, timeout=20) as client:
        return client.request(kwargs.pop("method", "GET"), f"http://127.0.0.1:{port}/v1/x", **kwargs)


def last(scripted: ScriptedUpstream) -> Request:
    return scripted.received[-1]


# the rules file: nesting and aliases, at start-up, in `check`, and on reload


@pytest.mark.parametrize("text, message", [(NESTED, NESTED_ERROR), (ALIASES, ALIASES_ERROR)], ids=["nested", "aliases"])
def test_a_rules_file_past_the_bounds_stops_mitmdump_with_the_located_error(tmp_path, text, message):
    result = run_mitmdump(write_rules(tmp_path, text))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]  # not -11 (SIGSEGV), not a time-out
    assert [line.partition("] ")[2] for line in output.splitlines()][1] == f"{tmp_path}/{message}"  # after a timestamp
    assert "Traceback" not in output


@pytest.mark.parametrize("text, message", [(NESTED, NESTED_ERROR), (ALIASES, ALIASES_ERROR)], ids=["nested", "aliases"])
def test_check_reports_the_located_error(tmp_path, text, message):
    path = write_rules(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "addon", "check", str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (1, f"{tmp_path}/{message}\n", "")


def test_a_reload_past_the_bounds_keeps_the_last_good_rules_under_traffic(tmp_path, scripted, start_proxy):
    path = write_rules(tmp_path, RULES.format(port=scripted.port, version=1))
    proxy = start_proxy(path)
    assert get(proxy, scripted.port).status_code == 200 and last(scripted).headers["x-rules"] == "1"
    for n, (text, message) in enumerate([(NESTED, NESTED_ERROR), (ALIASES, ALIASES_ERROR)], start=1):
        path.write_text(text)
        proxy.wait_for_log(rf"{path.parent}/{message}; the last good rules stay in force".replace("(", r"\(")
                           .replace(")", r"\)").replace("*", r"\*"), timeout=60)  # fmt: skip
        assert get(proxy, scripted.port).status_code == 200 and last(scripted).headers["x-rules"] == "1"
    path.write_text(RULES.format(port=scripted.port, version=2))
    proxy.wait_for_log(r"rules: loaded .*rules\.yaml: 1 rule\(s\)", count=2)
    assert get(proxy, scripted.port).status_code == 200 and last(scripted).headers["x-rules"] == "2"


def test_a_rules_file_that_blocks_when_read_does_not_stall_traffic(tmp_path, scripted, start_proxy):
    # the new rules file is a pipe: reading it waits until someone writes to it
    path = write_rules(tmp_path, RULES.format(port=scripted.port, version=1))
    proxy = start_proxy(path)
    path.unlink()
    os.mkfifo(path)
    proxy.wait_for_log(r"rules: .*rules\.yaml changed; reading it again")
    try:
        for _ in range(3):  # answered while the reload waits on the pipe, with the rules in force
            assert get(proxy, scripted.port).status_code == 200 and last(scripted).headers["x-rules"] == "1"
    finally:
        with open(path, "w") as pipe:  # let the reload finish, whatever happened
            pipe.write(RULES.format(port=scripted.port, version=2))
    proxy.wait_for_log(r"rules: loaded .*rules\.yaml: 1 rule\(s\)", count=2)
    assert get(proxy, scripted.port).status_code == 200 and last(scripted).headers["x-rules"] == "2"


# the upstream: a body regex that backtracks


def test_a_catastrophic_body_regex_does_not_freeze_the_proxy(tmp_path, scripted, start_proxy):
    # (a+)+$ against "aaa…a!" takes 2^30 steps in a backtracking engine: every client would wait
    rules = RULES.format(port=scripted.port, version=1) + (
        "    cookies: {session: '{token}'}\n"
        "tokens: {file: tokens.txt}\n"
        "on_response:\n"
        "  - {match: {status: 403, body: '(a+)+$'}, action: rotate}\n"
        "  - {match: {status: 403, body: '(?i)A{30}!'}, action: pass}\n"
    )
    proxy = start_proxy(write_rules(tmp_path, rules))
    scripted.script.append(answer(403, b"a" * 30 + b"!"))
    answers: dict[str, httpx.Response] = {}
    judged = threading.Thread(target=lambda: answers.setdefault("refused", get(proxy, scripted.port)))
    judged.start()
    while not scripted.received and judged.is_alive():  # the refusal is on its way back: being judged
        threading.Event().wait(0.01)
    other = get(proxy, scripted.port)  # another client, meanwhile
    judged.join(30)
    assert other.status_code == 200
    assert answers["refused"].status_code == 403 and answers["refused"].content == b"a" * 30 + b"!"
    assert len(scripted.received) == 2  # passed on as the (?i) rule says: no retry


# clients: request bodies that decode to far more than the bound


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_decompression_bomb_is_decoded_only_up_to_the_bound(tmp_path, scripted, start_proxy, encoding):
    proxy = start_proxy(write_rules(tmp_path, RULES.format(port=scripted.port, version=1)))
    bomb = compressed_json(encoding, 256 * 2**20)  # {"stream": true, …} of 256 MiB; 260 KiB or less as sent
    sent = get(proxy, scripted.port, method="POST", content=bomb, headers={"Content-Encoding": encoding})
    assert sent.status_code == 200
    assert last(scripted).body == bomb and last(scripted).headers["content-encoding"] == encoding  # as sent
    proxy.wait_for_log(rf"the body of POST http://127\.0\.0\.1:{scripted.port}/v1/x decodes to more than 32 MiB "
                       rf"\(Content-Encoding: {encoding}\); decoding stopped there and it counts as not streaming")
    assert get(proxy, scripted.port).status_code == 200


# clients: a JSON body that takes seconds to parse (issue 23): read in the worker process


def slow_json_gzip(size: int = 31 * 2**20) -> bytes:
    """`{"stream": true, "model": "client", "messages": [{"n":0}, …]}` of about `size` bytes: millions
    of small objects, seconds to parse and write again; about 1/1000 of that as gzip (31 KB)."""
    import zlib

    item, per_chunk = b'{"n":0},', 100_000
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(b'{"stream": true, "model": "client", "messages": [')]
    chunk = item * per_chunk
    parts += [z.compress(chunk) for _ in range(size // len(chunk))]
    parts += [z.compress(b'{"n":0}]}'), z.flush()]
    return b"".join(parts)


BODY_RULES = RULES + "    body: {{model: edited}}\n"
WORKER_LINE = r"the body of POST \S+ \(\d+ bytes as sent\) is read in the body worker"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def gone(pid: int, within: float = 15.0) -> bool:
    """Has `pid` ended (or is it a zombie, ended but not yet reaped) within `within` seconds?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def sent_json(request: Request) -> dict:
    return json.loads(gzip.decompress(request.body))


def test_a_json_body_that_takes_seconds_to_parse_holds_back_no_other_request(tmp_path, scripted, start_proxy):
    """A 31 KB gzip body that decodes to 31 MB of JSON, with a `body:` edit, stalled every other request
    for seconds. Now it is read and edited in the worker process: shown without timing, by freezing the
    worker (SIGSTOP) while it holds the big body; other clients must be answered meanwhile."""
    proxy = start_proxy(write_rules(tmp_path, BODY_RULES.format(port=scripted.port, version=1)))
    big = slow_json_gzip()

    def post() -> httpx.Response:
        with httpx.Client(proxy=proxy.url, timeout=120) as client:
            return client.post(f"http://127.0.0.1:{scripted.port}/v1/x", content=big, headers={"Content-Encoding": "gzip"})

    assert post().status_code == 200  # the first large body starts the worker
    first = sent_json(last(scripted))
    assert first["model"] == "edited" and first["stream"] is True and len(first["messages"]) == 4_000_001
    workers = children(proxy.proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    answers: dict[str, httpx.Response] = {}
    try:
        held = threading.Thread(target=lambda: answers.setdefault("big", post()))
        held.start()
        proxy.wait_for_log(WORKER_LINE, count=2, timeout=60)  # the second big body is with the (frozen) worker
        small = [get(proxy, scripted.port) for _ in range(5)]  # other clients, each on a connection of its own
        assert [r.status_code for r in small] == [200] * 5
        assert held.is_alive() and [r.method for r in scripted.received].count("POST") == 1  # still held
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    held.join(120)
    assert workers and answers["big"].status_code == 200
    assert sent_json(last(scripted))["model"] == "edited"  # applied, not refused


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_mitmdump_ends_with_its_body_worker(tmp_path, scripted, start_proxy, sig):
    """On SIGINT and SIGTERM mitmdump exits at once and cleanly, its worker with it; killed, it leaves
    no worker behind (the worker leaves when its pipe closes)."""
    proxy = start_proxy(write_rules(tmp_path, BODY_RULES.format(port=scripted.port, version=1)))
    body = json.dumps({"model": "client", "messages": [{"n": n} for n in range(20_000)]}).encode()  # 250 KB
    sent = get(proxy, scripted.port, method="POST", content=body)
    assert sent.status_code == 200 and json.loads(last(scripted).body)["model"] == "edited"
    (worker,) = children(proxy.proc.pid)
    proxy.proc.send_signal(sig)
    code = proxy.proc.wait(30)
    assert gone(worker)
    if sig != signal.SIGKILL:
        assert code == 0 and "Traceback" not in proxy.log()


# a recovered stream that goes silent: hung up after retry_idle_timeout, and not long after

IDLE = 2  # seconds: retry_idle_timeout
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


def test_a_silent_recovered_stream_is_hung_up_after_retry_idle_timeout_and_well_before_ten_times_it(
    tmp_path, start_proxy, upstream
):
    """The retry's stream sends three events, then nothing. The proxy hangs it up once it has been
    silent for retry_idle_timeout: not before (the third event left the upstream before the proxy got
    it, so the silence the proxy saw started after that), and not ten times later."""
    upstream.app.tokens, upstream.app.stall_after = {TOKENS[1]}, 3
    proxy = start_proxy(rules_for(tmp_path, upstream.port), "--set", f"retry_idle_timeout={IDLE}")
    hung_up_at: list[float] = []

    def watch() -> None:  # when the upstream saw the proxy hang up the retry's stream
        if upstream.app.hung_up.wait(10 * IDLE + 30):
            hung_up_at.append(time.time())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    events = []
    with httpx.Client(proxy=proxy.url, timeout=10 * IDLE + 30) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            with client.stream("POST", f"http://127.0.0.1:{upstream.port}/v1/chat/completions", content=CHAT) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line[6:]))
    broken_at = time.time()
    watcher.join(10 * IDLE + 30)
    assert [r.status for r in upstream.app.received] == [403, 200]  # a recovered stream
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["word0 ", "word1 ", "word2 "]
    assert hung_up_at, "the proxy did not hang up the silent retry"
    silent_since = events[-1]["sent_at"]  # the upstream's clock, which is this process's
    hung_up, broken = hung_up_at[0] - silent_since, broken_at - silent_since
    assert IDLE <= hung_up < 10 * IDLE, f"hung up {hung_up:.1f} s after the last event"
    assert IDLE <= broken < 10 * IDLE, f"the client's stream broke {broken:.1f} s after the last event"
    proxy.wait_for_log(r"then its stream broke off: .*\(the retry's answer broke off: "
                       rf"no data for {IDLE} s \(retry_idle_timeout\)\)")
