"""An exit that never answers costs a request at most `retry_timeout` seconds, not a hang.

mitmproxy waits on an upstream proxy without a limit: on the operating system's connect (about two
minutes) and on the proxy's answer to a CONNECT (until the client gives up). Each connection to an exit
gets `limit()` seconds from its start until an answer comes through it; past that it is cut off
(addon/mitm/connections.py) and the request fails as any that cannot get through its exit
(addon/recovery/recovery.py counts it against the exit, not the token). A retry has this limit already
(addon/recovery/replay.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addon.exits.routing import Exits
from addon.mitm import connections

logger = logging.getLogger(__name__)

WHY = "exit timeout"


class ExitTimers:
    def __init__(self, exits: Exits, limit: Callable[[], float]) -> None:
        self.exits = exits
        self.limit = limit
        self._timers: dict[str, tuple[tuple[str, tuple[str, int]], asyncio.TimerHandle]] = {}  # by server id
        self._declined: str | None = None

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """A connection to an exit starts: its time runs."""
        if self.exits.at(data.server.address) is None:
            return
        if self._declined is None:
            self._declined = connections.check() or ""
            if self._declined:
                logger.warning(f"exits: an exit that never answers cannot be cut off on this mitmproxy "
                               f"({self._declined}): a request through it waits until the exit or the client gives up")
        if self._declined:
            return
        timer = asyncio.get_running_loop().call_later(self.limit(), self._expired, data.client, data.server)
        self._timers[data.server.id] = ((data.client.id, data.server.address), timer)

    def answered(self, flow: http.HTTPFlow) -> None:
        """An answer came through an exit (responseheaders): its connections from this client are done waiting."""
        via = flow.server_conn.via
        if not self._timers or via is None:
            return
        route = (flow.client_conn.id, via[1])
        for server_id, (where, timer) in list(self._timers.items()):
            if where == route:
                timer.cancel()
                del self._timers[server_id]

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        entry = self._timers.pop(data.server.id, None)
        if entry is not None:
            entry[1].cancel()

    def _expired(self, client, server) -> None:
        self._timers.pop(server.id, None)
        if server.error:  # it never started: killed before it connected (its flow has heard of it)
            return
        if server.timestamp_start is None:
            # still waiting for mitmproxy's turn to connect to this address (at most five connections to
            # one address per client): cancelled there, the flow would never hear of it. Its time runs on.
            timer = asyncio.get_running_loop().call_later(self.limit(), self._expired, client, server)
            self._timers[server.id] = ((client.id, server.address), timer)
            return
        connections.cut(client, server, WHY)
