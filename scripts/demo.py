"""The demo: a protected streaming API, mitmdump with the example rules in front of it, and a client.

Run it with `scripts/demo`. Everything stays on 127.0.0.1; no network is needed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fake_upstream import ProtectedAPI, UpstreamServer, demo_tokens, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_PORT = 8765  # the port the example rules.yaml names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show(received: list) -> None:
    """What the upstream received: one line per attempt, then the headers of the last one."""
    for n, r in enumerate(received, 1):
        print(f"    upstream got attempt {n}: {r.method} {r.path} with session={r.cookie('session')} -> {r.status}")
    print(f"    the headers of the last attempt, as the upstream received them:")
    for name, value in received[-1].headers:
        print(f"      {name}: {value}")


def main() -> int:
    app = ProtectedAPI(tokens=demo_tokens(ROOT / "demo" / "tokens.txt"), chunks=6, interval=0.25)
    # start from fresh token health, so the refused demo token is tried (and recovered from) again
    (ROOT / "demo" / "tokens.state.json").unlink(missing_ok=True)
    try:
        upstream = UpstreamServer(app, UPSTREAM_PORT).start()
    except (OSError, TimeoutError) as e:
        print(f"cannot start the demo upstream on 127.0.0.1:{UPSTREAM_PORT}: {e}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions"
    body = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}

    print(f"1. A client talking to the upstream directly is refused:")
    direct = httpx.post(url, json=body)
    print(f"    {direct.status_code} {direct.json()['error']['message']}\n")

    port = free_port()
    log = open(Path(sys.prefix) / "demo-mitmdump.log", "w")
    proxy = subprocess.Popen(
        [str(Path(sys.executable).with_name("mitmdump")), "-s", "addon/main.py", "--listen-host", "127.0.0.1",
         "--listen-port", str(port), "--set", "rules=rules.yaml", "--set", "flow_detail=0"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client:
            print(f"2. The same request, streaming (\"stream\": true), through mitmdump -s addon/main.py (rules.yaml).")
            print(f"   The first token in demo/tokens.txt is refused; the proxy retries with the next one and")
            print(f"   streams the retry's answer to the client as it arrives:")
            app.received.clear()
            arrivals = []
            started = time.time()
            with client.stream("POST", url, json={**body, "stream": True}, headers={"Cookie": "theme=dark; tracking=abc"}) as response:
                print(f"    {response.status_code} {response.headers['content-type']}")
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        arrivals.append((time.time(), event["sent_at"]))
                        lag_ms = (arrivals[-1][0] - event["sent_at"]) * 1000
                        print(f"    chunk {len(arrivals)}: {event['choices'][0]['delta'].get('content', '')!r:10} "
                              f"arrived {lag_ms:5.1f} ms after the upstream sent it")  # fmt: skip
            show(app.received)
            sent_span = arrivals[-1][1] - arrivals[0][1]
            got_span = arrivals[-1][0] - arrivals[0][0]
            print(f"\n    the first chunk came {(arrivals[0][0] - started) * 1000:.0f} ms after the request, the refusal and its "
                  f"retry included;\n    first to last chunk: sent {sent_span * 1000:.0f} ms apart, arrived "
                  f"{got_span * 1000:.0f} ms apart (buffered, they would arrive together)")  # fmt: skip

            print(f"\n3. A non-streaming request goes out with the next token in the rotation (the refused one is passed over\n   while it cools down):")
            app.received.clear()
            answer = client.post(url, json=body)
            print(f"    {answer.status_code} {answer.json()['choices'][0]['message']['content']!r}")
            show(app.received)
    finally:
        proxy.terminate()
        proxy.wait(10)
        upstream.stop()
    print(f"\nmitmdump's log: {log.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
