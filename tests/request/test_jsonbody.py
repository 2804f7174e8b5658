"""JSON request bodies: read as an object, edited by dotted path, written back with their encoding."""

import gzip
import json

import brotli
import pytest
from mitmproxy.net import encoding
from mitmproxy.test import tutils

from addon.request import jsonbody
from addon.request.jsonbody import NotEditable


def request(body: bytes, **headers):
    r = tutils.treq(content=body)
    for k, v in headers.items():
        r.headers[k.replace("_", "-")] = v
    return r


# setting a field: objects on the way are made; what is not an object stops it
@pytest.mark.parametrize(
    "doc, path, result, why",
    [
        ({"a": 1}, ("a",), {"a": "v"}, None),
        ({"a": 1, "b": 2}, ("a",), {"a": "v", "b": 2}, None),  # keeps its place
        ({}, ("p", "model"), {"p": {"model": "v"}}, None),
        ({"p": {"x": 1}}, ("p", "model"), {"p": {"x": 1, "model": "v"}}, None),
        ({"p": "text"}, ("p", "model"), {"p": "text"}, "p is a string, not an object"),
        ({"p": [1]}, ("p", "q", "r"), {"p": [1]}, "p is a list, not an object"),
        ({"p": {"q": None}}, ("p", "q", "r"), {"p": {"q": None}}, "p.q is null, not an object"),
    ],
    ids=["replace", "keeps order", "makes objects", "into an object", "through a string", "through a list", "through null"],
)
def test_set_field(doc, path, result, why):
    assert jsonbody.set_field(doc, path, "v") == why
    assert doc == result
    assert list(doc) == list(result)


@pytest.mark.parametrize(
    "doc, path, removed, result",
    [
        ({"a": 1, "b": 2}, ("a",), True, {"b": 2}),
        ({"a": None}, ("a",), True, {}),  # a field that is null is there
        ({"b": 2}, ("a",), False, {"b": 2}),
        ({"p": {"m": 1, "n": 2}}, ("p", "m"), True, {"p": {"n": 2}}),
        ({"p": "text"}, ("p", "m"), False, {"p": "text"}),
        ({}, ("p", "m"), False, {}),
    ],
    ids=["field", "null field", "absent", "nested", "through a string", "nothing on the way"],
)
def test_remove_field(doc, path, removed, result):
    assert jsonbody.remove_field(doc, path) is removed
    assert doc == result


@pytest.mark.parametrize(
    "body, headers, why",
    [
        (b"", {}, "the request has no body"),
        (b"not json", {}, "the body is not JSON"),
        (b"[1, 2]", {}, "the body is JSON but not an object (it is a list)"),
        (b'"text"', {}, "the body is JSON but not an object (it is a string)"),
        (b'{"a": 1}', {"content_encoding": "gzip"}, "the body cannot be decoded (Content-Encoding: gzip)"),
        (b'{"a": 1}', {"content_encoding": "x-unknown"}, "the body cannot be decoded (Content-Encoding: x-unknown)"),
        (b"{" + b" " * (32 * 1024 * 1024) + b"}", {}, "the body is larger than 32 MiB"),
    ],
    ids=["empty", "not JSON", "a list", "a string", "broken gzip", "unknown encoding", "too large"],
)
def test_bodies_that_are_not_a_json_object(body, headers, why):
    with pytest.raises(NotEditable) as e:
        jsonbody.read_object(request(body, **headers))
    assert str(e.value) == why


def test_written_compact_in_order_with_utf8_and_a_right_length():
    r = request(b'{ "b" : 1,\n  "a" : [1, 2], "t": "caf\\u00e9" }')
    doc = jsonbody.read_object(r)
    doc["z"] = "ünï"
    jsonbody.write_object(r, doc)
    assert r.raw_content == '{"b":1,"a":[1,2],"t":"café","z":"ünï"}'.encode()
    assert r.headers["content-length"] == str(len(r.raw_content))


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "identity"])
def test_the_content_encoding_is_kept(coding):
    raw = encoding.encode(b'{"a": 1, "b": "x"}', coding)
    r = request(raw, content_encoding=coding)
    doc = jsonbody.read_object(r)
    doc["a"] = 2
    jsonbody.write_object(r, doc)
    assert r.headers["content-encoding"] == coding
    assert r.headers["content-length"] == str(len(r.raw_content))
    assert json.loads(encoding.decode(r.raw_content, coding)) == {"a": 2, "b": "x"}


def test_a_chain_of_encodings_is_applied_in_the_order_listed():
    r = request(b"", content_encoding="gzip, br")
    jsonbody.write_object(r, {"a": 1})
    assert gzip.decompress(brotli.decompress(r.raw_content)) == b'{"a":1}'


def test_a_chunked_request_gets_no_content_length():
    r = request(b'{"a": 1}', transfer_encoding="chunked")
    r.headers.pop("content-length", None)
    jsonbody.write_object(r, {"a": 2})
    assert "content-length" not in r.headers and r.raw_content == b'{"a":2}'


def test_a_number_json_cannot_write_leaves_the_body():
    r = request(b'{"a": 1e999}')
    doc = jsonbody.read_object(r)  # Python reads it as infinity
    with pytest.raises(NotEditable, match=r"^the body has a number JSON cannot write \(NaN or an infinity\)$"):
        jsonbody.write_object(r, doc)
    assert r.raw_content == b'{"a": 1e999}'


def test_a_lone_surrogate_stays_escaped():
    r = request(b'{"a": "\\ud800"}')
    jsonbody.write_object(r, jsonbody.read_object(r))
    assert r.raw_content == b'{"a":"\\ud800"}'
