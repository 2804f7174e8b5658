"""Decide what the rules do to one request, then do it.

`plan_request` judges every rule against the request as the client sent it and
folds the matching rules into one set of edits (for the same header or cookie a
later rule wins). `apply_plan` then performs the edits with the values drawn
for this request. Keeping the two apart means no rule ever sees another rule's
changes (the trap of mitmproxy issue #4245).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mitmproxy import http

from addon.config import Config, Rule
from addon.cookies import edit_cookie_headers
from addon.masking import mask
from addon.streamdetect import is_streaming
from addon.template import Template


@dataclass(frozen=True)
class Edit:
    name: str  # as the rule wrote it
    value: Template | None  # None removes
    rule: str  # the name of the rule that decided it


@dataclass(frozen=True)
class Plan:
    rules: tuple[Rule, ...]
    streaming: bool
    headers: tuple[Edit, ...]
    cookies: tuple[Edit, ...]

    @functools.cached_property
    def uses(self) -> frozenset[str]:  # computed once per plan; plans are memoised per matched-rule set
        return frozenset().union(*(e.value.uses for e in self.headers + self.cookies if e.value is not None))

    def dynamic(self) -> Plan:
        """Only the edits whose values are drawn per request ({token}, {captcha}): what a retry changes."""

        def drawn(edits: tuple[Edit, ...]) -> tuple[Edit, ...]:
            return tuple(e for e in edits if e.value is not None and e.value.uses)

        return replace(self, headers=drawn(self.headers), cookies=drawn(self.cookies))


def plan_request(config: Config, flow: http.HTTPFlow) -> Plan | None:
    """The edits the matching rules make, or None when no rule matches."""
    candidates = config.index.candidates(flow.request.host, flow.request.port)
    if not candidates:
        return None
    streaming = is_streaming(flow.request, config.stream.json_field)
    rules = tuple(r for r in candidates if r.match.matches_rest(flow, streaming))
    if not rules:
        return None
    # the edits depend only on which rules matched: fold them once per combination
    key = (streaming, *(id(r) for r in rules))
    plan = config.index.plans.get(key)
    if plan is None:
        if len(config.index.plans) >= 1024:
            config.index.plans.clear()
        plan = config.index.plans[key] = _fold(rules, streaming)
    return plan


def _fold(rules: tuple[Rule, ...], streaming: bool) -> Plan:
    headers: dict[str, Edit] = {}
    cookies: dict[str, Edit] = {}
    for rule in rules:
        for name, value in rule.headers:
            headers.pop(name.lower(), None)  # a later rule's spelling and position win
            headers[name.lower()] = Edit(name, value, rule.name)
        for name, value in rule.cookies:
            cookies.pop(name, None)
            cookies[name] = Edit(name, value, rule.name)
    return Plan(rules, streaming, tuple(headers.values()), tuple(cookies.values()))


def apply_plan(plan: Plan, request: http.Request, values: Mapping[str, str]) -> list[str]:
    """Edit the request; returns one line per edit for the flow's comment.

    An edit whose placeholder has no value (its source failed) is skipped and
    the line says so.
    """
    lines: list[str] = []
    cookie_edits: dict[str, str | None] = {}
    header_edits: dict[bytes, tuple[str, str | None]] = {}
    for kind, edits in (("header", plan.headers), ("cookie", plan.cookies)):
        for edit in edits:
            label = edit.name if kind == "header" else f"cookie {edit.name}"
            if edit.value is None:
                rendered = None
                lines.append(f"{label} removed by {edit.rule}")
            elif edit.value.uses - values.keys():
                missing = ", ".join(sorted(edit.value.uses - values.keys()))
                lines.append(f"{label} not set by {edit.rule}: no {missing} value")
                continue
            else:
                rendered = edit.value.render(values)
                secrets = ", ".join(f"{p} {mask(values[p])}" for p in sorted(edit.value.uses))
                if not _fits(kind, rendered):
                    lines.append(f"{label} not set by {edit.rule}: the {secrets} value cannot go in a {kind}")
                    continue
                lines.append(f"{label} ← {edit.rule}" + (f" ({secrets})" if secrets else ""))
            if kind == "cookie":
                cookie_edits[edit.name] = rendered
            else:
                header_edits[edit.name.lower().encode()] = (edit.name, rendered)
    if header_edits:
        _edit_headers(request.headers, header_edits)
    if cookie_edits:
        new = edit_cookie_headers(request.headers.get_all("cookie"), cookie_edits)
        request.headers.set_all("Cookie", new)
    return lines


def _edit_headers(headers: http.Headers, edits: dict[bytes, tuple[str, str | None]]) -> None:
    """Every header edit in one pass over the fields, with the result of `headers[name] = value` and
    `headers.pop(name)` done one by one (each of which is a pass of its own in mitmproxy's MultiDict)."""
    fields: list[tuple[bytes, bytes]] = []
    done: set[bytes] = set()
    for k, v in headers.fields:
        lk = k.lower()
        if lk not in edits:
            fields.append((k, v))
        elif lk not in done:  # the first occurrence keeps its place and spelling; repeats go
            done.add(lk)
            value = edits[lk][1]
            if value is not None:
                fields.append((k, value.encode("utf-8", "surrogateescape")))
    for lk, (name, value) in edits.items():
        if lk not in done and value is not None:
            fields.append((name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")))
    headers.fields = tuple(fields)


_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COOKIE_UNSAFE = re.compile(r"[\x00-\x20\x7f;,\\\"]")


def _fits(kind: str, value: str) -> bool:
    """A drawn value (a token or captcha from a file or command) must not break out of its place."""
    return not (_COOKIE_UNSAFE if kind == "cookie" else _HEADER_UNSAFE).search(value)


def describe(plan: Plan, lines: list[str]) -> str:
    """The mitmweb comment of a rewritten flow."""
    kind = "streaming" if plan.streaming else "non-streaming"
    head = f"rules: {', '.join(r.name for r in plan.rules)} ({kind} request)"
    return "\n".join([head, *lines])
