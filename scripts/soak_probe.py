"""A mitmproxy script for scripts/soak: mitmdump reports on itself through the proxy.

Loaded beside the addon (`mitmdump -s addon/main.py -s scripts/soak_probe.py`), it answers
any proxied request to http://soak-probe.invalid/ itself, in its `request` hook, with JSON:
the number of asyncio tasks in mitmdump's event loop, its resident memory and its open file
descriptors. The request never leaves the proxy (the host does not exist).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from mitmproxy import http

PROBE_HOST = "soak-probe.invalid"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class SoakProbe:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.request.host != PROBE_HOST:
            return
        figures = {
            "tasks": len(asyncio.all_tasks()),
            "rss_kib": rss_kib(),
            "fds": len(os.listdir("/proc/self/fd")) - 1,  # less the one listdir opens to read the folder
        }
        flow.response = http.Response.make(200, json.dumps(figures), {"Content-Type": "application/json"})


addons = [SoakProbe()]
