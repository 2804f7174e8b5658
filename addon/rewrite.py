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
from addon.decoding import decoded_request
from addon.streamdetect import MAX_JSON_BODY, is_streaming
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

    @functools.cached_property
    def compiled(self) -> _Compiled:
        return _compile(self)

    @functools.cached_property
    def dynamic(self) -> Plan:
        """Only the edits whose values are drawn per request ({token}, {captcha}): what a retry changes.
        Computed once per plan, so its compiled form is too."""

        def drawn(edits: tuple[Edit, ...]) -> tuple[Edit, ...]:
            return tuple(e for e in edits if e.value is not None and e.value.uses)

        return replace(self, headers=drawn(self.headers), cookies=drawn(self.cookies))


_MEMO_LIMIT = 4096  # entries in each of the index's memos before it starts over


def plan_request(config: Config, flow: http.HTTPFlow) -> Plan | None:
    """The edits the matching rules make, or None when no rule matches."""
    req = flow.request
    candidates = config.index.candidates(req.host, req.port)
    if not candidates:
        return None
    streaming = is_streaming(req, config.stream.json_field)
    # all conditions but filters depend only on the request's shape: judge each shape once
    method, path = req.method.upper(), req.path.partition("?")[0]
    shape = (req.host, req.port, method, path, streaming)
    judged = config.index.requests.get(shape)
    if judged is None:
        maybe = tuple(r for r in candidates if r.match.matches_shape(method, path, streaming))
        filtered = any(r.match.filter for r in maybe)
        plan = _plan(config, maybe, streaming) if maybe and not filtered else None
        judged = _remember(config.index.requests, shape, (maybe, filtered, plan))
    maybe, filtered, plan = judged
    if not filtered:
        return plan
    if req.raw_content and any(r.match.filter_reads_body for r in maybe):
        with decoded_request(req, MAX_JSON_BODY):  # `~b` then never decodes a compressed body whole
            rules = tuple(r for r in maybe if r.match.filter is None or r.match.filter(flow))
    else:
        rules = tuple(r for r in maybe if r.match.filter is None or r.match.filter(flow))
    return _plan(config, rules, streaming) if rules else None


def _plan(config: Config, rules: tuple[Rule, ...], streaming: bool) -> Plan:
    """The edits depend only on which rules matched: they are folded once per combination."""
    key = (streaming, *(id(r) for r in rules))
    plan = config.index.plans.get(key)
    if plan is None:
        plan = _remember(config.index.plans, key, _fold(rules, streaming))
    return plan


def _remember(memo: dict, key: tuple, value):
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


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


@dataclass(frozen=True)
class _Compiled:
    """A plan made ready to apply: everything that does not depend on drawn values, done once."""

    head: str  # the first line of the flow comment
    # lower-case name -> (name, value; None removes), in plan order; drawn values are filled in per request
    headers: dict[bytes, tuple[bytes, bytes | None]]
    cookies: dict[str, str | None]
    steps: tuple[str | tuple[str, Edit], ...]  # comment lines, and (kind, edit) where a value is drawn
    drawn: bool  # any (kind, edit) steps at all


def _compile(plan: Plan) -> _Compiled:
    headers: dict[bytes, tuple[bytes, bytes | None]] = {}
    cookies: dict[str, str | None] = {}
    steps: list[str | tuple[str, Edit]] = []
    for kind, edits in (("header", plan.headers), ("cookie", plan.cookies)):
        for edit in edits:
            label = _label(kind, edit)
            value: str | None = None
            if edit.value is None:
                steps.append(f"{label} removed by {edit.rule}")
            elif edit.value.uses:
                steps.append((kind, edit))  # its place in `headers`/`cookies` is kept; filled in per request
            else:
                value = edit.value.render({})
                if not _fits(kind, value):
                    steps.append(f"{label} not set by {edit.rule}: the value cannot go in a {kind}")
                    continue
                steps.append(f"{label} ← {edit.rule}")
            if kind == "cookie":
                cookies[edit.name] = value
            else:
                headers[edit.name.lower().encode()] = (_encode(edit.name), None if value is None else _encode(value))
    kind = "streaming" if plan.streaming else "non-streaming"
    head = f"rules: {', '.join(r.name for r in plan.rules)} ({kind} request)"
    return _Compiled(head, headers, cookies, tuple(steps), any(not isinstance(s, str) for s in steps))


def apply_plan(plan: Plan, request: http.Request, values: Mapping[str, str]) -> list[str]:
    """Edit the request; returns one line per edit for the flow's comment.

    An edit whose placeholder has no value (its source failed) is skipped and
    the line says so.
    """
    compiled = plan.compiled
    headers, cookies = compiled.headers, compiled.cookies
    if not compiled.drawn:
        lines = list(compiled.steps)  # all strings
    else:
        headers, cookies = dict(headers), dict(cookies)  # the plan's own stay as compiled
        lines = []
        for step in compiled.steps:
            if isinstance(step, str):
                lines.append(step)
                continue
            kind, edit = step
            line, rendered = _render(kind, edit, values)
            lines.append(line)
            if kind == "cookie":
                if rendered is None:
                    del cookies[edit.name]
                else:
                    cookies[edit.name] = rendered
            else:
                lk = edit.name.lower().encode()
                if rendered is None:
                    del headers[lk]
                else:
                    headers[lk] = (headers[lk][0], _encode(rendered))
    if b"cookie" in headers:  # the Cookie header itself is edited: cookie edits apply to the result
        _edit_fields(request.headers, headers, {})
        headers = {}
    if headers or cookies:
        _edit_fields(request.headers, headers, cookies)
    return lines


def _render(kind: str, edit: Edit, values: Mapping[str, str]) -> tuple[str, str | None]:
    """The comment line for an edit with drawn values, and its value (None: skipped)."""
    assert edit.value is not None
    label = _label(kind, edit)
    uses = edit.value.sorted_uses
    missing = [p for p in uses if p not in values]
    if missing:
        return f"{label} not set by {edit.rule}: no {', '.join(missing)} value", None
    rendered = edit.value.render(values)
    secrets = ", ".join(f"{p} {mask(values[p])}" for p in uses)
    if not _fits(kind, rendered):
        return f"{label} not set by {edit.rule}: the {secrets} value cannot go in a {kind}", None
    return f"{label} ← {edit.rule} ({secrets})", rendered


def _label(kind: str, edit: Edit) -> str:
    return edit.name if kind == "header" else f"cookie {edit.name}"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _edit_fields(
    headers: http.Headers, edits: dict[bytes, tuple[bytes, bytes | None]], cookies: dict[str, str | None]
) -> None:
    """Every header and cookie edit in one pass over the fields.

    The result is that of `headers[name] = value` and `headers.pop(name)` done one by one, then
    `headers.set_all("Cookie", edited values)`: each of those is a pass of its own in mitmproxy's
    MultiDict. A header keeps the place and spelling of its first occurrence, repeats go, and new
    headers are appended in plan order; edited Cookie values take the places of the old ones.
    """
    fields: list[tuple[bytes, bytes] | None] = []
    done: set[bytes] = set()
    cookie_at: list[tuple[int, bytes]] = []  # the Cookie fields' places and spellings, filled in below
    old_cookies: list[str] = []
    for field in headers.fields:
        lk = field[0].lower()
        if cookies and lk == b"cookie":
            cookie_at.append((len(fields), field[0]))
            old_cookies.append(field[1].decode("utf-8", "surrogateescape"))
            fields.append(None)
        elif lk not in edits:
            fields.append(field)
        elif lk not in done:
            done.add(lk)
            value = edits[lk][1]
            if value is not None:
                fields.append((field[0], value))
    for lk, (name, value) in edits.items():
        if lk not in done and value is not None:
            fields.append((name, value))
    if cookies:
        new = [_encode(v) for v in edit_cookie_headers(old_cookies, cookies)]
        for (at, name), value in zip(cookie_at, new):
            fields[at] = (name, value)
        # as set_all: places left over stay empty; values left over go at the end
        fields.extend((b"Cookie", value) for value in new[len(cookie_at) :])
    headers.fields = tuple(f for f in fields if f is not None)


_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COOKIE_UNSAFE = re.compile(r"[\x00-\x20\x7f;,\\\"]")


def _fits(kind: str, value: str) -> bool:
    """A drawn value (a token or captcha from a file or command) must not break out of its place."""
    return not (_COOKIE_UNSAFE if kind == "cookie" else _HEADER_UNSAFE).search(value)


def describe(plan: Plan, lines: list[str]) -> str:
    """The mitmweb comment of a rewritten flow."""
    return "\n".join([plan.compiled.head, *lines])
