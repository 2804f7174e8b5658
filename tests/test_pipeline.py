"""The one addon object routes every hook its parts define."""

from __future__ import annotations

import asyncio
import inspect

from mitmproxy import hooks
from mitmproxy.test import taddons, tflow

from addon.pipeline import Pipeline

LIFECYCLE = {"load", "configure", "running", "done"}


def test_every_hook_of_every_part_is_routed():
    pipeline = Pipeline()
    parts = [pipeline.guard, pipeline.rules, pipeline.rewriter, pipeline.tap, pipeline.recovery, *pipeline.addons]
    hook_names = set(hooks.all_hooks) | LIFECYCLE
    for part in parts:
        for name in hook_names & set(dir(type(part))):
            assert callable(getattr(pipeline, name, None)), f"{type(part).__name__}.{name} is not routed"
            if inspect.iscoroutinefunction(getattr(part, name)):
                assert inspect.iscoroutinefunction(getattr(pipeline, name)), f"{name} must await its part"


def test_commands_are_registered_through_the_child():
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        assert "tokens.status" in tctx.master.commands.commands
        assert tctx.options.retry_timeout == 120 and tctx.options.rules == "rules.yaml"


def test_a_request_passes_the_guard_and_the_rewriter(tmp_path):
    pipeline = Pipeline()
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: ua\n    match: {host: example.com}\n    headers: {User-Agent: Mozilla/5.0}\n")
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline.rules, rules=str(rules))
        flow = tflow.tflow(resp=False)
        flow.request.host = "example.com"
        pipeline.requestheaders(flow)
        asyncio.run(pipeline.request(flow))
        assert flow.request.headers["user-agent"] == "Mozilla/5.0" and flow.comment.startswith("rules: ua")
