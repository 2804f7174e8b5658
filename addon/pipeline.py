"""The one addon object mitmproxy sees: it hands each hook to the parts that use it.

mitmproxy looks every hook up on every addon object for every event of every
flow, whether the object has that hook or not. A script shaped like the six
parts, with hooks that do nothing, ran at 0.95–0.97 of bare mitmdump's
throughput; shaped like this one object, at 0.96–0.99 (BENCHMARKS.md). The
parts keep one concern each; this class only routes, in the order they ran as
separate addons.
"""

from __future__ import annotations

from collections.abc import Awaitable

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addon.exits.hooks import ExitHooks
from addon.guard.guard import SelfGuard
from addon.mitm.handover import Handover
from addon.recovery.recovery import Recovery
from addon.recovery.streamtap import StreamTap
from addon.request.bodyworker import WORKER
from addon.request.rewriter import Rewriter
from addon.runtime.commands import TokenCommands
from addon.runtime.loader import Runtime
from addon.startup import OptionCheck
from addon.status.server import StatusServer
from addon.status.summary import LogSummary


class Pipeline:
    name = "mitm_rules"  # mitmproxy's name for it (the class name alone is too common to be unique)

    def __init__(self) -> None:
        self.runtime = Runtime()
        self.rewriter = Rewriter(self.runtime)
        self.tap = StreamTap(self.runtime)
        self.recovery = Recovery(self.runtime, self.rewriter)
        self.options_check = OptionCheck()
        self.summary = LogSummary(self.runtime)
        self.status_server = StatusServer(self.runtime)
        self.guard = SelfGuard(also=lambda: self.status_server.listening)
        self.exits = ExitHooks(self.runtime.exits, lambda: self.recovery.limits.headers)
        # its commands are registered at load: as a child addon (in `addons`), it would be visited for
        # every hook of every request, and it has no hooks
        self.commands = TokenCommands(self.runtime)

    def load(self, loader) -> None:
        self.runtime.load(loader)
        self.recovery.load(loader)
        self.options_check.load(loader)
        self.status_server.load(loader)
        self.commands.load(loader)

    def configure(self, updated: set[str]) -> None:
        self.runtime.configure(updated)
        self.exits.configure(updated)
        self.recovery.configure(updated)
        self.status_server.configure(updated)

    async def running(self) -> None:
        await self.guard.running()
        self.runtime.running()
        self.options_check.running()
        self.summary.running()
        self.status_server.running()

    def done(self) -> None:
        self.runtime.done()
        self.summary.done()
        self.status_server.done()
        WORKER.close()  # the body worker, if one started

    # the guard's hooks return a coroutine only when there is something to look up (mitmproxy
    # awaits what a hook returns): most requests and connections pass without one
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Awaitable[None] | None:
        checked = self.guard.server_connect(data)
        self.exits.server_connect(data)
        return checked

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.exits.server_disconnected(data)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.guard.http_connect(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.guard.requestheaders(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        await self.rewriter.request(flow)

    def next_layer(self, nextlayer) -> None:
        self.recovery.next_layer(nextlayer)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.runtime.responseheaders(flow)  # first: a renewed session never reaches the client
        self.exits.responseheaders(flow)
        held = self.tap.responseheaders(flow)
        self.recovery.responseheaders(flow, held)

    async def response(self, flow: http.HTTPFlow) -> None:
        self.tap.response(flow)
        await self.recovery.response(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.exits.error(flow)
        self.recovery.error(flow)

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        self.exits.http_connect_upstream(flow)

    # the hooks of addon.mitm.httplayer, for a streaming request's held answer

    async def mitm_rules_held_answer(self, handover: Handover) -> None:
        await self.recovery.mitm_rules_held_answer(handover)

    async def mitm_rules_relay(self, handover: Handover) -> None:
        await self.recovery.mitm_rules_relay(handover)

    async def mitm_rules_first_event(self, handover: Handover) -> None:
        await self.recovery.mitm_rules_first_event(handover)
