"""addon/util/fields.py: a header read in one pass over the fields answers as mitmproxy's own
`headers.get(name)` and `headers.get_all(name)` do."""

from __future__ import annotations

import pytest
from mitmproxy import http

from addon.util.fields import header_value, header_values

OTHER = (b"Host", b"a.example")

# (fields, the name asked for, what both must answer: get_all's list)
CASES = [
    pytest.param((OTHER,), "x-foo", [], id="absent"),
    pytest.param((), "x-foo", [], id="no fields at all"),
    pytest.param((OTHER, (b"X-Foo", b"one"), (b"Accept", b"*/*")), "x-foo", ["one"], id="one field"),
    pytest.param(((b"X-Foo", b"one"), OTHER, (b"X-Foo", b"two"), (b"X-Foo", b"three")), "x-foo",
                 ["one", "two", "three"], id="repeated"),
    pytest.param(((b"X-Foo", b"one"), (b"x-foo", b"two"), (b"X-FOO", b"three"), (b"x-fOO", b"four")), "x-foo",
                 ["one", "two", "three", "four"], id="capitalisation differs"),
    pytest.param(((b"Cookie", b"a=\xff\xfe; b=\xc3\xa9"),), "cookie", ["a=\udcff\udcfe; b=\u00e9"],
                 id="not UTF-8"),
    pytest.param(((b"Cookie", b"a=\xff"), (b"cookie", b"b=\x80")), "cookie", ["a=\udcff", "b=\udc80"],
                 id="repeated, not UTF-8"),
    pytest.param(((b"X-Foo", b""),), "x-foo", [""], id="empty value"),
    pytest.param(((b"X-Foo", b""), (b"X-Foo", b"")), "x-foo", ["", ""], id="two empty values"),
    pytest.param(((b"X-Foo", b"a"), (b"X-Foo", b"")), "x-foo", ["a", ""], id="a value and an empty one"),
    pytest.param(((b"X-Foo-Bar", b"no"), (b"X-Fo", b"no"), OTHER), "x-foo", [], id="names that only look alike"),
    # the Kelvin sign (U+212A) lower-cases to "k" as text, not as bytes: mitmproxy compares bytes too
    pytest.param(((b"coo\xe2\x84\xaaie", b"no"), (b"Cookie", b"a=1")), "cookie", ["a=1"], id="a non-ASCII name"),
]


@pytest.mark.parametrize("fields, name, expected", CASES)
def test_header_values_answer_as_get_all(fields, name, expected):
    headers = http.Headers(fields)
    assert headers.get_all(name) == expected  # mitmproxy's own answer, as the case says
    assert header_values(headers, name.encode()) == expected


@pytest.mark.parametrize("fields, name, expected", CASES)
def test_header_value_answers_as_get(fields, name, expected):
    headers = http.Headers(fields)
    mitmproxy_says = headers.get(name)
    assert mitmproxy_says == (", ".join(expected) if expected else None)
    assert header_value(headers, name.encode()) == mitmproxy_says


def test_an_empty_value_is_an_empty_string_not_none():
    headers = http.Headers(((b"X-Foo", b""),))
    assert header_value(headers, b"x-foo") == "" == headers.get("x-foo")
    assert header_value(headers, b"x-bar") is None is headers.get("x-bar")


def test_the_answer_follows_the_headers_as_they_change():
    headers = http.Headers(((b"Content-Type", b"text/plain"),))
    assert header_value(headers, b"content-type") == "text/plain"
    headers["content-type"] = "text/event-stream"
    headers.add("CONTENT-TYPE", "x/y")
    assert header_value(headers, b"content-type") == "text/event-stream, x/y" == headers.get("content-type")
    del headers["Content-Type"]
    assert header_value(headers, b"content-type") is None
    assert header_values(headers, b"content-type") == [] == headers.get_all("content-type")
