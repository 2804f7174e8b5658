"""Read a header in one pass over the fields.

mitmproxy's `headers.get(name)` and `headers.get_all(name)` answer the same, through several layers
of calls (Mapping.get, MultiDict.get_all, a key conversion per field): about three times the work
of the single comprehension here, on the request path of every request.
"""

from __future__ import annotations

from mitmproxy import http


def header_values(headers: http.Headers, lower_name: bytes) -> list[str]:
    """As `headers.get_all(name)`, for a name given in lower case as bytes."""
    return [v.decode("utf-8", "surrogateescape") for k, v in headers.fields if k.lower() == lower_name]


def header_value(headers: http.Headers, lower_name: bytes) -> str | None:
    """As `headers.get(name)` (repeated fields joined by ", "), for a name given in lower case as bytes."""
    values = header_values(headers, lower_name)
    return ", ".join(values) if values else None
