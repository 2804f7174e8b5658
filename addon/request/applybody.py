"""The body's edits, made on the body parsed once and written once (here, or in the body worker for a
large body), and what every edit shares: its comment line, its drawn values put in (`render_edit`),
and whether a value fits its place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mitmproxy import http

from addon.request import jsonbody
from addon.request.bodyworker import BodyWorker, WorkerFailed
from addon.request.plan import BodySkipped, Edit, Skipped
from addon.rules.template import Template
from addon.rules.types import JsonLiteral
from addon.util.masking import mask

if TYPE_CHECKING:
    from addon.request.apply import Compiled

logger = logging.getLogger(__name__)


# a body edit step: the edit, its comment line when it is made, and its place in the edits sent to
# jsonbody.edit (None: not sent, the line says why)
_BodyStep = tuple[Edit, str, "int | None"]


_BodyEdit = tuple[tuple[str, ...], bool, object]  # as jsonbody.edit takes them: (path, remove, value)


def _body_edits(compiled: Compiled, values: Mapping[str, str]) -> tuple[tuple[_BodyEdit, ...], list[_BodyStep]]:
    edits: list[_BodyEdit] = []
    steps: list[_BodyStep] = []
    for path, edit in compiled.body:
        label = edit_label("body", edit)
        if edit.value is None:
            steps.append((edit, f"{label} removed by {edit.rule}", len(edits)))
            edits.append((path, True, None))
            continue
        if isinstance(edit.value, JsonLiteral):
            value, line = edit.value.value(), f"{label} ← {edit.rule}"
        elif edit.value.uses:
            line, value = render_edit("body", edit, values, compiled.public)
            if value is None:
                steps.append((edit, line, None))
                continue
        else:
            value, line = edit.value.render({}), f"{label} ← {edit.rule}"
        steps.append((edit, line, len(edits)))
        edits.append((path, False, value))
    return tuple(edits), steps


def edit_body(compiled: Compiled, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None) -> list[str]:
    """Every body edit, on the body parsed once and written once; one comment line per edit, or one
    line saying why the body was left as it came."""
    edits, steps = _body_edits(compiled, values)
    try:
        data, outcomes = jsonbody.edit(request.raw_content, request.headers.get("content-encoding"), edits)
    except jsonbody.NotEditable as e:
        return [_body_skipped(compiled, request, str(e))]
    return _body_done(request, data, outcomes, steps, removed)


async def edit_body_in(
    worker: BodyWorker, compiled: Compiled, request: http.Request, values: Mapping[str, str], removed: set[Edit] | None
) -> list[str]:
    """As `edit_body`, in the worker process."""
    edits, steps = _body_edits(compiled, values)
    logger.debug(f"rules: the body of {request.method} {request.pretty_url} is edited in the body worker")
    try:
        data, outcomes = await worker.run("edit", request.raw_content, request.headers.get("content-encoding"), edits)
    except jsonbody.NotEditable as e:
        return [_body_skipped(compiled, request, str(e))]
    except WorkerFailed as e:
        logger.warning(f"rules: body of {request.method} {request.pretty_url} not edited ({compiled.body_rules}): "
                       f"the body worker failed: {e}")  # fmt: skip
        return [BodySkipped(f"body not edited by {compiled.body_rules}: the body worker failed: {e}")]
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
            label = edit_label("body", edit)
            lines.append(Skipped(f"{label} not set by {edit.rule}: {outcomes[at]}", label))
    return lines


def _body_skipped(compiled: Compiled, request: http.Request, why: str) -> str:
    logger.debug(f"rules: body of {request.method} {request.pretty_url} not edited ({compiled.body_rules}): {why}")
    return BodySkipped(f"body not edited by {compiled.body_rules}: {why}")


def render_edit(
    kind: str, edit: Edit, values: Mapping[str, str], public: frozenset[str] = frozenset()
) -> tuple[str, str | None]:
    """The comment line for an edit with drawn values, and its value (None: skipped)."""
    assert isinstance(edit.value, Template)
    label = edit_label(kind, edit)
    uses = edit.value.sorted_uses
    missing = [p for p in uses if p not in values]
    if missing:
        return Skipped(f"{label} not set by {edit.rule}: no {', '.join(missing)} value", label), None
    rendered = edit.value.render(values)
    secrets = ", ".join(f"{p} {values[p] if p in public else mask(values[p])}" for p in uses)
    if not value_fits(kind, rendered):
        return Skipped(f"{label} not set by {edit.rule}: the {secrets} value cannot go in a {kind}", label), None
    return f"{label} ← {edit.rule} ({secrets})", rendered


def edit_label(kind: str, edit: Edit) -> str:
    return edit.name if kind == "header" else f"{kind} {edit.name}"


_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COOKIE_UNSAFE = re.compile(r"[\x00-\x20\x7f;,\\\"]")


def value_fits(kind: str, value: str) -> bool:
    """A drawn value (a token or captcha from a file or command) must not break out of its place
    (a JSON string holds any text: the serialiser escapes it)."""
    return kind == "body" or not (_COOKIE_UNSAFE if kind == "cookie" else _HEADER_UNSAFE).search(value)
