"""The exits of the rules file at run time, and which one a token leaves through now.

A token's exit is the first of its order (binding.py) over its pool's exits. While that exit rests
(health.py), the token waits (it is not drawn), or with the pool's `failover: true` leaves through the
next exit of its order that does not rest. Each exit keeps its health across reloads by its name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from functools import partial

from mitmproxy import ctx, exceptions, http

from addon.exits.binding import exit_order
from addon.exits.health import ExitHealth
from addon.rules.records import ExitSpec, TokensSpec

logger = logging.getLogger(__name__)


class Exits:
    def __init__(self) -> None:
        self.by_name: dict[str, ExitHealth] = {}
        self._at: dict[tuple[str, int], ExitHealth] = {}  # by the proxy's address: how mitmproxy names it

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def __iter__(self) -> Iterator[ExitHealth]:
        return iter(self.by_name.values())

    def use(self, specs: Mapping[str, ExitSpec]) -> None:
        """Take a rules file's exits: one still named keeps its health, with its new settings. With
        exits, mitmproxy connects to an upstream only when a request needs it (`lazy`): `eager` would
        connect (from this machine's own address) before the request's token, and so its exit, is known."""
        if specs and ctx.options.connection_strategy != "lazy":
            ctx.options.update(connection_strategy="lazy")
            logger.info("exits: connection_strategy is set to lazy (each request's exit is known only when its "
                        "token is drawn; eager would connect before that, from this machine's own address)")
        old = self.by_name
        self.by_name = {}
        for name, spec in specs.items():
            health = old.get(name) or ExitHealth(spec)
            health.spec = spec
            health.breaker.label = f"exit {name}"
            self.by_name[name] = health
        self._at = {h.spec.address: h for h in self.by_name.values()}

    def check_strategy(self) -> None:
        """`connection_strategy` was set: with exits, it stays lazy (see `use`).

        Raises:
            OptionsError: it was set to anything else (mitmproxy keeps the value it had).
        """
        if self.by_name and ctx.options.connection_strategy != "lazy":
            raise exceptions.OptionsError(
                "connection_strategy must stay lazy while the rules file has exits: with eager, mitmproxy would "
                "connect before a request's token, and so its exit, is known, from this machine's own address")

    def share(self, pools: Iterable) -> None:
        """An exit's rest is told to (and taken from) the shared store of each pool (runtime Pool: its
        `spec`, `shared`) that leaves through it."""
        stores: dict[str, list] = {name: [] for name in self.by_name}
        for pool in pools:
            if pool.shared is not None and pool.spec is not None:
                pool.shared.exits = {name: self.by_name[name].breaker for name in pool.spec.exits}
                for name in pool.spec.exits:
                    stores[name].append(pool.shared)
        for name, health in self.by_name.items():
            health.breaker.publish = partial(_tell, tuple(stores[name]), name)

    def route(self, pool: TokensSpec | None, token: str) -> ExitHealth | None:
        """The exit this token leaves through now; None: its exit rests (and, with failover, every
        exit after it). Asked only of a pool that has exits."""
        assert pool is not None and pool.exits
        order = exit_order(token, pool.exits)
        first = self.by_name.get(order[0])
        if first is None or not first.resting:
            return first
        if pool.failover:
            for name in order[1:]:
                health = self.by_name.get(name)
                if health is not None and not health.resting:
                    return health
        return None

    def route_or_home(self, pool: TokensSpec | None, token: str) -> ExitHealth | None:
        """As `route`; when that finds none, the token's own exit, resting as it is (a request already
        under way with this token leaves through no other)."""
        assert pool is not None
        return self.route(pool, token) or self.by_name.get(self.home(pool, token))

    def leaves(self, pool: TokensSpec | None, token: str) -> bool:
        """Can this token leave through an exit now?"""
        return self.route(pool, token) is not None

    def home(self, pool: TokensSpec, token: str) -> str:
        """The name of the exit this token is bound to (the first of its order), resting or not."""
        return exit_order(token, pool.exits)[0]

    def at(self, address: tuple[str, int] | None) -> ExitHealth | None:
        """The exit at this address (mitmproxy's name for an upstream proxy), if it is one."""
        return self._at.get(address) if address is not None else None

    def of_flow(self, flow: http.HTTPFlow) -> ExitHealth | None:
        """The exit a flow went out through (or was to), from its route."""
        via = flow.server_conn.via
        return self._at.get(via[1]) if via is not None and self._at else None


def _tell(stores: tuple, name: str, until: float) -> None:
    for store in stores:
        store.exit_rested(name, until)


def routed(pool: TokensSpec | None) -> bool:
    """Do this pool's tokens leave through exits?"""
    return pool is not None and bool(pool.exits)
