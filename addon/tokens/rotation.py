"""The rotation's index: which tokens of the list in force can be drawn, found with no Python loop over them.

Drawing a token looks up the next usable one in a bitmap (one byte per token, searched by `bytes.find`,
which is C's memchr) and the soonest-ready cooling one in a heap; the tokens that say when they expire
wait in another heap, by when. The pool (pool.py) keeps the health records, which the index reads, and
tells it when one changes (`classify`); a new list costs the tokens that are cooling or disabled, not
all of them.
"""

from __future__ import annotations

import datetime
import heapq
import logging

from addon.tokens.health import Health
from addon.tokens.tokenfile import TokenList
from addon.util.masking import mask

logger = logging.getLogger(__name__)


class Rotation:
    """The usable bitmap and the cooling and expiring heaps of one pool, over its `health` records."""

    def __init__(self, health: dict[str, Health]) -> None:
        self.health = health  # the pool's records (the same dict)
        self.list = TokenList.of(())
        self.usable = bytearray()  # per place: 1 when neither cooling nor retired nor disabled
        self.expired: set[str] = set()  # keys of the tokens past their expiry (less the margin)
        self.inactive: set[str] = set()  # keys that are cooling, retired or disabled (cooling may have ended since)
        self._cooling: list[tuple[float, int, str]] = []  # heap of (until, place, key); stale entries skipped
        self._expiring: list[tuple[float, int]] = []  # heap of (expires at, place) of the list in force
        self._renewed: dict[str, float | None] = {}  # key -> the expiry of its renewed session value (sessions.py)

    def replace(self, new: TokenList, now: float) -> None:
        """Index a new list, the tokens that are cooling, retired or disabled by their health."""
        self.list = new
        self.usable = bytearray(b"\x01") * len(new.tokens)
        self._cooling = []
        self._expiring = [(at, i) for i, at in new.expiry.items()]
        self.expired = set()
        for key, at in self._renewed.items():
            self._expire_at(key, at, now)
        heapq.heapify(self._expiring)
        for key in list(self.inactive):
            self.classify(key, now)
        heapq.heapify(self._cooling)

    def classify(self, key: str, now: float) -> None:
        """Put a token's place in the bitmap (and the heap) as its health says."""
        health = self.health.get(key)
        cooling = health is not None and not health.out and health.cooling_until > now
        if health is None or not (health.out or cooling):
            self.inactive.discard(key)
        else:
            self.inactive.add(key)
        i = self.list.key_position.get(key)
        if i is None:
            return
        self.usable[i] = 0 if key in self.inactive or key in self.expired else 1
        if cooling:
            heapq.heappush(self._cooling, (health.cooling_until, i, key))

    def wake(self, now: float, expiry_margin: float, label: str) -> None:
        """Tokens whose cooldown has ended are usable again; tokens that expire (less the margin) no longer are."""
        while self._expiring and self._expiring[0][0] - expiry_margin <= now:
            at, i = heapq.heappop(self._expiring)
            if self.list.expiry.get(i) != at:
                continue  # stale: its session was renewed since
            key = self.list.keys[i]
            self.expired.add(key)
            self.usable[i] = 0
            when = datetime.datetime.fromtimestamp(at).isoformat(" ", "seconds")
            logger.info(f"{label}: {mask(self.list.tokens[i])} expired ({when}, less a margin of "
                        f"{expiry_margin:g} s); it is no longer sent")
        while self._cooling and self._cooling[0][0] <= now:
            until, i, key = heapq.heappop(self._cooling)
            health = self.health.get(key)
            if health is not None and health.cooling_until == until:
                self.classify(key, now)

    def renewed(self, key: str, at: float | None, now: float) -> None:
        """The account `key` expires at `at` from now on (its session renewed; None: never)."""
        self._renewed[key] = at
        self._expire_at(key, at, now)
        if key in self.list.key_position:
            self.classify(key, now)

    def _expire_at(self, key: str, at: float | None, now: float) -> None:
        i = self.list.key_position.get(key)
        if i is None:
            return
        if at is None:
            self.list.expiry.pop(i, None)
        else:
            self.list.expiry[i] = at
            heapq.heappush(self._expiring, (at, i))
        self.expired.discard(key)

    def next_after(self, start: int, exclude: set[str]) -> str | None:
        """The first usable token after the place `start`, round to it; else the soonest-ready cooling one."""
        tokens, usable = self.list.tokens, self.usable
        for lo, hi in ((start + 1, len(tokens)), (0, start + 1)):  # from the place after, round to it
            i = lo
            while i < hi and (i := usable.find(1, i, hi)) >= 0:
                if tokens[i] not in exclude:
                    return tokens[i]
                i += 1  # at most once per excluded token
        return self._soonest_cooling(exclude)

    def _soonest_cooling(self, exclude: set[str]) -> str | None:
        """No active token: the cooling one that is ready first (not disabled, not excluded)."""
        skipped: list[tuple[float, int, str]] = []
        found = None
        while self._cooling:
            entry = heapq.heappop(self._cooling)
            until, i, key = entry
            health = self.health.get(key)
            if health is None or health.cooling_until != until or health.out or key in self.expired:
                continue  # stale: the token's health changed since (or it expired)
            skipped.append(entry)
            if self.list.tokens[i] not in exclude:
                found = self.list.tokens[i]
                break
        for entry in skipped:
            heapq.heappush(self._cooling, entry)
        return found
