"""Make a plan's edits on one request: the plan compiled once (all that does not depend on the values
drawn), then, per request, the drawn values filled in, every header and cookie edit made in one pass
over the fields, and one line per edit for the flow's comment. The body's edits are applybody.py's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from mitmproxy import http

from addon.request.applybody import edit_body, edit_body_in, edit_label, render_edit, value_fits
from addon.request.bodyworker import WORKER, BodyWorker, is_large
from addon.request.cookies import edit_cookie_headers
from addon.request.plan import Edit, Plan, Skipped
from addon.util.fields import header_value


@dataclass(frozen=True)
class Compiled:
    """A plan made ready to apply: everything that does not depend on drawn values, done once."""

    head: str  # the first line of the flow comment
    # lower-case name -> (name, value; None removes), in plan order; drawn values are filled in per request
    headers: dict[bytes, tuple[bytes, bytes | None]]
    cookies: dict[str, str | None]
    # the comment's lines, one per edit in plan order: a removal's as if it removed something, None where a
    # value is drawn
    lines: tuple[str | None, ...]
    # where a value is drawn: (its line's index, "header" or "cookie", the edit, its key in `headers`/`cookies`)
    drawn: tuple[tuple[int, str, Edit, bytes | str], ...]
    # removals, whose lines are kept only when the request had what they remove: (its line's index, the key
    # the edit pass finds it by: a header's lower-case name (bytes) or a cookie's name, the edit)
    removals: tuple[tuple[int, bytes | str, Edit], ...]
    # body edits, in plan order: (path, edit); empty for most plans, which then never parse a body
    body: tuple[tuple[tuple[str, ...], Edit], ...]
    body_rules: str  # the rules that edit the body, for the line that says the body was not edited
    public: frozenset[str]
    # (a drawn edit's index in `drawn`, the values it uses) -> its comment line and value, as render_edit
    # gave them: a token or captcha value comes back for many requests (RENDERED_LIMIT entries at most)
    rendered: dict[tuple, tuple[str, str | None]] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    programs: dict[tuple, _Program] = dataclasses.field(default_factory=dict, compare=False, repr=False)  # edit_fields'


RENDERED_LIMIT = 1024


def compile_plan(plan: Plan) -> Compiled:
    headers: dict[bytes, tuple[bytes, bytes | None]] = {}
    cookies: dict[str, str | None] = {}
    lines: list[str | None] = []
    drawn: list[tuple[int, str, Edit, bytes | str]] = []
    removals: list[tuple[int, bytes | str, Edit]] = []
    for kind, edits in (("header", plan.headers), ("cookie", plan.cookies)):
        for edit in edits:
            label = edit_label(kind, edit)
            key = edit.name if kind == "cookie" else edit.name.lower().encode()
            value: str | None = None
            if edit.value is None:
                removals.append((len(lines), key, edit))
                lines.append(f"{label} removed by {edit.rule}")
            elif edit.value.uses:
                drawn.append((len(lines), kind, edit, key))  # its place in `headers`/`cookies` is kept
                lines.append(None)
            else:
                value = edit.value.render({})
                if not value_fits(kind, value):
                    lines.append(Skipped(f"{label} not set by {edit.rule}: the value cannot go in a {kind}", label))
                    continue
                lines.append(f"{label} ← {edit.rule}")
            if kind == "cookie":
                cookies[edit.name] = value
            else:
                headers[key] = (_encode(edit.name), None if value is None else _encode(value))  # type: ignore[index]
    kind = "streaming" if plan.streaming else "non-streaming"
    head = f"rules: {', '.join(r.name for r in plan.rules)} ({kind} request)"
    body = tuple((tuple(e.name.split(".")), e) for e in plan.body)
    body_rules = ", ".join(dict.fromkeys(e.rule for e in plan.body))
    return Compiled(head, headers, cookies, tuple(lines), tuple(drawn), tuple(removals), body, body_rules, plan.public)


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
    return _comment_lines(compiled, lines, found, removed, body_lines)


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
        if is_large(request.raw_content, header_value(request.headers, b"content-encoding")):
            body_lines = await edit_body_in(worker, compiled, request, values, removed)
        else:
            body_lines = edit_body(compiled, request, values, removed)
    return _comment_lines(compiled, lines, found, removed, body_lines)


def _edit_heads(
    compiled: Compiled, request: http.Request, values: Mapping[str, str]
) -> tuple[list[str | None] | tuple[str | None, ...], set | None]:
    """Every header and cookie edit; the comment's lines (the drawn values' filled in), and `found`:
    what of the removals' the request had (None when the plan removes nothing)."""
    headers, cookies = compiled.headers, compiled.cookies
    lines: list[str | None] | tuple[str | None, ...] = compiled.lines
    if compiled.drawn:
        headers, cookies = dict(headers), dict(cookies)  # the plan's own stay as compiled
        lines = list(lines)
        memo = compiled.rendered
        for i, (at, kind, edit, key) in enumerate(compiled.drawn):
            seen = (i, *[values.get(name) for name in edit.value.sorted_uses])  # type: ignore[union-attr]
            done = memo.get(seen)
            if done is None:
                if len(memo) >= RENDERED_LIMIT:
                    memo.clear()
                done = memo[seen] = render_edit(kind, edit, values, compiled.public)
            line, rendered = done
            lines[at] = line
            if kind == "cookie":
                if rendered is None:
                    del cookies[key]  # type: ignore[arg-type]
                else:
                    cookies[key] = rendered  # type: ignore[index]
            elif rendered is None:
                del headers[key]  # type: ignore[arg-type]
            else:
                headers[key] = (headers[key][0], _encode(rendered))  # type: ignore[index]
    found: set[bytes | str] | None = set() if compiled.removals else None
    if b"cookie" in headers:  # the Cookie header itself is edited: cookie edits apply to the result
        edit_fields(request.headers, headers, {}, found, compiled.programs)
        headers = {}
    if headers or cookies:
        edit_fields(request.headers, headers, cookies, found, compiled.programs)
    return lines, found


def _comment_lines(
    compiled: Compiled, lines: list | tuple, found: set | None, removed: set[Edit] | None, body_lines: list[str] | None
) -> list[str]:
    if found is not None:
        # a removal is listed only when the request had the header or cookie: it removed something
        lines = list(lines)
        for at, key, edit in compiled.removals:
            if key not in found:
                lines[at] = None
            elif removed is not None:
                removed.add(edit)
        lines = [line for line in lines if line is not None]
    else:
        lines = list(lines)
    if body_lines:
        lines += body_lines
    return lines


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Program(NamedTuple):
    """What edit_fields does to fields of these names (in this order) with edits of these keys: the same
    for every request of a client that sends its headers the same way, so worked out once."""

    acts: tuple[object, ...]  # per field: _KEEP, _DROP, or the key of the edit that sets its value
    cookie_at: tuple[int, ...]  # the Cookie fields' places in the result (their values edited by cookie edits)
    added: tuple[bytes, ...]  # the keys of the edits whose headers go at the end, in plan order
    found: tuple[bytes, ...]  # the keys of the edits whose headers the fields had


_KEEP, _DROP = object(), object()
PROGRAMS_LIMIT = 256  # programs kept per compiled plan
COOKIE_EDITS_KEPT = 256  # cookie edits' results kept (their cookies and values: most requests repeat them)


def edit_fields(
    headers: http.Headers,
    edits: dict[bytes, tuple[bytes, bytes | None]],
    cookies: dict[str, str | None],
    found: set[bytes | str] | None = None,
    programs: dict[tuple, _Program] | None = None,
) -> None:
    """Every header and cookie edit in one pass over the fields.

    The result is that of `headers[name] = value` and `headers.pop(name)` done one by one, then
    `headers.set_all("Cookie", edited values)`: each of those is a pass of its own in mitmproxy's
    MultiDict. A header keeps the place and spelling of its first occurrence, repeats go, and new
    headers are appended in plan order; edited Cookie values take the places of the old ones.
    `found`, when given, gets the lower-case names of the edited headers the fields had, and the
    names of the edited cookies. `programs`: where to keep what was worked out for these names and
    edits' keys (a compiled plan's, whose edits' keys tell their kinds: a removal stays a removal). An
    edit of the Cookie header itself and cookie edits are not given together: `_edit_heads` edits the
    header first, in a call of its own, and the cookies in the result.
    """
    fields = headers.fields
    names = tuple([f[0] for f in fields])
    key = (names, tuple(edits), bool(cookies))
    program = programs.get(key) if programs is not None else None
    if program is None:
        program = _program(names, edits, bool(cookies))
        if programs is not None:
            if len(programs) >= PROGRAMS_LIMIT:
                programs.clear()
            programs[key] = program
    out = [f if a is _KEEP else (f[0], edits[a][1])  # type: ignore[index]
           for f, a in zip(fields, program.acts) if a is not _DROP]
    out += [edits[k] for k in program.added]  # type: ignore[misc]
    if cookies:
        at = program.cookie_at
        new, present = _cookie_fields(tuple([out[i][1] for i in at]), tuple(cookies.items()))
        if found is not None:
            found.update(present)
        for i, value in zip(at, new):
            out[i] = (out[i][0], value)
        # as set_all: values left over go at the end; places left over go
        out += [(b"Cookie", value) for value in new[len(at) :]]
        if len(new) < len(at):
            gone = set(at[len(new) :])
            out = [f for i, f in enumerate(out) if i not in gone]
    headers.fields = tuple(out)  # type: ignore[arg-type]
    if found is not None:
        found.update(program.found)


@functools.lru_cache(maxsize=COOKIE_EDITS_KEPT)
def _cookie_fields(
    values: tuple[bytes, ...], edits: tuple[tuple[str, str | None], ...]
) -> tuple[tuple[bytes, ...], frozenset[str]]:
    """The Cookie fields' values after the cookie edits (edit_cookie_headers), and the names of the edited
    cookies they had: the same for each request of a client that sends the same cookies and gets the same
    token, so kept (the last COOKIE_EDITS_KEPT, in this process's memory only)."""
    present: set[str] = set()
    new = edit_cookie_headers([v.decode("utf-8", "surrogateescape") for v in values], dict(edits), present)
    return tuple(_encode(v) for v in new), frozenset(present)


def _program(names: tuple[bytes, ...], edits: dict[bytes, tuple[bytes, bytes | None]], cookies: bool) -> _Program:
    acts: list[object] = []
    done: set[bytes] = set()
    cookie_at: list[int] = []
    kept = 0  # fields in the result so far
    for name in names:
        lk = name.lower()
        if lk in edits:  # (never b"cookie" when there are cookie edits: the caller edits that header first)
            if lk in done or edits[lk][1] is None:
                acts.append(_DROP)
            else:
                acts.append(lk)
                kept += 1
            done.add(lk)
        else:
            if cookies and lk == b"cookie":
                cookie_at.append(kept)
            acts.append(_KEEP)
            kept += 1
    added = tuple(lk for lk, (_, value) in edits.items() if lk not in done and value is not None)
    return _Program(tuple(acts), tuple(cookie_at), added, tuple(done))
