"""Which rules apply to a request: host, path and method globs, filters, an index.

Everything here is compiled once when the rules file loads; matching a request
only runs precompiled regexes and filters.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from mitmproxy import flowfilter

from addon.rules.headfilter import plain_heads

_HOST_CHARS = re.compile(r"^[A-Za-z0-9._*?\[\]!-]+$")
_METHOD = re.compile(r"^[A-Za-z]+$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]")


def _glob_regex(glob: str, flags: int = 0) -> re.Pattern[str]:
    depth = 0
    for ch in glob:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"bad glob {glob!r}: '[' is never closed")
    return re.compile(fnmatch.translate(glob), flags)


@dataclass(frozen=True)
class HostGlob:
    text: str
    host: re.Pattern[str]
    port: int | None  # None: any port
    exact: str | None  # the host itself, lower-case, when the glob has no wildcard
    too_broad: bool  # could match hosts nobody named: no fixed label to pin it (`*`, `[a-z]*`, `*.com`)

    def matches(self, host: str, port: int) -> bool:
        return (self.port is None or self.port == port) and self.host.match(host) is not None


def parse_host_glob(text: str) -> HostGlob:
    """`api.example.com`, `*.example.com`, `localhost:8443`, `[::1]:8080`.

    Raises:
        ValueError: not a host glob (for example a URL).
    """
    glob, port = text.strip(), None
    if "://" in glob or "/" in glob:
        raise ValueError(f"bad host {text!r}: give a host name or glob, without a scheme or path (path: goes in its own key)")
    if _IPV6.match(glob):  # an IPv6 literal, maybe with a port
        inner, _, rest = glob[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad host {text!r}")
        glob, port_text = inner, rest[1:] if rest else ""
    else:
        glob, sep, port_text = glob.rpartition(":") if glob.count(":") == 1 else (glob, "", "")
        if not sep:
            glob = text.strip()
    if port_text and port_text != "*":
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in host {text!r}: expected a number from 1 to 65535 or *")
        port = int(port_text)
    if not glob or (":" not in glob and not _HOST_CHARS.match(glob)):
        raise ValueError(f"bad host {text!r}: only letters, digits, '.', '-', '_' and the glob characters * ? [ ] may appear")
    is_exact = not any(c in glob for c in "*?[")
    fixed_labels = [label for label in glob.split(".") if label and not any(c in label for c in "*?[]!")]
    return HostGlob(
        text=text,
        host=_glob_regex(glob.lower(), re.IGNORECASE),
        port=port,
        exact=glob.lower() if is_exact else None,
        too_broad=not is_exact and len(fixed_labels) < 2,
    )


def parse_path_glob(text: str) -> re.Pattern[str]:
    """A glob over the request path without its query, such as `/v1/*`.

    Raises:
        ValueError: the glob cannot match any path.
    """
    if not text.startswith(("/", "*")):
        raise ValueError(f"bad path {text!r}: a path glob starts with '/' or '*'")
    return _glob_regex(text)


def parse_method(text: str) -> str:
    if not _METHOD.match(text):
        raise ValueError(f"bad method {text!r}: expected a word such as GET or POST")
    return text.upper()


def parse_filter(text: str) -> flowfilter.TFilter:
    """mitmproxy's filter, its header nodes of plain text searched as text (addon/rules/headfilter.py)."""
    try:
        parsed = flowfilter.parse(text)
    except ValueError as e:
        raise ValueError(f"bad filter {text!r}: {e}") from None
    plain = plain_heads(parsed)
    plain.pattern = parsed.pattern  # type: ignore[attr-defined]
    return plain


def reads_body(f: flowfilter.TFilter) -> bool:
    """Does this filter look at the request body (`~b`, `~bq`, anywhere in it)?"""
    if isinstance(f, (flowfilter.FBod, flowfilter.FBodRequest)):
        return True
    inner = list(getattr(f, "lst", ()))  # and, or
    if getattr(f, "itm", None) is not None:  # not
        inner.append(f.itm)
    return any(reads_body(i) for i in inner)


@dataclass(frozen=True)
class Match:
    hosts: tuple[HostGlob, ...]
    paths: tuple[re.Pattern[str], ...] = ()  # empty: any path
    methods: frozenset[str] = frozenset()  # empty: any method
    stream: bool | None = None
    filter: flowfilter.TFilter | None = None

    @functools.cached_property
    def filter_reads_body(self) -> bool:
        return self.filter is not None and reads_body(self.filter)

    def matches_host(self, host: str, port: int) -> bool:
        return any(h.matches(host, port) for h in self.hosts)

    def matches_shape(self, method: str, path: str, streaming: bool) -> bool:
        """Method (upper case), path (without the query) and streaming: every condition but the host
        (`RuleIndex.candidates` judges it) and the filter (judged per request, on the flow)."""
        if self.methods and method not in self.methods:
            return False
        if self.paths and not any(p.match(path) for p in self.paths):
            return False
        return self.stream is None or self.stream == streaming


class HasMatch(Protocol):
    @property
    def match(self) -> Match: ...


R = TypeVar("R", bound=HasMatch)


class RuleIndex(Generic[R]):
    """Finds the rules whose host globs can match a host, in file order.

    Rules that name exact hosts are looked up in a dict; only wildcard rules are
    scanned. Answers are memoised per (host, port), so a file of a thousand
    rules for other hosts costs one dict lookup per request.
    """

    _MEMO_LIMIT = 4096

    def __init__(self, rules: Sequence[R]) -> None:
        self._rules = tuple(rules)
        self._exact: dict[str, list[int]] = {}
        self._wild: list[int] = []
        for i, rule in enumerate(self._rules):
            hosts = {h.exact for h in rule.match.hosts}
            if None in hosts:
                self._wild.append(i)
            for h in hosts - {None}:
                self._exact.setdefault(h, []).append(i)
        self._memo: dict[tuple[str, int], tuple[R, ...]] = {}
        # rewrite.plan_request's memos: folded edits per matched-rule set, and what matches per request shape
        self.plans: dict[tuple, object] = {}
        self.requests: dict[tuple, object] = {}

    def candidates(self, host: str, port: int) -> tuple[R, ...]:
        key = (host, port)
        found = self._memo.get(key)
        if found is None:
            ids = sorted(set(self._exact.get(host.lower(), ())) | set(self._wild))
            found = tuple(self._rules[i] for i in ids if self._rules[i].match.matches_host(host, port))
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found
