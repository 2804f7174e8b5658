"""The `rules` option: load the rules file and what it names, and keep them current.

This addon owns the configuration that the other addons read: the parsed rules,
the token pool and the sources of the named values (the captcha among them). A bad file at start-up is one error line
(mitmproxy's start-up check then exits with status 1); a bad file later is
logged and the last good configuration stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.utils import human

from addon import statefile
from addon.breaker import Breaker
from addon.config import BreakerSpec, Config, load_config
from addon.schema import RulesError, RulesErrors
from addon.sources import ValueSource
from addon.template import CAPTCHA
from addon.tokens import TokenPool, TokensFileError, read_tokens
from addon.watch import FileWatcher

logger = logging.getLogger(__name__)


class RulesLoader:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.tokens = TokenPool()
        self.tokens.on_change = self._state_changed
        self.breaker = Breaker()
        self.values: dict[str, ValueSource] = {}  # by name, as the rules file's values: (and captcha:)
        self.stream_copy_limit = 1024 * 1024
        self.mitmproxy_stores_streamed = False  # mitmproxy 12.1+ with store_streamed_bodies: it keeps them whole
        self._watcher = FileWatcher()
        self._state_file: Path | None = None
        self._save_pending: asyncio.TimerHandle | None = None
        self._save_problem: str | None = None  # the last failure to write the state file, logged once

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

    def done(self) -> None:
        self._watcher.stop()
        if self._save_pending is not None:
            self._save_pending.cancel()
            self.save_state()

    def reload_rules(self) -> None:
        """Load the rules file named by the option; on failure keep what is loaded."""
        path = ctx.options.rules
        try:
            config = load_config(path)
            tokens = read_tokens(config.tokens.file) if config.tokens else ()
        except (RulesError, TokensFileError) as e:
            more = ""
            if isinstance(e, RulesErrors) and len(e.errors) > 1:
                more = f" (and {len(e.errors) - 1} more problem(s): `python -m addon check {path}` lists them all)"
            kept = "; the last good rules stay in force" if self.config else ""
            logger.error(f"{e}{more}{kept}")
            return
        self.config = config
        if config.tokens:
            self.tokens.strategy, self.tokens.cooldown = config.tokens.strategy, config.tokens.cooldown
            self._use_state_file(config.tokens.state_file)
        self.breaker.spec = config.tokens.breaker if config.tokens else BreakerSpec()
        self.tokens.replace(tokens)
        kept = self.values  # a source whose spec is unchanged keeps its value
        self.values = {
            name: kept[name] if name in kept and kept[name].spec == spec else ValueSource(spec)
            for name, spec in config.values.items()
        }
        self._watch(config)
        summary = f"{len(config.rules)} rule(s)"
        if config.tokens:
            summary += f", {len(tokens)} token(s)"
            if not tokens:
                logger.warning(f"rules: {config.tokens.file} has no tokens; requests that need one get a 503")
        for name, spec in config.values.items():
            summary += f", {name} from {spec.describe()}"
        logger.info(f"rules: loaded {path}: {summary}")
        if not config.rules:
            logger.warning(f"rules: {path} has no rules: every request passes unchanged")

    def reload_tokens(self) -> None:
        assert self.config is not None and self.config.tokens is not None
        try:
            tokens = read_tokens(self.config.tokens.file)
        except TokensFileError as e:
            logger.error(f"{e}; the {len(self.tokens)} token(s) read before stay in use")
            return
        self.tokens.replace(tokens)
        logger.info(f"rules: re-read {self.config.tokens.file}: {len(tokens)} token(s)")
        if not tokens:
            logger.warning(f"rules: {self.config.tokens.file} has no tokens; requests that need one get a 503")

    def _use_state_file(self, path: Path | None) -> None:
        if path is None or path == self._state_file:
            return
        self._state_file = path
        self.tokens.load_state(statefile.load_state(path))

    def _state_changed(self) -> None:
        """Token health changed: save it soon (at most about once a second)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests, scripts): save now
            self.save_state()
            return
        if self._save_pending is None:
            self._save_pending = loop.call_later(1.0, self.save_state)

    def save_state(self) -> None:
        self._save_pending = None
        if self._state_file is None:
            return
        try:
            statefile.save_state(self._state_file, self.tokens.to_state())
        except OSError as e:
            problem = f"tokens: cannot write the state file {self._state_file}: {e.strerror or e}"
            if problem != self._save_problem:  # once, not at every change of token health
                logger.error(f"{problem}; token health is kept in memory only until it can be written")
            self._save_problem = problem
            return
        if self._save_problem is not None:
            logger.info(f"tokens: the state file {self._state_file} is written again")
            self._save_problem = None

    def _value_file_changed(self, path: Path) -> None:
        """A value's file changed: the next request reads it again (a refresh that waits on it looks itself)."""
        for source in self.values.values():
            if source.spec.file == path:
                source.invalidate()
                logger.info(f"{source.name}: {path} changed; it is read again at the next request")

    def _watch(self, config: Config) -> None:
        paths = {Path(config.file): self.reload_rules}
        if config.tokens:
            paths[config.tokens.file] = self.reload_tokens
        for spec in config.values.values():
            if spec.file is not None:
                paths[spec.file] = partial(self._value_file_changed, spec.file)
        self._watcher.watch(paths)
