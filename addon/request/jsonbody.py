"""Edit fields of a JSON request body by dotted path, keeping its Content-Encoding.

A body is read once (decoded, parsed), every edit of the plan is made on the parsed object, and it
is written once: compact (`{"a":1,"b":[2]}`, as browsers' `JSON.stringify` writes it), keys in
their order, non-ASCII as UTF-8, encoded again as its Content-Encoding says, with a right
Content-Length. Numbers keep their value, not always their spelling (`1E5` becomes `100000.0`).
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from addon.mitm import helpers
from addon.request.decoding import decode_body
from addon.request.streamdetect import MAX_JSON_BODY

Path = tuple[str, ...]


class NotEditable(ValueError):
    """The body is not a JSON object that can be edited; the message says why."""


def decoded_body(request: http.Request) -> bytes:
    """The request body without its Content-Encoding, within the bounds the stream detection keeps
    (decoded with that bound: a compressed body is never decoded whole).

    Raises:
        NotEditable: no body, too large, or an encoding that cannot be undone.
    """
    return _decoded(request.raw_content, request.headers.get("content-encoding"))


def _decoded(raw: bytes | None, ce: str | None) -> bytes:
    if not raw:
        raise NotEditable("the request has no body")
    if len(raw) > MAX_JSON_BODY:
        raise NotEditable(f"the body is larger than {MAX_JSON_BODY // 2**20} MiB")
    if not ce:
        return raw
    try:
        body, complete = decode_body(raw, ce, MAX_JSON_BODY)
    except ValueError:
        raise NotEditable(f"the body cannot be decoded (Content-Encoding: {ce})") from None
    if not complete:
        raise NotEditable(f"the body decodes to more than {MAX_JSON_BODY // 2**20} MiB")
    return body


def read_object(request: http.Request) -> dict[str, Any]:
    """The body parsed as a JSON object.

    Raises:
        NotEditable: it is not one.
    """
    return _parsed(decoded_body(request))


def _parsed(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise NotEditable("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise NotEditable(f"the body is JSON but not an object (it is {_kind(doc)})")
    return doc


def write_object(request: http.Request, doc: dict[str, Any]) -> None:
    """Serialise `doc` into the body, encoded as before, with a right Content-Length.

    Raises:
        NotEditable: it cannot be written as JSON (a number the body had that JSON cannot hold).
    """
    set_body(request, _written(doc, request.headers.get("content-encoding")))


def set_body(request: http.Request, data: bytes) -> None:
    """The body as sent, with a right Content-Length."""
    request.raw_content = data
    if "transfer-encoding" not in request.headers:
        request.headers["content-length"] = str(len(data))


def _written(doc: dict[str, Any], ce: str | None) -> bytes:
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise NotEditable("the body has a number JSON cannot write (NaN or an infinity)") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as \ud800 in the body: keep it escaped
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("ascii")
    if ce:
        for coding in (c.strip() for c in ce.split(",")):  # applied in the order listed, as HTTP says
            if coding and coding.lower() != "identity":
                data = helpers.encode(data, coding)
    return data


def edit(
    raw: bytes | None, ce: str | None, edits: tuple[tuple[Path, bool, Any], ...]
) -> tuple[bytes | None, tuple[Any, ...]]:
    """The body as sent (`raw`, with Content-Encoding `ce`) with `edits` made, each (path, remove,
    value): read once, every edit made in order, written once. Returns the new body as sent (None:
    nothing changed) and each edit's outcome: for a removal whether there was a field, for a value
    None or why it was not set. A function of bytes only: addon/request/bodyworker.py runs it in its process
    for a large body.

    Raises:
        NotEditable: the body is not a JSON object, or the result cannot be written.
    """
    doc = _parsed(_decoded(raw, ce))
    outcomes: list[Any] = []
    changed = False
    for path, remove, value in edits:
        if remove:
            outcome: Any = remove_field(doc, path)
            changed = changed or outcome
        else:
            outcome = set_field(doc, path, value)
            changed = changed or outcome is None
        outcomes.append(outcome)
    return (_written(doc, ce) if changed else None), tuple(outcomes)


def set_field(doc: dict[str, Any], path: Path, value: Any) -> str | None:
    """Set the field at `path`, making the objects on the way that are missing; None when done, or
    why it cannot be set (a field on the way is not an object)."""
    node = doc
    for i, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None and key not in node:
            child = node[key] = {}
        elif not isinstance(child, dict):
            return f"{'.'.join(path[: i + 1])} is {_kind(child)}, not an object"
        node = child
    node[path[-1]] = value
    return None


def remove_field(doc: dict[str, Any], path: Path) -> bool:
    """Remove the field at `path`; whether there was one."""
    node: Any = doc
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return False
    return node.pop(path[-1], _MISSING) is not _MISSING


_MISSING = object()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"
