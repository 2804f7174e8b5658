"""The flow comment: what the addon did to a flow, one item to a line.

mitmweb shows a comment as one paragraph: its line breaks render as spaces. So every item after
the first begins with "· ". With line breaks (mitmdump, the console, saved flows) the comment
reads as a heading and a list; run together (mitmweb) as "heading · item · item". A middle dot
rather than ";" or ",": those appear inside items (the list of rules, a captcha and a token).
"""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy import flow as mflow

SEPARATOR = "\n· "


def join(items: Iterable[str]) -> str:
    """A whole comment from its items, the first one the heading."""
    return SEPARATOR.join(items)


def add_note(flow: mflow.Flow, note: str) -> None:
    """Append one item to the flow's comment (or make it the comment, when there is none)."""
    flow.comment = f"{flow.comment}{SEPARATOR}{note}" if flow.comment else note
