"""The rules file: its schema, and the immutable records it is parsed into.

`load_config(path)` is the only entry. Hooks read the records it returns and
never look at YAML. Paths inside the file are relative to the file's folder.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import functools
import gc
import os
import re
import shlex
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import re2

import yaml

from addon.rules import matching
from addon.rules import schema
from addon.rules.schema import (
    At, Bool, Choice, Field, Int, JsonLiteral, JsonValue, MapOf, Nullable, Number, OneOrNamed, Record, RulesError,
    SeqOf, Str,
)  # fmt: skip
from addon.rules.template import CAPTCHA, DEFAULT_NAMES, TOKEN, Template, parse_template

Edits = tuple[tuple[str, Template | None], ...]
# (dotted path as written, a string with placeholders, a JSON value of another type, or None to remove)
BodyEdits = tuple[tuple[str, Template | JsonLiteral | None], ...]

MAX_RULES_FILE = 16 * 1024 * 1024  # bytes; a 100,000-rule file is about 13 MiB
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
class Config:
    file: Path
    rules: tuple[Rule, ...]
    stream: StreamSpec
    pools: Mapping[str, TokensSpec]  # by name, in the file's order; a `tokens:` of one pool is {"default": …}
    values: Mapping[str, ValueSpec]  # by name; `captcha:` is values["captcha"]
    index: matching.RuleIndex[Rule]
    on_response: tuple[ResponseRule, ...] = DEFAULT_ON_RESPONSE
    named_pools: bool = False  # `tokens:` names its pools ({token:NAME}), rather than being one

    @property
    def tokens(self) -> TokensSpec | None:
        """The first pool (the only one of most files), or None when the file has no `tokens:`."""
        return next(iter(self.pools.values()), None)

    @functools.cached_property
    def public(self) -> frozenset[str]:
        """The names of the values that may be shown whole (`secret: false`)."""
        return frozenset(name for name, spec in self.values.items() if not spec.secret)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Config:
    """Read and check a rules file.

    Raises:
        RulesError: the file cannot be read or is wrong; the message names the
            file, line, column and the problem.
    """
    file = Path(path)
    shown = str(path)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_RULES_FILE + 1)  # no parser sees more than this
    except FileNotFoundError:
        raise RulesError(shown, 1, 1, "rules file not found") from None
    except OSError as e:
        raise RulesError(shown, 1, 1, f"cannot read the rules file: {e.strerror or e}") from None
    if len(raw) > MAX_RULES_FILE:
        raise RulesError(shown, 1, 1, f"the rules file is larger than {MAX_RULES_FILE // 2**20} MiB")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8")) + 1  # in characters, as YAML's marks count
        raise RulesError(shown, line, column, f"the rules file is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    with _collection_paused():
        root = schema.parse_document(text, shown)
        if root.node is None:
            root.fail("the rules file is empty; it needs at least a 'rules:' list")
        return rules_schema(file.resolve().parent, file, environ, _declared_values(root), _declared_pools(root)).check(root)


def _declared_values(root: At) -> frozenset[str]:
    """The names the file gives values (`values:` keys, and `captcha:`), read ahead of the check, so
    that a placeholder can be judged where it is written, wherever in the file `values:` comes."""
    names: set[str] = set()
    if isinstance(root.node, yaml.MappingNode):
        for key, value in root.node.value:
            if key.value == "values" and isinstance(value, yaml.MappingNode):
                names.update(k.value for k, _ in value.value if isinstance(k, yaml.ScalarNode))
            elif key.value == "captcha":
                names.add(CAPTCHA)
    return frozenset(names)


def _declared_pools(root: At) -> tuple[str, ...]:
    """The names of the token pools, when `tokens:` names them (read ahead, as the values are)."""
    if isinstance(root.node, yaml.MappingNode):
        for key, value in root.node.value:
            if key.value == "tokens" and not schema.names_one(value, pool_keys()):
                return tuple(k.value for k, _ in value.value if isinstance(k, yaml.ScalarNode))
    return ()


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a file loads: a big file makes millions of
    objects and no cycles, and each collection would walk all of them again (a 100,000-rule file
    loads in half the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def json_schema() -> dict[str, Any]:
    """The rules file's JSON Schema, from the same definitions the loader checks against."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rules file of the mitmproxy rules addon",
        **rules_schema(Path("."), Path("rules.yaml"), {}).json_schema(),
    }


def rules_schema(
    base: Path, file: Path, environ: Mapping[str, str], names: frozenset[str] = frozenset(), pools: tuple[str, ...] = ()
) -> Record:
    """The whole file, as data; `base` is the folder relative paths start from; `names`: the values
    the file declares (placeholders other than {token} and {captcha} must be one of them); `pools`:
    the token pools it names ({token:NAME}), when `tokens:` names them."""
    names = DEFAULT_NAMES | names
    template = Str(partial(parse_template, environ=environ, names=names, pools=pools), "a string")
    cookie_value = Str(partial(_cookie_value, environ, names, pools), "a string")
    body_value = JsonValue(
        Str(partial(parse_template, environ=environ, names=names, line_breaks=True, pools=pools), "a string")
    )
    source = Record(
        "value source",
        {
            "file": Field(Str(lambda name: base / name),
                          doc="A file whose content, stripped, is the value; read again when it changes."),
            "env": Field(Str(), doc="An environment variable, read once."),
            "command": Field(SeqOf(Str(), single=True, min_items=1),
                             doc="A command (run in the rules file's folder) whose standard output, stripped, is the value."),
            "ttl": Field(Number(0), default=0,
                         doc="Seconds one value is reused; 0: a command runs for every request, a file is kept until it changes."),
            "timeout": Field(Number(0.1), default=10, doc="Seconds a command may run."),
            "wait": Field(Number(0), doc="For a file: seconds a refresh waits for the file to change (default 30)."),
            "secret": Field(Bool, default=True,
                            doc="false: logs, flow comments and explain may show the value whole (default: masked, as tokens)."),
        },
    )
    match = Record(
        "match",
        {
            "host": Field(SeqOf(Str(matching.parse_host_glob, "a host glob"), single=True, min_items=1), required=True,
                          doc="Host glob(s) of the host the proxy connects to; host:port also pins the port."),
            "path": Field(SeqOf(Str(matching.parse_path_glob, "a path glob"), single=True), default=(),
                          doc="Glob(s) over the request path without the query, like /v1/*."),
            "method": Field(SeqOf(Str(matching.parse_method, "an HTTP method"), single=True), default=(),
                            doc="HTTP method(s), like POST."),
            "stream": Field(Bool, doc="true: only streaming requests; false: only the others."),
            "filter": Field(Str(matching.parse_filter, "a mitmproxy filter expression"),
                            doc="Any mitmproxy filter expression, judged on the request as the client sent it."),
        },
        build=lambda v, at, where: matching.Match(
            hosts=v["host"], paths=v["path"], methods=frozenset(v["method"]), stream=v["stream"], filter=v["filter"]
        ),
    )
    rule = Record(
        "rule",
        {
            "name": Field(Str(), doc="Shown in logs and in mitmweb comments."),
            "match": Field(match, required=True, doc="Every condition given must hold."),
            "headers": Field(
                MapOf(Nullable(template), _header_name, "a mapping of header names to values"), default=(),
                doc="Header values replace every existing value; null removes the header. "
                "Placeholders: {token}, {captcha}, {env:NAME}; {{ and }} are literal braces.",
            ),
            "cookies": Field(
                MapOf(Nullable(cookie_value), _cookie_name, "a mapping of cookie names to values"), default=(),
                doc="Edits single cookies in the Cookie header; null removes one; the others stay byte for byte.",
            ),
            "body": Field(
                MapOf(body_value, _body_path, "a mapping of dotted paths to JSON values"), default=(),
                doc="Edits fields of a JSON request body, by dotted path (params.model); null removes one; a "
                "number, true/false, list or mapping is set as that JSON value; a string may hold placeholders.",
            ),
        },
        build=_build_rule,
    )
    return Record(
        "rules file",
        {
            "rules": Field(SeqOf(rule), required=True, doc="Top to bottom; every matching rule applies; a later rule wins."),
            "stream": Field(
                Record("stream", {"json_field": Field(Str(_dotted_path), default=("stream",),
                                                      doc="Dotted path into a JSON body; true there means streaming.")},
                       build=lambda v, at, where: StreamSpec(v["json_field"])),
                default=StreamSpec(),
                doc="How a streaming request is told from the others (match: {stream: true}).",
            ),
            "tokens": Field(
                OneOrNamed(Record("tokens", _pool_fields(base, environ), build=_build_tokens), _pool_name, "pool name"),
                doc="The accounts: one pool ({token}), or several by name, each with these keys ({token:NAME}).",
            ),
            "on_response": Field(
                SeqOf(
                    Record(
                        "response rule",
                        {
                            "match": Field(
                                Record(
                                    "response match",
                                    {
                                        "status": Field(SeqOf(Int(100), single=True, min_items=1), required=True,
                                                        doc="A status code, or a list of them."),
                                        "body": Field(Str(_regex, "a regular expression"),
                                                      doc="An RE2 regular expression over the first MiB of the "
                                                      "decoded body, like (?i)captcha failed."),
                                        "first_event": Field(
                                            Str(partial(_regex, what="first_event"), "a regular expression"),
                                            doc="An RE2 regular expression over the first event of a streamed "
                                            "answer (of an event stream, its first event block with data; else "
                                            "its first 64 KiB), like ^event: error; \"^$\" matches a stream that "
                                            "ends without one. The answer is held until its first event comes, "
                                            "and streams on if no rule refuses it. Never matches an answer that "
                                            "is not streamed."),
                                    },
                                ),
                                required=True,
                                doc="Every condition given must hold.",
                            ),
                            "action": Field(Choice(ROTATE, DISABLE, REFRESH, REFRESH_CAPTCHA, PASS), required=True,
                                            doc="rotate: the next token; disable: retire this token at once, then "
                                            "as rotate; refresh: the same token and new values; refresh_captcha: "
                                            "refresh with values [captcha]; pass: no retry."),
                            "values": Field(SeqOf(Str(), single=True, min_items=1),
                                            doc="For refresh: the values to fetch anew (default: every value from "
                                            "a file or command the request used)."),
                        },
                        build=_build_response_rule,
                    )
                ),
                default=DEFAULT_ON_RESPONSE,
                doc="What an upstream answer means, first match wins; default: a 403 rotates the token.",
            ),
            "values": Field(
                MapOf(Record("value source", source.fields, build=partial(_build_source, base, environ)),
                      _value_name, "a mapping of names to value sources"),
                default=(),
                doc="Named values for placeholders: {NAME} in a header, cookie or body value. "
                "Each has one source: file, env or command.",
            ),
            "captcha": Field(
                Record("captcha", source.fields, build=partial(_build_source, base, environ)),
                doc="The source of {captcha}; the same as values: {captcha: ...}.",
            ),
        },
        build=partial(_build_config, file),
    )


def _pool_fields(base: Path, environ: Mapping[str, str]) -> dict[str, Field]:
    """The keys of one token pool (`tokens:`, or each pool it names)."""
    return {
        "file": Field(Str(partial(_existing_file, base, "tokens")), required=True,
                      doc="One token per line; blank lines and # comments are skipped."),
        "strategy": Field(Choice("round_robin", "sticky"), default="round_robin",
                          doc="round_robin: the next token for every request; sticky: one until refused."),
        "max_attempts": Field(Int(1), default=3, doc="Tries per request, the first included."),
        "cooldown": Field(Number(0), default=300,
                          doc="Seconds a refused token is passed over; a longer Retry-After wins."),
        "retire_after": Field(Int(0), default=3,
                              doc="A token refused this many times in a row (a success starts the "
                              "count again) is retired: never used again until tokens.enable. 0: never."),
        "expiry_margin": Field(Number(0), default=60,
                               doc="A token that is a JWT (or a base64- session value carrying its "
                               "expiry) is not sent once it expires in less than this many seconds."),
        "follow_set_cookie": Field(Bool, default=True,
                                   doc="When the upstream answers with Set-Cookie for the cookie "
                                   "that carries {token}, the account uses the new value from then "
                                   "on and the client does not get that Set-Cookie. false: it passes "
                                   "to the client, and the account keeps its value."),
        "session_key": Field(Str(partial(_session_key, environ), "a string, {env:NAME}"),
                             doc="A secret of at least 16 characters, from the environment as "
                             "{env:NAME}: with a store, renewed session values go to the other "
                             "proxies encrypted with it. Without it they stay on this proxy."),
        "state_file": Field(Str(lambda name: base / name),
                            doc="Where token health is kept (default: beside the tokens file)."),
        "store": Field(Str(partial(_store_url, environ), "a redis:// or rediss:// URL"),
                       doc="redis://HOST:PORT/DB (rediss:// for TLS): every proxy on it shares token "
                       "health, the breaker, the rotation and command values; the password goes in "
                       "the URL, or as {env:NAME}. Default: the state file, this proxy alone."),
        "namespace": Field(Str(_namespace), default="default",
                           doc="Proxies with the same store and namespace share one pool."),
        "breaker": Field(
            Record(
                "breaker",
                {
                    "tokens": Field(Int(2), default=3, doc="Different tokens refused, with no success of any "
                                    "token in between, that open the breaker."),
                    "window": Field(Number(0), default=60, doc="Seconds within which those refusals count."),
                    "pause": Field(Number(0), default=300, doc="Seconds the breaker stays open: refusals go to the "
                                   "client as they are and no token cools down."),
                },
                build=lambda v, at, where: BreakerSpec(**v),
            ),
            default=BreakerSpec(),
            doc="When refusals show the cause is probably not the tokens (a header, the captcha, the IP address).",
        ),
    }


@functools.cache
def pool_keys() -> frozenset[str]:
    """The keys of a pool: a `tokens:` with any of them is one pool, else it names its pools."""
    return frozenset(_pool_fields(Path("."), {}))


def _pool_name(name: str) -> str:
    if not _VALUE_NAME.fullmatch(name) or len(name) > 64:
        raise ValueError(f"bad pool name {name!r}: expected a letter or _, then letters, digits, _ or -, like arena (up to 64)")
    return name


def _header_name(name: str) -> str:
    if not name or any(c in name for c in ' \t:()<>@,;\\"/[]?={}') or not name.isascii():
        raise ValueError(f"bad header name {name!r}")
    return name


def _cookie_name(name: str) -> str:
    if not name or any(c in name for c in ' \t;,=') or not name.isascii():
        raise ValueError(f"bad cookie name {name!r}")
    return name


def _cookie_value(environ: Mapping[str, str], names: frozenset[str], pools: tuple[str, ...], text: str) -> Template:
    template = parse_template(text, environ, names, pools=pools)
    literal = "".join(p for p in template.parts if isinstance(p, str))  # {env:...} already expanded
    if any(c in literal for c in ";,"):
        raise ValueError(f"a cookie value cannot contain ';' or ',': {text!r}")
    return template


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes in our message, not to stderr


def _regex(text: str, what: str = "body") -> Regex:
    """A body (or first_event) regex, compiled for RE2, which matches in time linear in the body (no
    catastrophic backtracking); it has no backreferences or lookaround, and says so here, at load time."""
    try:
        return re2.compile(text, _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        if why.startswith(("invalid perl operator", "invalid escape sequence")):
            why += f" ({what} regexes run on RE2, which matches in linear time and so has no backreferences or lookaround)"
        raise ValueError(f"bad regular expression {text!r}: {why}") from None


def _dotted_path(text: str, like: str = "'stream' or 'options.stream'") -> tuple[str, ...]:
    parts = tuple(text.split("."))
    if not all(parts):
        raise ValueError(f"bad field path {text!r}: expected names separated by dots, like {like}")
    return parts


def _body_path(text: str) -> str:
    _dotted_path(text, "'recaptchaV3Token' or 'params.model'")
    return text


_VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _value_name(name: str) -> str:
    if name == TOKEN:
        raise ValueError("'token' is the rotation of the tokens file ({token}); give this value another name")
    if not _VALUE_NAME.fullmatch(name) or name == "env":
        raise ValueError(f"bad value name {name!r}: expected a letter or _, then letters, digits, _ or -, "
                         "like cf_clearance")
    return name


def _build_tokens(v: dict[str, Any], at: At, where: dict[str, At]) -> TokensSpec:
    name = DEFAULT_POOL if at.path == "tokens" else at.path.rpartition(".")[2]  # tokens, or tokens.NAME
    namespace = v.pop("namespace")
    if "namespace" not in where and at.path != "tokens":
        namespace = name  # each named pool has a namespace of its own on a store
    store = v.pop("store")
    if store is not None:
        store = replace(store, namespace=namespace)
    elif "namespace" in where:
        where["namespace"].fail("'namespace' names a pool on a shared store: it needs 'store' (redis://…)")
    state_file = v["state_file"] or v["file"].with_name(v["file"].stem + ".state.json")
    # beside the state file, named after it: tokens.state.json -> tokens.sessions.json
    sessions_file = state_file.with_name(state_file.name.removesuffix(".json").removesuffix(".state") + ".sessions.json")
    return TokensSpec(**{**v, "state_file": state_file, "store": store, "sessions_file": sessions_file, "name": name})


_ENV_ONLY = re.compile(r"\{env:([^{}]+)\}")
MIN_SESSION_KEY = 16  # characters


def _session_key(environ: Mapping[str, str], text: str) -> str:
    """The secret an `{env:NAME}` names.

    Raises:
        ValueError: it is written in the file, or the variable is not set or too short.
    """
    m = _ENV_ONLY.fullmatch(text.strip())
    if m is None:
        raise ValueError("session_key must come from the environment: write {env:NAME}, not the key itself")
    key = environ.get(m[1])
    if key is None:
        raise ValueError(f"environment variable {m[1]} (used as session_key) is not set")
    if len(key) < MIN_SESSION_KEY:
        raise ValueError(f"environment variable {m[1]} (used as session_key) has {len(key)} characters; "
                         f"it needs at least {MIN_SESSION_KEY}")
    return key


# what a store URL's query may set (TLS files and checks); the time limits are the addon's own
STORE_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"})


def _store_url(environ: Mapping[str, str], text: str) -> StoreSpec:
    """A Redis URL, its {env:NAME} placeholders filled in percent-encoded (a password kept out of the
    rules file may hold any character). Messages show the URL with its password masked."""
    encoded = {name: urllib.parse.quote(value, safe="") for name, value in environ.items()}
    url = parse_template(text, encoded, names=frozenset()).render({})
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")  # the user may be left out: redis://:PASSWORD@host
    shown = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{':****' if colon else ''}{at}{hostport}", query=""))
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected redis://HOST:PORT/DB or rediss://…, not {shown!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {shown!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in {shown!r} (like redis://127.0.0.1:6379/0)")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"the path of {shown!r} is the database number, like /0")
    for name in urllib.parse.parse_qs(parts.query, keep_blank_values=True):
        if name not in STORE_OPTIONS:
            hint = "put a password before the host: redis://:PASSWORD@host" if name == "password" else (
                "it may set " + ", ".join(sorted(STORE_OPTIONS)))
            raise ValueError(f"the store URL cannot set {name!r} ({hint})")
    return StoreSpec(url, shown)


def _namespace(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"bad namespace {text!r}: up to 64 letters, digits, '.', '_' or '-'")
    return text


def _existing_file(base: Path, what: str, name: str) -> Path:
    path = base / name
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    return path


def _build_rule(v: dict[str, Any], at: At, where: dict[str, At]) -> Rule:
    if not v["headers"] and not v["cookies"] and not v["body"]:
        at.fail("a rule needs 'headers', 'cookies' or 'body'")
    rule = Rule(v["name"] or at.path, v["match"], v["headers"], v["cookies"], v["body"])
    broad = [h.text for h in rule.match.hosts if h.too_broad]
    if rule.uses and broad:
        placeholders = " and ".join(f"{{{p}}}" for p in sorted(rule.uses, reverse=True))
        where["match"].key("host", _host_node(where["match"])).fail(
            f"this rule sends {placeholders} but its host {broad[0]!r} could match any host; "
            "that would send tokens to every host: name the hosts this rule is for"
        )
    return rule


def _host_node(match_at: At) -> Any:
    return next(v for k, v in match_at.node.value if k.value == "host")


def _build_source(base: Path, environ: Mapping[str, str], v: dict[str, Any], at: At, where: dict[str, At]) -> ValueSpec:
    name = at.path.rpartition(".")[2]  # values.NAME, or captcha
    given = [k for k in ("file", "env", "command") if v[k] is not None]
    if len(given) != 1:
        at.fail(f"give exactly one {name} source (file, env or command); got {', '.join(given) or 'none'}")
    if v["file"] is not None and not v["file"].is_file():
        where["file"].fail(f"{name} file not found: {v['file']}")
    if v["env"] is not None and v["env"] not in environ:
        where["env"].fail(f"environment variable {v['env']} is not set")
    if v["wait"] is not None and v["file"] is None:
        where["wait"].fail("wait is for a file source (a refresh runs a command again, and the environment never changes)")
    command = v["command"]
    if command is not None:
        if len(command) == 1 and " " in command[0]:
            command = tuple(shlex.split(command[0]))
        program = command[0]
        found = (base / program).is_file() if "/" in program else shutil.which(program) is not None
        if not found:
            where["command"].fail(f"{name} command not found: {program} (relative paths start at {base})")
    return ValueSpec(
        name=name, ttl=v["ttl"], timeout=v["timeout"], cwd=base, file=v["file"], env=v["env"], command=command,
        wait=DEFAULT_WAIT if v["wait"] is None else v["wait"], secret=v["secret"],
    )  # fmt: skip


def _build_response_rule(v: dict[str, Any], at: At, where: dict[str, At]) -> ResponseRule:
    if v["values"] is not None and v["action"] != REFRESH:
        shorthand = "; refresh_captcha is refresh with values [captcha]" if v["action"] == REFRESH_CAPTCHA else ""
        where["values"].fail(f"values goes with action refresh, not {v['action']}{shorthand}")
    match = v["match"]
    if match["body"] is not None and match["first_event"] is not None:
        _key_at(where["match"], "first_event").fail(
            "give body or first_event, not both: body waits for the whole answer, "
            "first_event judges a stream by its start"
        )
    # refresh without values: every refreshable value, filled in by _build_config, which knows them
    return ResponseRule(frozenset(match["status"]), match["body"], v["action"], frozenset(v["values"] or ()),
                        match["first_event"])  # fmt: skip


def _build_config(file: Path, v: dict[str, Any], at: At, where: dict[str, At]) -> Config:
    values: dict[str, ValueSpec] = dict(v["values"])
    if v["captcha"] is not None:
        if CAPTCHA in values:
            where["captcha"].fail(
                "captcha is given twice, here and in values; keep one (captcha: is short for values: {captcha: ...})"
            )
        values[CAPTCHA] = v["captcha"]
    rules: tuple[Rule, ...] = v["rules"]
    pools = {spec.name: spec for _, spec in v["tokens"] or ()}
    if v["tokens"] is not None:
        _distinct_pools(v["tokens"], where["tokens"])
    for i, rule in enumerate(rules):
        if TOKEN in rule.uses and not pools:
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                "this rule uses {token} but the file has no 'tokens' section"
            )
        if len(rule.pools) > 1:
            drawn = " and ".join(sorted(str(p) for p in rule.pools))
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                f"this rule draws tokens from {drawn}; a request carries one account: give each pool a rule of its own"
            )
        missing = sorted(rule.uses - values.keys() - {TOKEN})
        if missing:  # only {captcha} gets here: other names are checked where they are written
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                f"this rule uses {{{missing[0]}}} but the file has no 'captcha' section (or values: {{{missing[0]}: ...}})"
            )
    refreshable = frozenset(name for name, spec in values.items() if spec.refreshable)
    on_response = tuple(
        _refresh_values(rule, refreshable, values, where["on_response"].index(i, where["on_response"].node.value[i]))
        if rule.action == REFRESH else rule
        for i, rule in enumerate(v["on_response"])
    )  # fmt: skip
    return Config(
        file=file,
        rules=rules,
        stream=v["stream"],
        pools=pools,
        values=values,
        index=matching.RuleIndex(rules),
        on_response=on_response,
        named_pools=v["tokens"] is not None and v["tokens"][0][0] is not None,
    )


def _distinct_pools(pools: tuple[tuple[str | None, TokensSpec], ...], at: At) -> None:
    """Two pools never keep their health in one place: a state file, or a namespace of one store."""
    seen: dict[object, str] = {}
    for name, spec in pools:
        places = [(spec.state_file, f"their health in the state file {spec.state_file}")]
        if spec.store is not None:
            places = [((spec.store.url, spec.store.namespace), f"their health in namespace {spec.store.namespace!r} of one store")]
        if spec.follow_set_cookie:
            places.append((spec.sessions_file, f"renewed sessions in {spec.sessions_file} (named after the state file)"))
        for place, what in places:
            if place in seen and name is not None:
                _key_at(at, name).fail(f"pools {seen[place]} and {name} would keep {what}; "
                                       "give each its own tokens file, state_file or namespace")
            seen[place] = str(name)


def _refresh_values(rule: ResponseRule, refreshable: frozenset[str], values: Mapping[str, ValueSpec], at: At) -> ResponseRule:
    """A refresh rule's values checked against the file's (or, not given, every refreshable one)."""
    if not rule.values:
        if not refreshable:
            _key_at(at, "action").fail("action refresh needs a value from a file or command to fetch anew; "
                                       "the file has none (values:)")
        return replace(rule, values=refreshable)
    names_at = _key_at(at, "values")
    if isinstance(names_at.node, yaml.SequenceNode):
        items = [(n.value, names_at.index(i, n)) for i, n in enumerate(names_at.node.value)]
    else:
        items = [(names_at.node.value, names_at)]
    for name, where in items:
        if name not in values:
            close = difflib.get_close_matches(name, list(values), 1)
            hint = f"did you mean {close[0]!r}?" if close else f"the file has {', '.join(values) or 'no values'}"
            where.fail(f"no value named {name!r} ({hint})")
        if name not in refreshable:
            where.fail(f"{name} comes from an environment variable, which never changes under a running proxy: "
                       "it cannot be refreshed")
    return rule


def _key_at(at: At, key: str) -> At:
    return at.key(key, next(v for k, v in at.node.value if k.value == key))
