"""addon/exits/timeout.py: a connection to an exit that gets no answer within `limit()` seconds is cut off;
an answer through it, or its end, stops its time."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from addon.exits import timeout
from addon.exits.routing import Exits
from addon.exits.timeout import ExitTimers
from addon.rules.records import ExitSpec

EXIT = ExitSpec(name="a", scheme="http", host="127.0.0.1", port=3128, shown="http://127.0.0.1:3128")
LIMIT = 0.05
PAST_THE_LIMIT = 0.3  # seconds waited before saying no cut came: six times the limit


class Calls:
    def __init__(self) -> None:
        self.cut: list[tuple] = []
        self.checks = 0
        self.declined: str | None = None


@pytest.fixture
def calls(monkeypatch) -> Calls:
    calls = Calls()

    def check() -> str | None:
        calls.checks += 1
        return calls.declined

    monkeypatch.setattr(timeout.connections, "check", check)
    def cut(client, server, why: str) -> bool:
        calls.cut.append((client, server, why))
        return True

    monkeypatch.setattr(timeout.connections, "cut", cut)
    return calls


@pytest.fixture
def timers() -> ExitTimers:
    with taddons.context(Proxyserver()):  # (Exits.use sets connection_strategy)
        exits = Exits()
        exits.use({"a": EXIT})
    return ExitTimers(exits, limit=lambda: LIMIT)


def connecting(address: tuple[str, int] = EXIT.address) -> ServerConnectionHookData:
    server = tflow.tserver_conn()
    server.address = address
    return ServerConnectionHookData(server=server, client=tflow.tclient_conn())


async def until_cut(calls: Calls) -> None:
    for _ in range(500):  # up to 5 s: generous
        if calls.cut:
            return
        await asyncio.sleep(0.01)


def answer_through(data: ServerConnectionHookData, via=EXIT.via, client_id: str | None = None) -> tflow.tflow:
    flow = tflow.tflow(resp=True)
    flow.client_conn.id = data.client.id if client_id is None else client_id
    flow.server_conn.via = via
    return flow


def test_a_connection_elsewhere_starts_no_timer(timers, calls):
    async def main() -> None:
        timers.server_connect(connecting(("example.com", 443)))
        await asyncio.sleep(PAST_THE_LIMIT)

    asyncio.run(main())
    assert calls.cut == [] and calls.checks == 0


def test_a_connection_to_an_exit_is_cut_after_the_limit(timers, calls):
    data = connecting()

    async def main() -> None:
        timers.server_connect(data)
        assert calls.cut == []  # not at once
        await until_cut(calls)

    asyncio.run(main())
    assert calls.cut == [(data.client, data.server, "exit timeout")]


@pytest.mark.parametrize(
    "via, same_client, cut",
    [
        (EXIT.via, True, False),
        # an answer through another route, or to another client, leaves this connection waiting
        (("http", ("127.0.0.1", 3129)), True, True),
        (None, True, True),
        (EXIT.via, False, True),
    ],
    ids=["through it", "through another exit", "direct", "another client"],
)
def test_an_answer_through_the_exit_stops_its_time(timers, calls, via, same_client, cut):
    data = connecting()

    async def main() -> None:
        timers.server_connect(data)
        timers.answered(answer_through(data, via, None if same_client else "another-client"))
        await asyncio.sleep(PAST_THE_LIMIT)

    asyncio.run(main())
    assert calls.cut == ([(data.client, data.server, "exit timeout")] if cut else [])


@pytest.mark.parametrize("same_server", [True, False], ids=["its end", "another's end"])
def test_the_end_of_the_connection_stops_its_time(timers, calls, same_server):
    data = connecting()
    other = connecting()

    async def main() -> None:
        timers.server_connect(data)
        timers.server_disconnected(data if same_server else other)
        await asyncio.sleep(PAST_THE_LIMIT)

    asyncio.run(main())
    assert calls.cut == ([] if same_server else [(data.client, data.server, "exit timeout")])


def test_a_mitmproxy_it_was_not_written_for_declines_once_with_a_warning(timers, calls, caplog):
    calls.declined = "ConnectionIO has no handler"

    async def main() -> None:
        timers.server_connect(connecting())
        timers.server_connect(connecting())
        await asyncio.sleep(PAST_THE_LIMIT)

    with caplog.at_level(logging.WARNING, logger="addon.exits.timeout"):
        asyncio.run(main())
    assert calls.cut == [] and calls.checks == 1
    assert [r.getMessage() for r in caplog.records if r.name == "addon.exits.timeout"] == [
        "exits: an exit that never answers cannot be cut off on this mitmproxy (ConnectionIO has no handler): "
        "a request through it waits until the exit or the client gives up"
    ]


def test_a_connection_waiting_for_its_turn_is_cut_only_once_it_has_started(timers, calls):
    """mitmproxy opens at most five connections to one address for a client: one cancelled while it waits for
    its turn would leave its flow waiting for ever, so its time runs on until it has started."""
    data = connecting()
    data.server.timestamp_start = None  # still waiting for its turn

    async def main() -> None:
        timers.server_connect(data)
        await asyncio.sleep(PAST_THE_LIMIT)
        assert calls.cut == []
        data.server.timestamp_start = 946681202  # its turn came: it connects
        await until_cut(calls)

    asyncio.run(main())
    assert calls.cut == [(data.client, data.server, "exit timeout")]


def test_a_connection_killed_before_it_started_is_let_go(timers, calls):
    data = connecting()
    data.server.timestamp_start = None
    data.server.error = "killed by another addon"  # its flow has heard of it; nothing is left to cut

    async def main() -> None:
        timers.server_connect(data)
        await asyncio.sleep(PAST_THE_LIMIT)

    asyncio.run(main())
    assert calls.cut == [] and timers._timers == {}
