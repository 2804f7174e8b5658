"""What an upstream answer means, by the `on_response` rules: retry how, or pass it on."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Collection

from mitmproxy import http

from addon.recovery.firstevent import first_event, is_sse
from addon.request.decoding import decode_body
from addon.rules.records import DISABLE, PASS, ROTATE, ResponseRule
from addon.rules.template import TOKEN

BODY_SEARCH_LIMIT = 1024 * 1024  # bytes of a decoded body that `body:` regexes look at
MAX_RETRY_AFTER = 24 * 3600.0  # seconds; an upstream asking for more is taken to mean a day


def applies(rule: ResponseRule | None, injected: Collection[str]) -> bool:
    """Can this rule retry a request into which these placeholders were put? Rotating needs a token;
    refreshing, one of the values it refreshes."""
    if rule is None:
        return False
    if rule.action in (ROTATE, DISABLE):
        return TOKEN in injected
    return any(name in injected for name in rule.refreshes)


def verdict(rules: tuple[ResponseRule, ...], response: http.Response, streaming: bool = False) -> ResponseRule | None:
    """The first rule that matches, or None to pass the answer on (as a matching `pass` rule does).
    `streaming`: the request was a streaming one; its answer, like any event stream, is a streamed
    answer, which `first_event` regexes judge by its body's first event (they never match another)."""
    text: str | None = None
    event: str | None = None
    for rule in rules:
        if response.status_code not in rule.statuses:
            continue
        if rule.first_event is not None:
            sse = is_sse(response.headers)
            if not (streaming or sse):
                continue
            if event is None:
                event = first_event(response.raw_content or b"", sse)
            if not rule.first_event.search(event):
                continue
        if rule.body is not None:
            if text is None:
                text = body_text(response)
            if not rule.body.search(text):
                continue
        return None if rule.action == PASS else rule
    return None


def body_text(response: http.Response) -> str:
    """The start of the decoded body that `body:` regexes search: at most BODY_SEARCH_LIMIT bytes,
    decoded with that bound (a compressed body is never decoded whole); a body that cannot be
    decoded is searched as it came, as mitmproxy shows it."""
    raw = response.raw_content or b""
    encoding = response.headers.get("content-encoding")
    body = raw
    if encoding:
        try:
            body = decode_body(raw, encoding, BODY_SEARCH_LIMIT).body
        except ValueError:
            pass
    return body[:BODY_SEARCH_LIMIT].decode("utf-8", errors="replace")


def may_retry(rules: tuple[ResponseRule, ...], status: int, injected: Collection[str]) -> bool:
    """Could an answer with this status be retried, so that it must be held whole? Decided before
    the body is read, so a rule whose `body` might match counts; the first rule without `body` ends
    the search. `first_event` rules do not count: see `holds_for_first_event`."""
    for rule in rules:
        if status in rule.statuses:
            if rule.first_event is not None:
                continue
            if applies(rule, injected):
                return True
            if rule.body is None:
                return False
    return False


def holds_for_first_event(rules: tuple[ResponseRule, ...], status: int, injected: Collection[str]) -> bool:
    """Could a streamed answer with this status be retried for its first event? Then it is held
    until that comes. (Asked of an answer that `may_retry` does not hold whole.)"""
    for rule in rules:
        if status in rule.statuses:
            if rule.first_event is not None:
                if applies(rule, injected):
                    return True
            elif rule.body is None:
                return False
    return False


def retry_after(response: http.Response, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (ASCII digits or an HTTP date), capped at a day, or None:
    anything else (`²`, `١٢`, `1e3`, `-5`, `5.0`) is ignored as if the header were absent."""
    value = response.headers.get("retry-after", "").strip(" \t")
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too, and float("١٢") is 12.0
        return min(float(value), MAX_RETRY_AFTER)  # (a number too long for a float is inf: a day)
    try:
        seconds = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
