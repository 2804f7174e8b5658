"""The `exits:` section (upstream proxies that accounts leave through), and a pool's `exits:` (which of
them its tokens are bound to: addon/exits/binding.py).
"""

from __future__ import annotations

import difflib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import yaml

from addon.rules.records import ExitSpec
from addon.rules.schema import At, RulesError, gather, raise_if
from addon.rules.sections.values import VALUE_NAME
from addon.rules.structures import Field, Record, SeqOf
from addon.rules.template import parse_template
from addon.rules.types import Number, Str, Type

ALL = "all"  # a pool's `exits: all`


def exits_field(environ: Mapping[str, str]) -> Field:
    """`exits:`: a list of upstream proxies, each with a name."""
    return Field(
        SeqOf(Record("exit", _exit_fields(environ), build=_build_exit), min_items=1),
        default=(),
        doc="Upstream HTTP(S) proxies the accounts leave through: a pool's exits: binds each of its tokens to one.",
    )


def _exit_fields(environ: Mapping[str, str]) -> dict[str, Field]:
    return {
        "name": Field(Str(_exit_name), required=True, doc="How pools, logs and status name it, like a or eu-1."),
        "url": Field(Str(partial(_exit_url, environ), "an http:// or https:// URL"), required=True,
                     doc="http://USER:PASSWORD@HOST:PORT (https:// to speak TLS to the proxy itself); the "
                     "password as {env:NAME}, masked in every output."),
        "cooldown": Field(Number(0), default=300,
                          doc="Seconds the exit rests when refusals say its address is blocked."),
    }


def _exit_name(name: str) -> str:
    if not VALUE_NAME.fullmatch(name) or len(name) > 64:
        raise ValueError(f"bad exit name {name!r}: expected a letter or _, then letters, digits, _ or -, "
                         "like eu-1 (up to 64)")
    if name == ALL:
        raise ValueError("'all' is what a pool writes for every exit (exits: all); give this exit another name")
    return name


def _exit_url(environ: Mapping[str, str], text: str) -> dict[str, Any]:
    """An upstream proxy's URL, its {env:NAME} placeholders filled in percent-encoded; messages show it
    with the password masked."""
    encoded = {name: urllib.parse.quote(value, safe="") for name, value in environ.items()}
    url = parse_template(text, encoded, names=frozenset()).render({})
    # the login is everything between "://" and the last "@" (a password written as it is may hold / ? #,
    # which would end the netloc early): it is read apart, and never shown
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, rest = rest.rpartition("@")
    user, colon, password = (urllib.parse.quote(p, safe="%") for p in userinfo.partition(":"))
    parts = urllib.parse.urlsplit(f"{scheme}{sep}{rest}")
    shown = f"{scheme}{sep}{user}{':****' if colon else ''}{at}{rest}"
    if parts.scheme not in ("http", "https"):
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"an exit is an HTTP proxy: expected http://HOST:PORT or https://…, not {scheme} ({shown!r})")
    if not parts.hostname:
        raise ValueError(f"no host in {shown!r} (like http://127.0.0.1:3128)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {shown!r}") from None
    if port is None:
        raise ValueError(f"no port in {shown!r}: proxies have no usual port; write it, "
                         f"like http://{parts.hostname}:3128")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"an exit's URL is only scheme, login, host and port: {shown!r} has more")
    return {
        "scheme": parts.scheme, "host": parts.hostname, "port": port, "shown": shown,
        "username": urllib.parse.unquote(user), "password": urllib.parse.unquote(password),
    }  # fmt: skip


def _build_exit(v: dict[str, Any], at: At, where: dict[str, At]) -> ExitSpec:
    return ExitSpec(name=v["name"], cooldown=v["cooldown"], **v["url"])


def distinct_exits(exits: tuple[ExitSpec, ...], at: At) -> None:
    """No two exits share a name, or an address: mitmproxy tells connections (and this addon tells an
    exit's login) by the proxy's host and port alone, so two logins at one address would mix."""
    errors: list[RulesError] = []
    names: dict[str, int] = {}
    addresses: dict[tuple[str, int], str] = {}
    for i, spec in enumerate(exits):
        item = at.index(i, at.node.value[i])
        if spec.name in names:
            errors.append(item.error(f"exit {spec.name!r} is named twice (item {names[spec.name] + 1} too)"))
        elif spec.address in addresses:
            errors.append(item.error(f"exits {addresses[spec.address]} and {spec.name} are one proxy "
                                     f"({spec.host}:{spec.port}): give each exit its own address"))
        names.setdefault(spec.name, i)
        addresses.setdefault(spec.address, spec.name)
    raise_if(errors)


@dataclass(frozen=True)
class PoolExits(Type):
    """A pool's `exits:`: `all`, or a list of names of the file's exits (read ahead, as `declared`)."""

    declared: tuple[str, ...]

    def check(self, at: At) -> tuple[str, ...]:
        if not self.declared:
            at.fail("this pool names exits but the file has no 'exits' section")
        if isinstance(at.node, yaml.ScalarNode) and at.node.value == ALL:
            return self.declared
        names = SeqOf(Str(), single=True, min_items=1).check(at)
        items = [at.index(i, n) for i, n in enumerate(at.node.value)] if isinstance(at.node, yaml.SequenceNode) else [at]
        errors: list[RulesError] = []
        for item, name in zip(items, names):
            gather(errors, partial(self._known, item, name))
        raise_if(errors)
        if len(set(names)) != len(names):
            at.fail("an exit is named twice")
        return tuple(names)

    def _known(self, at: At, name: str) -> None:
        if name not in self.declared:
            close = difflib.get_close_matches(name, list(self.declared), 1)
            hint = f"did you mean {close[0]!r}?" if close else "the file has " + ", ".join(self.declared)
            at.fail(f"no exit named {name!r} ({hint})")

    def describe(self) -> str:
        return "all, or a list of exit names"

    def json_schema(self) -> dict[str, Any]:
        name = {"type": "string", "description": "an exit's name (all: every exit)"}
        return {"anyOf": [name, {"type": "array", "items": name, "minItems": 1}]}
