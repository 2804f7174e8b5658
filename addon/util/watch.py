"""Notice when files change, by polling their metadata (as mitmproxy's script loader does)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
Signature = tuple[int, int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class FileWatcher:
    """Calls a path's callback when the path's signature changes (a missing file counts)."""

    def __init__(self) -> None:
        self._watched: dict[Path, tuple[Signature, Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, paths: dict[Path, Callable[[], None]]) -> None:
        """Watch exactly these paths from now on, taking their current state as seen."""
        self._watched = {p: (self._watched.get(p, (signature(p), cb))[0], cb) for p, cb in paths.items()}

    def poll(self) -> None:
        for path, (seen, callback) in list(self._watched.items()):
            now = signature(path)
            if now != seen and path in self._watched:
                self._watched[path] = (now, self._watched[path][1])
                callback()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rules file watcher")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.poll()
            except Exception:  # a bug in a reload must not end the watching
                logger.exception("rules: error while reloading")
