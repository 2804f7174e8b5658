"""How secrets appear in logs, comments and error bodies: never whole."""

from __future__ import annotations


def mask(secret: str) -> str:
    """`…a1b2`: the last four characters, and none of a value shorter than twelve."""
    return "…" + secret[-4:] if len(secret) >= 12 else "…"
