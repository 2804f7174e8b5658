"""The tokens file and the rotation over it.

The addon only ever reads the tokens file. Rotation follows token values, not
line numbers, so editing the file keeps the place in the rotation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class TokensFileError(ValueError):
    """The tokens file cannot be read."""


def read_tokens(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with # are skipped.

    A byte-order mark, Windows line endings and repeated tokens are tolerated
    (a repeat is used once).

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
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.setdefault(line, None)
    return tuple(tokens)


class TokenPool:
    """Hands out tokens: `round_robin` takes the next one for every request,
    `sticky` keeps one until it is refused."""

    def __init__(self, tokens: Sequence[str] = (), strategy: str = "round_robin") -> None:
        self.strategy = strategy
        self._tokens: tuple[str, ...] = ()
        self._last: str | None = None
        self.replace(tokens)

    def replace(self, tokens: Sequence[str]) -> None:
        """Take a new list of tokens, keeping the place in the rotation by value."""
        self._tokens = tuple(tokens)
        self._position = {t: i for i, t in enumerate(self._tokens)}

    def __len__(self) -> int:
        return len(self._tokens)

    def draw(self) -> str | None:
        """The token for the next request, or None when there are none."""
        if not self._tokens:
            return None
        i = self._position.get(self._last, -1) if self._last is not None else -1
        if i < 0:
            i = 0
        elif self.strategy == "round_robin":
            i = (i + 1) % len(self._tokens)
        self._last = self._tokens[i]
        return self._last
