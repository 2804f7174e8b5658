"""The tokens file, the rotation over it, and each token's health.

The addon only ever reads the tokens file. Health is kept by a hash of each
token, never by its line number, so editing, reordering or adding tokens keeps
the health of the others; the rotation also follows token values.

A token is active, cooling down (passed over until a time), on trial (its
cooldown is over, and it has not worked since), retired (refused `retire_after`
times in a row, or by a `disable` rule), disabled (by hand) or expired (a JWT,
or a session value carrying one, past its expiry less `expiry_margin`: see
expiry.py). Cooling tokens are used only when no usable one is left, the soonest
ready first. Retired and disabled tokens are never drawn, until `tokens.enable`;
expired ones never.

Sizes: a tokens file can hold a million tokens. Reading it, hashing every token
and indexing them happens where the file is read (off the event loop, see
loader.py), into an immutable `TokenList`. A token has a health record only
once something happened to it; the records of tokens no longer in the file are
dropped after `GONE_GRACE` (statefile.StateStore finds them, `forget` drops them). Drawing a token looks up
the next usable one in a bitmap (one byte per token, searched by `bytes.find`,
which is C's memchr) and the soonest-ready cooling one in a heap: no Python
loop over the tokens. Saving hands over only what changed since the last save.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from addon.tokens.expiry import expires_at, might_expire
from addon.util.masking import mask

logger = logging.getLogger(__name__)

GONE_GRACE = 24 * 3600.0  # seconds the health of a token no longer in the file is kept

# why a token was retired (Health.retired_why; a number, as a shared store keeps it)
IN_A_ROW, BY_RULE = 1, 2


class TokensFileError(ValueError):
    """The tokens file cannot be read."""


def read_tokens(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with # are skipped.

    A byte-order mark, Windows line endings and repeated tokens are tolerated
    (a repeat is used once). Lines end at LF (or CR LF) only: a line that holds any
    other control character (VT, FF, U+001C, U+0085, U+2028, a lone CR, a tab inside
    the token...) is skipped with a warning that names the file and line.

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
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        control = _CONTROL.search(line)
        if control is not None:
            logger.warning(f"{path}:{number}: skipped: the line holds the control character U+{ord(control[0]):04X} "
                           "(a token is one line of printable text)")  # fmt: skip
            continue
        tokens.setdefault(line.strip(), None)
    return tuple(tokens)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0 and C1 controls, DEL, line and paragraph separators


def token_key(token: str) -> str:
    """The name a token's health is kept under: a hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


@dataclass(frozen=True, eq=False)
class TokenList:
    """The tokens of one version of the file, hashed and indexed once (where the file is read)."""

    tokens: tuple[str, ...]
    keys: tuple[str, ...]
    position: dict[str, int]  # token -> its place
    key_position: dict[str, int]  # key -> its place
    expiry: dict[int, float]  # place -> when the token expires, for those that say (see expiry.py)

    @classmethod
    def of(cls, tokens: Sequence[str]) -> TokenList:
        tokens = tuple(tokens)
        keys = tuple(token_key(t) for t in tokens)
        expiry = {i: at for i, t in enumerate(tokens) if might_expire(t) and (at := expires_at(t)) is not None}
        return cls(tokens, keys, {t: i for i, t in enumerate(tokens)}, {k: i for i, k in enumerate(keys)}, expiry)


def read_token_list(path: Path) -> TokenList:
    """`read_tokens`, hashed and indexed.

    Raises:
        TokensFileError: as read_tokens.
    """
    return TokenList.of(read_tokens(path))


@dataclass(slots=True)
class Health:
    suffix: str  # masked, for people: "…a1b2"
    cooling_until: float = 0.0  # wall-clock seconds; in the past means active
    refused_at: float = 0.0  # when it was last marked as refused
    disabled: bool = False
    successes: int = 0
    refusals: int = 0
    in_a_row: int = 0  # refusals that cooled it down since it last worked
    retired_at: float = 0.0  # 0: not retired
    retired_why: int = 0  # IN_A_ROW or BY_RULE
    expires_at: float = 0.0  # read from the token (not kept: see TokenList.expiry); set by TokenPool.status

    @property
    def out(self) -> bool:
        """Never drawn: retired or disabled."""
        return self.disabled or self.retired_at > 0

    def state(self, now: float) -> str:
        if self.disabled:
            return "disabled"
        if self.retired_at:
            return "retired"
        if self.cooling_until > now:
            return "cooling"
        return "on trial" if self.in_a_row else "active"

    @property
    def retired_reason(self) -> str:
        if self.retired_why == BY_RULE:
            return "an on_response rule with action disable"
        return f"refused {self.in_a_row} time(s) in a row"

    @property
    def record(self) -> tuple[float, float, bool, int, int, int, float, int]:
        """As a shared store keeps it (see put_health): no suffix, nothing of the token."""
        return (self.cooling_until, self.refused_at, self.disabled, self.successes, self.refusals,
                self.in_a_row, self.retired_at, self.retired_why)  # fmt: skip

    @property
    def undo_point(self) -> tuple[float, int, float, int]:
        """What a refusal changes that the breaker may put back (see TokenPool.restore)."""
        return self.cooling_until, self.in_a_row, self.retired_at, self.retired_why

    def to_entry(self) -> dict[str, Any]:
        return {
            "suffix": self.suffix,
            "cooling_until": self.cooling_until,
            "refused_at": self.refused_at,
            "disabled": self.disabled,
            "successes": self.successes,
            "refusals": self.refusals,
            "in_a_row": self.in_a_row,
            "retired_at": self.retired_at,
            "retired_why": self.retired_why,
        }


class Changes(Mapping[str, Health]):
    """Keys whose health changed, and the records they name, looked up when read. The writer's thread
    reads the records while the event loop may change them again: a record read half old, half new is
    written again at the next save, as its change marks it changed again."""

    def __init__(self, keys: set[str], health: dict[str, Health]) -> None:
        self._keys, self._health = keys, health

    def __getitem__(self, key: str) -> Health:
        if key not in self._keys:
            raise KeyError(key)
        return self._health[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in list(self._keys) if k in self._health)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TokenPool:
    """Hands out tokens: `round_robin` takes the next one for every request,
    `sticky` keeps one until it is refused."""

    def __init__(
        self,
        tokens: Sequence[str] | TokenList = (),
        strategy: str = "round_robin",
        cooldown: float = 300,
        clock: Callable[[], float] = time.time,
        retire_after: int = 3,
        expiry_margin: float = 60,
    ) -> None:
        self.strategy = strategy
        self.cooldown = cooldown
        self.retire_after = retire_after  # refusals in a row that retire a token (0: never)
        self.expiry_margin = expiry_margin  # seconds before its expiry that a token is no longer sent
        self.clock = clock
        self.label = "tokens"  # how its log lines begin ("tokens arena" in a file of several pools)
        self.on_change: Callable[[], None] = lambda: None  # health changed: persist it
        self.health: dict[str, Health] = {}  # only tokens something happened to
        self.list = TokenList.of(())
        self.listed_at = 0.0  # when this list replaced the one before
        self._usable = bytearray()  # per place: 1 when neither cooling nor retired nor disabled
        self._cooling: list[tuple[float, int, str]] = []  # heap of (until, place, key); stale entries skipped
        self._expiring: list[tuple[float, int]] = []  # heap of (expires at, place) of the list in force
        self._expired: set[str] = set()  # keys of the tokens past their expiry (less the margin)
        self._inactive: set[str] = set()  # keys that are cooling, retired or disabled (cooling may have ended since)
        self._changed: set[str] = set()  # keys whose health changed since the last `take_changes`
        self._renewed: dict[str, float | None] = {}  # key -> the expiry of its renewed session value (sessions.py)
        self._last: str | None = None
        self.replace(tokens)

    # the token list

    def replace(self, tokens: Sequence[str] | TokenList) -> None:
        """Take a new list of tokens, keeping health and the place in the rotation by value. Costs the
        tokens that are cooling or disabled, not all of them (a TokenList comes hashed and indexed)."""
        new = tokens if isinstance(tokens, TokenList) else TokenList.of(tokens)
        now = self.clock()
        self.list, self.listed_at = new, now
        self._usable = bytearray(b"\x01") * len(new.tokens)
        self._cooling = []
        self._expiring = [(at, i) for i, at in new.expiry.items()]
        self._expired = set()
        for key, at in self._renewed.items():
            self._expire_at(key, at, now)
        heapq.heapify(self._expiring)
        for key in list(self._inactive):
            self._classify(key, now)
        heapq.heapify(self._cooling)
        if self._last is not None and self._last not in new.position:
            self._last = None

    def __len__(self) -> int:
        return len(self.list.tokens)

    def _classify(self, key: str, now: float) -> None:
        """Put a token's place in the bitmap (and the heap) as its health says."""
        health = self.health.get(key)
        cooling = health is not None and not health.out and health.cooling_until > now
        if health is None or not (health.out or cooling):
            self._inactive.discard(key)
        else:
            self._inactive.add(key)
        i = self.list.key_position.get(key)
        if i is None:
            return
        self._usable[i] = 0 if key in self._inactive or key in self._expired else 1
        if cooling:
            heapq.heappush(self._cooling, (health.cooling_until, i, key))

    def _wake(self, now: float) -> None:
        """Tokens whose cooldown has ended are usable again; tokens that expire (less the margin) no longer are."""
        while self._expiring and self._expiring[0][0] - self.expiry_margin <= now:
            at, i = heapq.heappop(self._expiring)
            if self.list.expiry.get(i) != at:
                continue  # stale: its session was renewed since
            key = self.list.keys[i]
            self._expired.add(key)
            self._usable[i] = 0
            when = datetime.datetime.fromtimestamp(at).isoformat(" ", "seconds")
            logger.info(f"{self.label}: {mask(self.list.tokens[i])} expired ({when}, less a margin of "
                        f"{self.expiry_margin:g} s); it is no longer sent")
        while self._cooling and self._cooling[0][0] <= now:
            until, i, key = heapq.heappop(self._cooling)
            health = self.health.get(key)
            if health is not None and health.cooling_until == until:
                self._classify(key, now)

    def renewed(self, key: str, value: str) -> None:
        """The account `key` is sent as `value` from now on (its session renewed): its expiry is that value's."""
        at = expires_at(value) if might_expire(value) else None
        self._renewed[key] = at
        now = self.clock()
        self._expire_at(key, at, now)
        if key in self.list.key_position:
            self._classify(key, now)

    def _expire_at(self, key: str, at: float | None, now: float) -> None:
        i = self.list.key_position.get(key)
        if i is None:
            return
        if at is None:
            self.list.expiry.pop(i, None)
        else:
            self.list.expiry[i] = at
            heapq.heappush(self._expiring, (at, i))
        self._expired.discard(key)

    # choosing

    def draw(self, exclude: Iterable[str] = (), position: int | None = None) -> str | None:
        """The token for the next request, or None when none is usable. `position`: a place in the
        rotation that proxies share (round_robin on a shared store): the token there, or the next
        usable one after it."""
        exclude = set(exclude)
        self._wake(self.clock())
        if position is not None and self.strategy == "round_robin" and self.list.tokens:
            token = self._next_after(position % len(self.list.tokens) - 1, exclude)
            if token is not None:
                self._last = token
            return token
        start = self.list.position.get(self._last, -1) if self._last is not None else -1
        if self.strategy == "sticky" and start >= 0 and self._usable[start] and self._last not in exclude:
            return self._last
        token = self._next_after(start, exclude)
        if token is not None:
            self._last = token
        return token

    def replacement(self, refused: str, exclude: Iterable[str]) -> str | None:
        """The token to retry with after `refused`: the next usable one after it.

        Unlike `draw`, this does not move the round-robin rotation: when many
        requests are refused with one token they all move to the same next
        token instead of each pushing the rotation one place further.
        """
        self._wake(self.clock())
        token = self._next_after(self.list.position.get(refused, -1), set(exclude) | {refused})
        if token is not None and self.strategy == "sticky" and self._last == refused:
            self._last = token
        return token

    def has_replacement(self, refused: str, exclude: Iterable[str]) -> bool:
        """Whether `replacement` would find a token now; unlike it, this changes nothing."""
        return self._next_after(self.list.position.get(refused, -1), set(exclude) | {refused}) is not None

    def _next_after(self, start: int, exclude: set[str]) -> str | None:
        tokens, usable = self.list.tokens, self._usable
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
            if health is None or health.cooling_until != until or health.out or key in self._expired:
                continue  # stale: the token's health changed since (or it expired)
            skipped.append(entry)
            if self.list.tokens[i] not in exclude:
                found = self.list.tokens[i]
                break
        for entry in skipped:
            heapq.heappush(self._cooling, entry)
        return found

    # outcomes

    def refused(self, token: str, retry_after: float | None = None, retire: bool = False) -> bool:
        """The upstream refused `token`: it cools down for the cooldown or Retry-After,
        whichever is longer, and is retired when that makes `retire_after` refusals in a row
        (`retire`: at once, a `disable` rule). Returns False when it was cooling already (a
        refusal of a request that was sent before the token was marked), which changes
        nothing but the count (and a `disable`)."""
        key, health = self._health(token)
        now = self.clock()
        health.refusals += 1
        self._changed.add(key)
        marked = health.cooling_until <= now
        if marked:
            health.cooling_until = now + max(self.cooldown, retry_after or 0)
            health.refused_at = now
            health.in_a_row += 1
        if not health.retired_at and (retire or (marked and 0 < self.retire_after <= health.in_a_row)):
            health.retired_at, health.retired_why = now, BY_RULE if retire else IN_A_ROW
        self._classify(key, now)
        self.on_change()
        return marked

    def succeeded(self, token: str, sent_at: float) -> None:
        """A success proves a token works: it is active again if it was cooling or on trial
        (and its count of refusals in a row starts again), unless the request that succeeded
        was sent before the refusal (a long stream, say). A retired token stays retired."""
        key, health = self._health(token)
        health.successes += 1
        if sent_at > health.refused_at and (health.cooling_until or health.in_a_row):
            health.cooling_until, health.in_a_row = 0.0, 0
            self._classify(key, self.clock())
        self._changed.add(key)
        self.on_change()

    def restore(self, before: dict[str, float | tuple[float, int, float, int]]) -> None:
        """Put cooldowns back as they were (the breaker undoes the refusals that opened it): a
        cooldown end, or a Health.undo_point (the count in a row and a retirement too)."""
        now = self.clock()
        for key, point in before.items():
            if key in self.health:
                h = self.health[key]
                if isinstance(point, tuple):
                    h.cooling_until, h.in_a_row, h.retired_at, h.retired_why = point
                else:
                    h.cooling_until = point
                self._classify(key, now)
                self._changed.add(key)
        self.on_change()

    def put_health(self, key: str, record: Sequence[float]) -> None:
        """Take a token's health as another place keeps it (a shared store): cooling_until, refused_at,
        disabled, successes, refusals, in_a_row, retired_at, retired_why. Not a change of this proxy's:
        nothing is saved for it. Ignored for a token not in the file."""
        i = self.list.key_position.get(key)
        if i is None:
            return
        health = self.health.get(key)
        if health is None:
            health = self.health[key] = Health(mask(self.list.tokens[i]))
        cooling_until, refused_at, disabled, successes, refusals, in_a_row, retired_at, why = record
        health.cooling_until, health.refused_at, health.disabled = float(cooling_until), float(refused_at), bool(disabled)
        health.successes, health.refusals = int(successes), int(refusals)
        health.in_a_row, health.retired_at, health.retired_why = int(in_a_row), float(retired_at), int(why)
        self._classify(key, self.clock())

    def changed_here(self, key: str) -> None:
        """Count this token's health as changed here (merged into a shared store when it is back)."""
        if key in self.health:
            self._changed.add(key)

    @property
    def changed(self) -> frozenset[str]:
        """The keys whose health changed here since the last `take_changes`."""
        return frozenset(self._changed)

    @property
    def inactive(self) -> frozenset[str]:
        """The keys of the tokens that are cooling, retired or disabled (cooling may have ended since)."""
        return frozenset(self._inactive)

    def keys_ending(self, suffix: str) -> list[str]:
        """The keys of the tokens whose value ends with `suffix` (as `set_disabled` picks them)."""
        suffix = suffix.lstrip("…").lstrip(".")
        return [k for t, k in zip(self.list.tokens, self.list.keys) if suffix and t.endswith(suffix)]

    # by hand (commands: these may look at every token)

    def matching(self, suffix: str) -> list[Health]:
        """The known tokens whose value ends with `suffix` (with or without the leading …)."""
        suffix = suffix.lstrip("…").lstrip(".")
        return [
            self.health.get(k) or Health(mask(t))
            for t, k in zip(self.list.tokens, self.list.keys)
            if suffix and t.endswith(suffix)
        ]

    def set_disabled(self, suffix: str, disabled: bool) -> list[Health]:
        """Disable by hand; or enable: in use again, a retired token too (its count in a row starts again)."""
        suffix = suffix.lstrip("…").lstrip(".")
        found = []
        now = self.clock()
        for t in self.list.tokens:
            if suffix and t.endswith(suffix):
                key, health = self._health(t)
                health.disabled = disabled
                if not disabled:
                    health.retired_at, health.retired_why, health.in_a_row = 0.0, 0, 0
                self._classify(key, now)
                self._changed.add(key)
                found.append(health)
        if found:
            self.on_change()
        return found

    def reset(self) -> None:
        """Clear every cooldown, and every count of refusals in a row (disabled and retired tokens stay so)."""
        now = self.clock()
        for key, health in self.health.items():
            if health.cooling_until or health.in_a_row:
                health.cooling_until, health.in_a_row = 0.0, 0
                self._classify(key, now)
                self._changed.add(key)
        self.on_change()

    def status(self) -> list[tuple[str, Health]]:
        """(state, health) of each token in the file, in file order; an expired token's state is
        "expired" (unless it is disabled or retired), and its health has its `expires_at`."""
        now = self.clock()
        self._wake(now)
        rows = []
        for i, (token, key) in enumerate(zip(self.list.tokens, self.list.keys)):
            health = self.health.get(key) or Health(mask(token))
            health.expires_at = self.list.expiry.get(i, 0.0)
            state = health.state(now)
            if key in self._expired and state not in ("disabled", "retired"):
                state = "expired"
            rows.append((state, health))
        return rows

    def key_of(self, token: str) -> str:
        """`token_key(token)`, without hashing for a token of the file (its key is there already)."""
        i = self.list.position.get(token)
        return self.list.keys[i] if i is not None else token_key(token)

    def _health(self, token: str) -> tuple[str, Health]:
        key = self.key_of(token)
        health = self.health.get(key)
        if health is None:
            health = self.health[key] = Health(mask(token))
        return key, health

    # persistence: plain data, keyed by hash

    @property
    def has_changes(self) -> bool:
        return bool(self._changed)

    def take_changes(self) -> Changes:
        """The health records that changed since the last call; costs nothing per change here: they
        are looked up where they are read (the writer's thread)."""
        changed, self._changed = self._changed, set()
        return Changes(changed, self.health)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the health of these tokens (no longer in the file for GONE_GRACE), unless one is back."""
        for key in keys:
            if key not in self.list.key_position:
                self.health.pop(key, None)
                self._inactive.discard(key)
                self._changed.discard(key)

    def to_state(self) -> dict[str, dict[str, Any]]:
        """Every health record as state-file entries."""
        return {key: h.to_entry() for key, h in self.health.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take health saved earlier; entries that do not look right are skipped."""
        self.load_health(health_from_state(state))

    def load_health(self, health: dict[str, Health]) -> None:
        """Take health records made by `health_from_state` (off the event loop, for a big state file)."""
        now = self.clock()
        self.health.update(health)
        for key, h in health.items():
            if h.out or h.cooling_until > now:
                self._classify(key, now)


def health_from_state(state: dict[str, Any]) -> dict[str, Health]:
    """Health records from state-file entries; entries that do not look right (numbers out of range
    among them: 1e400, NaN, a negative count) are skipped."""
    health = {}
    for key, entry in state.items():
        try:
            health[key] = Health(
                suffix=str(entry["suffix"]),
                cooling_until=_in_range(float(entry["cooling_until"]), MAX_TIME),
                refused_at=_in_range(float(entry.get("refused_at", 0.0)), MAX_TIME),
                disabled=bool(entry["disabled"]),
                successes=_in_range(int(entry["successes"]), MAX_COUNT),
                refusals=_in_range(int(entry["refusals"]), MAX_COUNT),
                in_a_row=_in_range(int(entry.get("in_a_row", 0)), MAX_COUNT),  # not in a state file written before retirement
                retired_at=_in_range(float(entry.get("retired_at", 0.0)), MAX_TIME),
                retired_why=int(entry.get("retired_why", 0)),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            logger.warning(f"tokens: skipped a malformed entry in the state file ({key[:8]}…)")
    return health


MAX_TIME = 253402300799.0  # 9999-12-31 23:59:59 UTC, the last time a date can show
MAX_COUNT = 2**63 - 1
N = TypeVar("N", int, float)


def _in_range(number: N, top: float) -> N:
    """The number, when it is from 0 to top (not NaN).

    Raises:
        ValueError: it is not.
    """
    if not 0 <= number <= top:
        raise ValueError(f"{number} is out of range")
    return number
