"""The `rules` option: load the rules file and what it names, and keep them current.

This addon owns the configuration that the other addons read: the parsed rules,
the token pool and the sources of the named values (the captcha among them). A bad file at start-up is one error line
(mitmproxy's start-up check then exits with status 1); a bad file later is
logged and the last good configuration stays in force.

The first load (and a change of the option) runs where mitmproxy calls
`configure`, so that the start-up check sees its error. Later reloads, when a
watched file changes, read and parse in a thread: the event loop only swaps the
finished records in, so a big, slow or blocking file never stalls traffic. The
state file is written by statesaver.py, from a thread too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mitmproxy import ctx, exceptions
from mitmproxy.utils import human

from addon import statefile
from addon.breaker import Breaker
from addon.config import BreakerSpec, Config, load_config
from addon.offloop import in_thread
from addon.schema import RulesError, RulesErrors
from addon.shared import SharedStore
from addon.sources import ValueSource
from addon.statelock import StateFileLock
from addon.statesaver import StateSaver
from addon.template import CAPTCHA
from addon.sessions import Sessions
from addon.tokens import GONE_GRACE, Health, TokenList, TokenPool, TokensFileError, health_from_state, read_token_list
from addon.watch import FileWatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Read:
    """What a load read and parsed, ready to swap in."""

    config: Config
    tokens: TokenList
    state: tuple[Path, statefile.StateStore, dict[str, Health]] | None  # a state file read anew


def _read_state(path: Path) -> tuple[Path, statefile.StateStore, dict[str, Health]]:
    entries = statefile.load_state(path)
    return path, statefile.StateStore(path, entries, GONE_GRACE), health_from_state(entries)


class RulesLoader:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.tokens = TokenPool()
        self.saver = StateSaver(self.tokens)
        self.tokens.on_change = self.saver.changed
        self.breaker = Breaker()
        self.sessions = Sessions(self.tokens)  # sessions the upstream renewed with Set-Cookie
        self._state_lock: StateFileLock | None = None  # held while this proxy writes the state file
        self.shared: SharedStore | None = None  # tokens.store: health shared with other proxies through Redis
        self.values: dict[str, ValueSource] = {}  # by name, as the rules file's values: (and captcha:)
        self.stream_copy_limit = 1024 * 1024
        self.mitmproxy_stores_streamed = False  # mitmproxy 12.1+ with store_streamed_bodies: it keeps them whole
        self._watcher = FileWatcher()
        self._reloading: asyncio.Task | None = None
        self._pending: set[str] = set()  # "rules", "tokens": what changed while a reload ran

    @property
    def captcha(self) -> ValueSource | None:
        return self.values.get(CAPTCHA)

    def load(self, loader) -> None:
        loader.add_option(
            "rules",
            str,
            "rules.yaml",
            "The rules file: which requests to rewrite and how. Paths inside it are relative to "
            "its folder. It is re-read when it changes; a bad new version is logged and the "
            "last good one stays in force.",
        )
        loader.add_option(
            "stream_copy_limit",
            str,
            "1m",
            "How much of a streamed response body (Server-Sent Events, or the answer to a "
            "streaming request) to keep on the flow, so that mitmweb can show it. The client "
            "always gets the whole body. Sizes like 512k or 1m. With mitmproxy's own "
            "store_streamed_bodies (mitmproxy 12.1 and later) set, mitmproxy keeps the whole body "
            "instead and this limit does not apply.",
        )

    def configure(self, updated: set[str]) -> None:
        if "stream_copy_limit" in updated:
            try:
                self.stream_copy_limit = human.parse_size(ctx.options.stream_copy_limit) or 0
            except ValueError as e:
                raise exceptions.OptionsError(f"Cannot parse stream_copy_limit: {e}") from e
        if "store_streamed_bodies" in updated:  # an option of mitmproxy 12.1 and later
            self.mitmproxy_stores_streamed = bool(ctx.options.store_streamed_bodies)
        if "rules" in updated:
            self.reload_rules()

    def running(self) -> None:
        self._watcher.start()
        if self.shared is not None:
            self.shared.start()

    def done(self) -> None:
        self._watcher.stop()
        if self._reloading is not None:
            self._reloading.cancel()
        if self.shared is not None:
            self.shared.stop()
        self.saver.done()
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    # loading

    def reload_rules(self) -> None:
        """Load the rules file named by the option, here and now; on failure keep what is loaded."""
        path = ctx.options.rules
        self._apply(path, self._attempt(self._read, path, self.saver.path))

    def reload_tokens(self) -> None:
        """Re-read the tokens file, here and now; on failure keep the tokens read before."""
        assert self.config is not None and self.config.tokens is not None
        self._apply_tokens(self._attempt(read_token_list, self.config.tokens.file))

    def _read(self, path: str, state_file: Path | None) -> _Read:
        """Read and parse everything a rules file names (in any thread: it touches nothing of ours).

        Raises:
            RulesError, TokensFileError: as the files are wrong.
        """
        config = load_config(path)
        tokens = read_token_list(config.tokens.file) if config.tokens else TokenList.of(())
        state = None
        if config.tokens and config.tokens.store is None and config.tokens.state_file != state_file:
            state = _read_state(config.tokens.state_file)
        return _Read(config, tokens, state)

    @staticmethod
    def _attempt(fn: Callable[..., T], *args: Any) -> T | Exception:
        try:
            return fn(*args)
        except (RulesError, TokensFileError) as e:
            return e

    def _apply(self, path: str, read: _Read | Exception) -> None:
        if isinstance(read, Exception):
            more = ""
            if isinstance(read, RulesErrors) and len(read.errors) > 1:
                more = f" (and {len(read.errors) - 1} more problem(s): `python -m addon check {path}` lists them all)"
            kept = "; the last good rules stay in force" if self.config else ""
            logger.error(f"{read}{more}{kept}")
            return
        config, tokens = read.config, read.tokens
        self.config = config
        if config.tokens:
            self.tokens.strategy, self.tokens.cooldown = config.tokens.strategy, config.tokens.cooldown
            self.tokens.retire_after, self.tokens.expiry_margin = config.tokens.retire_after, config.tokens.expiry_margin
            if read.state is not None and read.state[0] != self.saver.path:
                state_file, store, health = read.state
                self.saver.use(store if self._lock_state(state_file) else None)
                self.tokens.load_health(health)
        self.breaker.spec = config.tokens.breaker if config.tokens else BreakerSpec()
        self.tokens.replace(tokens)
        if config.tokens:
            self.sessions.use(config.tokens.sessions_file, config.tokens.follow_set_cookie, config.tokens.session_key)
        self._share(config.tokens.store if config.tokens else None)
        kept = self.values  # a source whose spec is unchanged keeps its value
        self.values = {
            name: kept[name] if name in kept and kept[name].spec == spec else ValueSource(spec)
            for name, spec in config.values.items()
        }
        for source in self.values.values():
            source.shared = self.shared
        self._watch(config)
        summary = f"{len(config.rules)} rule(s)"
        if config.tokens:
            summary += f", {len(tokens.tokens)} token(s)"
            if config.tokens.store is not None:
                summary += f" sharing health on {config.tokens.store.shown} (namespace {config.tokens.store.namespace})"
            if not tokens.tokens:
                logger.warning(f"rules: {config.tokens.file} has no tokens; requests that need one get a 503")
        for name, spec in config.values.items():
            summary += f", {name} from {spec.describe()}"
        logger.info(f"rules: loaded {path}: {summary}")
        if not config.rules:
            logger.warning(f"rules: {path} has no rules: every request passes unchanged")

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

    def _apply_tokens(self, read: TokenList | Exception) -> None:
        assert self.config is not None and self.config.tokens is not None
        if isinstance(read, Exception):
            logger.error(f"{read}; the {len(self.tokens)} token(s) read before stay in use")
            return
        self.tokens.replace(read)
        if self.shared is not None:
            self.shared.read_again()  # the health of tokens new to this proxy
        logger.info(f"rules: re-read {self.config.tokens.file}: {len(read.tokens)} token(s)")
        if not read.tokens:
            logger.warning(f"rules: {self.config.tokens.file} has no tokens; requests that need one get a 503")

    def _share(self, store) -> None:
        """Keep token health on this store from now on (None: in the state file)."""
        if self.shared is not None and self.shared.spec == store:
            return
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
        if store is None:
            self.tokens.on_change = self.saver.changed
            self.sessions.publish = None
            return
        self.tokens.on_change = lambda: None  # no state file: Redis keeps it
        self.shared = SharedStore(store, self.tokens, self.breaker, sessions=self.sessions)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not yet running: `running` starts it
            return
        self.shared.start()

    def _changed(self, what: str) -> None:
        """A watched file changed: read it in a thread (now, or when the reload under way is done)."""
        file = ctx.options.rules if what == "rules" else self.config and self.config.tokens and self.config.tokens.file
        logger.debug(f"rules: {file} changed; reading it again")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests, scripts): here and now
            self.reload_rules() if what == "rules" else self.reload_tokens()
            return
        self._pending.add(what)
        if self._reloading is None or self._reloading.done():
            self._reloading = loop.create_task(self._reload_pending(), name="rules reload")

    async def _reload_pending(self) -> None:
        while self._pending:
            if "rules" in self._pending:  # the rules file names the tokens file: both are read again
                self._pending.clear()
                path = ctx.options.rules
                read = await in_thread(self._attempt, self._read, path, self.saver.path)
                if ctx.options.rules == path:  # not replaced meanwhile by `set rules=…`
                    self._apply(path, read)
            else:
                self._pending.clear()
                if self.config is None or self.config.tokens is None:
                    continue
                file = self.config.tokens.file
                read = await in_thread(self._attempt, read_token_list, file)
                if self.config.tokens is not None and self.config.tokens.file == file:
                    self._apply_tokens(read)

    # watching

    def _value_file_changed(self, path: Path) -> None:
        """A value's file changed: the next request reads it again (a refresh that waits on it looks itself)."""
        for source in self.values.values():
            if source.spec.file == path:
                source.invalidate()
                logger.info(f"{source.name}: {path} changed; it is read again at the next request")

    def _watch(self, config: Config) -> None:
        paths = {Path(config.file): lambda: self._changed("rules")}
        if config.tokens:
            paths[config.tokens.file] = lambda: self._changed("tokens")
        for spec in config.values.values():
            if spec.file is not None:
                paths[spec.file] = partial(self._value_file_changed, spec.file)
        self._watcher.watch(paths)
