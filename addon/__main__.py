"""`python -m addon …`: the `mitm-rules` command (addon/cli/main.py)."""

import sys

from addon.cli.main import main

sys.exit(main())
