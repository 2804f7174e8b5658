"""The token pool: it hands out tokens by value, and changes their health as the upstream answers.

The rotation follows token values, as health does (a hash of each token: tokenfile.py), so editing,
reordering or adding tokens keeps the place in it. Cooling tokens are used only when no usable one is
left, the soonest ready first. Retired and disabled tokens are never drawn, until `tokens.enable`;
expired ones never (the states: health.py). Drawing looks the next token up in the rotation's index
(rotation.py): no Python loop over the tokens. Saving hands over only what changed since the last save.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from addon.tokens.expiry import expires_at, might_expire
from addon.tokens.health import BY_RULE, IN_A_ROW, Changes, Health, health_from_state, state_counts
from addon.tokens.rotation import Rotation
from addon.tokens.tokenfile import TokenList, token_key
from addon.util.masking import mask


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
        self.on_change: Callable[..., None] = lambda counts_only=False: None  # health changed (True: a count only)
        self.health: dict[str, Health] = {}  # only tokens something happened to
        self.list = TokenList.of(())
        self.listed_at = 0.0  # when this list replaced the one before
        self._rotation = Rotation(self.health)  # which places can be drawn
        self._changed: set[str] = set()  # keys whose health changed since the last `take_changes`
        self._last: str | None = None
        self.replace(tokens)

    # the token list

    def replace(self, tokens: Sequence[str] | TokenList) -> None:
        """Take a new list of tokens, keeping health and the place in the rotation by value. Costs the
        tokens that are cooling or disabled, not all of them (a TokenList comes hashed and indexed)."""
        new = tokens if isinstance(tokens, TokenList) else TokenList.of(tokens)
        now = self.clock()
        self.list, self.listed_at = new, now
        self._rotation.replace(new, now)
        if self._last is not None and self._last not in new.position:
            self._last = None

    def __len__(self) -> int:
        return len(self.list.tokens)

    def renewed(self, key: str, value: str) -> None:
        """The account `key` is sent as `value` from now on (its session renewed): its expiry is that value's."""
        at = expires_at(value) if might_expire(value) else None
        self._rotation.renewed(key, at, self.clock())

    # choosing

    def draw(self, exclude: Iterable[str] = (), position: int | None = None) -> str | None:
        """The token for the next request, or None when none is usable. `position`: a place in the
        rotation that proxies share (round_robin on a shared store): the token there, or the next
        usable one after it."""
        exclude = set(exclude)
        self._rotation.wake(self.clock(), self.expiry_margin, self.label)
        if position is not None and self.strategy == "round_robin" and self.list.tokens:
            token = self._rotation.next_after(position % len(self.list.tokens) - 1, exclude)
            if token is not None:
                self._last = token
            return token
        start = self.list.position.get(self._last, -1) if self._last is not None else -1
        if self.strategy == "sticky" and start >= 0 and self._rotation.usable[start] and self._last not in exclude:
            return self._last
        token = self._rotation.next_after(start, exclude)
        if token is not None:
            self._last = token
        return token

    def replacement(self, refused: str, exclude: Iterable[str]) -> str | None:
        """The token to retry with after `refused`: the next usable one after it.

        Unlike `draw`, this does not move the round-robin rotation: when many
        requests are refused with one token they all move to the same next
        token instead of each pushing the rotation one place further.
        """
        self._rotation.wake(self.clock(), self.expiry_margin, self.label)
        token = self._rotation.next_after(self.list.position.get(refused, -1), set(exclude) | {refused})
        if token is not None and self.strategy == "sticky" and self._last == refused:
            self._last = token
        return token

    def has_replacement(self, refused: str, exclude: Iterable[str]) -> bool:
        """Whether `replacement` would find a token now; unlike it, this changes nothing."""
        return self._rotation.next_after(self.list.position.get(refused, -1), set(exclude) | {refused}) is not None

    # outcomes

    def refused(self, token: str, retry_after: float | None = None, retire: bool = False, status: int = 0) -> bool:
        """The upstream refused `token` (with HTTP `status`): it cools down for the cooldown or Retry-After,
        whichever is longer, and is retired when that makes `retire_after` refusals in a row
        (`retire`: at once, a `disable` rule). Returns False when it was cooling already (a
        refusal of a request that was sent before the token was marked), which changes
        nothing but the counts (and a `disable`)."""
        key, health = self._health(token)
        now = self.clock()
        health.refusals += 1
        health.last_status = status or health.last_status
        self._changed.add(key)
        marked = health.cooling_until <= now
        if marked:
            health.cooling_until = now + max(self.cooldown, retry_after or 0)
            health.refused_at = now
            health.in_a_row += 1
        if not health.retired_at and (retire or (marked and 0 < self.retire_after <= health.in_a_row)):
            health.retired_at, health.retired_why = now, BY_RULE if retire else IN_A_ROW
        self._rotation.classify(key, now)
        self.on_change()
        return marked

    def succeeded(self, token: str, sent_at: float) -> None:
        """A success proves a token works: it is active again if it was cooling or on trial
        (and its count of refusals in a row starts again), unless the request that succeeded
        was sent before the refusal (a long stream, say). A retired token stays retired."""
        key, health = self._health(token)
        health.successes += 1
        if cured := sent_at > health.refused_at and bool(health.cooling_until or health.in_a_row):
            health.cooling_until, health.in_a_row = 0.0, 0
            self._rotation.classify(key, self.clock())
        self._changed.add(key)
        self.on_change(not cured)  # (a success that found it well changes only its count: saved less soon)

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
                self._rotation.classify(key, now)
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
        self._rotation.classify(key, self.clock())

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
        return frozenset(self._rotation.inactive)

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
                self._rotation.classify(key, now)
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
                self._rotation.classify(key, now)
                self._changed.add(key)
        self.on_change()

    def status(self) -> list[tuple[str, Health]]:
        """(state, health) of each token in the file, in file order; an expired token's state is
        "expired" (unless it is disabled or retired), and its health has its `expires_at`."""
        now = self.clock()
        self._rotation.wake(now, self.expiry_margin, self.label)
        rows = []
        for i, (token, key) in enumerate(zip(self.list.tokens, self.list.keys)):
            health = self.health.get(key) or Health(mask(token))
            health.expires_at = self.list.expiry.get(i, 0.0)
            state = health.state(now)
            if key in self._rotation.expired and state not in ("disabled", "retired"):
                state = "expired"
            rows.append((state, health))
        return rows

    def state_counts(self) -> dict[str, int]:
        """How many tokens of the file are in each state (as `status` tells them)."""
        return state_counts(state for state, _ in self.status())

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
                self._rotation.inactive.discard(key)
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
                self._rotation.classify(key, now)
