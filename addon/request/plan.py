"""Decide what the rules do to one request: which rules match, and the edits they fold into.

`plan_request` judges every rule against the request as the client sent it and
folds the matching rules into one set of edits (for the same header, cookie or
body field a later rule wins). `apply_plan` (addon/request/apply.py) then performs
the edits with the values drawn for this request. Keeping the two apart means no
rule ever sees another rule's changes (the trap of mitmproxy issue #4245). The hook
that calls them, and draws the values, is addon/request/rewriter.py.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

from mitmproxy import http

from addon.request.bodyworker import WORKER, BodyWorker, WorkerFailed, is_large
from addon.request.decoding import decoded_request
from addon.request.streamdetect import MAX_JSON_BODY, Heads, is_streaming, read_heads, warn_overlong
from addon.rules.records import Config, Rule
from addon.rules.template import TOKEN, Template
from addon.rules.types import JsonLiteral
from addon.util import comment

if TYPE_CHECKING:
    from addon.request.apply import Compiled

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
    def records(self) -> dict:
        """What the request hook keeps of a flow this plan rewrote (rewriter.Rewritten), by the set of
        values that went into it: made once per such set."""
        return {}

    @functools.cached_property
    def compiled(self) -> Compiled:
        from addon.request.apply import compile_plan  # not at load: apply.py imports this module

        return compile_plan(self)

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


def plan_request(
    config: Config, flow: http.HTTPFlow, heads: Heads | None = None, candidates: tuple[Rule, ...] | None = None
) -> Plan | None:
    """The edits the matching rules make, or None when no rule matches. The body is read here, on
    this thread, whatever its size: the request hook calls `plan_request_off_loop`. `heads` and
    `candidates` (the rules for its host): the request's, if they have been read."""
    req = flow.request
    if candidates is None:
        candidates = config.index.candidates(req.host, req.port)
    if not candidates:
        return None
    streaming = is_streaming(req, config.stream.json_field, heads)
    shape = _judged(config, req, candidates, streaming)
    if not shape.filtered:
        return shape.plan
    if req.raw_content and shape.reads_body:
        with decoded_request(req, MAX_JSON_BODY):  # `~b` then never decodes a compressed body whole
            passes = tuple(bool(r.match.filter(flow)) for r in shape.filtered)  # type: ignore[misc]
    else:
        passes = tuple(bool(r.match.filter(flow)) for r in shape.filtered)  # type: ignore[misc]
    plan = shape.by_passes.get(passes, _UNKNOWN)
    if plan is _UNKNOWN:
        failed = {id(r) for r, passed in zip(shape.filtered, passes) if not passed}
        rules = tuple(r for r in shape.maybe if id(r) not in failed)
        plan = _remember(shape.by_passes, passes, _plan(config, rules, streaming) if rules else None, _PASSES_LIMIT)
    return plan  # type: ignore[return-value]


async def plan_request_off_loop(config: Config, flow: http.HTTPFlow, worker: BodyWorker = WORKER) -> Plan | None:
    """As `plan_request`; a body over bodyworker.SMALL_BODY is decoded and parsed, and `~b` filters
    judged on it, in the worker process, with one decoding for both. A worker that fails leaves the
    request not streaming and its `~b` filters unmatched (with a warning)."""
    req = flow.request
    candidates = config.index.candidates(req.host, req.port)
    if not candidates:
        return None
    heads = read_heads(req)
    encoding = heads.encoding
    if not is_large(req.raw_content, encoding):
        return plan_request(config, flow, heads, candidates)
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
    streaming = streaming or heads.accepts_events
    shape = _judged(config, req, candidates, streaming)
    if not shape.filtered:
        return shape.plan
    judged = {id(r): passed for r, passed in zip(readers, passes)}
    rules = tuple(r for r in shape.maybe if r.match.filter is None or judged.get(id(r), False) or (
        id(r) not in judged and r.match.filter(flow)))  # fmt: skip
    return _plan(config, rules, streaming) if rules else None


class _Shape(NamedTuple):
    """What a request's shape (host, port, method, path, streaming) decides."""

    maybe: tuple[Rule, ...]  # the rules whose conditions but filters match it
    filtered: tuple[Rule, ...]  # those of them with a filter, judged per request
    reads_body: bool  # one of those filters reads the body (`~b`)
    plan: Plan | None  # the plan of `maybe`, when none of them has a filter
    by_passes: dict[tuple[bool, ...], Plan | None]  # the plan by which of `filtered` pass (filled in as they come)


_UNKNOWN = object()
_PASSES_LIMIT = 64  # plans kept per shape, by which of its filters pass


def _judged(config: Config, req: http.Request, candidates: tuple[Rule, ...], streaming: bool) -> _Shape:
    """All conditions but filters depend only on the request's shape, so each shape is judged once."""
    method, path = req.method.upper(), req.path.partition("?")[0]
    at = (req.host, req.port, method, path, streaming)
    shape = config.index.requests.get(at)
    if shape is None:
        maybe = tuple(r for r in candidates if r.match.matches_shape(method, path, streaming))
        filtered = tuple(r for r in maybe if r.match.filter)
        plan = _plan(config, maybe, streaming) if maybe and not filtered else None
        reads_body = any(r.match.filter_reads_body for r in filtered)
        shape = _remember(config.index.requests, at, _Shape(maybe, filtered, reads_body, plan, {}))
    return shape  # type: ignore[return-value]


def _plan(config: Config, rules: tuple[Rule, ...], streaming: bool) -> Plan:
    """The edits depend only on which rules matched: they are folded once per combination."""
    key = (streaming, *(id(r) for r in rules))
    plan = config.index.plans.get(key)
    if plan is None:
        plan = _remember(config.index.plans, key, _fold(rules, streaming, config.public))
    return plan


def _remember(memo: dict, key: tuple, value, limit: int = _MEMO_LIMIT):
    if len(memo) >= limit:
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
    "cookie c", "body a.b"). The flow comment shows the text; explain lists such lines as notes by what
    they are, never by their wording."""

    what: str

    def __new__(cls, text: str, what: str) -> Skipped:
        line = super().__new__(cls, text)
        line.what = what
        return line

    def __reduce__(self):  # (pickle and copy: it is a str with a place)
        return type(self), (str(self), self.what)


class BodySkipped(Skipped):
    """A comment line saying the body was not edited at all (not JSON, too large, the worker failed)."""

    def __new__(cls, text: str, what: str = "body") -> BodySkipped:
        return super().__new__(cls, text, what)  # type: ignore[return-value]


def describe(plan: Plan, lines: list[str]) -> str:
    """The mitmweb comment of a rewritten flow."""
    return comment.join([plan.compiled.head, *lines])

