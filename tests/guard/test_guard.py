"""addon/guard/guard.py with mitmproxy's own proxy server addon listening for real on loopback (no
traffic): the guard follows the proxy's listen address when it changes at run time."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from addon.guard import guard as guard_module
from addon.guard.guard import LISTENERS_TTL, SelfGuard


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def request_to(port: int):
    """A proxied request to 127.0.0.1:port, live, as the requestheaders hook gets it."""
    flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=port))
    flow.live = True
    return flow


async def answer(guard: SelfGuard, port: int) -> int | None:
    """The status of the guard's answer to a request to 127.0.0.1:port (None: let through)."""
    flow = request_to(port)
    waiting = guard.requestheaders(flow)
    if waiting is not None:
        await waiting
    return flow.response.status_code if flow.response else None


def test_a_listen_port_changed_at_run_time_is_refused_and_the_old_one_let_go(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(guard_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    old, new = free_ports(2)

    async def main():
        proxy, guard = Proxyserver(), SelfGuard()
        with taddons.context(proxy, guard) as tctx:
            tctx.configure(proxy, listen_host="127.0.0.1", listen_port=old)
            assert await proxy.setup_servers()
            proxy.running()  # from here on, a changed listen option restarts the servers by itself
            await guard.running()
            try:
                before = await answer(guard, old), await answer(guard, new)
                # `set mode=regular@PORT` while running (`set listen_port` alone does not move mitmproxy's
                # servers: they restart when `mode` or `server` changes)
                tctx.configure(proxy, mode=[f"regular@{new}"])
                for _ in range(500):  # the servers move in a task of their own
                    if [p for _, p in proxy.listen_addrs()] == [new]:
                        break
                    await asyncio.sleep(0.01)
                assert [p for _, p in proxy.listen_addrs()] == [new]
                now[0] += LISTENERS_TTL  # the guard reads the listeners again at most once a second
                after = await answer(guard, new), await answer(guard, old)
                refused = await guard.refused("2130706433", new)
            finally:
                await proxy.servers.update([])
        return before, after, refused

    (old_before, new_before), (new_after, old_after), refused = asyncio.run(main())
    assert (old_before, new_before) == (403, None)
    assert new_after == 403  # the proxy's new address: a request to it would loop into the proxy
    assert old_after is None  # nothing of ours listens there any more
    assert str(refused) == "127.0.0.1"  # however it is spelled


def test_the_status_servers_address_is_refused_as_it_changes(monkeypatch):
    """`also` (the status server's bound addresses, addon/status/server.py) counts as one of ours, read
    again as the other listeners are."""
    now = [1000.0]
    monkeypatch.setattr(guard_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    (status_port,) = free_ports(1)
    listening: list[tuple[str, int]] = []

    async def main():
        guard = SelfGuard(also=lambda: tuple(listening))
        with taddons.context(guard):
            off = await answer(guard, status_port)
            listening.append(("127.0.0.1", status_port))
            now[0] += LISTENERS_TTL
            on = await answer(guard, status_port), await guard.refused("2130706433", status_port)
        return off, on

    off, (on, refused) = asyncio.run(main())
    assert off is None and on == 403 and str(refused) == "127.0.0.1"
