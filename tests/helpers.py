"""Shared test helpers: rules files written into a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

TOKENS = ["tok-alpha-000000001111", "tok-bravo-000000002222", "tok-charlie-0000003333"]


def write_rules(folder: Path, rules: str, tokens: list[str] | None = None, captcha: str | None = "cap-test-value-9999") -> Path:
    """Write rules.yaml (dedented) plus tokens.txt and captcha.txt beside it."""
    (folder / "tokens.txt").write_text("\n".join(TOKENS if tokens is None else tokens) + "\n")
    if captcha is not None:
        (folder / "captcha.txt").write_text(captcha + "\n")
    path = folder / "rules.yaml"
    path.write_text(textwrap.dedent(rules))
    return path
