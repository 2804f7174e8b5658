"""The one addon object routes every hook its parts define."""

from __future__ import annotations

import asyncio
import inspect

from mitmproxy import hooks
from mitmproxy.test import taddons, tflow

from addon.pipeline import Pipeline

HOOKS = set(hooks.all_hooks) | {"load", "configure", "running", "done"}


def test_every_hook_of_every_part_is_called_in_the_order_of_the_parts(monkeypatch):
    pipeline = Pipeline()
    # the order the parts ran in as separate addons
    parts = [pipeline.guard, pipeline.runtime, pipeline.exits, pipeline.rewriter, pipeline.tap, pipeline.recovery,
             pipeline.options_check, pipeline.summary, pipeline.status_server, pipeline.commands]
    calls: list[tuple[str, str]] = []
    for part in parts:
        for name in HOOKS & set(dir(type(part))):
            monkeypatch.setattr(part, name, _recorder(calls, part, name, getattr(part, name)))
    for name in sorted(HOOKS):
        calls.clear()
        hook = getattr(pipeline, name, None)
        if hook is not None:
            result = hook(*[object()] * len(inspect.signature(hook).parameters))
            if inspect.isawaitable(result):
                asyncio.run(result)
        expected = [(type(p).__name__, name) for p in parts if name in dir(type(p))]
        assert calls == expected, f"pipeline.{name}"


def _recorder(calls, part, name, real):
    if inspect.iscoroutinefunction(real):
        async def record(*args):
            calls.append((type(part).__name__, name))
    else:
        def record(*args):
            calls.append((type(part).__name__, name))
    return record


def test_the_commands_are_registered_at_load_and_no_child_addon_is_visited_on_every_hook():
    pipeline = Pipeline()
    assert not hasattr(pipeline, "addons")
    with taddons.context(pipeline) as tctx:
        ours = {getattr(pipeline.commands, n).command_name for n in dir(pipeline.commands)
                if hasattr(getattr(pipeline.commands, n), "command_name")}
        assert {"tokens.status", "tokens.reset", "values.refresh"} <= ours <= set(tctx.master.commands.commands)
        assert tctx.master.commands.call("tokens.status").startswith("tokens: ")
        assert tctx.options.retry_timeout == 120 and tctx.options.rules == "rules.yaml"


def test_a_request_passes_the_guard_and_the_rewriter(tmp_path):
    pipeline = Pipeline()
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: ua\n    match: {host: example.com}\n    headers: {User-Agent: Mozilla/5.0}\n")
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline.runtime, rules=str(rules))
        flow = tflow.tflow(resp=False)
        flow.request.host = "example.com"
        assert pipeline.requestheaders(flow) is None  # not to a port of this proxy: nothing to look up
        asyncio.run(pipeline.request(flow))
        assert flow.request.headers["user-agent"] == "Mozilla/5.0" and flow.comment.startswith("rules: ua")
