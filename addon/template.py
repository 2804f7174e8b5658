"""Header, cookie and body values with placeholders: `{token}`, `{NAME}`, `{env:NAME}`.

`{{` and `}}` stand for literal braces. `{env:NAME}` is resolved when the rules
file loads (the environment does not change under a running proxy); `{token}`
(the rotation) and `{NAME}` (a named value of the `values:` section, such as
`{captcha}`) are drawn for each request.
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
DEFAULT_NAMES = frozenset({TOKEN, CAPTCHA})  # the placeholders every rules file may use
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


def parse_template(
    text: str,
    environ: Mapping[str, str] = os.environ,
    names: frozenset[str] = DEFAULT_NAMES,
    line_breaks: bool = False,
) -> Template:
    """Compile a value; an unknown placeholder is an error, and so is a line break unless
    `line_breaks` (a JSON body's strings may have them). `names`: the placeholders drawn per request.

    Raises:
        ValueError: the value cannot be used as a header or cookie value.
    """
    if not line_breaks and ("\r" in text or "\n" in text):
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
        if name in names:
            parts.append("".join(literal))
            literal = []
            parts.append((name,))
        elif name.startswith("env:"):
            var = name[4:]
            if not var:
                raise ValueError("{env:} needs a variable name, like {env:API_KEY}")
            if var not in environ:
                raise ValueError(f"environment variable {var} (used as {{{name}}}) is not set")
            if not line_breaks and ("\r" in environ[var] or "\n" in environ[var]):
                raise ValueError(f"environment variable {var} (used as {{{name}}}) contains a line break")
            literal.append(environ[var])
        else:
            known = sorted(names, key=lambda n: (n != TOKEN, n))
            close = difflib.get_close_matches(name, [*known, "env:NAME"], 1)
            expected = ", ".join(f"{{{n}}}" for n in known) + " or {env:NAME}"
            hint = f"did you mean {{{close[0]}}}?" if close else f"expected {expected}"
            raise ValueError(f"unknown placeholder {{{name}}} ({hint})")
    literal.append(text[pos:])
    parts.append("".join(literal))
    return Template(tuple(p for p in parts if p != ""), text)
