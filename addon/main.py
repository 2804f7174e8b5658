"""Entry point for mitmproxy: `mitmdump -s addon/main.py [--set rules=rules.yaml]`."""

import sys
from pathlib import Path

# mitmproxy loads this file as a script; make the package importable from any working directory.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addon.pipeline import Pipeline  # noqa: E402

addons = [Pipeline()]
