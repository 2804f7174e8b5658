"""Does a request ask for a streamed answer?

It does when the client accepts `text/event-stream`, or when its JSON body has
`true` at the configured field (`stream` by default, or a dotted path). Bodies
that are empty, not JSON, compressed beyond repair or larger than the limit
(before or after decoding) count as not streaming; nothing here raises.
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http

from addon.request.decoding import decode_body

logger = logging.getLogger(__name__)

MAX_JSON_BODY = 32 * 1024 * 1024  # bytes, as sent and decoded; larger bodies are not parsed


def is_streaming(request: http.Request, json_field: tuple[str, ...]) -> bool:
    encoding = None
    for name, value in request.headers.fields:  # one pass (each Headers lookup is a pass of its own)
        name = name.lower()
        if name == b"accept" and b"text/event-stream" in value:
            return True
        if name == b"content-encoding":
            encoding = value if encoding is None else encoding + b"," + value
    raw = request.raw_content
    if not raw or len(raw) > MAX_JSON_BODY:
        return False
    if encoding is not None:
        try:
            body, complete = decode_body(raw, encoding.decode("latin-1"), MAX_JSON_BODY)
        except ValueError:  # an unknown or broken content-encoding
            return False
        if not complete:
            warn_overlong(request, encoding.decode("latin-1"))
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
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    for key in json_field:
        if not isinstance(value, dict):
            return False
        value = value.get(key)
    return value is True
