"""Header and cookie values with placeholders: `{token}`, `{captcha}`, `{env:NAME}`.

`{{` and `}}` stand for literal braces. `{env:NAME}` is resolved when the rules
file loads (the environment does not change under a running proxy); `{token}`
and `{captcha}` are drawn for each request.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN = "token"
CAPTCHA = "captcha"
_DYNAMIC = (TOKEN, CAPTCHA)
_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Template:
    """A value split into literal text and the names of dynamic placeholders."""

    parts: tuple[str | tuple[str], ...]  # a 1-tuple names a dynamic placeholder
    source: str

    @functools.cached_property
    def uses(self) -> frozenset[str]:
        return frozenset(p[0] for p in self.parts if isinstance(p, tuple))

    @functools.cached_property
    def sorted_uses(self) -> tuple[str, ...]:
        return tuple(sorted(self.uses))

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(p if isinstance(p, str) else values[p[0]] for p in self.parts)


def parse_template(text: str, environ: Mapping[str, str] = os.environ) -> Template:
    """Compile a value; a line break or an unknown placeholder is an error.

    Raises:
        ValueError: the value cannot be used as a header or cookie value.
    """
    if "\r" in text or "\n" in text:
        raise ValueError("a header or cookie value cannot contain a line break")
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    pos = 0
    for m in _PIECE.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        piece = m.group(0)
        if piece in ("{{", "}}"):
            literal.append(piece[0])
            continue
        if m.group(1) is None:
            raise ValueError(f"unmatched {piece!r} in {text!r} (write {piece * 2} for a literal brace)")
        name = m.group(1)
        if name in _DYNAMIC:
            parts.append("".join(literal))
            literal = []
            parts.append((name,))
        elif name.startswith("env:"):
            var = name[4:]
            if not var:
                raise ValueError("{env:} needs a variable name, like {env:API_KEY}")
            if var not in environ:
                raise ValueError(f"environment variable {var} (used as {{{name}}}) is not set")
            if "\r" in environ[var] or "\n" in environ[var]:
                raise ValueError(f"environment variable {var} (used as {{{name}}}) contains a line break")
            literal.append(environ[var])
        else:
            close = difflib.get_close_matches(name, [*_DYNAMIC, "env:NAME"], 1)
            hint = f"did you mean {{{close[0]}}}?" if close else "expected {token}, {captcha} or {env:NAME}"
            raise ValueError(f"unknown placeholder {{{name}}} ({hint})")
    literal.append(text[pos:])
    parts.append("".join(literal))
    return Template(tuple(p for p in parts if p != ""), text)
