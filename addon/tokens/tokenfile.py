"""The tokens file, read into an immutable, hashed and indexed `TokenList`.

The addon only ever reads the tokens file. Health is kept by a hash of each token (`token_key`), never
by its line number, so editing, reordering or adding tokens keeps the health of the others.

Sizes: a tokens file can hold a million tokens. Reading it, hashing every token and indexing them
happens where the file is read (off the event loop, see loader.py), into a `TokenList`. The health
records of tokens no longer in the file are dropped after `GONE_GRACE` (statefile.StateStore finds
them, TokenPool.forget drops them).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from addon.tokens.expiry import expires_at, might_expire

logger = logging.getLogger(__name__)

GONE_GRACE = 24 * 3600.0  # seconds the health of a token no longer in the file is kept


class TokensFileError(ValueError):
    """The tokens file cannot be read."""


def read_tokens(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with # are skipped.

    A byte-order mark, Windows line endings and repeated tokens are tolerated
    (a repeat is used once). Lines end at LF (or CR LF) only: a line that holds any
    other control character (VT, FF, U+001C, U+0085, U+2028, a lone CR, a tab inside
    the token...) is skipped with a warning that names the file and line.

    Raises:
        TokensFileError: the file is missing, unreadable or not UTF-8.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise TokensFileError(f"{path}: tokens file not found") from None
    except OSError as e:
        raise TokensFileError(f"{path}: cannot read the tokens file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise TokensFileError(f"{path}: the tokens file is not UTF-8 text (byte {e.start})") from None
    tokens: dict[str, None] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        control = _CONTROL.search(line)
        if control is not None:
            logger.warning(f"{path}:{number}: skipped: the line holds the control character U+{ord(control[0]):04X} "
                           "(a token is one line of printable text)")  # fmt: skip
            continue
        tokens.setdefault(line.strip(), None)
    return tuple(tokens)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0 and C1 controls, DEL, line and paragraph separators


def token_key(token: str) -> str:
    """The name a token's health is kept under: a hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


@dataclass(frozen=True, eq=False)
class TokenList:
    """The tokens of one version of the file, hashed and indexed once (where the file is read)."""

    tokens: tuple[str, ...]
    keys: tuple[str, ...]
    position: dict[str, int]  # token -> its place
    key_position: dict[str, int]  # key -> its place
    expiry: dict[int, float]  # place -> when the token expires, for those that say (see expiry.py)

    @classmethod
    def of(cls, tokens: Sequence[str]) -> TokenList:
        tokens = tuple(tokens)
        keys = tuple(token_key(t) for t in tokens)
        expiry = {i: at for i, t in enumerate(tokens) if might_expire(t) and (at := expires_at(t)) is not None}
        return cls(tokens, keys, {t: i for i, t in enumerate(tokens)}, {k: i for i, k in enumerate(keys)}, expiry)


def read_token_list(path: Path) -> TokenList:
    """`read_tokens`, hashed and indexed.

    Raises:
        TokensFileError: as read_tokens.
    """
    return TokenList.of(read_tokens(path))
