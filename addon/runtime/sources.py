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
needed it. A command's run is bounded in time (`timeout`) and output (MAX_OUTPUT); see `_run`.
Values are secrets: the log shows at most their last four characters, unless the spec says
`secret: false`.

On a shared store (`tokens.store`, addon/tokens/shared.py), a command with a ttl runs on one proxy at a
time: the others wait for its value and take it, with what is left of its ttl, from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from addon.rules.config import ValueSpec
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

    @property
    def name(self) -> str:
        return self.spec.name

    def show(self, value: str) -> str:
        """The value as logs and comments may show it."""
        return value if not self.spec.secret else mask(value)

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
            logger.warning(f"{self.name}: cannot be refreshed: an environment variable does not change under a running proxy")
            return None
        if spec.file is not None:
            return await self._wait_for_change(stale)
        value = await self._fetch_shared(stale)
        if value is not None and value == stale:
            logger.warning(f"{self.name}: {spec.describe()} gave the value the upstream turned down again")
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
                logger.warning(f"{self.name}: {spec.describe()} did not change within {spec.wait:g} s (wait); "
                               "the refusal goes to the client")
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
            got = await shared.claim(self.name, stale, self.spec.timeout + 1)
            if got is None:
                return await self._fetch()
            if got[0] == "value":
                logger.debug(f"{self.name}: value {self.show(got[1])} from the shared store")
                return self._accept(got[1], ttl=got[2], quiet=True)
            if got[0] == "run":
                value = await self._fetch()
                shared.publish(self.name, got[1], value, self.spec.ttl)
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
            logger.error(f"{self.name}: {self.spec.describe()} failed: {e}; requests go on without the {self.name} value")
            return None
        return self._accept(value)

    def _accept(self, value: str, ttl: float | None = None, quiet: bool = False) -> str | None:
        """Keep a value the source gave, if it can be used."""
        what = f"{self.name}: {self.spec.describe()}"
        if not value:
            logger.error(f"{what} gave an empty value; requests go on without it")
            return None
        if "\r" in value or "\n" in value:
            logger.error(f"{what} gave a value with a line break; requests go on without it")
            return None
        self._value = value
        if ttl is None:
            ttl = self.spec.ttl
        self._expires = self._clock() + ttl if ttl or self.spec.command is not None else float("inf")
        if not quiet:
            logger.info(f"{self.name}: new value {self.show(value)} from {self.spec.describe()}")
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
        """The command's standard output, stripped.

        It runs in a process group of its own: when it fails (the timeout passes, it prints too much,
        the request is cancelled) the whole group is killed and our ends of its pipes are closed, so a
        child it left holding its output (`sleep 100000 & wait`) neither keeps the request waiting nor
        outlives it. Its standard error is counted, never logged: it may hold a secret.

        Raises:
            SourceError: it cannot start, fails, times out, or prints too much or what is not UTF-8.
        """
        loop = asyncio.get_running_loop()
        try:
            transport, output = await loop.subprocess_exec(
                lambda: _Output(loop), *command, cwd=self.spec.cwd, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as e:
            raise SourceError(f"cannot start {shlex.join(command)}: {e.strerror}") from None
        ended = False
        try:
            async with asyncio.timeout(self.spec.timeout):
                await output.finished
            ended = not output.too_long
        except TimeoutError:
            raise SourceError(f"timed out after {self.spec.timeout:g} s; {KILLED}") from None
        finally:
            if not ended:
                _kill_group(transport.get_pid())
                # its end comes at once (SIGKILL); closing before it would reap it under asyncio's child watcher
                await asyncio.wait([output.exited], timeout=KILL_WAIT)
            transport.close()  # and our ends of the pipes, which a process out of the group may still hold
        if output.too_long:
            raise SourceError(f"printed more than {MAX_OUTPUT // 1024} KiB (a value is one line); {KILLED}")
        status = transport.get_returncode()
        if status != 0:
            said = f" ({output.errors} byte(s) on stderr, not logged: they may hold a secret)" if output.errors else ""
            raise SourceError(f"exit status {status}{said}")
        try:
            return bytes(output.out).decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            raise SourceError(f"its output is not UTF-8 text (byte {e.start})") from None


MAX_OUTPUT = 64 * 1024  # bytes a command may print on stdout; a value is one line
KILLED = "it and the processes it started were killed"
KILL_WAIT = 5.0  # seconds to wait for a killed command's exit to be reported


class _Output(asyncio.SubprocessProtocol):
    """What a command prints: stdout up to MAX_OUTPUT bytes (past that, `too_long` and done at once,
    keeping nothing more), stderr only counted. `finished` is done when the command has exited and
    closed its output, or printed too much."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out = bytearray()
        self.errors = 0
        self.too_long = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            self.errors += len(data)
        elif not self.too_long:
            if len(self.out) + len(data) > MAX_OUTPUT:
                self.too_long = True
                _settle(self.finished)
            else:
                self.out += data

    def process_exited(self) -> None:
        _settle(self.exited)

    def connection_lost(self, exc: Exception | None) -> None:  # exited, and every pipe closed
        _settle(self.finished)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _kill_group(pid: int | None) -> None:
    """Kill a command and every process it started (they share its process group)."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # every one of them is gone already
        pass
