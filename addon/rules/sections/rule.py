"""The `rules:` section (each rule's match and its header, cookie and body edits) and `stream:` (how a
streaming request is told from the others), with the checks of names and values they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from addon.rules import matching
from addon.rules.records import Rule, StreamSpec
from addon.rules.schema import At
from addon.rules.structures import Field, MapOf, Record, SeqOf
from addon.rules.template import DEFAULT_NAMES, Template, parse_template
from addon.rules.types import Bool, JsonValue, Nullable, Str


def rules_field(environ: Mapping[str, str], names: frozenset[str], pools: tuple[str, ...]) -> Field:
    """`rules:`; `names`: the values the file declares (placeholders other than {token} and {captcha}
    must be one of them); `pools`: the token pools it names ({token:NAME}), when `tokens:` names them."""
    names = DEFAULT_NAMES | names
    template = Str(partial(parse_template, environ=environ, names=names, pools=pools), "a string")
    cookie_value = Str(partial(_cookie_value, environ, names, pools), "a string")
    body_value = JsonValue(
        Str(partial(parse_template, environ=environ, names=names, line_breaks=True, pools=pools), "a string")
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
    return Field(SeqOf(rule), required=True, doc="Top to bottom; every matching rule applies; a later rule wins.")


def stream_field() -> Field:
    """`stream:`."""
    return Field(
        Record("stream", {"json_field": Field(Str(_dotted_path), default=("stream",),
                                              doc="Dotted path into a JSON body; true there means streaming.")},
               build=lambda v, at, where: StreamSpec(v["json_field"])),
        default=StreamSpec(),
        doc="How a streaming request is told from the others (match: {stream: true}).",
    )


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


def _dotted_path(text: str, like: str = "'stream' or 'options.stream'") -> tuple[str, ...]:
    parts = tuple(text.split("."))
    if not all(parts):
        raise ValueError(f"bad field path {text!r}: expected names separated by dots, like {like}")
    return parts


def _body_path(text: str) -> str:
    _dotted_path(text, "'recaptchaV3Token' or 'params.model'")
    return text
