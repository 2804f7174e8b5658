"""What an upstream answer means, by the `on_response` rules: retry how, or pass it on."""

from __future__ import annotations

import email.utils
import time

from mitmproxy import http

from addon.config import PASS, ResponseRule

BODY_SEARCH_LIMIT = 1024 * 1024  # bytes of a decoded body that `body:` regexes look at


def verdict(rules: tuple[ResponseRule, ...], response: http.Response) -> str | None:
    """The action of the first rule that matches, or None to pass the answer on."""
    text: str | None = None
    for rule in rules:
        if response.status_code not in rule.statuses:
            continue
        if rule.body is not None:
            if text is None:
                body = response.get_content(strict=False) or b""
                text = body[:BODY_SEARCH_LIMIT].decode("utf-8", errors="replace")
            if not rule.body.search(text):
                continue
        return None if rule.action == PASS else rule.action
    return None


def may_retry(rules: tuple[ResponseRule, ...], status: int) -> bool:
    """Could an answer with this status be retried? (Decided before the body is read.)"""
    for rule in rules:
        if status in rule.statuses:
            if rule.action != PASS:
                return True
            if rule.body is None:
                return False
    return False


def retry_after(response: http.Response, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
