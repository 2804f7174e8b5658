"""The tokens file, the rotation over it, and each token's health.

The addon only ever reads the tokens file. Health is kept by a hash of each
token, never by its line number, so editing, reordering or adding tokens keeps
the health of the others; the rotation also follows token values.

A token is active, cooling down (passed over until a time) or disabled (by
hand). Cooling tokens are used only when no active token is left, the soonest
ready first: a refusal never takes a token out of use for good.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon.masking import mask

logger = logging.getLogger(__name__)


class TokensFileError(ValueError):
    """The tokens file cannot be read."""


def read_tokens(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with # are skipped.

    A byte-order mark, Windows line endings and repeated tokens are tolerated
    (a repeat is used once).

    Raises:
        TokensFileError: the file is missing, unreadable or not UTF-8.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise TokensFileError(f"{path}: tokens file not found") from None
    except OSError as e:
        raise TokensFileError(f"{path}: cannot read the tokens file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise TokensFileError(f"{path}: the tokens file is not UTF-8 text (byte {e.start})") from None
    tokens: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.setdefault(line, None)
    return tuple(tokens)


def token_key(token: str) -> str:
    """The name a token's health is kept under: a hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


@dataclass
class Health:
    suffix: str  # masked, for people: "…a1b2"
    cooling_until: float = 0.0  # wall-clock seconds; in the past means active
    refused_at: float = 0.0  # when it was last marked as refused
    disabled: bool = False
    successes: int = 0
    refusals: int = 0

    def state(self, now: float) -> str:
        if self.disabled:
            return "disabled"
        return "cooling" if self.cooling_until > now else "active"


class TokenPool:
    """Hands out tokens: `round_robin` takes the next one for every request,
    `sticky` keeps one until it is refused."""

    def __init__(
        self,
        tokens: Sequence[str] = (),
        strategy: str = "round_robin",
        cooldown: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.strategy = strategy
        self.cooldown = cooldown
        self.clock = clock
        self.on_change: Callable[[], None] = lambda: None  # health changed: persist it
        self.health: dict[str, Health] = {}
        self._tokens: tuple[str, ...] = ()
        self._keys: tuple[str, ...] = ()
        self._position: dict[str, int] = {}
        self._last: str | None = None
        self.replace(tokens)

    # the token list

    def replace(self, tokens: Sequence[str]) -> None:
        """Take a new list of tokens, keeping health and the place in the rotation by value."""
        self._tokens = tuple(tokens)
        self._keys = tuple(token_key(t) for t in self._tokens)
        self._position = {t: i for i, t in enumerate(self._tokens)}
        for token, key in zip(self._tokens, self._keys):
            self.health.setdefault(key, Health(mask(token)))

    def __len__(self) -> int:
        return len(self._tokens)

    # choosing

    def draw(self, exclude: Iterable[str] = ()) -> str | None:
        """The token for the next request, or None when none is usable."""
        start = self._position.get(self._last, -1) if self._last is not None else -1
        if self.strategy == "sticky" and start >= 0 and self._usable(start, set(exclude), active_only=True):
            return self._last
        token = self._next_after(start, set(exclude))
        if token is not None:
            self._last = token
        return token

    def replacement(self, refused: str, exclude: Iterable[str]) -> str | None:
        """The token to retry with after `refused`: the next usable one after it.

        Unlike `draw`, this does not move the round-robin rotation: when many
        requests are refused with one token they all move to the same next
        token instead of each pushing the rotation one place further.
        """
        token = self._next_after(self._position.get(refused, -1), set(exclude) | {refused})
        if token is not None and self.strategy == "sticky" and self._last == refused:
            self._last = token
        return token

    def has_replacement(self, refused: str, exclude: Iterable[str]) -> bool:
        """Whether `replacement` would find a token now; unlike it, this changes nothing."""
        return self._next_after(self._position.get(refused, -1), set(exclude) | {refused}) is not None

    def _usable(self, i: int, exclude: set[str], active_only: bool) -> bool:
        token = self._tokens[i]
        health = self.health[self._keys[i]]
        if token in exclude or health.disabled:
            return False
        return not active_only or health.cooling_until <= self.clock()

    def _next_after(self, start: int, exclude: set[str]) -> str | None:
        n = len(self._tokens)
        for step in range(1, n + 1):
            i = (start + step) % n
            if self._usable(i, exclude, active_only=True):
                return self._tokens[i]
        cooling = [i for i in range(n) if self._usable(i, exclude, active_only=False)]
        if not cooling:
            return None
        return self._tokens[min(cooling, key=lambda i: self.health[self._keys[i]].cooling_until)]

    # outcomes

    def refused(self, token: str, retry_after: float | None = None) -> bool:
        """The upstream refused `token`: it cools down for the cooldown or Retry-After,
        whichever is longer. Returns False when it was cooling already (a refusal of
        a request that was sent before the token was marked), which changes nothing."""
        health = self._health(token)
        now = self.clock()
        health.refusals += 1
        if health.cooling_until > now:
            self.on_change()
            return False
        health.cooling_until = now + max(self.cooldown, retry_after or 0)
        health.refused_at = now
        self.on_change()
        return True

    def succeeded(self, token: str, sent_at: float) -> None:
        """A success proves a token works: it is active again if it was cooling, unless
        the request that succeeded was sent before the refusal (a long stream, say)."""
        health = self._health(token)
        health.successes += 1
        if sent_at > health.refused_at:
            health.cooling_until = 0.0
        self.on_change()

    def restore(self, cooling_until: dict[str, float]) -> None:
        """Put cooldowns back as they were (the breaker undoes the refusals that opened it)."""
        for key, until in cooling_until.items():
            if key in self.health:
                self.health[key].cooling_until = until
        self.on_change()

    # by hand

    def matching(self, suffix: str) -> list[Health]:
        """The known tokens whose value ends with `suffix` (with or without the leading …)."""
        suffix = suffix.lstrip("…").lstrip(".")
        return [self.health[k] for t, k in zip(self._tokens, self._keys) if suffix and t.endswith(suffix)]

    def set_disabled(self, suffix: str, disabled: bool) -> list[Health]:
        found = self.matching(suffix)
        for health in found:
            health.disabled = disabled
        if found:
            self.on_change()
        return found

    def reset(self) -> None:
        """Clear every cooldown (disabled tokens stay disabled)."""
        for health in self.health.values():
            health.cooling_until = 0.0
        self.on_change()

    def status(self) -> list[tuple[str, Health]]:
        """(state, health) of each token in the file, in file order."""
        now = self.clock()
        return [(self.health[k].state(now), self.health[k]) for k in self._keys]

    def _health(self, token: str) -> Health:
        i = self._position.get(token)  # a token of the file has its key already
        key = self._keys[i] if i is not None else token_key(token)
        health = self.health.get(key)
        if health is None:
            health = self.health[key] = Health(mask(token))
        return health

    # persistence: plain data, keyed by hash

    def to_state(self) -> dict[str, Any]:
        return {
            key: {
                "suffix": h.suffix,
                "cooling_until": h.cooling_until,
                "refused_at": h.refused_at,
                "disabled": h.disabled,
                "successes": h.successes,
                "refusals": h.refusals,
            }
            for key, h in self.health.items()
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Take health saved earlier; entries that do not look right are skipped."""
        for key, entry in state.items():
            try:
                self.health[key] = Health(
                    suffix=str(entry["suffix"]),
                    cooling_until=float(entry["cooling_until"]),
                    refused_at=float(entry.get("refused_at", 0.0)),
                    disabled=bool(entry["disabled"]),
                    successes=int(entry["successes"]),
                    refusals=int(entry["refusals"]),
                )
            except (KeyError, TypeError, ValueError):
                logger.warning(f"tokens: skipped a malformed entry in the state file ({key[:8]}…)")
