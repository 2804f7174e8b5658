"""Does a request ask for a streamed answer?

It does when the client accepts `text/event-stream`, or when its JSON body has
`true` at the configured field (`stream` by default, or a dotted path). Bodies
that are empty, not JSON, compressed beyond repair or larger than the limit
count as not streaming; nothing here raises.
"""

from __future__ import annotations

import json

from mitmproxy import http

MAX_JSON_BODY = 32 * 1024 * 1024  # bytes, decoded; larger bodies are not parsed
MAX_COMPRESSED_BODY = 64 * 1024  # bytes; larger compressed bodies are not decoded (a zip bomb stays shut)


def is_streaming(request: http.Request, json_field: tuple[str, ...]) -> bool:
    encoded = False
    for name, value in request.headers.fields:  # one pass (each Headers lookup is a pass of its own)
        name = name.lower()
        if name == b"accept" and b"text/event-stream" in value:
            return True
        encoded = encoded or name == b"content-encoding"
    raw = request.raw_content
    if not raw or len(raw) > MAX_JSON_BODY:
        return False
    if encoded:
        if len(raw) > MAX_COMPRESSED_BODY:
            return False
        try:
            body = request.get_content(strict=True)
        except ValueError:  # an unknown or broken content-encoding
            return False
        if not body or len(body) > MAX_JSON_BODY:
            return False
    else:
        body = raw
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
