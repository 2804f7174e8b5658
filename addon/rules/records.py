"""The immutable records the rules file is read into (`Config` and its parts), and the names of their
defaults and actions. Hooks read these records and never look at YAML; config.py's `load_config` makes them.
"""

from __future__ import annotations

import base64
import functools
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from addon.rules import matching
from addon.rules.template import CAPTCHA, TOKEN, Template
from addon.rules.types import JsonLiteral

Edits = tuple[tuple[str, Template | None], ...]
# (dotted path as written, a string with placeholders, a JSON value of another type, or None to remove)
BodyEdits = tuple[tuple[str, Template | JsonLiteral | None], ...]

EXIT = "{exit}"  # in a value source's file or command: the name of the exit the request leaves through
DEFAULT_POOL = "default"  # the name of the pool of a `tokens:` section that is one pool (no name of its own)


@dataclass(frozen=True)
class Rule:
    name: str
    match: matching.Match
    headers: Edits  # (header name as written, value or None to remove)
    cookies: Edits  # (cookie name, value or None to remove)
    body: BodyEdits = ()  # fields of a JSON request body

    @property
    def uses(self) -> frozenset[str]:
        return frozenset().union(*(t.uses for t in self._templates))

    @property
    def pools(self) -> frozenset[str | None]:
        """The token pools its values draw from (None: the only pool); one, in a rule that loads."""
        return frozenset(t.pool for t in self._templates if TOKEN in t.uses)

    @property
    def _templates(self) -> list[Template]:
        return [v for _, v in self.headers + self.cookies + self.body if isinstance(v, Template)]


@dataclass(frozen=True)
class StreamSpec:
    json_field: tuple[str, ...] = ("stream",)


@dataclass(frozen=True)
class BreakerSpec:
    """When `tokens` different tokens are refused within `window` seconds with no success in between,
    the cause is probably not the tokens: for `pause` seconds refusals pass to the client as they are."""

    tokens: int = 3
    window: float = 60
    pause: float = 300


@dataclass(frozen=True)
class StoreSpec:
    """A Redis server that proxies share token health, the breaker, the rotation and command values on
    (addon/tokens/shared.py). `url` may hold a password: logs show `shown`."""

    url: str
    shown: str  # the URL with its password masked
    namespace: str = "default"


@dataclass(frozen=True)
class TokensSpec:
    """One pool of accounts: the `tokens:` section, or one pool of it when it names several."""

    file: Path
    strategy: str = "round_robin"  # or sticky
    max_attempts: int = 3  # tries per request, the first included
    cooldown: float = 300  # seconds a refused token is passed over
    state_file: Path | None = None  # where token health is kept (unless `store` is set)
    breaker: BreakerSpec = BreakerSpec()
    store: StoreSpec | None = None  # None: the state file
    retire_after: int = 3  # refusals in a row (each after a cooldown) that retire a token; 0: never
    expiry_margin: float = 60  # seconds before a token's own expiry (a JWT's exp) that it is no longer sent
    follow_set_cookie: bool = True  # a Set-Cookie for the {token} cookie renews the account (addon/tokens/sessions.py)
    session_key: str | None = field(default=None, repr=False)  # from the environment: seals renewed values in Redis
    sessions_file: Path | None = None  # where renewed session values are kept (beside the state file)
    name: str = DEFAULT_POOL  # the pool's name: {token:NAME} draws from it (a `tokens:` of one pool: "default")
    exits: tuple[str, ...] = ()  # the exits its tokens leave through (names of Config.exits); (): none
    failover: bool = False  # while a token's exit cools down, it leaves through the next exit of its order

    @property
    def health_place(self) -> object:
        """Where the pool's health is kept: a namespace of a store, or the state file."""
        return (self.store.url, self.store.namespace) if self.store is not None else self.state_file


ROTATE, REFRESH, REFRESH_CAPTCHA, PASS = "rotate", "refresh", "refresh_captcha", "pass"
DISABLE = "disable"  # as rotate, and the token is retired at once


class Regex(Protocol):
    """A compiled RE2 pattern (the `re2` module's), as `body:` regexes are."""

    def search(self, text: str) -> object | None: ...


@dataclass(frozen=True)
class ResponseRule:
    """What an upstream answer means: `action` when the status (and the body or first-event regex) match."""

    statuses: frozenset[int]
    body: Regex | None
    action: str  # rotate | disable | refresh | refresh_captcha | pass
    values: frozenset[str] = frozenset()  # for refresh: the values it may fetch anew (default: every refreshable one)
    first_event: Regex | None = None  # over the first event of a streamed answer (addon/recovery/firstevent.py)

    @property
    def refreshes(self) -> frozenset[str]:
        """The values this rule fetches anew (of those a request used): none for rotate, disable and pass."""
        if self.action == REFRESH_CAPTCHA:
            return frozenset({CAPTCHA})
        return self.values if self.action == REFRESH else frozenset()


DEFAULT_ON_RESPONSE = (ResponseRule(frozenset({403}), None, ROTATE),)


DEFAULT_WAIT = 30.0  # seconds a refresh of a file value waits for the file to change


@dataclass(frozen=True)
class ValueSpec:
    """Where one named value comes from: exactly one of `file`, `env` and `command`."""

    name: str
    ttl: float
    timeout: float
    cwd: Path
    file: Path | None = None
    env: str | None = None
    command: tuple[str, ...] | None = None
    wait: float = DEFAULT_WAIT  # a file's refresh waits this long for the file to change
    secret: bool = True  # False: logs, comments and explain show the value whole
    exit: str = ""  # a source of one exit: {exit} in its file or command filled in with this exit's name

    @functools.cached_property  # (asked per request of a pool with exits: worked out once)
    def per_exit(self) -> bool:
        """Does each exit have its own value ({exit} in the file's name or the command)? (Asked of the
        spec as written; `for_exit` makes each exit's.)"""
        return not self.exit and (EXIT in self._written_file or any(EXIT in arg for arg in self.command or ()))

    def for_exit(self, name: str) -> ValueSpec:
        """The source of exit `name`: {exit} filled in."""
        file = self.cwd / self._written_file.replace(EXIT, name) if self.file is not None else None
        command = tuple(arg.replace(EXIT, name) for arg in self.command) if self.command is not None else None
        return replace(self, file=file, command=command, exit=name)

    @functools.cached_property
    def _written_file(self) -> str:
        """The file as the rules file names it: relative to its folder (whose own name may hold anything)."""
        if self.file is None:
            return ""
        return str(self.file.relative_to(self.cwd) if self.file.is_relative_to(self.cwd) else self.file)

    @property
    def label(self) -> str:
        """How logs, status and the store name it: cf_clearance, or cf_clearance@b for exit b's."""
        return f"{self.name}@{self.exit}" if self.exit else self.name

    @property
    def refreshable(self) -> bool:
        """Can a refresh bring another value? A command runs again and a file may be rewritten; the
        environment does not change under a running proxy."""
        return self.env is None

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return "command " + shlex.join(self.command or ())


@dataclass(frozen=True)
class ExitSpec:
    """One upstream proxy of `exits:`, that the tokens bound to it leave through (addon/exits/)."""

    name: str
    scheme: str  # http or https: how the proxy itself is spoken to
    host: str
    port: int
    shown: str  # the URL, its password masked
    cooldown: float = 300  # seconds the exit rests when refusals say its address is blocked
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def via(self) -> tuple[str, tuple[str, int]]:
        """The route as mitmproxy takes it (a `ServerSpec`: `flow.server_conn.via`)."""
        return self.scheme, (self.host, self.port)

    @functools.cached_property
    def proxy_authorization(self) -> str | None:
        """The Proxy-Authorization header that logs in to it, or None: it asks for no login."""
        if not self.username and not self.password:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Config:
    file: Path
    rules: tuple[Rule, ...]
    stream: StreamSpec
    pools: Mapping[str, TokensSpec]  # by name, in the file's order; a `tokens:` of one pool is {"default": …}
    values: Mapping[str, ValueSpec]  # by name; `captcha:` is values["captcha"]
    index: matching.RuleIndex[Rule]
    on_response: tuple[ResponseRule, ...] = DEFAULT_ON_RESPONSE
    named_pools: bool = False  # `tokens:` names its pools ({token:NAME}), rather than being one
    exits: Mapping[str, ExitSpec] = field(default_factory=dict)  # by name, in the file's order

    @property
    def tokens(self) -> TokensSpec | None:
        """The first pool (the only one of most files), or None when the file has no `tokens:`."""
        return next(iter(self.pools.values()), None)

    @functools.cached_property
    def public(self) -> frozenset[str]:
        """The names of the values that may be shown whole (`secret: false`)."""
        return frozenset(name for name, spec in self.values.items() if not spec.secret)
