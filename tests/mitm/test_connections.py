"""addon/mitm/connections.py: the internals it relies on are there on both supported lines, and `cut`
cancels the task that opens (or serves) a client's server connection, when there is one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addon.mitm import connections


def test_check_passes_on_this_mitmproxy():
    assert connections.check() is None


@pytest.mark.parametrize(
    "owner, attribute, said",
    [
        ("ServerManager", "connections", "ServerManager has no connections"),
        ("ConnectionHandler", "transports", "ConnectionHandler has no transports"),
        ("ConnectionIO", "handler", "ConnectionIO has no handler"),
    ],
)
def test_check_says_which_internal_differs(monkeypatch, owner, attribute, said):
    cls = getattr(connections, owner)
    monkeypatch.setattr(cls, "__annotations__", {k: v for k, v in cls.__annotations__.items() if k != attribute})
    assert connections.check() == said


def test_cut_without_a_connection_of_the_client_is_false():
    with taddons.context(Proxyserver()):
        assert connections.cut(tflow.tclient_conn(), tflow.tserver_conn(), "exit timeout") is False


def cut_with(task: asyncio.Task | None, known_server: bool = True) -> tuple[bool, asyncio.Task | None]:
    """Cut a server connection whose opening is `task`, as the proxyserver holds it for its client."""
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    proxyserver = Proxyserver()
    with taddons.context(proxyserver):
        io = SimpleNamespace(handler=task)
        proxyserver.connections[client.id] = SimpleNamespace(transports={server: io} if known_server else {})
        return connections.cut(client, server, "exit timeout"), task


def test_cut_cancels_the_task_with_the_reason():
    async def main() -> tuple[bool, str]:
        task = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)  # running
        done, _ = cut_with(task)
        try:
            await task
        except asyncio.CancelledError as e:
            return done, str(e)
        return done, "not cancelled"

    assert asyncio.run(main()) == (True, "exit timeout")


@pytest.mark.parametrize("case", ["done", "no such server", "no task yet"])
def test_cut_of_a_connection_that_ended_or_is_not_there_is_false(case):
    async def main() -> tuple[bool, bool]:
        task = asyncio.create_task(asyncio.sleep(0))
        if case == "done":
            await task
        done, _ = cut_with(None if case == "no task yet" else task, known_server=case != "no such server")
        await asyncio.sleep(0.01)
        return done, task.cancelled()

    assert asyncio.run(main()) == (False, False)
