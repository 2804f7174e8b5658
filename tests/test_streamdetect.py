import gzip
import json

import pytest
from mitmproxy.test import tutils

from addon.streamdetect import MAX_JSON_BODY, is_streaming


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


def test_large_compressed_body_is_not_decoded():
    from addon.streamdetect import MAX_COMPRESSED_BODY

    body = gzip.compress(json.dumps({"stream": True, "pad": "x" * 10}).encode() + b" " * 0)
    body += b"\0" * (MAX_COMPRESSED_BODY + 1 - len(body))  # past the limit: not even tried
    assert not is_streaming(req(body, content_encoding="gzip"), F)
