"""No open door: nothing sent through the proxy may reach the proxy itself, mitmweb or the status server.

With mitmproxy 11.0.2 a proxy client can send `GET http://127.0.0.1:8081/flows` through the
proxy and read every flow, injected tokens included, or change the options (fixed upstream in
11.1.2, which needs Python 3.12; on 12 mitmweb wants a token, which a proxy client may still
learn). A connection to the proxy's own port loops into itself, a new connection at every turn.
mitmproxy's own loop check compares the host's text with `localhost`, `127.0.0.1` and `::1`, so
`2130706433:8080` gets past it on both lines.

This addon judges where a connection really goes: the destination resolved as the connection
will resolve it (`addon.guard.listeners`), compared with every address the proxy, mitmweb and the
addon's status server (addon/status/server.py, handed in as `also`) listen on.
- `server_connect`: every connection the proxy is about to open to one of them (for HTTP, CONNECT
  tunnels, raw TCP, SOCKS5, reverse modes, replays; in upstream mode, the one to the upstream
  proxy) is refused with `data.server.error`, which is how mitmproxy's own addons refuse one; a
  raw tunnel is then closed, logged once.
- `requestheaders` and `http_connect`: a request whose destination is refused is answered with a
  403 that says why, before any connection is tried.
A name whose answer changes between this lookup and the connection's own (DNS rebinding) is not
covered: mitmproxy gives an addon no say over the address it finally connects to.

At start-up it also warns when the proxy listens beyond loopback without `proxyauth`: anyone
who reaches the port can spend the tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable

from mitmproxy import ctx, http
from mitmproxy.log import ALERT
from mitmproxy.proxy import server_hooks

from addon.guard.listeners import IPAddress, Listeners, bound_addresses, plain, resolve
from addon.mitm import helpers

logger = logging.getLogger(__name__)

_REFUSED = "is this proxy or its web interface"
LISTENERS_TTL = 1.0  # seconds the listen addresses are taken as known (reading them is a syscall per socket)


def _where(host: str, port: int, ip: IPAddress) -> str:
    """`2130706433:8081 (127.0.0.1)`: the destination as spelled, and what it resolved to."""
    target = helpers.format_address((host, port))
    return target if host == str(ip) else f"{target} ({ip})"


class SelfGuard:
    def __init__(self, also: Callable[[], tuple[tuple[str, int], ...]] = tuple) -> None:
        self._also = also  # more listeners of this process, as they are now (the status server's)
        self._web: tuple[tuple[str, int], ...] = ()
        self._seen: tuple[tuple[str, int], ...] | None = None
        self._listeners = Listeners.of(())
        self._fresh_until = 0.0  # time.monotonic() until which _listeners is taken as current

    async def running(self) -> None:
        addrs = self._proxy_addresses()
        exposed = [(h, p) for h, p in addrs if not plain(ipaddress.ip_address(h or "0.0.0.0")).is_loopback]
        if exposed and not ctx.options.proxyauth:
            where = ", ".join(f"{h}:{p}" for h, p in exposed)
            logger.log(
                ALERT,
                f"the proxy listens on {where}, beyond this machine, without proxyauth: anyone who reaches "
                "the port can send requests with your tokens. Listen on 127.0.0.1 (--listen-host 127.0.0.1) "
                "or set proxyauth (--set proxyauth=user:pass).",
            )
        if "web_port" in ctx.options:  # mitmweb: it binds once, at start-up
            host, port = ctx.options.web_host, ctx.options.web_port
            self._web = (("127.0.0.1", port),)  # mitmweb's default, while a name in web_host resolves
            self._web = tuple(await bound_addresses(host, port))
            self._fresh_until = 0.0  # read the listeners again at the next request, mitmweb's included

    @staticmethod
    def _proxy_addresses() -> list[tuple[str, int]]:
        return helpers.proxy_listen_addrs()

    def _current(self) -> Listeners:
        """The listeners now, read at most once a second: the proxy's servers restart when their
        options change, and every request asks."""
        now = time.monotonic()
        if now >= self._fresh_until:
            self._fresh_until = now + LISTENERS_TTL
            seen = (*self._proxy_addresses(), *self._web, *self._also())
            if seen != self._seen:
                self._seen, self._listeners = seen, Listeners.of(seen)
        return self._listeners

    # The hooks below return a coroutine only for a destination on a port one of ours listens on
    # (mitmproxy awaits what a hook returns): every other request and connection, nearly all of
    # them, is let through without the cost of one.

    async def refused(self, host: str, port: int) -> IPAddress | None:
        """The address host:port resolves to that is one of ours, if any."""
        listeners = self._current()
        if port not in listeners.ports:
            return None
        for ip in await resolve(host, port):
            if listeners.reached_by(ip, port):
                return ip
        return None

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live or flow.request.port not in self._current().ports:
            return None
        return self._answer(flow)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.requestheaders(flow)

    async def _answer(self, flow: http.HTTPFlow) -> None:
        ip = await self.refused(flow.request.host, flow.request.port)
        if ip is None:
            return
        where = _where(flow.request.host, flow.request.port, ip)
        what = flow.request.method if flow.request.method == "CONNECT" else f"{flow.request.method} {flow.request.path}"
        logger.warning(f"refused a proxied request to the proxy itself ({where}): {what}")
        flow.response = http.Response.make(
            403,
            f"mitmproxy rules addon: refused: {where} {_REFUSED}. Requests through the proxy may not "
            "reach mitmweb or the proxy itself (they could read the flows, tokens included, change its "
            "options, or loop into the proxy). Open mitmweb directly in a browser instead.\n",
            {"Content-Type": "text/plain; charset=utf-8"},
        )

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Awaitable[None] | None:
        if data.server.error or not data.server.address or data.server.address[1] not in self._current().ports:
            return None
        return self._refuse_connection(data)

    async def _refuse_connection(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert data.server.address is not None
        host, port = str(data.server.address[0]), data.server.address[1]
        ip = await self.refused(host, port)
        if ip is None:
            return
        # One turn of the loop first. mitmproxy 11 opens the connection of a reverse or transparent
        # mode in a task that can run before the client's reader task has started; refused there
        # and then, it cancels the reader before it runs, and the client socket is never closed
        # (its own loop check leaves the client hanging the same way). 12 closes it either way.
        await asyncio.sleep(0)
        where = _where(host, port, ip)
        client = helpers.format_address(data.client.peername)
        logger.warning(f"refused a connection to the proxy itself ({where}) for the client at {client}")
        data.server.error = f"refused by the mitm_rules guard: {where} {_REFUSED}"

