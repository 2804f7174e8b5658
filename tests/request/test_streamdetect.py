import gzip
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.net.encoding import encode
from mitmproxy.test import tutils

from addon.request.streamdetect import MAX_JSON_BODY, is_streaming, json_says_streaming
from helpers import compressed_json


def req(body: bytes = b"", **headers):
    r = tutils.treq(content=body)
    r.headers.clear()
    for k, v in headers.items():
        r.headers[k.replace("_", "-")] = v
    return r


F = ("stream",)


@pytest.mark.parametrize(
    "body, field, expected",
    [
        # the JSON field decides; only JSON true counts
        (b'{"stream": true}', F, True),
        (b'{"stream": false}', F, False),
        (b'{"stream": "true"}', F, False),
        (b'{"stream": 1}', F, False),
        (b'{"stream": null}', F, False),
        (b'{"model": "x"}', F, False),
        # dotted paths
        (b'{"options": {"stream": true}}', ("options", "stream"), True),
        (b'{"options": [1]}', ("options", "stream"), False),
        # bodies that are not a JSON object
        (b"", F, False),
        (b"stream=true", F, False),
        (b'["stream", true]', F, False),
        (b'{"stream": tru', F, False),
        (b"\xff\xfe stream", F, False),
        (b'{"a":' * 100000 + b'{"stream": true}' + b"}" * 100000, F, False),  # too deep to parse
    ],
)
def test_json_body(body, field, expected):
    assert is_streaming(req(body), field) is expected


def test_client_accept_header_counts():
    assert is_streaming(req(b"", accept="text/event-stream"), F)


def test_compressed_json_is_decoded():
    body = gzip.compress(json.dumps({"stream": True}).encode())
    assert is_streaming(req(body, content_encoding="gzip"), F)


@pytest.mark.parametrize("encoding", ["gzip", "br", "bogus"])
def test_broken_compression_is_not_streaming(encoding):
    assert not is_streaming(req(b"not compressed {stream: true}", content_encoding=encoding), F)


def test_huge_body_is_not_parsed():
    body = b'{"stream": true, "pad": "' + b"x" * MAX_JSON_BODY + b'"}'
    assert not is_streaming(req(body), F)


def test_large_compressed_json_is_decoded():
    # there is no cap on the compressed size: the bound is on the decoded size
    body = encode(json.dumps({"stream": True, "pad": os.urandom(100_000).hex()}).encode(), "br")
    assert len(body) > 64 * 1024 and is_streaming(req(body, content_encoding="br"), F)


@pytest.mark.parametrize("header", ["gzip, br", "br, zstd"])
def test_chained_encodings_are_decoded(header):
    body = json.dumps({"stream": True}).encode()
    for layer in header.split(", "):
        body = encode(body, layer)
    assert is_streaming(req(body, content_encoding=header), F)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_counts_as_not_streaming_and_is_logged_once(encoding, caplog):
    # streaming JSON when decoded whole, but 64 MiB of it: decoding stops at the bound
    request = req(compressed_json(encoding, 2 * MAX_JSON_BODY), content_encoding=encoding)
    request.method = "POST"
    assert not is_streaming(request, F)
    assert [r.getMessage() for r in caplog.records] == [
        f"rules: the body of POST {request.pretty_url} decodes to more than 32 MiB (Content-Encoding: {encoding}); "
        "decoding stopped there and it counts as not streaming"
    ]


# json_says_streaming parses a body that passes its cheap test (the field's name somewhere in it, "{"
# first) itself: by orjson, and what orjson refuses UTF-8 decoded and read by one JSONDecoder, instead
# of json.loads. It must say what the definition it replaced says.


def _walk(value, field: tuple[str, ...]) -> bool:
    for key in field:
        if not isinstance(value, dict):
            return False
        value = value.get(key)
    return value is True


def _json_loads_says(body: bytes, field: tuple[str, ...]) -> bool:
    """The plain definition: `isinstance(v := json.loads(body), dict) and v.get("stream") is True`
    (generalised to a dotted field), an error counting as False."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return _walk(value, field)


def _replaced_definition_says(body: bytes, field: tuple[str, ...]) -> bool:
    """json_says_streaming as it was before it parsed bodies itself: the same cheap test, then json.loads."""
    if field[-1].encode() not in body or not body.lstrip()[:1] == b"{":
        return False
    return _json_loads_says(body, field)


DOC = '{"stream": true}'
# a UTF-16 document whose bytes hold b"stream" (these three characters are b"st", b"re", b"am" in
# UTF-16-LE) and that starts with b"{": it passes the cheap test and is parsed, by json.loads (NUL bytes)
UTF16_PASSING = '{"stream": true, "pad": "\u7473\u6572\u6d61"}'.encode("utf-16-le")

# (body, field, the verdict, what plain json.loads says where the cheap test decides before it)
PARSED = [
    pytest.param(b'{"stream":true}', F, True, None, id="compact"),
    pytest.param(b'{"stream": false}', F, False, None, id="false"),
    pytest.param(b' \t\r\n{"stream": true} \t\r\n', F, True, None, id="JSON white space around"),
    pytest.param(b'\n\n\n\n{"stream": true}', F, True, None, id="four newlines first"),
    pytest.param(b'{"stream": true} x', F, False, None, id="trailing garbage"),
    pytest.param(b'{"stream": true}{}', F, False, None, id="a second document"),
    pytest.param(b'{"stream": true}\x0b', F, False, None, id="trailing \\x0b (not JSON white space)"),
    pytest.param(b'{"stream": true}\x0c', F, False, None, id="trailing \\x0c (not JSON white space)"),
    pytest.param(b'\x0b{"stream": true}', F, False, None, id="leading \\x0b (not JSON white space)"),
    pytest.param(b'{"stream": true}\x00', F, False, None, id="trailing NUL"),
    pytest.param(b"\xef\xbb\xbf" + DOC.encode(), F, False, True, id="UTF-8 BOM first"),
    pytest.param(DOC.encode("utf-16-le"), F, False, True, id="UTF-16-LE, no BOM"),
    pytest.param(DOC.encode("utf-32-le"), F, False, True, id="UTF-32-LE, no BOM"),
    pytest.param(UTF16_PASSING, F, True, None, id="UTF-16-LE that passes the cheap test"),
    pytest.param('{"stream": false, "pad": "\u7473\u6572\u6d61"}'.encode("utf-16-le"), F, False, None,
                 id="UTF-16-LE that passes the cheap test, false"),
    pytest.param(b'{"stream": true, "x": "\xff"}', F, False, None, id="invalid UTF-8 in a string"),
    pytest.param(b'{"stream": true, "x": "\xc3"}', F, False, None, id="truncated UTF-8 in a string"),
    pytest.param(b'{"stream": true, "x": "\xed\xa0\x80"}', F, True, None, id="an encoded surrogate in a string"),
    pytest.param(b'{"stream": true, "x": "\\ud800"}', F, True, None, id="a lone high surrogate escape"),
    pytest.param(b'{"stream": true, "x": "\\udc00\\ud800"}', F, True, None, id="surrogate escapes in reverse"),
    pytest.param(b'{"\\ud800stream": false, "stream": true}', F, True, None, id="a lone surrogate in a key"),
    pytest.param('{"stream": true, "x": "é…"}'.encode(), F, True, None, id="UTF-8 text"),
    pytest.param(b'{"stream": 1}', F, False, None, id="1 is not true"),
    pytest.param(b'{"stream": "true"}', F, False, None, id="a string is not true"),
    pytest.param(b'{"stream": true, "stream": false}', F, False, None, id="a repeated key: the last wins"),
    pytest.param(b'{"stream": false, "stream": true}', F, True, None, id="a repeated key: the last wins, true"),
    pytest.param(b'{"a": {"stream": true}}', F, False, None, id="nested is not the top-level field"),
    pytest.param(b'{"a": {"stream": true}}', ("a", "stream"), True, None, id="dotted field"),
    pytest.param(b'{"a": {"stream": false}, "stream": true}', ("a", "stream"), False, None, id="dotted field, false"),
    pytest.param(b'{"a": [{"stream": true}]}', ("a", "stream"), False, None, id="dotted field through a list"),
    pytest.param(b'{"stream": tru', F, False, None, id="cut short"),
    pytest.param(b'{"stream": true,}', F, False, None, id="trailing comma"),
    pytest.param(b'{"stream": NaN}', F, False, None, id="NaN"),
    pytest.param(b'{"stream": true, "x": NaN}', F, True, None, id="NaN elsewhere (orjson refuses, json reads)"),
    pytest.param(b'{"stream": true, "x": -Infinity}', F, True, None, id="Infinity elsewhere"),
    pytest.param(b'{"stream": true, "x": 1e400}', F, True, None, id="a float out of range"),
    pytest.param(b'{"stream": true, "x": 123456789012345678901234567890}', F, True, None, id="an integer past 64 bits"),
    pytest.param(b'{"stream": 18446744073709551616}', F, False, None, id="an integer past 64 bits is not true"),
    pytest.param(b'{"a":' * 100000 + b'{"stream": true}' + b"}" * 100000, F, False, None, id="too deep"),
]


@pytest.mark.parametrize("body, field, expected, json_loads", PARSED)
def test_json_says_streaming_as_the_definition_it_replaced(body, field, expected, json_loads):
    assert _replaced_definition_says(body, field) is expected
    assert json_says_streaming(body, field) is expected
    assert is_streaming(req(body), field) is expected  # the same through the request
    # plain json.loads says the same, but where the cheap test (unchanged) rules a body out before parsing
    assert _json_loads_says(body, field) is (expected if json_loads is None else json_loads)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["stream", "a", "b"]), inner,
                                                                max_size=3),
    max_leaves=8,
)
_around = st.lists(st.sampled_from([b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\x00", b"x", b"\xef\xbb\xbf"]),
                   max_size=3).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(value=_json_values, before=_around, after=_around, ascii_only=st.booleans(),
       field=st.sampled_from([F, ("a", "stream"), ("b",)]))
def test_json_says_streaming_as_the_definition_it_replaced_on_random_documents(value, before, after, ascii_only, field):
    body = before + json.dumps(value, ensure_ascii=ascii_only).encode() + after
    assert json_says_streaming(body, field) is _replaced_definition_says(body, field)
