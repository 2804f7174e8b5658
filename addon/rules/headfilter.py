"""Header filters (`~h`, `~hq`, `~hs`) whose expression is plain text, judged by a substring search.

mitmproxy's own build the header block, `name: value\\r\\n` a field, and run the expression's regex
over it: with mitmproxy 12's case-insensitive filters, about 45,000 instructions a request for
`~h X-Debug` on scenario 1's request (here, about 22,000; docs/performance.md). An expression without
a regex metacharacter matches exactly where its text is found in the same block, folded to lower case
when the regex ignores case (for bytes, both fold ASCII letters only). The node stays in the tree,
wrapped (`PlainHead.node`): its text, its `__str__` and `dump` are mitmproxy's.
"""

from __future__ import annotations

import re
import sys

from mitmproxy import flowfilter, http

_METACHARACTERS = frozenset(b".^$*+?{}[]\\|()")
_SIDES = {  # which headers each node searches: the request's, the response's
    flowfilter.FHead: (True, True),
    flowfilter.FHeadRequest: (True, False),
    flowfilter.FHeadResponse: (False, True),
}


class PlainHead:
    """A header node whose expression is plain text: answers as `node` does, by a substring search."""

    def __init__(self, node: flowfilter.TFilter) -> None:
        self.node = node
        self.request_side, self.response_side = _SIDES[type(node)]
        self.folds = bool(node.re.flags & re.IGNORECASE)  # type: ignore[attr-defined]
        pattern: bytes = node.re.pattern  # type: ignore[attr-defined]
        self.needle = pattern.lower() if self.folds else pattern

    def _found(self, message: http.Message | None) -> bool:
        if message is None:
            return False
        fields = message.headers.fields
        # the block mitmproxy's own searches, bytes(headers), made without a generator
        block = b"\r\n".join(map(b": ".join, fields)) + b"\r\n" if fields else b""
        return self.needle in (block.lower() if self.folds else block)

    def __call__(self, f) -> bool:
        if not isinstance(f, http.HTTPFlow):
            return False
        return (self.request_side and self._found(f.request)) or (self.response_side and self._found(f.response))

    def __str__(self) -> str:
        return str(self.node)

    def dump(self, indent: int = 0, fp=sys.stdout) -> None:
        self.node.dump(indent, fp)  # type: ignore[attr-defined]


def plain_heads(f: flowfilter.TFilter) -> flowfilter.TFilter:
    """`f` (a filter just parsed) with each header node whose expression is plain text wrapped in a PlainHead."""
    if type(f) in _SIDES and _METACHARACTERS.isdisjoint(f.re.pattern):  # type: ignore[attr-defined]
        return PlainHead(f)
    if isinstance(f, (flowfilter.FAnd, flowfilter.FOr)):
        f.lst = [plain_heads(i) for i in f.lst]
    elif isinstance(f, flowfilter.FNot):
        f.itm = plain_heads(f.itm)
    return f
