"""Make a plan's edits on one request: the plan compiled once (all that does not depend on the values
drawn), then, per request, the drawn values filled in, every header and cookie edit made in one pass
over the fields, and one line per edit for the flow's comment. The body's edits are applybody.py's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mitmproxy import http

from addon.request.applybody import edit_body, edit_body_in, edit_label, render_edit, value_fits
from addon.request.bodyworker import WORKER, BodyWorker, is_large
from addon.request.cookies import edit_cookie_headers
from addon.request.plan import Edit, Plan, Skipped


@dataclass(frozen=True, slots=True)
class _Removal:
    """The comment line of a removal, kept only when the request had what it removes."""

    line: str
    key: bytes | str  # as the edit pass finds them: a header's lower-case name (bytes), a cookie's name (str)
    edit: Edit


@dataclass(frozen=True)
class Compiled:
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


def compile_plan(plan: Plan) -> Compiled:
    headers: dict[bytes, tuple[bytes, bytes | None]] = {}
    cookies: dict[str, str | None] = {}
    steps: list[str | _Removal | tuple[str, Edit]] = []
    for kind, edits in (("header", plan.headers), ("cookie", plan.cookies)):
        for edit in edits:
            label = edit_label(kind, edit)
            value: str | None = None
            if edit.value is None:
                key = edit.name if kind == "cookie" else edit.name.lower().encode()
                steps.append(_Removal(f"{label} removed by {edit.rule}", key, edit))
            elif edit.value.uses:
                steps.append((kind, edit))  # its place in `headers`/`cookies` is kept; filled in per request
            else:
                value = edit.value.render({})
                if not value_fits(kind, value):
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
    return Compiled(head, headers, cookies, tuple(steps), drawn, removals, body, body_rules, plan.public)


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
    body_lines = edit_body(compiled, request, values, removed) if compiled.body else None
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
            body_lines = await edit_body_in(worker, compiled, request, values, removed)
        else:
            body_lines = edit_body(compiled, request, values, removed)
    return _comment_lines(lines, found, removed, body_lines)


def _edit_heads(
    compiled: Compiled, request: http.Request, values: Mapping[str, str]
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
            line, rendered = render_edit(kind, edit, values, compiled.public)
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
        edit_fields(request.headers, headers, {}, found)
        headers = {}
    if headers or cookies:
        edit_fields(request.headers, headers, cookies, found)
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


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def edit_fields(
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
