"""One proxy per state file: a lock held while the proxy runs.

Two proxies on one state file (a forward and a reverse proxy on the same tokens file, say) would
each overwrite the other's token health. The first to start takes an exclusive `flock` on a lock
file beside the state file (`tokens.state.json.lock`) and holds it until it stops or uses another
state file; the lock file names its process. A second proxy does not get the lock: it says so at
once and keeps its token health in memory, without writing the state file. The operating system
lets go of the lock when a process ends, however it ends, so a crash leaves no stale lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class StateFileLock:
    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.path = state_file.with_name(state_file.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it (a warning says so). A lock file that
        cannot be made (a read-only folder) is no lock: True, and the state file's own write will fail."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            logger.debug(f"tokens: no lock file {self.path} ({e.strerror or e}); the state file is not locked")
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            logger.warning(  # not an error: mitmproxy would exit at start-up, and this proxy can go on
                f"tokens: another proxy{holder} uses the state file {self.state_file} (it holds {self.path.name}); this "
                "one does not write it and keeps its token health in memory only. To share token health between "
                "proxies, give them tokens.store (redis://…); or give each its own tokens.state_file."
            )
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = os.pread(fd, 32, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (process {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing lets go of the flock; the file stays, for the next proxy to lock
            self._fd = None
