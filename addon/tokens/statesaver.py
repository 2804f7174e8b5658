"""Token health saved to the state file, from a thread, one write at a time.

The pool says when health changed (`changed`); a save follows about a second later, or later still
when writing takes long, so that no more than `SAVE_SHARE` of the time goes to it. A change that is
only a token's success count (a success that found it well) waits up to `SAVE_COUNTS_EVERY`, with
any other change that comes meanwhile bringing the write forward; shut-down writes what is pending. A save hands the
writer's thread what changed (a reference per change); the thread brings its `StateStore` up to date,
writes the file atomically, and names the tokens gone for longer than the grace period, which the
pool then forgets a chunk per turn of the event loop. Without an event loop (tests, scripts) and at
shut-down it writes here and now.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from addon.tokens.pool import TokenPool
from addon.tokens.statefile import StateStore
from addon.util.offloop import in_thread

logger = logging.getLogger(__name__)

SAVE_EVERY = 1.0  # seconds, at least, between two writes of the state file
SAVE_COUNTS_EVERY = 30.0  # seconds, at least, when only success counts changed (a busy proxy: every request)
SAVE_SHARE = 0.1  # and at most this share of the time spent writing it (a big file is written less often)
FORGET_CHUNK = 10_000  # health records dropped per turn of the event loop


class StateSaver:
    def __init__(self, pool: TokenPool) -> None:
        self.pool = pool
        self.store: StateStore | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task | None = None  # a write in its thread
        self._lock = threading.Lock()  # one writer at a time
        self._took = 0.0  # seconds the last write took
        self._problem: str | None = None  # the last failure to write, logged once
        self._touched = False  # something besides token health changed (the breaker): write it too
        self._more = False  # something besides success counts changed since the last snapshot

    @property
    def path(self) -> Path | None:
        return self.store.path if self.store is not None else None

    def use(self, store: StateStore | None) -> None:
        """Save to another state file from now on, or (None) to none (what the old one still had to get
        is written first)."""
        self.flush()
        self.store = store

    def touched(self) -> None:
        """Something the state file keeps besides token health changed (the breaker): save it soon, after a
        write in flight too."""
        self._touched = True
        self.changed()

    def changed(self, counts_only: bool = False) -> None:
        """Token health changed: save it soon (`counts_only`: only a success count, less soon)."""
        sooner = not (counts_only or self._more)  # the first change that matters since the last snapshot
        self._more |= not counts_only
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests, scripts): save now
            self.save()
            return
        if self._writing is not None or (self._pending is not None and not sooner):
            return  # (what changes during a write is saved after it; a write is due already)
        delay = max(SAVE_EVERY, self._took / SAVE_SHARE)
        at = loop.time() + (delay if self._more else max(delay, SAVE_COUNTS_EVERY))
        if self._pending is not None:  # a change that matters: sooner than the counts' write, never later
            self._pending.cancel()
            at = min(at, self._pending.when())
        self._pending = loop.call_at(at, self.save)

    def save(self) -> None:
        """Hand what changed to the writer's thread (here and now without an event loop)."""
        self._pending = None
        if self.store is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._writing is None:
            self._writing = loop.create_task(self._write_in_thread(), name="state file write")

    def done(self) -> None:
        """Shut-down: write what is pending, after a write in flight; nothing is written after."""
        if self._pending is not None or self._writing is not None:
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None
            self.flush()
        self.store = None

    def flush(self) -> None:
        """Write here and now, after a write in flight."""
        if self.store is not None:
            self.pool.forget(self._update_and_write(self.store, *self._snapshot()))

    def _snapshot(self) -> tuple:
        self._touched = self._more = False
        return self.pool.take_changes(), self.pool.list, self.pool.listed_at

    async def _write_in_thread(self) -> None:
        assert self.store is not None
        started = time.monotonic()
        try:
            pruned = await in_thread(self._update_and_write, self.store, *self._snapshot())
        finally:
            self._took = time.monotonic() - started
            self._writing = None
        self._forget(pruned)
        if self.pool.has_changes or self._touched:  # changed while it was written
            self.changed(counts_only=not (self._more or self._touched))

    def _update_and_write(self, store: StateStore, changes, token_list, listed_at: float) -> list[str]:
        """In the writer's thread (or at shut-down): returns the keys pruned, for the pool to forget."""
        with self._lock:
            pruned = store.update(changes, token_list, listed_at, time.time())
            try:
                store.write()
            except OSError as e:
                problem = f"tokens: cannot write the state file {store.path}: {e.strerror or e}"
                if problem != self._problem:  # once, not at every change of token health
                    logger.error(f"{problem}; token health is kept in memory only until it can be written")
                self._problem = problem
                return pruned
        if self._problem is not None:
            logger.info(f"tokens: the state file {store.path} is written again")
            self._problem = None
        return pruned

    def _forget(self, keys: list[str]) -> None:
        """Drop pruned health a chunk per turn of the event loop (a million tokens may leave at once)."""
        self.pool.forget(keys[:FORGET_CHUNK])
        if len(keys) > FORGET_CHUNK:
            asyncio.get_running_loop().call_soon(self._forget, keys[FORGET_CHUNK:])
