"""The connection handler a retry is sent with: mitmproxy's `ReplayHandler` (a built-in addon's
internals, like `ConnectionHandler.drain_writers`, `hook_task` and `transports`, which
addon.mitm.httplayer.check() checks on every start), made to wait for a client that reads slowly, to
keep the tasks that run its hooks, and to be hung up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mitmproxy import http
from mitmproxy.addons.clientplayback import ReplayHandler


class RetryHandler(ReplayHandler):
    """mitmproxy's ReplayHandler, keeping the tasks that run its hooks, so that a hang-up can cancel
    one held in another addon's hook (mitmproxy 11 kept them per handler as `hook_tasks`; 12 keeps
    them in one set for the whole process, with no way to tell whose they are)."""

    def __init__(self, flow: http.HTTPFlow, options, room: Callable[[], Awaitable[None]]) -> None:
        super().__init__(flow, options)
        self.hook_runs: set[asyncio.Task] = set()
        self.streams = False  # the answer is streamed to a client, not held
        self._room = room  # waits until the client's stream has room for more of the answer

    async def drain_writers(self) -> None:
        """mitmproxy reads a connection's next data once this returns: a streamed answer waits here
        until the client's stream has room for it."""
        await super().drain_writers()
        if self.streams:
            await self._room()

    async def hook_task(self, hook) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.hook_runs.add(task)
        try:
            await super().hook_task(hook)
        finally:
            self.hook_runs.discard(task)

    def cut_connections(self) -> None:
        """Close the retry's upstream connections: mitmproxy then ends its flow with an error."""
        for io in self.transports.values():
            if io.handler:
                io.handler.cancel()

    def cancel_hooks(self) -> None:
        """Cancel the hooks it waits in (another addon's that does not return)."""
        for task in list(self.hook_runs):
            task.cancel()

    def log(self, message: str, level: int = logging.INFO, exc_info=None) -> None:
        if not self.streams and message.startswith("Streaming response from "):
            level = logging.DEBUG  # the body is held whole; it passes through a `stream` callable only to be watched
        super().log(message, level, exc_info)
