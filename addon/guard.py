"""No open door: proxied requests may not reach the proxy itself or mitmweb.

With mitmproxy 11.0.2 a proxy client can send `GET http://127.0.0.1:8081/flows`
through the proxy and read every flow, injected tokens included, or change the
options (fixed upstream in 11.1.2, which needs Python 3.12). This addon answers
such requests with a 403 itself, on every mitmproxy version. At start-up it
also warns when the proxy listens beyond loopback without `proxyauth`: anyone
who reaches the port can spend the tokens.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from mitmproxy import ctx, http
from mitmproxy.log import ALERT

logger = logging.getLogger(__name__)

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host: str, listen_hosts: set[str], own_ips: set[str]) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOCAL_NAMES or host in listen_hosts or host in own_ips:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == socket.gethostname().lower()
    return ip.is_loopback or ip.is_unspecified


def _own_ips() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


class SelfGuard:
    def __init__(self) -> None:
        self._ports: set[int] = set()
        self._hosts: set[str] = set()
        self._own_ips: set[str] = set()

    def running(self) -> None:
        proxy = ctx.master.addons.get("proxyserver")
        addrs = list(proxy.listen_addrs()) if proxy else []
        self._ports = {a[1] for a in addrs}
        self._hosts = {str(a[0]).lower() for a in addrs}
        if "web_port" in ctx.options:
            self._ports.add(ctx.options.web_port)
            self._hosts.add(ctx.options.web_host.lower())
        self._own_ips = _own_ips()
        exposed = [a for a in addrs if not ipaddress.ip_address(a[0]).is_loopback]
        if exposed and not ctx.options.proxyauth:
            where = ", ".join(f"{a[0]}:{a[1]}" for a in exposed)
            logger.log(
                ALERT,
                f"the proxy listens on {where}, beyond this machine, without proxyauth: anyone who reaches "
                "the port can send requests with your tokens. Listen on 127.0.0.1 (--listen-host 127.0.0.1) "
                "or set proxyauth (--set proxyauth=user:pass).",
            )

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.request.port not in self._ports:
            return
        if not _is_local(flow.request.host, self._hosts, self._own_ips):
            return
        target = f"{flow.request.host}:{flow.request.port}"
        logger.warning(f"refused a proxied request to the proxy itself ({target}): {flow.request.method} {flow.request.path}")
        flow.response = http.Response.make(
            403,
            f"mitmproxy rules addon: refused: {target} is this proxy or its web interface. Requests through "
            "the proxy may not reach mitmweb or the proxy itself (they could read the flows, tokens "
            "included, or change its options). Open mitmweb directly in a browser instead.\n",
            {"Content-Type": "text/plain; charset=utf-8"},
        )
