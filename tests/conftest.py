import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the package under test, and scripts/ for the local upstream the end-to-end tests use
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from redisserver import RedisServer  # noqa: E402


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A real redis-server of its own on a free loopback port, without persistence."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()
