"""Commands for the mitmproxy console and mitmweb's command bar: token health and the named values."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import command, exceptions

from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool, clock_time, pools_line

logger = logging.getLogger(__name__)


class TokenCommands:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.refreshing: asyncio.Task[str | None] | None = None  # the last fetch a command started

    def load(self, loader) -> None:
        """Register the commands (the methods below decorated as such), as mitmproxy does for an addon's:
        the pipeline calls this, so that this object need not be an addon that every hook visits."""
        for name in dir(type(self)):
            method = getattr(self, name)
            if isinstance(getattr(method, "command_name", None), str):
                loader.add_command(method.command_name, method)

    @command.command("tokens.status")
    def status(self) -> str:
        """Each pool's tokens by state, and an open breaker, in a line to read at a glance. The rows go
        to the event log: each token (masked), one to a row, with its state (active; cooling until a
        time; on trial: its cooldown is over and it has not worked since; retired, at a time; disabled
        by hand; expired, at its own expiry time), successes and refusals; with several pools, each
        pool's rows under its name. (`mitm-rules status` prints the same from the state file or store.)"""
        pools = list(self.runtime.pools.values()) or [self.runtime.pool]
        rows = []
        for pool in pools:
            if len(pools) > 1:
                rows.append(f"pool {pool.name} ({pool.spec.file if pool.spec else 'no file'}):")
            rows.extend(_pool_rows(pool))
        resting = [e for e in self.runtime.exits if e.resting]
        for exit in self.runtime.exits:
            state = f"resting until {_when(exit.resting_until)}" if exit.resting else "up"
            rows.append(f"exit {exit.spec.name} ({exit.spec.shown}): {state}; {exit.successes} ok, {exit.refusals} "
                        f"refused, {exit.failures} could not connect")
        logger.info("tokens.status:\n" + "\n".join(rows))
        exits = "".join(f"; exit {e.spec.name} resting until {clock_time(e.resting_until)}" for e in resting)
        return f"tokens: {pools_line(self.runtime.pools.values())}{exits} (one row a token in the event log)"

    @command.command("tokens.reset")
    def reset(self) -> None:
        """Clear every cooldown, and close the breaker (of every pool)."""
        for pool in self.runtime.pools.values():
            pool.reset()  # with a store: on every proxy of it
        logger.info("tokens: cooldowns cleared")

    @command.command("tokens.disable")
    def disable(self, suffix: str) -> None:
        """Stop using the token whose value ends with these characters (as tokens.status shows them)."""
        self._set(suffix, True)

    @command.command("tokens.enable")
    def enable(self, suffix: str) -> None:
        """Use a disabled or retired token again."""
        self._set(suffix, False)

    def _set(self, suffix: str, disabled: bool) -> None:
        found = [(pool, h) for pool in self.runtime.pools.values() for h in pool.set_disabled(suffix, disabled)]
        if not found:
            raise exceptions.CommandError(f"no token ends with {suffix.lstrip('…')!r}")
        if len(found) > 1:
            logger.warning(f"tokens: {len(found)} tokens end with {suffix!r}; all of them were changed")
        for pool, h in found:
            logger.info(f"{pool.label}: {h.suffix} {'disabled' if disabled else 'enabled'}")

    @command.command("captcha.refresh")
    def refresh_captcha(self) -> None:
        """Fetch a new captcha value now; the log says when it has arrived."""
        if self.runtime.captcha is None:
            raise exceptions.CommandError("the rules file has no captcha source")
        self.refresh_value("captcha")

    @command.command("values.refresh")
    def refresh_value(self, name: str) -> None:
        """Fetch the named value (of the rules file's values:) anew now: a command runs again, a file
        is read again. The log says when it has arrived."""
        source = self.runtime.values.get(name)
        if source is None:
            known = ", ".join(self.runtime.values) or "none"
            raise exceptions.CommandError(f"no value named {name!r} (the rules file has {known})")
        source.invalidate()
        # commands are synchronous: the fetch goes on in the background (keep a reference to it)
        self.refreshing = asyncio.get_running_loop().create_task(source.get())


def _pool_rows(pool: Pool) -> list[str]:
    rows = []
    for state, h in pool.tokens.status():
        if state == "cooling":
            state = f"cooling until {_when(h.cooling_until)}"
        elif state == "retired":
            state = f"retired {_when(h.retired_at)}"
        elif state == "expired":
            state = f"expired {_when(h.expires_at)}"
        rows.append(f"{h.suffix:<6} {state:<33} {h.successes:>6} ok {h.refusals:>6} refused")
    if not rows:
        rows.append("no tokens")  # never an empty list: the console's data viewer cannot show one
    if pool.breaker.is_open:
        rows.append(f"breaker open until {_when(pool.breaker.open_until)}: refusals go to the client as they are")
    if pool.shared is not None:
        rows.append(pool.shared.describe())
    return rows


def _when(timestamp: float) -> str:
    return clock_time(timestamp, "%Y-%m-%d %H:%M:%S")
