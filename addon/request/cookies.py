"""Edit single cookies inside `Cookie` header values, leaving the others byte for byte.

mitmproxy's `request.cookies` re-serialises the whole header, which can change
the spelling of cookies nobody asked to touch; here only the edited pairs change.
"""

from __future__ import annotations

from collections.abc import Mapping


def edit_cookie_headers(
    values: list[str], edits: Mapping[str, str | None], present: set[str] | None = None
) -> list[str]:
    """Apply `edits` (name -> new value, or None to remove) to the `Cookie` header values.

    A cookie that is set but absent is appended to the last header value (or
    makes a new one). When a name appears more than once, the first is set and
    the repeats are removed, so the upstream sees exactly one value.
    Header values left empty by removals are dropped. `present`, when given, gets
    the names of the edited cookies the values had (so a removal can tell it removed one).
    """
    pending = dict(edits)
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        kept: list[str] = []
        for pair in value.split(";"):
            name = pair.split("=", 1)[0].strip()
            if name not in edits:
                kept.append(pair)
                continue
            if present is not None:
                present.add(name)
            new = edits[name]
            if new is None or name in seen:
                continue
            seen.add(name)
            pending.pop(name, None)
            lead = pair[: len(pair) - len(pair.lstrip())]
            kept.append(f"{lead}{name}={new}")
        joined = ";".join(kept)
        if joined.strip():
            # a removed first pair must not leave its successor's separator space in front
            lead = value[: len(value) - len(value.lstrip())]
            out.append(lead + joined.lstrip())
    added = [f"{name}={new}" for name, new in pending.items() if new is not None]
    if added:
        if out:
            out[-1] = "; ".join([out[-1], *added])
        else:
            out.append("; ".join(added))
    return out
