"""The exits at run time: kept across reloads by name, found by address, and the exit a token leaves through now."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addon.exits.binding import exit_order
from addon.exits.routing import Exits
from addon.rules.records import ExitSpec, TokensSpec

NAMES = ("a", "b", "c")


def spec(name: str, port: int, cooldown: float = 300) -> ExitSpec:
    shown = f"http://127.0.0.1:{port}"
    return ExitSpec(name=name, scheme="http", host="127.0.0.1", port=port, shown=shown, cooldown=cooldown)


SPECS = {name: spec(name, 3128 + i) for i, name in enumerate(NAMES)}
TOKEN = "tok-route-0000000001"
ORDER = exit_order(TOKEN, NAMES)  # the token's exits, its own first


def pool(failover: bool = False) -> TokensSpec:
    return TokensSpec(file=Path("tokens.txt"), exits=NAMES, failover=failover)


def rest(exits: Exits, name: str) -> None:
    health = exits.by_name[name]
    health.breaker.opened(health.breaker.clock() + 300)


@pytest.fixture
def tctx():
    with taddons.context(Proxyserver()) as tctx:  # the proxyserver addon declares connection_strategy
        yield tctx


@pytest.fixture
def exits(tctx) -> Exits:
    exits = Exits()
    exits.use(SPECS)
    return exits


def test_use_keeps_each_exits_health_by_name_with_its_new_spec(exits):
    a = exits.by_name["a"]
    changed = spec("a", 4000, cooldown=30)
    exits.use({"a": changed})
    assert exits.by_name["a"] is a and a.spec == changed
    assert list(exits.by_name) == ["a"]
    assert exits.at(("127.0.0.1", 4000)) is a and exits.at(("127.0.0.1", 3128)) is None


def test_at_finds_an_exit_by_host_and_port(exits):
    assert exits.at(("127.0.0.1", 3129)) is exits.by_name["b"]
    assert exits.at(("127.0.0.2", 3129)) is None
    assert exits.at(None) is None


def test_route_is_the_tokens_first_exit(exits):
    assert exits.route(pool(), TOKEN) is exits.by_name[ORDER[0]]


@pytest.mark.parametrize(
    "resting, failover, expected",
    [
        ([0], False, None),  # its exit rests: the token waits
        ([0], True, 1),  # or leaves through the next of its order
        ([0, 1], True, 2),
        ([0, 1, 2], True, None),  # every exit rests
        ([1], False, 0),  # another exit resting changes nothing
    ],
    ids=["rests", "failover", "failover twice", "all rest", "other rests"],
)
def test_route_while_exits_rest(exits, resting, failover, expected):
    for i in resting:
        rest(exits, ORDER[i])
    route = exits.route(pool(failover), TOKEN)
    assert route is (None if expected is None else exits.by_name[ORDER[expected]])


def test_home_is_the_first_of_the_order_resting_or_not(exits):
    rest(exits, ORDER[0])
    assert exits.home(pool(failover=True), TOKEN) == ORDER[0]


def test_of_flow_is_the_exit_of_the_flows_route(exits):
    flow = tflow.tflow()
    assert exits.of_flow(flow) is None  # no route: straight to the origin
    flow.server_conn.via = ("http", ("127.0.0.1", 3128))
    assert exits.of_flow(flow) is exits.by_name["a"]
    flow.server_conn.via = ("http", ("127.0.0.1", 9999))
    assert exits.of_flow(flow) is None


def test_exits_make_mitmproxy_connect_lazily(tctx):
    assert tctx.options.connection_strategy == "eager"
    Exits().use({})
    assert tctx.options.connection_strategy == "eager"
    exits = Exits()
    exits.use(SPECS)
    assert tctx.options.connection_strategy == "lazy" and exits


def test_connection_strategy_cannot_be_set_back_to_eager_while_there_are_exits():
    from mitmproxy import exceptions

    from addon.pipeline import Pipeline

    pipeline = Pipeline()
    with taddons.context(Proxyserver(), pipeline) as tctx:
        tctx.configure(pipeline)  # (no rules file: no exits)
        tctx.options.update(connection_strategy="eager")  # without exits, any strategy
        pipeline.runtime.exits.use({"a": SPECS["a"]})
        assert tctx.options.connection_strategy == "lazy"
        with pytest.raises(exceptions.OptionsError, match="connection_strategy must stay lazy"):
            tctx.options.update(connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"
