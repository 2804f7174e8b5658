"""Token health on disk: JSON, written atomically, read forgivingly.

A missing, unreadable or corrupt state file means a fresh start with a
warning, never a crash. Writes go to a temporary file in the same folder that
then replaces the old one, so a crash mid-write leaves the previous state.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from addon.tokens.health import MAX_TIME

logger = logging.getLogger(__name__)

VERSION = 1


MAX_STATE_BYTES = 256 * 2**20  # a million tokens' health is about 160 MiB; a file over this is not read


class NotUsable(ValueError):
    """The state file is there but cannot be trusted or read at all."""


def load_state(path: Path) -> dict[str, Any]:
    """The saved token health, or {} (with a warning) when there is none to trust (see read_state)."""
    return read_state(path)[0]


def read_state(path: Path) -> tuple[dict[str, Any], float]:
    """The saved token health and the time the breaker is open until (0: closed); ({}, 0) (with a
    warning) when there is none to trust.

    The file is opened without waiting (a FIFO in its place opens at once, and is refused with any
    other file that is not a regular one) and refused unread when it is over MAX_STATE_BYTES; a
    number that JSON allows but no health record holds (1e400, NaN, Infinity) refuses it too.
    """
    try:
        data = json.loads(_read_regular(path), parse_constant=_no_constant, parse_float=_finite)
    except FileNotFoundError:
        logger.info(f"tokens: no state file at {path} yet; every token starts active")
        return {}, 0.0
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        logger.warning(f"tokens: cannot use the state file {path} ({e}); starting with every token active")
        return {}, 0.0
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("tokens"), dict):
        logger.warning(f"tokens: the state file {path} is not one this version wrote; starting with every token active")
        return {}, 0.0
    breaker = data.get(BREAKER_KEY)  # not in a file written before the breaker was kept
    open_until = breaker.get("open_until") if isinstance(breaker, dict) else None
    if not isinstance(open_until, (int, float)) or isinstance(open_until, bool) or not 0 <= open_until <= MAX_TIME:
        open_until = 0.0
    return data["tokens"], float(open_until)


def _read_regular(path: Path) -> str:
    """The text of a regular file of at most MAX_STATE_BYTES, opened without blocking.

    Raises:
        OSError, UnicodeDecodeError: as reading it does; NotUsable: not a regular file, or too big.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO would block a plain open
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotUsable("it is not a regular file")
        if st.st_size > MAX_STATE_BYTES:
            raise NotUsable(f"it is {st.st_size / 2**20:.0f} MiB, over the {MAX_STATE_BYTES // 2**20} MiB "
                            "a state file may be")  # fmt: skip
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_STATE_BYTES:  # it grew since
        raise NotUsable(f"it is over the {MAX_STATE_BYTES // 2**20} MiB a state file may be")
    return data.decode("utf-8")


def _no_constant(name: str) -> Any:
    raise NotUsable(f"it holds {name}, which no health record does")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise NotUsable(f"it holds the number {text[:40]}, out of range")
    return number


BREAKER_KEY = "breaker"  # at the top: {"open_until": seconds since the epoch; 0: closed}
GONE_KEY = "gone_since"  # in an entry: since when the token has not been in the tokens file
WRITE_CHUNK = 10_000  # entries joined at a time, so that a thread writing a big file lets the event loop run


class StateStore:
    """What the state file holds, kept by whoever writes it.

    The event loop hands over only what changed (`TokenPool.take_changes`) and the token list in
    force; `update` and `write` run in a thread, one at a time. Each entry is kept as its JSON text,
    made once per change. An entry whose token has left the tokens file carries `gone_since`;
    `update` returns the keys that have been gone for longer than `grace`, for the pool to forget.
    """

    def __init__(self, path: Path, entries: dict[str, Any], grace: float, breaker_open_until: float = 0.0) -> None:
        self.path, self.grace = path, grace
        self.breaker_open_until = breaker_open_until  # set on the event loop; written with the next save
        self._json: dict[str, str] = {}  # key -> its entry as JSON, without gone_since
        self._gone: dict[str, float] = {}
        self._departures: collections.deque[tuple[float, str]] = collections.deque()  # in order of time
        self._list: object = None
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            since = entry.get(GONE_KEY)
            self._json[key] = json.dumps({k: v for k, v in entry.items() if k != GONE_KEY}, sort_keys=True)
            if isinstance(since, (int, float)) and not isinstance(since, bool):
                self._gone[key] = float(since)
        for key, since in sorted(self._gone.items(), key=lambda kv: kv[1]):
            self._departures.append((since, key))

    def __len__(self) -> int:
        return len(self._json)

    def update(self, changes: Mapping[str, Any], token_list, listed_at: float, now: float) -> list[str]:
        """Take the changed health records (anything with `to_entry()`) and the list in force (a TokenList,
        kept by identity); returns the keys pruned for having been gone longer than the grace period."""
        changed = list(changes)
        for key in changed:
            health = changes.get(key)
            if health is not None:  # not forgotten meanwhile
                self._json[key] = json.dumps(health.to_entry(), sort_keys=True)
        listed = token_list.key_position
        if token_list is not self._list:  # the tokens file changed: who left, who came back
            self._list = token_list
            keys: Iterable[str] = self._json
        else:
            keys = changed
        for key in keys:
            if key in listed:
                self._gone.pop(key, None)
            elif key not in self._gone:
                self._gone[key] = listed_at
                self._departures.append((listed_at, key))
        pruned = []
        while self._departures and self._departures[0][0] <= now - self.grace:
            since, key = self._departures.popleft()
            if self._gone.get(key) == since:  # not back (and gone again later) since
                del self._gone[key], self._json[key]
                pruned.append(key)
        return pruned

    def write(self) -> None:
        """Write every entry, atomically.

        Raises:
            OSError: the folder is not writable, the disk is full, ...
        """
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f'{{"version": {VERSION}, "{BREAKER_KEY}": {{"open_until": {self.breaker_open_until!r}}}, '
                        '"tokens": {')
                keys = list(self._json)
                for at in range(0, len(keys), WRITE_CHUNK):
                    f.write(("," if at else "") + ",".join(map(self._line, keys[at : at + WRITE_CHUNK])))
                f.write("\n}}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _line(self, key: str) -> str:
        text = self._json[key]
        since = self._gone.get(key)
        if since is not None:
            text = f'{text[:-1]}, "{GONE_KEY}": {json.dumps(since)}}}'
        return f"\n{json.dumps(key)}: {text}"
