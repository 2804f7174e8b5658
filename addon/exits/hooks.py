"""The exits' part of the addon: the hooks the rest of the addon does not need (addon/pipeline.py routes them
here). The request hook's routing is the rewriter's (addon/request/rewriter.py), as it draws the token."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addon.exits.connect import logged_out, login
from addon.exits.routing import Exits
from addon.exits.timeout import ExitTimers


class ExitHooks:
    def __init__(self, exits: Exits, limit: Callable[[], float]) -> None:
        self.exits = exits
        self.timers = ExitTimers(exits, limit)  # `limit`: retry_timeout, as it is now

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated:
            self.exits.check_strategy()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if self.exits:
            self.timers.server_connect(data)  # a connection to an exit has retry_timeout to bring an answer

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.timers.server_disconnected(data)  # (also after a reload that took the exits away)

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        if self.exits:
            login(flow, self.exits)  # a CONNECT to an exit carries its login

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.timers.answered(flow)  # (nothing to do but a look at an empty dict, without exits)
        logged_out(flow)  # an exit's login leaves the flow once the request has gone

    def error(self, flow: http.HTTPFlow) -> None:
        logged_out(flow)
