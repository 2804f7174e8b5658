"""A real upstream proxy for the exits' tests: Debian's tinyproxy (scripts/test installs tinyproxy-bin),
listening on 127.0.0.1 and connecting out from its own loopback address (`Bind`), so that the upstream
sees which exit a request came through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import free_port
from fake_upstream import stop_process, wait_for_port


class Tinyproxy:
    def __init__(self, folder: Path, source: str, login: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.source = source  # the address it connects to upstreams from: 127.0.0.2, 127.0.0.3, …
        self.folder = folder / f"tinyproxy-{self.port}"
        self.folder.mkdir()
        lines = [f"Port {self.port}", "Listen 127.0.0.1", f"Bind {source}", "Timeout 30", "LogLevel Info",
                 "MaxClients 100", "DisableViaHeader Yes"]  # fmt: skip
        if login is not None:
            lines.append(f"BasicAuth {login[0]} {login[1]}")
        self.conf = self.folder / "tinyproxy.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.logfile = self.folder / "tinyproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Tinyproxy:
        program = shutil.which("tinyproxy")
        assert program, "tinyproxy is not installed (scripts/test installs Debian's tinyproxy-bin)"
        self._log = open(self.logfile, "wb")
        self.proc = subprocess.Popen([program, "-d", "-c", str(self.conf)], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
        wait_for_port(self.port, proc=self.proc)
        return self

    def url(self, login: str = "") -> str:
        return f"http://{login + '@' if login else ''}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
