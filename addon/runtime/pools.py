"""One pool of accounts at run time: its tokens and their health, breaker, state file or shared
store, and renewed sessions.

A rules file has one pool (`tokens: {file: …}`, named "default") or several by name (`tokens:
{arena: {file: …}, openai: {file: …}}`); each is a `Pool`, kept across reloads by its name so that
its health, rotation and connections live on. The loader (addon/runtime/loader.py) reads the files and
hands each pool what it read; the hooks draw from, and report to, the pool of the request's token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from addon.exits.health import ExitHealth
from addon.rules.records import DEFAULT_POOL, TokensSpec
from addon.tokens import statefile
from addon.tokens.breaker import Breaker, refuse_here
from addon.tokens.health import Health, counts_text
from addon.tokens.pool import TokenPool
from addon.tokens.sessions import Sessions
from addon.tokens.shared import SharedStore
from addon.tokens.statelock import StateFileLock
from addon.tokens.statesaver import StateSaver
from addon.tokens.tokenfile import TokenList, token_key
from addon.util.masking import mask

logger = logging.getLogger(__name__)

# tokens a draw passes over when their exits rest before it gives up (a pool of fewer tokens is looked
# through whole): with nine exits of ten resting, a draw fails when one would have been found once in 10**46
SKIPPED_AT_MOST = 1024

State = tuple[Path, statefile.StateStore, dict[str, Health]]  # a state file read: its path, store and health


class Pool:
    def __init__(self, name: str = DEFAULT_POOL) -> None:
        self.name = name
        self.spec: TokensSpec | None = None  # None until a rules file gives it one
        self.tokens = TokenPool()
        self.saver = StateSaver(self.tokens)
        self.tokens.on_change = self.saver.changed
        self.breaker = Breaker()
        self.breaker.on_change = self._breaker_changed
        self.sessions = Sessions(self.tokens)  # sessions the upstream renewed with Set-Cookie
        self.shared: SharedStore | None = None  # spec.store: health shared with other proxies through Redis
        self._state_lock: StateFileLock | None = None  # held while this proxy writes the state file
        self.label = "tokens"  # how its log lines begin: "tokens", or "tokens arena" in a file of several pools

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {len(self.tokens)} token(s))"

    def draw(self, usable: Callable[[str], bool] | None = None) -> str | None:
        """The token for the next request, or None when none is usable. `usable`: also asked of each
        token (can it leave through an exit now?); tokens it refuses are passed over, at most
        SKIPPED_AT_MOST of them."""
        source = self.shared or self.tokens
        if usable is None:
            return source.draw()
        skipped: set[str] = set()
        while len(skipped) < SKIPPED_AT_MOST:
            token = source.draw(skipped)
            if token is None or usable(token):
                return token
            skipped.add(token)
        return None

    def replacement(self, refused: str, tried: set[str], usable: Callable[[str], bool] | None = None) -> str | None:
        """The token to retry with after `refused`, not one of `tried` (see TokenPool.replacement), and
        one `usable` takes; it is added to `tried`."""
        skipped: set[str] = set()
        while len(skipped) < SKIPPED_AT_MOST:
            token = self.tokens.replacement(refused, exclude=tried | skipped)
            if token is None or usable is None or usable(token):
                if token is not None:
                    tried.add(token)
                return token
            skipped.add(token)
        return None

    def succeeded(self, token: str, sent_at: float) -> None:
        """A request sent at `sent_at` with this token got an answer that is not a refusal."""
        (self.shared or self.tokens).succeeded(token, sent_at)
        self.breaker.succeeded(sent_at)  # a token works: refusals counted before it was sent are the tokens'

    def refused(self, token: str, status: int, wait: float | None, retire: bool = False, exit: ExitHealth | None = None) -> None:
        """Judge a refusal of `token` (HTTP `status`, Retry-After `wait` seconds): by the pool's breaker, or
        by the breaker of the exit it went through (addon/exits/health.py)."""
        tokens, key = self.tokens, token_key(token)
        was_retired = key in tokens.health and tokens.health[key].retired_at > 0
        breaker = self.breaker if exit is None or self.spec is None else exit.counting(self.spec.breaker)
        # judged here at once; and, with a shared store, there for all (its answer comes in the background)
        marked = refuse_here(tokens, breaker, token, wait, retire, status)
        if self.shared is not None:
            self.shared.refused(token, wait, retire, exit.spec.name if exit is not None else "")
        health = tokens.health.get(key)
        if breaker.is_open or health is None:  # (an opened breaker says so itself)
            return
        if health.retired_at and not was_retired:  # once: by the proxy whose refusal retired it
            logger.warning(f"{self.label}: {mask(token)} retired ({health.retired_reason}, the last {status}); "
                           f"it is not used again until tokens.enable {mask(token)}")
        elif marked:
            until = health.cooling_until - tokens.clock()
            logger.info(f"{self.label}: {mask(token)} refused ({status}); passed over for {until:.0f} s")

    def set_disabled(self, suffix: str, disabled: bool) -> list:
        return (self.shared or self.tokens).set_disabled(suffix, disabled)

    def reset(self) -> None:
        """Clear every cooldown, and close the breaker (with a store: on every proxy of it)."""
        if self.shared is not None:
            self.shared.reset()
        else:
            self.tokens.reset()
            self.breaker.close()

    # set-up (the loader)

    def use(self, spec: TokensSpec, tokens: TokenList, state: State | None, labelled: bool) -> None:
        """Take a rules file's spec for this pool, and the token list and state file read for it
        (`state`: None when the state file is the one in use, or health is kept on a store)."""
        self.spec = spec
        self.label = f"tokens {self.name}" if labelled else "tokens"
        self.tokens.label = self.breaker.label = self.label
        self.tokens.strategy, self.tokens.cooldown = spec.strategy, spec.cooldown
        self.tokens.retire_after, self.tokens.expiry_margin = spec.retire_after, spec.expiry_margin
        if state is not None and state[0] != self.saver.path:
            state_file, store, health = state
            self.saver.use(store if self._lock_state(state_file) else None)
            self.tokens.load_health(health)
            # open when it stopped, and still: for no longer than the pause the file asks for now
            open_until = min(store.breaker_open_until, time.time() + spec.breaker.pause)
            if open_until > max(self.breaker.open_until, time.time()):
                self.breaker.open_until = open_until
                logger.warning(f"{self.label}: the breaker is open until {clock_time(open_until)}, as the state "
                               "file says: refusals go to the client as they are (tokens.reset closes it)")
        self.breaker.spec = spec.breaker
        self.tokens.replace(tokens)
        self.sessions.use(spec.sessions_file, spec.follow_set_cookie, spec.session_key)
        self._share(spec)

    def replace_tokens(self, tokens: TokenList) -> None:
        """The tokens file was read again."""
        self.tokens.replace(tokens)
        if self.shared is not None:
            self.shared.read_again()  # the health of tokens new to this proxy

    def start(self) -> None:
        if self.shared is not None:
            self.shared.start()

    def stop(self) -> None:
        """Shut-down, or the rules file no longer names this pool: what is pending is written, and
        nothing after (a request still in flight may report to it)."""
        if self.shared is not None:
            self.shared.stop()
        self.saver.done()
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    def _breaker_changed(self) -> None:
        """The breaker opened or closed: the state file says so (a shared store keeps its own)."""
        if self.shared is None and self.saver.store is not None:
            self.saver.store.breaker_open_until = self.breaker.open_until
            self.saver.touched()

    def _lock_state(self, path: Path) -> bool:
        """Hold the lock of this state file (and let go of the one held before); False: another proxy has it."""
        if self._state_lock is not None and self._state_lock.state_file == path:
            return True
        lock = StateFileLock(path)
        if not lock.acquire():
            return False
        if self._state_lock is not None:
            self._state_lock.release()
        self._state_lock = lock
        return True

    def _share(self, spec: TokensSpec) -> None:
        """Keep token health on the spec's store from now on (none: in the state file)."""
        store = spec.store
        if self.shared is not None and self.shared.spec == store:
            return
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
        if store is None:
            self.tokens.on_change = self.saver.changed
            self.sessions.publish = None
            return
        self.tokens.on_change = lambda counts_only=False: None  # no state file: Redis keeps it
        self.shared = SharedStore(store, self.tokens, self.breaker, sessions=self.sessions)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not yet running: `start` starts it
            return
        self.shared.start()


def pool_of(pools: Mapping[str, Pool], name: str | None) -> Pool | None:
    """The pool a `{token:NAME}` draws from (None: `{token}`, the first and only pool)."""
    return pools.get(name) if name is not None else next(iter(pools.values()), None)


def pools_line(pools: Iterable[Pool]) -> str:
    """Each pool's tokens by state, and an open breaker, in a line: "arena 4 active, 1 cooling; openai
    2 active, breaker open until 14:05:09" (mitmweb's command bar, the log's summary line)."""
    parts = []
    for pool in pools:
        text = f"{pool.name} {counts_text(pool.tokens.state_counts())}"
        if pool.breaker.is_open:
            text += f", breaker open until {clock_time(pool.breaker.open_until)}"
        parts.append(text)
    return "; ".join(parts) or "no token pool"


def clock_time(timestamp: float, form: str = "%H:%M:%S") -> str:
    """A time as the log and the commands show it, 14:05:09 (or in `form`); "far future" past the calendar
    (a breaker `pause`, or a cooldown, may be any finite number of seconds)."""
    try:
        return time.strftime(form, time.localtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return "far future"
