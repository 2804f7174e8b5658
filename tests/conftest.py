import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the package under test, and scripts/ for the local upstream the end-to-end tests use
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
