"""Cutting off an upstream connection that mitmproxy is still making: for an exit (an upstream proxy)
that never answers (addon/exits/timeout.py). mitmproxy has no time limit of its own on connecting, nor
on an upstream proxy's answer to a CONNECT; its public API has no way to close a server connection.

The internals used, as in mitmproxy 11.0.2 and 12.3.1 (`check()` verifies them): the proxyserver
addon's `connections` (`mode_servers.ServerManager.connections`, the client's `ConnectionHandler` by
the client's id), and that handler's `transports`, whose `ConnectionIO.handler` is the task that opens
and then serves a server connection (set when mitmproxy starts to open it). Cancelling that task ends
the connection as mitmproxy ends any that fails: the flow waiting for it gets an error (a 502 for the
client) with the reason given, or "connection closed" once the TCP connection was made.
"""

from __future__ import annotations

import asyncio
import inspect

from mitmproxy import connection, ctx

try:
    from mitmproxy.proxy.mode_servers import ServerManager
    from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO
except ImportError:  # pragma: no cover (check() says so)
    ServerManager = ConnectionHandler = ConnectionIO = None  # type: ignore[assignment,misc]


def check() -> str | None:
    """Are the internals `cut` uses what it was written for? None if so, else what differs."""
    needed = ((ServerManager, "connections"), (ConnectionHandler, "transports"), (ConnectionIO, "handler"))
    for owner, attribute in needed:
        if owner is None:
            return "mitmproxy.proxy.server or mode_servers cannot be imported"
        if attribute not in inspect.get_annotations(owner):
            return f"{owner.__name__} has no {attribute}"
    return None


def cut(client: connection.Client, server: connection.Server, why: str) -> bool:
    """Cancel the opening (or the life) of `server`, a connection of `client`'s handler. False: there is
    no such connection, or it has ended (the connections of a retry's own handler are not found here)."""
    handler = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client.id)
    io = handler.transports.get(server) if handler is not None else None
    task = getattr(io, "handler", None)
    if not isinstance(task, asyncio.Task) or task.done():
        return False
    task.cancel(why)
    return True
