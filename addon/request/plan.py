"""Decide what the rules do to one request, then do it: the pure part of the request side.

`plan_request` judges every rule against the request as the client sent it and
folds the matching rules into one set of edits (for the same header, cookie or
body field a later rule wins). `apply_plan` then performs the edits with the
values drawn for this request. Keeping the two apart means no rule ever sees
another rule's changes (the trap of mitmproxy issue #4245). The hook that calls
them, and draws the values, is addon/request/rewriter.py.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mitmproxy import http

from addon.request import jsonbody
from addon.request.bodyworker import WORKER, BodyWorker, WorkerFailed, is_large
from addon.request.cookies import edit_cookie_headers
from addon.request.decoding import decoded_request
from addon.request.streamdetect import MAX_JSON_BODY, is_streaming, warn_overlong
from addon.rules.records import Config, Rule
from addon.rules.template import TOKEN, Template
from addon.rules.types import JsonLiteral
from addon.util import comment
from addon.util.masking import mask

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
    pool: str | None = None  # the token pool its {token:POOL} edits draw from (None: the only pool)

    @functools.cached_property
    def uses(self) -> frozenset[str]:  # computed once per plan; plans are memoised per matched-rule set
        edits = self.headers + self.cookies + self.body
        return frozenset().union(*(e.value.uses for e in edits if isinstance(e.value, Template)))

    @functools.cached_property
    def named(self) -> tuple[str, ...]:
        """The named values the plan uses: all but {token}, which the rotation draws."""
        return tuple(sorted(self.uses - {TOKEN}))

    @functools.cached_property
    def token_cookies(self) -> tuple[str, ...]:
        """The cookies whose whole value is {token}: a Set-Cookie for one renews the account (addon/tokens/sessions.py)."""
        whole = lambda t: [p for p in t.parts if p] == [(TOKEN,)]  # noqa: E731
        return tuple(e.name for e in self.cookies if isinstance(e.value, Template) and whole(e.value))

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
    """The edits the matching rules make, or None when no rule matches. The body is read here, on
    this thread, whatever its size: the request hook calls `plan_request_off_loop`."""
    req = flow.request
    candidates = config.index.candidates(req.host, req.port)
    if not candidates:
        return None
    streaming = is_streaming(req, config.stream.json_field)
    maybe, filtered, plan = _judged(config, req, candidates, streaming)
    if not filtered:
        return plan
    if req.raw_content and any(r.match.filter_reads_body for r in maybe):
        with decoded_request(req, MAX_JSON_BODY):  # `~b` then never decodes a compressed body whole
            rules = tuple(r for r in maybe if r.match.filter is None or r.match.filter(flow))
    else:
        rules = tuple(r for r in maybe if r.match.filter is None or r.match.filter(flow))
    return _plan(config, rules, streaming) if rules else None


async def plan_request_off_loop(config: Config, flow: http.HTTPFlow, worker: BodyWorker = WORKER) -> Plan | None:
    """As `plan_request`; a body over bodyworker.SMALL_BODY is decoded and parsed, and `~b` filters
    judged on it, in the worker process, with one decoding for both. A worker that fails leaves the
    request not streaming and its `~b` filters unmatched (with a warning)."""
    req = flow.request
    candidates = config.index.candidates(req.host, req.port)
    if not candidates:
        return None
    encoding = req.headers.get("content-encoding")
    if not is_large(req.raw_content, encoding):
        return plan_request(config, flow)
    logger.debug(f"rules: the body of {req.method} {req.pretty_url} ({len(req.raw_content or b'')} bytes as sent) "
                 "is read in the body worker")  # fmt: skip
    readers = tuple(r for r in candidates if r.match.filter_reads_body)  # judged with the stream detection
    filters = tuple(r.match.filter.pattern for r in readers)  # type: ignore[union-attr]
    state = None
    if readers:  # the flow for the filters; its body goes once, as the job's body
        state = flow.get_state()
        state["request"] = {**state["request"], "content": None}
        state["metadata"] = {}  # what addons keep on a flow need not pickle, and no filter reads it
    try:
        _, (streaming, overlong, passes) = await worker.run(
            "judge", req.raw_content, encoding, config.stream.json_field, state, filters
        )
    except WorkerFailed as e:
        logger.warning(f"rules: the body of {req.method} {req.pretty_url} was not read ({e}): it counts as not "
                       "streaming, and no `~b` filter matches it")  # fmt: skip
        streaming, overlong, passes = False, False, (False,) * len(readers)
    if overlong:
        warn_overlong(req, encoding or "")
    streaming = streaming or any(b"text/event-stream" in v for k, v in req.headers.fields if k.lower() == b"accept")
    maybe, filtered, plan = _judged(config, req, candidates, streaming)
    if not filtered:
        return plan
    judged = {id(r): passed for r, passed in zip(readers, passes)}
    rules = tuple(r for r in maybe if r.match.filter is None or judged.get(id(r), False) or (
        id(r) not in judged and r.match.filter(flow)))  # fmt: skip
    return _plan(config, rules, streaming) if rules else None


def _judged(config: Config, req: http.Request, candidates: tuple[Rule, ...], streaming: bool) -> tuple:
    """(the rules whose shape matches, whether any has a filter, the plan when none has): all
    conditions but filters depend only on the request's shape, so each shape is judged once."""
    method, path = req.method.upper(), req.path.partition("?")[0]
    shape = (req.host, req.port, method, path, streaming)
    judged = config.index.requests.get(shape)
    if judged is None:
        maybe = tuple(r for r in candidates if r.match.matches_shape(method, path, streaming))
        filtered = any(r.match.filter for r in maybe)
        plan = _plan(config, maybe, streaming) if maybe and not filtered else None
        judged = _remember(config.index.requests, shape, (maybe, filtered, plan))
    return judged


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
    pool, edits = _one_pool(rules, (headers, cookies, body))
    return Plan(rules, streaming, *edits, public & used, pool)


def _one_pool(
    rules: tuple[Rule, ...], edits: tuple[dict[str, Edit], ...]
) -> tuple[str | None, tuple[tuple[Edit, ...], ...]]:
    """The pool the plan's tokens come from, and its edits. A request carries one account: when rules
    for different pools match one request, the last of them decides the pool, and the others'
    token edits are left out (with a warning, once per such set of rules)."""
    # the edits that draw a token, of those that a later rule's edit of the same place did not replace
    drawing = [e for group in edits for e in group.values() if isinstance(e.value, Template) and TOKEN in e.value.uses]
    pools = {e.value.pool for e in drawing}
    if len(pools) <= 1:
        return next(iter(pools), None), tuple(tuple(e.values()) for e in edits)
    order = {r.name: i for i, r in enumerate(rules)}
    last = max(drawing, key=lambda e: order[e.rule])
    pool = last.value.pool
    left = [e for e in drawing if e.value.pool != pool]
    names = ", ".join(sorted({e.rule for e in left}))
    logger.warning(f"rules: {names} and {last.rule} match the same request but draw tokens from different pools; "
                   f"it is sent with a token of {pool} ({last.rule} is the later rule), without {names}'s token edits")
    return pool, tuple(tuple(e for e in group.values() if e not in left) for group in edits)


class Skipped(str):
    """A comment line saying an edit was not made (`what`: its place, as the line names it: "X-Header",
    "cookie c", "body a.b"), or that the body was not edited at all (`what` == "body"). The flow comment
    shows the text; explain lists such lines as notes by what they are, never by their wording."""

    what: str

    def __new__(cls, text: str, what: str) -> Skipped:
        line = super().__new__(cls, text)
        line.what = what
        return line


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
                    steps.append(Skipped(f"{label} not set by {edit.rule}: the value cannot go in a {kind}", label))
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
    (and a debug log line) says why. The body is read here, on this thread,
    whatever its size: the hooks call `apply_plan_off_loop`.
    """
    compiled = plan.compiled
    lines, found = _edit_heads(compiled, request, values)
    body_lines = _edit_body(compiled, request, values, removed) if compiled.body else None
    return _comment_lines(lines, found, removed, body_lines)


async def apply_plan_off_loop(
    plan: Plan, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None = None,
    worker: BodyWorker = WORKER,
) -> list[str]:  # fmt: skip
    """As `apply_plan`; body edits on a body over bodyworker.SMALL_BODY are made in the worker
    process (up to MAX_JSON_BODY, as any body edit). A worker that fails leaves the body as it came,
    and the comment line says why."""
    compiled = plan.compiled
    lines, found = _edit_heads(compiled, request, values)
    body_lines = None
    if compiled.body:
        if is_large(request.raw_content, request.headers.get("content-encoding")):
            body_lines = await _edit_body_in(worker, compiled, request, values, removed)
        else:
            body_lines = _edit_body(compiled, request, values, removed)
    return _comment_lines(lines, found, removed, body_lines)


def _edit_heads(
    compiled: _Compiled, request: http.Request, values: Mapping[str, str]
) -> tuple[list | tuple, set | None]:
    """Every header and cookie edit; their comment lines (and removals, kept when `found` names
    them), and `found` (None when the plan removes nothing)."""
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
    return lines, found


def _comment_lines(
    lines: list | tuple, found: set | None, removed: set[Edit] | None, body_lines: list[str] | None
) -> list[str]:
    if found is None:
        return list(lines) if body_lines is None else [*lines, *body_lines]
    # a removal is listed only when the request had the header or cookie: it removed something
    if removed is not None:
        removed.update(s.edit for s in lines if isinstance(s, _Removal) and s.key in found)
    kept = [s.line if isinstance(s, _Removal) else s for s in lines if not isinstance(s, _Removal) or s.key in found]
    if body_lines:
        kept += body_lines
    return kept


# a body edit step: the edit, its comment line when it is made, and its place in the edits sent to
# jsonbody.edit (None: not sent, the line says why)
_BodyStep = tuple[Edit, str, "int | None"]


_BodyEdit = tuple[tuple[str, ...], bool, object]  # as jsonbody.edit takes them: (path, remove, value)


def _body_edits(compiled: _Compiled, values: Mapping[str, str]) -> tuple[tuple[_BodyEdit, ...], list[_BodyStep]]:
    edits: list[_BodyEdit] = []
    steps: list[_BodyStep] = []
    for path, edit in compiled.body:
        label = _label("body", edit)
        if edit.value is None:
            steps.append((edit, f"{label} removed by {edit.rule}", len(edits)))
            edits.append((path, True, None))
            continue
        if isinstance(edit.value, JsonLiteral):
            value, line = edit.value.value(), f"{label} ← {edit.rule}"
        elif edit.value.uses:
            line, value = _render("body", edit, values, compiled.public)
            if value is None:
                steps.append((edit, line, None))
                continue
        else:
            value, line = edit.value.render({}), f"{label} ← {edit.rule}"
        steps.append((edit, line, len(edits)))
        edits.append((path, False, value))
    return tuple(edits), steps


def _edit_body(compiled: _Compiled, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None) -> list[str]:
    """Every body edit, on the body parsed once and written once; one comment line per edit, or one
    line saying why the body was left as it came."""
    edits, steps = _body_edits(compiled, values)
    try:
        data, outcomes = jsonbody.edit(request.raw_content, request.headers.get("content-encoding"), edits)
    except jsonbody.NotEditable as e:
        return [_body_skipped(compiled, request, str(e))]
    return _body_done(request, data, outcomes, steps, removed)


async def _edit_body_in(
    worker: BodyWorker, compiled: _Compiled, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None
) -> list[str]:
    """As `_edit_body`, in the worker process."""
    edits, steps = _body_edits(compiled, values)
    logger.debug(f"rules: the body of {request.method} {request.pretty_url} is edited in the body worker")
    try:
        data, outcomes = await worker.run("edit", request.raw_content, request.headers.get("content-encoding"), edits)
    except jsonbody.NotEditable as e:
        return [_body_skipped(compiled, request, str(e))]
    except WorkerFailed as e:
        logger.warning(f"rules: body of {request.method} {request.pretty_url} not edited ({compiled.body_rules}): "
                       f"the body worker failed: {e}")  # fmt: skip
        return [Skipped(f"body not edited by {compiled.body_rules}: the body worker failed: {e}", "body")]
    return _body_done(request, data, outcomes, steps, removed)


def _body_done(
    request: http.Request, data: bytes | None, outcomes: tuple, steps: list[_BodyStep], removed: set[Edit] | None
) -> list[str]:
    if data is not None:
        jsonbody.set_body(request, data)
    lines: list[str] = []
    for edit, line, at in steps:
        if at is None:
            lines.append(line)
        elif edit.value is None:  # a removal is listed only when there was a field, as headers and cookies
            if outcomes[at]:
                lines.append(line)
                if removed is not None:
                    removed.add(edit)
        elif outcomes[at] is None:
            lines.append(line)
        else:
            label = _label("body", edit)
            lines.append(Skipped(f"{label} not set by {edit.rule}: {outcomes[at]}", label))
    return lines


def _body_skipped(compiled: _Compiled, request: http.Request, why: str) -> str:
    logger.debug(f"rules: body of {request.method} {request.pretty_url} not edited ({compiled.body_rules}): {why}")
    return Skipped(f"body not edited by {compiled.body_rules}: {why}", "body")


def _render(kind: str, edit: Edit, values: Mapping[str, str], public: frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """The comment line for an edit with drawn values, and its value (None: skipped)."""
    assert isinstance(edit.value, Template)
    label = _label(kind, edit)
    uses = edit.value.sorted_uses
    missing = [p for p in uses if p not in values]
    if missing:
        return Skipped(f"{label} not set by {edit.rule}: no {', '.join(missing)} value", label), None
    rendered = edit.value.render(values)
    secrets = ", ".join(f"{p} {values[p] if p in public else mask(values[p])}" for p in uses)
    if not _fits(kind, rendered):
        return Skipped(f"{label} not set by {edit.rule}: the {secrets} value cannot go in a {kind}", label), None
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
