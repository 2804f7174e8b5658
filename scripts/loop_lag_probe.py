"""A mitmproxy script for scripts/stress.py: how long mitmdump's event loop was held, seen from inside.

Loaded beside the addon (`STRESS_EXTRA_SCRIPT=scripts/loop_lag_probe.py .venv/bin/python
scripts/stress.py --only json`), it wakes every 5 ms and, at shut-down, logs one line: the worst
lateness of a wake-up, each lateness over 20 ms with the main thread's CPU time in it (CPU about equal
to the lateness: the loop was busy; much less: the process waited, for the machine or a lock), and each
garbage collection that took over 10 ms. A client's latency also holds the client's own delays; this
does not.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

logger = logging.getLogger(__name__)


class LoopLagProbe:
    def __init__(self) -> None:
        self.worst = 0.0
        self.late: list[tuple[int, int]] = []  # (ms late, ms of main-thread CPU meanwhile)
        self.collections: list[tuple[int, int]] = []  # (generation, ms)
        self._task: asyncio.Task | None = None
        self._gc_start = 0.0

    def running(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif (took := time.perf_counter() - self._gc_start) > 0.01:
            self.collections.append((info["generation"], round(took * 1000)))

    async def _watch(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.005)
            late, cpu = time.perf_counter() - wall - 0.005, time.thread_time() - cpu
            if late > 0.02:
                self.late.append((round(late * 1000), round(cpu * 1000)))
            self.worst = max(self.worst, late)

    def done(self) -> None:
        gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
        logger.warning(f"loop lag probe: worst {self.worst * 1000:.1f} ms; over 20 ms (ms late, ms CPU): {self.late}; "
                       f"collections over 10 ms (generation, ms): {self.collections}")  # fmt: skip


addons = [LoopLagProbe()]
