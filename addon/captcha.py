"""Where `{captcha}` comes from: a file, an environment variable or a command.

A value is reused for `ttl` seconds. While a command runs, every request that
needs a value waits for that one run (with ttl > 0), so a burst of requests runs
the command once. A file or the environment is read at once, without giving way
to other tasks (a retry waits for it). A failed fetch is logged and yields None;
the request then goes on without the header that needed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Callable

from addon.config import CaptchaSpec
from addon.masking import mask

logger = logging.getLogger(__name__)


class CaptchaError(Exception):
    """A captcha source failed; the message says how, never the value."""


class CaptchaSource:
    def __init__(self, spec: CaptchaSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._value: str | None = None
        self._expires = 0.0
        self._inflight: asyncio.Future[str | None] | None = None
        self.runs = 0  # fetches started, for status and tests

    def invalidate(self) -> None:
        """Forget the cached value; the next request fetches a new one."""
        self._value = None

    async def fresh(self, stale: str | None) -> str | None:
        """A value other than `stale` (the one the upstream just rejected).

        Many requests rejected with the same value share one new fetch: only
        the first of them finds `stale` still cached and drops it.
        """
        if stale is None or self._value == stale:
            self.invalidate()
        return await self.get()

    async def get(self) -> str | None:
        if self._value is not None and self._clock() < self._expires:
            return self._value
        if self.spec.ttl == 0 or self.spec.command is None:  # nothing to share: no task, no wait for one
            return await self._fetch()
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        return await asyncio.shield(self._inflight)

    def _fetched(self, fut: asyncio.Future[str | None]) -> None:
        self._inflight = None

    async def _fetch(self) -> str | None:
        self.runs += 1
        try:
            value = await self._read()
        except CaptchaError as e:
            logger.error(f"captcha: {self.spec.describe()} failed: {e}; requests go on without the captcha value")
            return None
        if not value:
            logger.error(f"captcha: {self.spec.describe()} gave an empty value; requests go on without it")
            return None
        if "\r" in value or "\n" in value:
            logger.error(f"captcha: {self.spec.describe()} gave a value with a line break; requests go on without it")
            return None
        self._value = value
        self._expires = self._clock() + self.spec.ttl
        logger.info(f"captcha: new value {mask(value)} from {self.spec.describe()}")
        return value

    async def _read(self) -> str:
        spec = self.spec
        if spec.file is not None:
            try:
                return spec.file.read_text(encoding="utf-8-sig").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise CaptchaError(f"cannot read it: {e}") from None
        if spec.env is not None:
            return os.environ.get(spec.env, "").strip()
        assert spec.command is not None
        return await self._run(spec.command)

    async def _run(self, command: tuple[str, ...]) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=self.spec.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise CaptchaError(f"cannot start {shlex.join(command)}: {e.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.spec.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise CaptchaError(f"timed out after {self.spec.timeout:g} s") from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output on stderr"]
            raise CaptchaError(f"exit status {proc.returncode} ({last[0][:200]})")
        return out.decode(errors="replace").strip()
