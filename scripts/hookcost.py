"""Instructions per request of each of the addon's hooks, and of the parts of the request hook, counted
under valgrind's callgrind: where scenario 12's cost per request goes (docs/performance.md).

    .venv/bin/python scripts/hookcost.py               # mitmproxy 12.3 (.venv)
    .venv-mitm11/bin/python scripts/hookcost.py        # mitmproxy 11.0.2

It runs itself again under `valgrind --tool=callgrind`, with counting on only inside `functools.reduce`,
which runs each step REQUESTS times (after a warm-up), and prints each step's instructions per call.
The pipeline is the addon's own (mitmproxy's test context, no proxy around it) with scenario 1's ten
rules, on scenario 1's request: a POST of the OpenAI SDK, absolute form, a 100-byte JSON body. What a
hook costs inside a proxy is more: mitmproxy's dispatch of each hook (scenario 1's "script shaped like
the addon") and the HTTP layer's (addon/mitm/httplayer.py) come on top.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 200  # calls of each step counted (after 20 not counted)
CHILD = "HOOKCOST_CHILD"


def main() -> int:
    if os.environ.get(CHILD):
        asyncio.run(_count_steps())
        return 0
    with tempfile.TemporaryDirectory(prefix="hookcost-") as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
             "--dump-after=functools_reduce", f"--callgrind-out-file={out}", sys.executable, __file__],
            env={**os.environ, CHILD: "1", "PYTHONHASHSEED": "0"}, capture_output=True, text=True,
        )  # fmt: skip
        steps = re.findall(r"^STEP (.*)$", run.stdout, re.M)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if run.returncode or len(dumps) != len(steps):
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
        for step, dump in zip(steps, dumps):
            total = int(re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M).group(1))
            print(f"{step:75s} {total / REQUESTS / 1000:7.1f} K instructions per call")
    return 0


async def _count_steps() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import bench
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow, tutils

    from addon.pipeline import Pipeline
    from addon.request.apply import apply_plan
    from addon.request.plan import plan_request
    from addon.request.streamdetect import is_streaming

    folder = Path(tempfile.mkdtemp(prefix="hookcost-"))
    (folder / "captcha.txt").write_text("cap-hookcost-0123456789abcdef\n")
    (folder / "tokens.txt").write_text("".join(f"tok-hookcost-{i:04d}-abcdef01\n" for i in range(4)))
    hosts = ["api.example.com", "127.0.0.1:8000", "localhost:8000"]
    rules = bench.rules_file(folder / "rules.yaml", bench.realistic_rules(hosts), folder / "tokens.txt",
                             "  file: captcha.txt\n  ttl: 110")  # fmt: skip

    def request() -> http.HTTPFlow:
        flow = tflow.tflow(resp=False)
        r = flow.request
        r.method, r.scheme, r.host, r.port, r.path = "POST", "http", "127.0.0.1", 8000, "/v1/chat/completions"
        sent = [("Host", "127.0.0.1:8000"), *bench.SDK_HEADERS]
        r.headers = http.Headers([(k.encode(), v.encode()) for k, v in sent])
        r.content = bench.CHAT_BODY
        return flow

    def answered(flow: http.HTTPFlow) -> http.HTTPFlow:
        flow.response = tutils.tresp(status_code=200, content=b'{"choices": []}')
        return flow

    def now(coroutine) -> None:
        """Run a hook's coroutine that does not wait (it raises if it does)."""
        try:
            coroutine.send(None)
        except StopIteration:
            return
        raise RuntimeError("the hook waited for something")

    def step(name: str, flows: list, call) -> None:
        """Count `call` on each of these flows (a fresh one each time); warm up on the first 20."""
        each = iter(flows)
        for _ in range(20):
            call(next(each))
        gc.collect()
        functools.reduce(lambda _, flow: call(flow), each, None)
        print(f"STEP {name}", flush=True)

    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline.runtime, rules=str(rules))
        config, n = pipeline.runtime.config, REQUESTS + 20
        probe = request()
        plan = plan_request(config, probe)
        values = {"captcha": "cap-hookcost-0123456789abcdef", "token": "tok-hookcost-0000-abcdef01"}
        flows = [request() for _ in range(n)]
        step("requestheaders", flows, pipeline.requestheaders)
        step("request", flows, lambda f: now(pipeline.request(f)))
        flows = [answered(f) for f in flows]
        step("responseheaders", flows, pipeline.responseheaders)
        step("response", flows, lambda f: now(pipeline.response(f)))
        other = [request() for _ in range(n)]
        for flow in other:
            flow.request.host, flow.request.port = "other.example.org", 443
            flow.request.headers["Host"] = "other.example.org"
        step("on a request no rule is for: requestheaders", other, pipeline.requestheaders)
        step("on a request no rule is for: request", other, lambda f: now(pipeline.request(f)))
        other = [answered(f) for f in other]
        step("on a request no rule is for: responseheaders", other, pipeline.responseheaders)
        step("on a request no rule is for: response", other, lambda f: now(pipeline.response(f)))
        step("request, part: plan: which rules, their edits (plan_request)", [request() for _ in range(n)],
             lambda f: plan_request(config, f))
        step("request, part of the plan: stream detection (headers, JSON body)", [request() for _ in range(n)],
             lambda f: is_streaming(f.request, config.stream.json_field))
        filtered = [r for r in config.rules if r.match.filter is not None and r.name == "no-debug"]
        step("request, part of the plan: the `~h X-Debug` filter (addon/rules/headfilter.py)",
             [request() for _ in range(n)],
             lambda f: filtered[0].match.filter(f))
        step("request, part: edits of headers, cookies, comment lines (apply_plan)", [request() for _ in range(n)],
             lambda f: apply_plan(plan, f.request, values))
        pool = pipeline.runtime.pool
        step("request, part: a token drawn (round robin)", [None] * n, lambda _: pool.draw())


if __name__ == "__main__":
    sys.exit(main())
