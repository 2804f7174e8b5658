"""Decide what the rules do to one request, then do it: the pure part of the request side.

`plan_request` judges every rule against the request as the client sent it and
folds the matching rules into one set of edits (for the same header, cookie or
body field a later rule wins). `apply_plan` then performs the edits with the
values drawn for this request. Keeping the two apart means no rule ever sees
another rule's changes (the trap of mitmproxy issue #4245). The hook that calls
them, and draws the values, is addon/rewriter.py.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mitmproxy import http

from addon import comment, jsonbody
from addon.config import Config, Rule
from addon.cookies import edit_cookie_headers
from addon.masking import mask
from addon.decoding import decoded_request
from addon.schema import JsonLiteral
from addon.streamdetect import MAX_JSON_BODY, is_streaming
from addon.template import TOKEN, Template

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edit:
    name: str  # as the rule wrote it (a body field's dotted path)
    value: Template | JsonLiteral | None  # None removes; a JsonLiteral only in body edits
    rule: str  # the name of the rule that decided it


@dataclass(frozen=True)
class Plan:
    rules: tuple[Rule, ...]
    streaming: bool
    headers: tuple[Edit, ...]
    cookies: tuple[Edit, ...]
    body: tuple[Edit, ...] = ()
    public: frozenset[str] = frozenset()  # values that comments may show whole (secret: false)

    @functools.cached_property
    def uses(self) -> frozenset[str]:  # computed once per plan; plans are memoised per matched-rule set
        edits = self.headers + self.cookies + self.body
        return frozenset().union(*(e.value.uses for e in edits if isinstance(e.value, Template)))

    @functools.cached_property
    def named(self) -> tuple[str, ...]:
        """The named values the plan uses: all but {token}, which the rotation draws."""
        return tuple(sorted(self.uses - {TOKEN}))

    @functools.cached_property
    def compiled(self) -> _Compiled:
        return _compile(self)

    @functools.cached_property
    def dynamic(self) -> Plan:
        """Only the edits whose values are drawn per request ({token}, {captcha}): what a retry changes.
        Computed once per plan, so its compiled form is too."""

        def drawn(edits: tuple[Edit, ...]) -> tuple[Edit, ...]:
            return tuple(e for e in edits if isinstance(e.value, Template) and e.value.uses)

        # body edits are made again all of them, in order, when any is drawn: a later one may remove
        # or replace what holds an earlier one (params: null after params.x: "{token}")
        body = self.body if drawn(self.body) else ()
        return replace(self, headers=drawn(self.headers), cookies=drawn(self.cookies), body=body)


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
        plan = _remember(config.index.plans, key, _fold(rules, streaming, config.public))
    return plan


def _remember(memo: dict, key: tuple, value):
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _fold(rules: tuple[Rule, ...], streaming: bool, public: frozenset[str] = frozenset()) -> Plan:
    headers: dict[str, Edit] = {}
    cookies: dict[str, Edit] = {}
    body: dict[str, Edit] = {}
    for rule in rules:
        for name, value in rule.headers:
            headers.pop(name.lower(), None)  # a later rule's spelling and position win
            headers[name.lower()] = Edit(name, value, rule.name)
        for name, value in rule.cookies:
            cookies.pop(name, None)
            cookies[name] = Edit(name, value, rule.name)
        for path, body_value in rule.body:
            body.pop(path, None)  # and its place: a later rule's edit is made after the earlier ones
            body[path] = Edit(path, body_value, rule.name)
    used = frozenset().union(*(r.uses for r in rules))
    return Plan(rules, streaming, tuple(headers.values()), tuple(cookies.values()), tuple(body.values()), public & used)


@dataclass(frozen=True, slots=True)
class _Removal:
    """The comment line of a removal, kept only when the request had what it removes."""

    line: str
    key: bytes | str  # as the edit pass finds them: a header's lower-case name (bytes), a cookie's name (str)
    edit: Edit


@dataclass(frozen=True)
class _Compiled:
    """A plan made ready to apply: everything that does not depend on drawn values, done once."""

    head: str  # the first line of the flow comment
    # lower-case name -> (name, value; None removes), in plan order; drawn values are filled in per request
    headers: dict[bytes, tuple[bytes, bytes | None]]
    cookies: dict[str, str | None]
    # comment lines; removals, whose lines depend on the request; (kind, edit) where a value is drawn
    steps: tuple[str | _Removal | tuple[str, Edit], ...]
    drawn: bool  # any (kind, edit) steps at all
    removals: bool  # any _Removal steps at all
    # body edits, in plan order: (path, edit); empty for most plans, which then never parse a body
    body: tuple[tuple[tuple[str, ...], Edit], ...]
    body_rules: str  # the rules that edit the body, for the line that says the body was not edited
    public: frozenset[str]


def _compile(plan: Plan) -> _Compiled:
    headers: dict[bytes, tuple[bytes, bytes | None]] = {}
    cookies: dict[str, str | None] = {}
    steps: list[str | _Removal | tuple[str, Edit]] = []
    for kind, edits in (("header", plan.headers), ("cookie", plan.cookies)):
        for edit in edits:
            label = _label(kind, edit)
            value: str | None = None
            if edit.value is None:
                key = edit.name if kind == "cookie" else edit.name.lower().encode()
                steps.append(_Removal(f"{label} removed by {edit.rule}", key, edit))
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
    drawn = any(isinstance(s, tuple) for s in steps)
    removals = any(isinstance(s, _Removal) for s in steps)
    body = tuple((tuple(e.name.split(".")), e) for e in plan.body)
    body_rules = ", ".join(dict.fromkeys(e.rule for e in plan.body))
    return _Compiled(head, headers, cookies, tuple(steps), drawn, removals, body, body_rules, plan.public)


def apply_plan(
    plan: Plan, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None = None
) -> list[str]:
    """Edit the request; returns one line per edit for the flow's comment.

    An edit whose placeholder has no value (its source failed) is skipped and
    the line says so. A removal has a line only when the request had the header,
    cookie or body field; `removed`, when given, gets those removals' edits. Body
    edits need a JSON object: any other body is left as it came, and one line
    (and a debug log line) says why.
    """
    compiled = plan.compiled
    headers, cookies = compiled.headers, compiled.cookies
    lines: list | tuple  # of the steps' strings and _Removal, until the edits are done
    if not compiled.drawn:
        lines = compiled.steps  # no (kind, edit) steps
    else:
        headers, cookies = dict(headers), dict(cookies)  # the plan's own stay as compiled
        lines = []
        for step in compiled.steps:
            if not isinstance(step, tuple):
                lines.append(step)
                continue
            kind, edit = step
            line, rendered = _render(kind, edit, values, compiled.public)
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
    found: set[bytes | str] | None = set() if compiled.removals else None
    if b"cookie" in headers:  # the Cookie header itself is edited: cookie edits apply to the result
        _edit_fields(request.headers, headers, {}, found)
        headers = {}
    if headers or cookies:
        _edit_fields(request.headers, headers, cookies, found)
    body_lines = _edit_body(compiled, request, values, removed) if compiled.body else None
    if found is None:
        return list(lines) if body_lines is None else [*lines, *body_lines]
    # a removal is listed only when the request had the header or cookie: it removed something
    if removed is not None:
        removed.update(s.edit for s in lines if isinstance(s, _Removal) and s.key in found)
    kept = [s.line if isinstance(s, _Removal) else s for s in lines if not isinstance(s, _Removal) or s.key in found]
    if body_lines:
        kept += body_lines
    return kept


def _edit_body(compiled: _Compiled, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None) -> list[str]:
    """Every body edit, on the body parsed once and written once; one comment line per edit, or one
    line saying why the body was left as it came."""
    try:
        doc = jsonbody.read_object(request)
    except jsonbody.NotEditable as e:
        return [_body_skipped(compiled, request, str(e))]
    lines: list[str] = []
    changed = False
    for path, edit in compiled.body:
        label = _label("body", edit)
        if edit.value is None:
            if jsonbody.remove_field(doc, path):  # listed only when there was one, as headers and cookies
                changed = True
                lines.append(f"{label} removed by {edit.rule}")
                if removed is not None:
                    removed.add(edit)
            continue
        if isinstance(edit.value, JsonLiteral):
            value, line = edit.value.value(), f"{label} ← {edit.rule}"
        elif edit.value.uses:
            line, value = _render("body", edit, values, compiled.public)
            if value is None:
                lines.append(line)
                continue
        else:
            value, line = edit.value.render({}), f"{label} ← {edit.rule}"
        why = jsonbody.set_field(doc, path, value)
        if why is None:
            changed = True
            lines.append(line)
        else:
            lines.append(f"{label} not set by {edit.rule}: {why}")
    if changed:
        try:
            jsonbody.write_object(request, doc)
        except jsonbody.NotEditable as e:
            return [_body_skipped(compiled, request, str(e))]
    return lines


def _body_skipped(compiled: _Compiled, request: http.Request, why: str) -> str:
    logger.debug(f"rules: body of {request.method} {request.pretty_url} not edited ({compiled.body_rules}): {why}")
    return f"body not edited by {compiled.body_rules}: {why}"


def _render(kind: str, edit: Edit, values: Mapping[str, str], public: frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """The comment line for an edit with drawn values, and its value (None: skipped)."""
    assert isinstance(edit.value, Template)
    label = _label(kind, edit)
    uses = edit.value.sorted_uses
    missing = [p for p in uses if p not in values]
    if missing:
        return f"{label} not set by {edit.rule}: no {', '.join(missing)} value", None
    rendered = edit.value.render(values)
    secrets = ", ".join(f"{p} {values[p] if p in public else mask(values[p])}" for p in uses)
    if not _fits(kind, rendered):
        return f"{label} not set by {edit.rule}: the {secrets} value cannot go in a {kind}", None
    return f"{label} ← {edit.rule} ({secrets})", rendered


def _label(kind: str, edit: Edit) -> str:
    return edit.name if kind == "header" else f"{kind} {edit.name}"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _edit_fields(
    headers: http.Headers,
    edits: dict[bytes, tuple[bytes, bytes | None]],
    cookies: dict[str, str | None],
    found: set[bytes | str] | None = None,
) -> None:
    """Every header and cookie edit in one pass over the fields.

    The result is that of `headers[name] = value` and `headers.pop(name)` done one by one, then
    `headers.set_all("Cookie", edited values)`: each of those is a pass of its own in mitmproxy's
    MultiDict. A header keeps the place and spelling of its first occurrence, repeats go, and new
    headers are appended in plan order; edited Cookie values take the places of the old ones.
    `found`, when given, gets the lower-case names of the edited headers the fields had, and the
    names of the edited cookies.
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
        new = [_encode(v) for v in edit_cookie_headers(old_cookies, cookies, found)]
        for (at, name), value in zip(cookie_at, new):
            fields[at] = (name, value)
        # as set_all: places left over stay empty; values left over go at the end
        fields.extend((b"Cookie", value) for value in new[len(cookie_at) :])
    headers.fields = tuple(f for f in fields if f is not None)
    if found is not None:
        found.update(done)


_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COOKIE_UNSAFE = re.compile(r"[\x00-\x20\x7f;,\\\"]")


def _fits(kind: str, value: str) -> bool:
    """A drawn value (a token or captcha from a file or command) must not break out of its place
    (a JSON string holds any text: the serialiser escapes it)."""
    return kind == "body" or not (_COOKIE_UNSAFE if kind == "cookie" else _HEADER_UNSAFE).search(value)


def describe(plan: Plan, lines: list[str]) -> str:
    """The mitmweb comment of a rewritten flow."""
    return comment.join([plan.compiled.head, *lines])
