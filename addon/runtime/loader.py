"""The runtime: what the hooks read, loaded from the `rules` option and kept current.

`Runtime` owns the configuration the other parts read (the rewriter, the stream tap, the recovery
and the commands each hold it as `runtime`): the parsed rules, the token pools
(addon/runtime/pools.py) and the sources of the named values (the captcha among them). A bad file at
start-up is one error line (mitmproxy's start-up check then exits with status 1); a bad file later is
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

from addon.exits.routing import Exits
from addon.mitm import helpers
from addon.rules.config import load_config
from addon.rules.records import DEFAULT_POOL, Config
from addon.rules.schema import RulesError, RulesErrors
from addon.rules.template import CAPTCHA
from addon.runtime.counters import Counters
from addon.runtime.pools import Pool, State
from addon.runtime.sources import ValueSource, sources_for
from addon.tokens import statefile
from addon.tokens.health import health_from_state
from addon.tokens.sessions import take_renewed
from addon.tokens.shared import SharedStore
from addon.tokens.tokenfile import GONE_GRACE, TokenList, TokensFileError, read_token_list
from addon.util.offloop import in_thread
from addon.util.watch import FileWatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Read:
    """What a load read and parsed, ready to swap in."""

    config: Config
    tokens: dict[str, TokenList]  # by pool
    states: dict[str, State]  # by pool: a state file read anew


def _read_state(path: Path) -> State:
    entries, breaker_open_until = statefile.read_state(path)
    return path, statefile.StateStore(path, entries, GONE_GRACE, breaker_open_until), health_from_state(entries)


class Runtime:
    """The loaded rules file and its token pools and value sources, as the hooks read them."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.pool = Pool()  # the first pool: the only one of most files (an empty one while the file has none)
        self.pools: dict[str, Pool] = {}  # by name, in the rules file's order
        self.values: dict[str, ValueSource] = {}  # by name (NAME@EXIT: an exit's own), as values: and captcha: say
        self.exits = Exits()  # the upstream proxies tokens leave through, with their health; kept across reloads
        self.counters = Counters()  # what the hooks count (addon/status/ reads them); kept across reloads
        self.stream_copy_limit = 1024 * 1024
        self.mitmproxy_stores_streamed = False  # mitmproxy 12.1+ with store_streamed_bodies: it keeps them whole
        self._watcher = FileWatcher()
        self._reloading: asyncio.Task | None = None
        self._pending: set[str] = set()  # "rules", "tokens": what changed while a reload ran

    @property
    def captcha(self) -> ValueSource | None:
        return self.values.get(CAPTCHA)

    def source(self, name: str, exit: str = "") -> ValueSource | None:
        """The source of a named value; of exit `exit`'s, when each exit has its own ({exit})."""
        return self.values.get(f"{name}@{exit}" if exit else name) or (self.values.get(name) if exit else None)

    def responseheaders(self, flow) -> None:
        """Take an account's renewed session value off the answer, in the pool whose token the
        request carried (even one a reload has dropped since)."""
        take_renewed(flow)

    @property
    def store(self) -> SharedStore | None:
        """The store command values are shared on: the first pool's that has one."""
        return next((p.shared for p in self.pools.values() if p.shared is not None), None)

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
                self.stream_copy_limit = helpers.parse_size(ctx.options.stream_copy_limit) or 0
            except ValueError as e:
                raise exceptions.OptionsError(f"Cannot parse stream_copy_limit: {e}") from e
        if "store_streamed_bodies" in updated:  # an option of mitmproxy 12.1 and later
            self.mitmproxy_stores_streamed = bool(ctx.options.store_streamed_bodies)
        if "rules" in updated:
            self.reload_rules()

    def running(self) -> None:
        self._watcher.start()
        for pool in self.pools.values():
            pool.start()

    def done(self) -> None:
        self._watcher.stop()
        if self._reloading is not None:
            self._reloading.cancel()
        for pool in self.pools.values():
            pool.stop()

    # loading

    def reload_rules(self) -> None:
        """Load the rules file named by the option, here and now; on failure keep what is loaded."""
        path = ctx.options.rules
        self._apply(path, self._attempt(self._read, path, self._state_files()))

    def reload_tokens(self, name: str = DEFAULT_POOL) -> None:
        """Re-read a pool's tokens file, here and now; on failure keep the tokens read before."""
        assert self.config is not None and name in self.config.pools
        self._apply_tokens(name, self._attempt(read_token_list, self.config.pools[name].file))

    def _state_files(self) -> dict[str, Path | None]:
        return {name: pool.saver.path for name, pool in self.pools.items()}

    def _read(self, path: str, state_files: dict[str, Path | None]) -> _Read:
        """Read and parse everything a rules file names (in any thread: it touches nothing of ours);
        `state_files`: the pools' state files in use, which are not read again.

        Raises:
            RulesError, TokensFileError: as the files are wrong.
        """
        config = load_config(path)
        tokens = {name: read_token_list(spec.file) for name, spec in config.pools.items()}
        states = {
            name: _read_state(spec.state_file)
            for name, spec in config.pools.items()
            if spec.store is None and spec.state_file is not None and spec.state_file != state_files.get(name)
        }
        return _Read(config, tokens, states)

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
        config = read.config
        self.config = config
        self.exits.use(config.exits)
        self._use_pools(config, read)
        self.exits.share(self.pools.values())
        self.values = sources_for(config, self.values)
        store = self.store
        for source in self.values.values():
            source.shared, source.counters = store, self.counters
        self._watch(config)
        summary = f"{len(config.rules)} rule(s)"
        for name, spec in config.pools.items():
            tokens = read.tokens[name].tokens
            summary += f", {len(tokens)} token(s)"
            if config.named_pools:
                summary += f" in pool {name}"
            if spec.store is not None:
                summary += f" sharing health on {spec.store.shown} (namespace {spec.store.namespace})"
            if not tokens:
                logger.warning(f"rules: {spec.file} has no tokens; requests that need one get a 503")
        for name, spec in config.values.items():
            summary += f", {name} from {spec.describe()}"
        if config.exits:
            summary += f", {len(config.exits)} exit(s)"
        logger.info(f"rules: loaded {path}: {summary}")
        if not config.rules:
            logger.warning(f"rules: {path} has no rules: every request passes unchanged")

    def _use_pools(self, config: Config, read: _Read) -> None:
        """Hand each pool of the file its spec, tokens and state. A pool keeps its name, or (renamed,
        or a file of one pool given names) the place where its health is kept; a pool the file no
        longer names stops (first: a new pool may take up its state file)."""
        old = dict(self.pools)
        pools = {name: old.pop(name) for name in config.pools if name in old}
        for name, spec in config.pools.items():
            if name not in pools:
                same = next((n for n, p in old.items() if p.spec and p.spec.health_place == spec.health_place), None)
                pools[name] = old.pop(same) if same is not None else Pool(name)
        for pool in old.values():
            pool.stop()
        self.pools = {name: pools[name] for name in config.pools}  # in the file's order
        for name, pool in self.pools.items():
            if pool.name != name:
                logger.info(f"rules: pool {pool.name} is pool {name} now")
                pool.name = name
            pool.use(config.pools[name], read.tokens[name], read.states.get(name), labelled=config.named_pools)
        self.pool = next(iter(self.pools.values()), None) or Pool()

    def _apply_tokens(self, name: str, read: TokenList | Exception) -> None:
        assert self.config is not None and name in self.config.pools
        pool, file = self.pools[name], self.config.pools[name].file
        if isinstance(read, Exception):
            logger.error(f"{read}; the {len(pool.tokens)} token(s) read before stay in use")
            return
        pool.replace_tokens(read)
        logger.info(f"rules: re-read {file}: {len(read.tokens)} token(s)")
        if not read.tokens:
            logger.warning(f"rules: {file} has no tokens; requests that need one get a 503")

    def _changed(self, what: str) -> None:
        """A watched file changed ("rules", or "tokens:POOL"): read it in a thread (now, or when the
        reload under way is done)."""
        name = what.partition(":")[2]
        file = ctx.options.rules if what == "rules" else self.config and name in self.config.pools and self.config.pools[name].file
        logger.debug(f"rules: {file} changed; reading it again")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests, scripts): here and now
            self.reload_rules() if what == "rules" else self.reload_tokens(name)
            return
        self._pending.add(what)
        if self._reloading is None or self._reloading.done():
            self._reloading = loop.create_task(self._reload_pending(), name="rules reload")

    async def _reload_pending(self) -> None:
        while self._pending:
            if "rules" in self._pending:  # the rules file names the tokens files: all are read again
                self._pending.clear()
                path = ctx.options.rules
                read = await in_thread(self._attempt, self._read, path, self._state_files())
                if ctx.options.rules == path:  # not replaced meanwhile by `set rules=…`
                    self._apply(path, read)
                continue
            name = self._pending.pop().partition(":")[2]
            spec = self.config.pools.get(name) if self.config is not None else None
            if spec is None:
                continue
            tokens = await in_thread(self._attempt, read_token_list, spec.file)
            if self.config is not None and self.config.pools.get(name, spec).file == spec.file:
                self._apply_tokens(name, tokens)

    # watching

    def _tokens_file_changed(self, path: Path) -> None:
        assert self.config is not None
        for name, spec in self.config.pools.items():
            if spec.file == path:
                self._changed(f"tokens:{name}")

    def _value_file_changed(self, path: Path) -> None:
        """A value's file changed: the next request reads it again (a refresh that waits on it looks itself)."""
        for source in self.values.values():
            if source.spec.file == path:
                source.invalidate()
                logger.info(f"{source.spec.label}: {path} changed; it is read again at the next request")

    def _watch(self, config: Config) -> None:
        paths = {Path(config.file): lambda: self._changed("rules")}
        for file in {spec.file for spec in config.pools.values()}:  # (pools may share one)
            paths[file] = partial(self._tokens_file_changed, file)
        for source in self.values.values():
            if source.spec.file is not None:
                paths[source.spec.file] = partial(self._value_file_changed, source.spec.file)
        self._watcher.watch(paths)
