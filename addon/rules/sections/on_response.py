"""The `on_response:` section: what an upstream answer means (rotate, disable, refresh, refresh_captcha or
pass), judged by its status and an RE2 regex over its body or its first event.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import re2

import yaml

from addon.rules.records import (
    DEFAULT_ON_RESPONSE, DISABLE, PASS, REFRESH, REFRESH_CAPTCHA, ROTATE, Regex, ResponseRule, ValueSpec,
)  # fmt: skip
from addon.rules.schema import At, key_at
from addon.rules.structures import Field, Record, SeqOf
from addon.rules.types import Choice, Int, Str


def on_response_field() -> Field:
    """`on_response:`."""
    return Field(
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
    )


def _build_response_rule(v: dict[str, Any], at: At, where: dict[str, At]) -> ResponseRule:
    if v["values"] is not None and v["action"] != REFRESH:
        shorthand = "; refresh_captcha is refresh with values [captcha]" if v["action"] == REFRESH_CAPTCHA else ""
        where["values"].fail(f"values goes with action refresh, not {v['action']}{shorthand}")
    match = v["match"]
    if match["body"] is not None and match["first_event"] is not None:
        key_at(where["match"], "first_event").fail(
            "give body or first_event, not both: body waits for the whole answer, "
            "first_event judges a stream by its start"
        )
    # refresh without values: every refreshable value, filled in by _build_config, which knows them
    return ResponseRule(frozenset(match["status"]), match["body"], v["action"], frozenset(v["values"] or ()),
                        match["first_event"])  # fmt: skip


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


def refresh_values(rule: ResponseRule, refreshable: frozenset[str], values: Mapping[str, ValueSpec], at: At) -> ResponseRule:
    """A refresh rule's values checked against the file's (or, not given, every refreshable one)."""
    if not rule.values:
        if not refreshable:
            key_at(at, "action").fail("action refresh needs a value from a file or command to fetch anew; "
                                      "the file has none (values:)")
        return replace(rule, values=refreshable)
    names_at = key_at(at, "values")
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
