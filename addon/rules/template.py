"""Header, cookie and body values with placeholders: `{token}`, `{token:POOL}`, `{NAME}`, `{env:NAME}`.

`{{` and `}}` stand for literal braces. `{env:NAME}` is resolved when the rules
file loads (the environment does not change under a running proxy); `{token}`
(the rotation of the only token pool), `{token:POOL}` (of the pool named POOL,
when the file has several) and `{NAME}` (a named value of the `values:` section,
such as `{captcha}`) are drawn for each request. Every token placeholder is the
same part, `(TOKEN,)`, in a template: which pool it draws from is the template's
`pool`.
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
    pool: str | None = None  # the token pool its {token:POOL} names (None: {token}, the only pool, or none)

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
    pools: tuple[str, ...] = (),
) -> Template:
    """Compile a value; an unknown placeholder is an error, and so is a line break unless
    `line_breaks` (a JSON body's strings may have them). `names`: the placeholders drawn per request.
    `pools`: the names of the file's token pools when it names them (`{token:POOL}`; `{token}` then
    only when there is one).

    Raises:
        ValueError: the value cannot be used as a header or cookie value.
    """
    if not line_breaks and ("\r" in text or "\n" in text):
        raise ValueError("a header or cookie value cannot contain a line break")
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    drawn_from: set[str] = set()  # the pools its token placeholders name
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
        if (name == TOKEN or name.startswith(TOKEN + ":")) and TOKEN in names:
            drawn_from.add(_pool_of(name, pools))
            parts.append("".join(literal))
            literal = []
            parts.append((TOKEN,))
        elif name in names:
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
            if pools and TOKEN in names:
                known[:1] = [f"{TOKEN}:{p}" for p in pools]
            close = difflib.get_close_matches(name, [*known, "env:NAME"], 1)
            expected = ", ".join(f"{{{n}}}" for n in known) + " or {env:NAME}"
            hint = f"did you mean {{{close[0]}}}?" if close else f"expected {expected}"
            raise ValueError(f"unknown placeholder {{{name}}} ({hint})")
    literal.append(text[pos:])
    parts.append("".join(literal))
    if len(drawn_from) > 1:
        raise ValueError(f"one value draws tokens from one pool; this one names {' and '.join(sorted(drawn_from))}")
    pool = next(iter(drawn_from), "") or None
    return Template(tuple(p for p in parts if p != ""), text, pool)


def _pool_of(name: str, pools: tuple[str, ...]) -> str:
    """The pool a token placeholder draws from ("": the only pool, of a file whose `tokens:` is one).

    Raises:
        ValueError: the file has no such pool, or several and the placeholder does not say which.
    """
    wanted = name.partition(":")[2]
    if not pools:  # tokens: is one pool (or absent): only {token}
        if name == TOKEN:
            return ""
        raise ValueError(f"unknown placeholder {{{name}}} (a pool is named only in a tokens section of several: "
                         f"tokens: {{{wanted or 'NAME'}: {{file: …}}, …}}; a tokens section of one pool is {{token}})")
    if name == TOKEN:
        if len(pools) == 1:
            return pools[0]
        raise ValueError(f"{{token}} does not say which pool: the file has {', '.join(pools)}; write "
                         f"{{token:{pools[0]}}}, say")
    if wanted in pools:
        return wanted
    close = difflib.get_close_matches(wanted, pools, 1)
    hint = f"did you mean {{token:{close[0]}}}?" if close else f"the file has {', '.join(pools)}"
    raise ValueError(f"no token pool named {wanted!r} in {{{name}}} ({hint})")
