"""Decode a message body with a bound on the decoded size.

mitmproxy's `get_content()` decodes a body whole: 2 KiB of brotli can become
1.5 GiB, and the proxy stops while it does. Here every content encoding
mitmproxy knows (gzip, deflate, br, zstd, identity, and chains such as
`gzip, br`) is decoded incrementally, and decoding stops once the output passes
the bound: the caller gets the first `limit` bytes and is told the body was
longer. The compression modules are the ones mitmproxy itself uses on each line:
zlib; brotli (1.2 bounds each call with `output_buffer_limit`; 1.1, which
mitmproxy 11 pins, has no bound, so it is fed `BROTLI_FEED` bytes at a time and
may pass the bound by what those bytes make); for zstd `compression.zstd`
(Python 3.14), `backports.zstd` (mitmproxy 12) or `zstandard` (mitmproxy 11).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import brotli
from mitmproxy import http

try:  # the zstd module mitmproxy uses on this line
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:
    try:
        from backports import zstd as _zstd  # type: ignore[no-redef]
    except ImportError:
        _zstd = None  # type: ignore[assignment]
        import zstandard  # type: ignore[import-not-found]

CHUNK = 64 * 1024  # bytes of output asked for at a time
BROTLI_FEED = 64  # bytes of input per call where brotli has no output bound (brotli 1.1)


class Decoded(NamedTuple):
    body: bytes  # at most `limit` bytes: the start of the decoded body
    complete: bool  # False: the body decodes to more than `limit` bytes


class _Sink:
    """Collects output until it passes the limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size = limit, [], 0

    def add(self, data: bytes) -> bool:
        """Keep `data`; False once the limit is passed (stop decoding)."""
        room = self.limit - self.size
        self.parts.append(data if len(data) <= room else data[: max(room, 0)])
        self.size += len(data)
        return self.size <= self.limit

    def result(self, complete: bool) -> Decoded:
        return Decoded(b"".join(self.parts), complete and self.size <= self.limit)


def decode_body(raw: bytes, content_encoding: str, limit: int) -> Decoded:
    """The body `raw`, decoded by its Content-Encoding header value, up to `limit` bytes.

    Codings are undone in the reverse of the order they are listed, as HTTP applies them.

    Raises:
        ValueError: an encoding mitmproxy does not know, or data that is not in it.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c not in ("", "identity", "none")]
    body, complete = raw, True
    for coding in reversed(codings):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise ValueError(f"unknown content encoding {coding!r}")
        try:
            body, done = decoder(body, limit)
        except ValueError:
            raise
        except Exception as e:  # zlib.error, brotli.error, ZstdError, EOFError: all "broken data"
            raise ValueError(f"cannot decode {coding}: {e}") from None
        complete = complete and done
    if len(body) > limit:
        return Decoded(body[:limit], False)
    return Decoded(body, complete)


def _zlib(raw: bytes, limit: int, wbits: int) -> Decoded:
    sink = _Sink(limit)
    data = raw
    while True:  # one gzip member (or zlib stream) per turn
        d = zlib.decompressobj(wbits)
        while True:  # never flush(): it returns whatever is left, however large
            out = d.decompress(data, CHUNK)
            if not sink.add(out):
                return sink.result(False)
            data = d.unconsumed_tail
            if d.eof or not (data or out):
                break
        if not d.eof:
            raise ValueError("the compressed data ends too early")
        data = d.unused_data
        if not data.strip(b"\0"):  # gzip allows padding after the last member
            return sink.result(True)


def _gzip(raw: bytes, limit: int) -> Decoded:
    return _zlib(raw, limit, 47)  # gzip or zlib header, detected, as mitmproxy does


def _deflate(raw: bytes, limit: int) -> Decoded:
    try:  # with a zlib header, then raw deflate (servers send both), as mitmproxy does
        return _zlib(raw, limit, 15)
    except (zlib.error, ValueError):
        return _zlib(raw, limit, -15)


def _brotli(raw: bytes, limit: int) -> Decoded:
    if not raw:
        return Decoded(b"", True)
    sink = _Sink(limit)
    d = brotli.Decompressor()
    if _BROTLI_BOUNDED:
        out = d.process(raw, output_buffer_limit=CHUNK)  # the decoder keeps what it has not used
        while sink.add(out):
            if d.is_finished():
                break
            out = d.process(b"", output_buffer_limit=CHUNK)
            if not out and d.can_accept_more_data():
                break  # the input is used up
        else:
            return sink.result(False)
    else:
        for at in range(0, len(raw), BROTLI_FEED):
            if not sink.add(d.process(raw[at : at + BROTLI_FEED])):
                return sink.result(False)
    if not d.is_finished():
        raise ValueError("the compressed data ends too early")
    return sink.result(True)


def _brotli_bounded() -> bool:
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


_BROTLI_BOUNDED = _brotli_bounded()


def _zstd_decode(raw: bytes, limit: int) -> Decoded:
    if not raw:
        return Decoded(b"", True)
    sink = _Sink(limit)
    if _zstd is None:  # zstandard: a reader that reads across frames, a chunk at a time
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        while chunk := reader.read(CHUNK):
            if not sink.add(chunk):
                return sink.result(False)
        return sink.result(True)
    data = raw
    while data:  # one frame per turn
        d = _zstd.ZstdDecompressor()
        out = d.decompress(data, CHUNK)
        while sink.add(out):
            if d.eof or d.needs_input:
                break
            out = d.decompress(b"", CHUNK)
        else:
            return sink.result(False)
        if not d.eof:
            raise ValueError("the compressed data ends too early")
        data = d.unused_data
    return sink.result(True)


_DECODERS: dict[str, Callable[[bytes, int], Decoded]] = {
    "gzip": _gzip,
    "deflate": _deflate,
    "deflateraw": _deflate,
    "br": _brotli,
    "zstd": _zstd_decode,
}


@contextlib.contextmanager
def decoded_request(request: http.Request, limit: int) -> Iterator[None]:
    """Within the block, the request carries its body decoded (with the bound) and no Content-Encoding,
    so that mitmproxy's filters (`~b`, `~bq`) search it without decoding it whole themselves. A body
    that cannot be decoded, or decodes to more than `limit`, stays as it came, as mitmproxy shows a
    body it cannot decode."""
    encoding = request.headers.get("content-encoding")
    raw = request.raw_content
    if not encoding or not raw:
        yield
        return
    try:
        body, complete = decode_body(raw, encoding, limit)
    except ValueError:
        complete = False
    if not complete:
        yield
        return
    fields = request.headers.fields
    request.headers.fields = tuple(f for f in fields if f[0].lower() != b"content-encoding")
    request.raw_content = body
    try:
        yield
    finally:
        request.headers.fields = fields
        request.raw_content = raw
