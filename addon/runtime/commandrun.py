"""Running a value's command: its standard output, bounded in time (the value's `timeout`) and size
(MAX_OUTPUT), in a process group of its own that is killed whole when the run fails."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
from pathlib import Path


class CommandFailed(Exception):
    """The command could not give a value; the message says why (never what it printed)."""


async def run_command(command: tuple[str, ...], cwd: Path | None, timeout: float) -> str:
    """The command's standard output, stripped.

    It runs in a process group of its own: when it fails (the timeout passes, it prints too much,
    the request is cancelled) the whole group is killed and our ends of its pipes are closed, so a
    child it left holding its output (`sleep 100000 & wait`) neither keeps the request waiting nor
    outlives it. Its standard error is counted, never logged: it may hold a secret.

    Raises:
        CommandFailed: it cannot start, fails, times out, or prints too much or what is not UTF-8.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, output = await loop.subprocess_exec(
            lambda: _Output(loop), *command, cwd=cwd, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        raise CommandFailed(f"cannot start {shlex.join(command)}: {e.strerror}") from None
    ended = False
    try:
        async with asyncio.timeout(timeout):
            await output.finished
        ended = not output.too_long
    except TimeoutError:
        raise CommandFailed(f"timed out after {timeout:g} s; {KILLED}") from None
    finally:
        if not ended:
            _kill_group(transport.get_pid())
            # its end comes at once (SIGKILL); closing before it would reap it under asyncio's child watcher
            await asyncio.wait([output.exited], timeout=KILL_WAIT)
        transport.close()  # and our ends of the pipes, which a process out of the group may still hold
    if output.too_long:
        raise CommandFailed(f"printed more than {MAX_OUTPUT // 1024} KiB (a value is one line); {KILLED}")
    status = transport.get_returncode()
    if status != 0:
        said = f" ({output.errors} byte(s) on stderr, not logged: they may hold a secret)" if output.errors else ""
        raise CommandFailed(f"exit status {status}{said}")
    try:
        return bytes(output.out).decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise CommandFailed(f"its output is not UTF-8 text (byte {e.start})") from None




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
