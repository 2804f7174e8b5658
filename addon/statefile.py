"""Token health on disk: JSON, written atomically, read forgivingly.

A missing, unreadable or corrupt state file means a fresh start with a
warning, never a crash. Writes go to a temporary file in the same folder that
then replaces the old one, so a crash mid-write leaves the previous state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

VERSION = 1


def load_state(path: Path) -> dict[str, Any]:
    """The saved token health, or {} (with a warning) when there is none to trust."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        logger.info(f"tokens: no state file at {path} yet; every token starts active")
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        logger.warning(f"tokens: cannot use the state file {path} ({e}); starting with every token active")
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("tokens"), dict):
        logger.warning(f"tokens: the state file {path} is not one this version wrote; starting with every token active")
        return {}
    return data["tokens"]


def save_state(path: Path, tokens: dict[str, Any]) -> None:
    """Write atomically.

    Raises:
        OSError: the folder is not writable, the disk is full, ...
    """
    text = json.dumps({"version": VERSION, "tokens": tokens}, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
