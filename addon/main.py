"""Entry point for mitmproxy: `mitmdump -s addon/main.py [--set rules=rules.yaml]`."""

import sys
from pathlib import Path

# mitmproxy loads this file as a script; make the package importable from any working directory.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addon.commands import TokenCommands  # noqa: E402
from addon.guard import SelfGuard  # noqa: E402
from addon.loader import RulesLoader  # noqa: E402
from addon.recovery import Recovery  # noqa: E402
from addon.rewriter import Rewriter  # noqa: E402
from addon.streamtap import StreamTap  # noqa: E402

_state = RulesLoader()
_rewriter = Rewriter(_state)
addons = [SelfGuard(), _state, _rewriter, StreamTap(_state), Recovery(_state, _rewriter), TokenCommands(_state)]
