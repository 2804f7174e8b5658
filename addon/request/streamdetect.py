"""Does a request ask for a streamed answer?

It does when the client accepts `text/event-stream`, or when its JSON body has
`true` at the configured field (`stream` by default, or a dotted path). Bodies
that are empty, not JSON, compressed beyond repair or larger than the limit
(before or after decoding) count as not streaming; nothing here raises.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

import orjson
from mitmproxy import http

from addon.request.decoding import decode_body

logger = logging.getLogger(__name__)

MAX_JSON_BODY = 32 * 1024 * 1024  # bytes, as sent and decoded; larger bodies are not parsed


class Heads(NamedTuple):
    """What the headers tell about the body, read in one pass (each Headers lookup is a pass of its own)."""

    accepts_events: bool  # the client accepts text/event-stream
    encoding: str | None  # its Content-Encoding (repeated fields joined by ",")


def read_heads(request: http.Request) -> Heads:
    accepts, encoding = False, None
    for name, value in request.headers.fields:
        size = len(name)  # (a length first: most fields are neither, and lower() makes a new name)
        if size == 6 and name.lower() == b"accept":
            accepts = accepts or b"text/event-stream" in value
        elif size == 16 and name.lower() == b"content-encoding":
            encoding = value if encoding is None else encoding + b"," + value
    return Heads(accepts, None if encoding is None else encoding.decode("latin-1"))


def is_streaming(request: http.Request, json_field: tuple[str, ...], heads: Heads | None = None) -> bool:
    """`heads`: the request's, if they have been read."""
    accepts, encoding = heads or read_heads(request)
    if accepts:
        return True
    raw = request.raw_content
    if not raw or len(raw) > MAX_JSON_BODY:
        return False
    if encoding is not None:
        try:
            body, complete = decode_body(raw, encoding, MAX_JSON_BODY)
        except ValueError:  # an unknown or broken content-encoding
            return False
        if not complete:
            warn_overlong(request, encoding)
            return False
    else:
        body = raw
    return json_says_streaming(body, json_field)


def warn_overlong(request: http.Request, encoding: str) -> None:
    logger.warning(f"rules: the body of {request.method} {request.pretty_url} decodes to more than "
                   f"{MAX_JSON_BODY // 2**20} MiB (Content-Encoding: {encoding}); "
                   "decoding stopped there and it counts as not streaming")


def json_says_streaming(body: bytes, json_field: tuple[str, ...]) -> bool:
    """Is `body` a JSON object with `true` at the field? (Parsed here: addon/request/bodyworker.py calls
    this in its process for a body over its bound.)"""
    # cheap test first: most bodies never mention the field at all
    if json_field[-1].encode() not in body or not body.lstrip()[:1] == b"{":
        return False
    try:
        value = _object(body)
    except (ValueError, RecursionError):
        return False
    for key in json_field:
        if not isinstance(value, dict):
            return False
        value = value.get(key)
    return value is True


_DECODER = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"


def _object(body: bytes):
    """`json.loads(body)`, as far as a field's `true` goes, for a body that starts with "{" (after white
    space). orjson reads it, with a third of the work. What orjson refuses, json may still read (NaN,
    a lone surrogate, a number out of range, a body with a NUL byte among its first four: UTF-16 or
    -32), so json then has it: UTF-8 decoded and parsed here, without json.loads' look for another
    encoding, or by json.loads for those NULs. (The two differ only in numbers: orjson makes a float
    of an integer past 64 bits.)"""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    if b"\x00" in body[:4]:
        return json.loads(body)
    text = body.decode("utf-8", "surrogatepass").lstrip(_JSON_SPACE)
    value, end = _DECODER.raw_decode(text)
    if text[end:].strip(_JSON_SPACE):
        raise ValueError("extra data after the JSON document")
    return value
