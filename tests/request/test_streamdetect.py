import gzip
import json
import os

import pytest
from mitmproxy.net.encoding import encode
from mitmproxy.test import tutils

from addon.request.streamdetect import MAX_JSON_BODY, is_streaming
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
