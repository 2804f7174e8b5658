"""A reply parser for redis-py's asyncio client that refuses replies over a size bound.

redis-py reads what a reply's header announces: `$2000000000` and it reads 2 GB into memory, `*N` and
it reads N elements. A hostile or broken Redis could so take the proxy's memory. `BoundedParser` is
redis-py's RESP3 parser (which reads RESP2 replies as well, and which the connection never swaps for
another) with one change: every line it reads is checked before anything more is read, so that a
bulk string (`$`, `=`, `!`) or an aggregate (`*`, `~`, `%`, `>`, `|`) announcing more than
MAX_REPLY bytes or elements, or a reply that has taken more than MAX_REPLY bytes in all, fails at
once as a `ReplyTooLarge` (a redis-py `ConnectionError`: the connection is dropped, and the shared
store takes it as Redis failing). Lines longer than the stream's limit (64 KiB) fail the same way.

Internals used (checked against redis-py 8.1.0): `redis._parsers._AsyncRESP3Parser`, its
`_readline()` and `_pos` (where the parser stands in the reply being read, from 0).
"""

from __future__ import annotations

import asyncio

from redis import exceptions as redis_errors
from redis._parsers import _AsyncRESP3Parser

MAX_REPLY = 16 * 2**20  # bytes in one reply, and elements in one aggregate

_LENGTHS = frozenset(b"$=!*~%>|")  # the types whose header line carries a length or a count


class ReplyTooLarge(redis_errors.ConnectionError):
    """A reply, or a part it announces, is larger than MAX_REPLY."""


class BoundedParser(_AsyncRESP3Parser):
    max_reply = MAX_REPLY

    async def _readline(self) -> bytes:
        try:
            line = await super()._readline()
        except (ValueError, asyncio.LimitOverrunError):  # a line over the stream's limit
            raise ReplyTooLarge("Redis sent a reply line longer than the stream's limit") from None
        if self._pos > self.max_reply:
            raise ReplyTooLarge(f"Redis sent a reply of more than {self.max_reply // 2**20} MiB")
        if line[:1] and line[0] in _LENGTHS:
            try:
                n = int(line[1:])
            except ValueError:
                return line  # redis-py says what is wrong with it
            if n > self.max_reply:
                unit = "elements" if line[:1] in b"*~%>|" else "bytes"
                bound = f"{self.max_reply // 2**20} MiB"
                raise ReplyTooLarge(f"Redis announced a reply of {n} {unit}, over the bound of {bound}")
            if line[:1] in b"$=!" and self._pos + n > self.max_reply:
                raise ReplyTooLarge(f"Redis sent a reply of more than {self.max_reply // 2**20} MiB")
        return line
