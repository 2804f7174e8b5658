"""The `tokens:` section: one pool of accounts, or several by name, each with its tokens file, its
rotation, its breaker and where its health is kept (a state file, or a shared Redis store).
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from addon.rules.records import DEFAULT_POOL, BreakerSpec, StoreSpec, TokensSpec
from addon.rules.schema import At, key_at
from addon.rules.sections.exits import PoolExits
from addon.rules.sections.values import VALUE_NAME
from addon.rules.structures import Field, OneOrNamed, Record
from addon.rules.template import parse_template
from addon.rules.types import Bool, Choice, Int, Number, Str


def tokens_field(base: Path, environ: Mapping[str, str], exits: tuple[str, ...] = ()) -> Field:
    """`tokens:`; `base` is the folder relative paths start from; `exits`: the names the file's
    `exits:` gives (read ahead)."""
    return Field(
        OneOrNamed(Record("tokens", _pool_fields(base, environ, exits), build=_build_tokens), _pool_name, "pool name"),
        doc="The accounts: one pool ({token}), or several by name, each with these keys ({token:NAME}).",
    )


def _pool_fields(base: Path, environ: Mapping[str, str], exits: tuple[str, ...] = ()) -> dict[str, Field]:
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
        "exits": Field(PoolExits(exits), default=(),
                       doc="The exits (of exits:) its tokens leave through, or all: each token always through "
                       "the same one, chosen by a hash of the token. Default: none, as without exits."),
        "failover": Field(Bool, default=False,
                          doc="While a token's exit rests, it leaves through the next exit of its order "
                          "(default: its requests wait for it, answered 503)."),
    }


@functools.cache
def pool_keys() -> frozenset[str]:
    """The keys of a pool: a `tokens:` with any of them is one pool, else it names its pools."""
    return frozenset(_pool_fields(Path("."), {}))


def _pool_name(name: str) -> str:
    if not VALUE_NAME.fullmatch(name) or len(name) > 64:
        raise ValueError(f"bad pool name {name!r}: expected a letter or _, then letters, digits, _ or -, like arena (up to 64)")
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
    if v["failover"] and not v["exits"]:
        where["failover"].fail("failover is between exits: this pool has no 'exits'")
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


def distinct_pools(pools: tuple[tuple[str | None, TokensSpec], ...], at: At) -> None:
    """Two pools never keep their health in one place: a state file, or a namespace of one store."""
    seen: dict[object, str] = {}
    for name, spec in pools:
        where = f"the state file {spec.state_file}"
        if spec.store is not None:
            where = f"namespace {spec.store.namespace!r} of one store"
        places = [(spec.health_place, f"their health in {where}")]
        if spec.follow_set_cookie:
            places.append((spec.sessions_file, f"renewed sessions in {spec.sessions_file} (named after the state file)"))
        for place, what in places:
            if place in seen and name is not None:
                key_at(at, name).fail(f"pools {seen[place]} and {name} would keep {what}; "
                                      "give each its own tokens file, state_file or namespace")
            seen[place] = str(name)
