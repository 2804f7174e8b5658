"""Where named values (`{captcha}`, `{cf_clearance}`, …) come from: a file, an environment variable or a command.

A command's value is reused for `ttl` seconds (0: it runs for every request); while a run is under
way, every request that needs the value waits for that one run (with ttl > 0), so a burst of requests
runs it once. A file's value is kept until the file changes (the loader's watcher says so, then it
is read again) or its `ttl` passes. An environment variable is read once.

A refresh (`on_response` action `refresh`, after the upstream turned a value down) asks for a value
other than the one turned down: a command runs again; a file is read again, waiting up to `wait`
seconds for it to change (a browser script that solves a challenge rewrites it). Every refusal of
the same value waits for the same refresh. A refresh that fails, or brings back the value turned
down, gives None. A failed fetch is logged and yields None; the request then goes on without what
needed it. A command's run is bounded in time (`timeout`) and output (addon/runtime/commandrun.py).
Values are secrets: the log shows at most their last four characters, unless the spec says
`secret: false`.

On a shared store (`tokens.store`, addon/tokens/shared.py), a command with a ttl runs on one proxy at a
time: the others wait for its value and take it, with what is left of its ttl, from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from addon.rules.records import Config, ValueSpec
from addon.runtime.commandrun import CommandFailed, run_command
from addon.runtime.counters import FAILED, OK, Counters
from addon.util.masking import mask
from addon.util.watch import signature

if TYPE_CHECKING:
    from addon.tokens.shared import SharedStore

logger = logging.getLogger(__name__)

SHARED_POLL = 0.05  # seconds between looks at the shared store while another proxy runs the command
WAIT_POLL = 0.1  # seconds between looks at a file a refresh waits on


class SourceError(Exception):
    """A value source failed; the message says how, never the value."""


class ValueSource:
    def __init__(self, spec: ValueSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._value: str | None = None
        self._expires = 0.0
        self._inflight: asyncio.Future[str | None] | None = None  # a fetch that requests share (ttl > 0)
        self._renewing: asyncio.Future[str | None] | None = None  # a refresh, and the value it replaces
        self._replaces: str | None = None
        self.runs = 0  # fetches started, for status and tests
        self.shared: SharedStore | None = None  # set by the loader: a command with a ttl runs once for all proxies
        self.counters: Counters | None = None  # set by the loader: each fetch here counts, as it ended
        self.fetched_at = 0.0  # wall-clock seconds: the last value taken (here, or from the shared store)
        self.failed_at = 0.0  # and the last fetch here that gave none

    @property
    def name(self) -> str:
        return self.spec.name

    def show(self, value: str) -> str:
        """The value as logs and comments may show it."""
        return value if not self.spec.secret else mask(value)

    @property
    def expires_at(self) -> float | None:
        """Wall-clock seconds when the value at hand is fetched anew; None: no value at hand, or kept until
        its file changes."""
        if self._value is None or self._expires == float("inf"):
            return None
        return time.time() + (self._expires - self._clock())

    def _ended(self, ok: bool) -> None:
        """A fetch here ended: with a value (`ok`) or without."""
        if ok:
            self.fetched_at = time.time()
        else:
            self.failed_at = time.time()
        if self.counters is not None:
            self.counters.value_refreshes[self.spec.label, OK if ok else FAILED] += 1

    def invalidate(self) -> None:
        """Forget the cached value; the next request fetches a new one."""
        self._value = None

    def cached(self) -> str | None:
        """The value, when one is at hand without fetching (the request hook's fast path)."""
        if self._value is not None and self._clock() < self._expires:
            return self._value
        return None

    async def get(self, stale: str | None = None) -> str | None:
        """The value (not `stale`, the one a refusal turned down, when it comes from the shared store)."""
        value = self.cached()
        if value is not None:
            return value
        if self.spec.command is None or self.spec.ttl == 0:
            # a file or the environment is read at once, with no task to wait for (a retry asks here
            # on its way to the upstream); a command with a ttl is run once for everyone who asks
            return await self._fetch()
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_shared(stale))
            self._inflight.add_done_callback(self._fetched)
        return await asyncio.shield(self._inflight)

    def _fetched(self, fut: asyncio.Future[str | None]) -> None:
        self._inflight = None

    async def fresh(self, stale: str | None) -> str | None:
        """A value for a retry with another token: a command runs again (refusals of the same value
        share the run), a file or environment variable gives what it holds now. None: it failed."""
        if self.spec.command is None:
            return await self.get()
        if stale is None or self._value == stale:
            self.invalidate()
        return await self.get(stale)

    async def refresh(self, stale: str | None) -> str | None:
        """A value other than `stale` (the one the upstream just turned down), or None when the source
        fails or has no other. Refusals of the same value share one refresh."""
        if self._renewing is not None and self._replaces == stale:
            return await asyncio.shield(self._renewing)
        current = self.cached()
        if current is not None and current != stale:
            return current  # replaced already: by another refresh, a fetch past the ttl, or a change of the file
        self._replaces = stale
        self._renewing = asyncio.ensure_future(self._renew(stale))
        self._renewing.add_done_callback(self._renewed)
        return await asyncio.shield(self._renewing)

    def _renewed(self, fut: asyncio.Future[str | None]) -> None:
        if self._renewing is fut:
            self._renewing = self._replaces = None

    async def _renew(self, stale: str | None) -> str | None:
        spec = self.spec
        if spec.env is not None:
            logger.warning(f"{self.spec.label}: cannot be refreshed: an environment variable does not change under a running proxy")
            self._ended(False)
            return None
        if spec.file is not None:
            return await self._wait_for_change(stale)
        value = await self._fetch_shared(stale)
        if value is not None and value == stale:
            logger.warning(f"{self.spec.label}: {spec.describe()} gave the value the upstream turned down again")
            return None
        return value

    async def _wait_for_change(self, stale: str | None) -> str | None:
        """The file's value once it is another than `stale`, waiting up to `wait` seconds for that."""
        spec = self.spec
        assert spec.file is not None
        deadline = self._clock() + spec.wait
        seen = None
        while True:
            now = signature(spec.file)
            if now != seen:  # read it at the start, then whenever it changed
                seen = now
                self.runs += 1
                try:
                    value = await self._read()
                except SourceError:
                    value = ""  # not there, or being rewritten: look again
                if value and value != stale:
                    return self._accept(value)
            if self._clock() >= deadline:
                logger.warning(f"{self.spec.label}: {spec.describe()} did not change within {spec.wait:g} s (wait); "
                               "the refusal goes to the client")
                self._ended(False)
                return None
            await asyncio.sleep(WAIT_POLL)

    async def _fetch_shared(self, stale: str | None) -> str | None:
        """A command's value with a ttl: from the shared store, or run here (for every proxy of the store
        when this one holds its lock; alone when there is no store or it does not answer)."""
        shared = self.shared
        if shared is None or self.spec.ttl == 0:
            return await self._fetch()
        deadline = self._clock() + self.spec.timeout + 1
        while True:
            got = await shared.claim(self.spec.label, stale, self.spec.timeout + 1)
            if got is None:
                return await self._fetch()
            if got[0] == "value":
                logger.debug(f"{self.spec.label}: value {self.show(got[1])} from the shared store")
                return self._accept(got[1], ttl=got[2], shared=True)
            if got[0] == "run":
                value = await self._fetch()
                shared.publish(self.spec.label, got[1], value, self.spec.ttl)
                return value
            if self._clock() >= deadline:  # the proxy that runs it is gone: its lock expires, or run it here
                return await self._fetch()
            await asyncio.sleep(SHARED_POLL)

    async def _fetch(self) -> str | None:
        """Read or run the source once."""
        self.runs += 1
        try:
            value = await self._read()
        except SourceError as e:
            logger.error(f"{self.spec.label}: {self.spec.describe()} failed: {e}; requests go on without the {self.name} value")
            self._ended(False)
            return None
        return self._accept(value)

    def _accept(self, value: str, ttl: float | None = None, shared: bool = False) -> str | None:
        """Keep a value the source gave (`shared`: another proxy's run, from the store), if it can be used."""
        what = f"{self.spec.label}: {self.spec.describe()}"
        if not value or "\r" in value or "\n" in value:
            problem = "an empty value" if not value else "a value with a line break"
            logger.error(f"{what} gave {problem}; requests go on without it")
            if not shared:
                self._ended(False)
            return None
        if shared:
            self.fetched_at = time.time()
        else:
            self._ended(True)
        self._value = value
        if ttl is None:
            ttl = self.spec.ttl
        self._expires = self._clock() + ttl if ttl or self.spec.command is not None else float("inf")
        if not shared:
            logger.info(f"{self.spec.label}: new value {self.show(value)} from {self.spec.describe()}")
        return value

    async def _read(self) -> str:
        spec = self.spec
        if spec.file is not None:
            try:
                return spec.file.read_text(encoding="utf-8-sig").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise SourceError(f"cannot read it: {e}") from None
        if spec.env is not None:
            return os.environ.get(spec.env, "").strip()
        assert spec.command is not None
        return await self._run(spec.command)

    async def _run(self, command: tuple[str, ...]) -> str:
        """The command's standard output, stripped (addon/runtime/commandrun.py).

        Raises:
            SourceError: it cannot start, fails, times out, or prints too much or what is not UTF-8.
        """
        try:
            return await run_command(command, self.spec.cwd, self.spec.timeout)
        except CommandFailed as e:
            raise SourceError(str(e)) from None


def sources_for(config: Config, kept: Mapping[str, ValueSource]) -> dict[str, ValueSource]:
    """The value sources of a rules file, by name; a value each exit has its own ({exit}) is one source
    an exit, as NAME@EXIT. A source whose spec is unchanged is kept, with its value."""
    specs: dict[str, ValueSpec] = {}
    for name, spec in config.values.items():
        if spec.per_exit:
            specs.update((f"{name}@{exit}", spec.for_exit(exit)) for exit in config.exits)
        else:
            specs[name] = spec
    return {key: kept[key] if key in kept and kept[key].spec == spec else ValueSource(spec) for key, spec in specs.items()}
