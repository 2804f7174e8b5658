"""A real redis-server (Debian's package) on a free loopback port, without persistence, for the
shared-store tests. scripts/test installs it when it is missing; a test that needs it fails, never
skips, when it is not there."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: scripts/test installs Debian's package (apt-get install redis-server)"
        self.binary, self.workdir, self.port = binary, workdir, _free_port()
        self.password, self.tls = password, tls
        self.proc: subprocess.Popen | None = None
        if tls:  # a certificate of its own for 127.0.0.1, which is also the CA clients trust
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(workdir / "redis-key.pem"),
                 "-out", str(self.ca)],
                check=True, capture_output=True,
            )  # fmt: skip

    @property
    def ca(self) -> Path:
        return self.workdir / "redis-cert.pem"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again, on the same port, empty: nothing persists)."""
        args = ["--port", str(self.port)]
        if self.tls:
            args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.ca),
                    "--tls-key-file", str(self.workdir / "redis-key.pem"), "--tls-ca-cert-file", str(self.ca),
                    "--tls-auth-clients", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused one too
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        """Hang it (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)

    def everything(self) -> list[str]:
        """Every key, and every value of every key (strings, hashes, sets, sorted sets, streams), as text."""
        r = self.client()
        out = []
        for key in r.scan_iter("*"):
            out.append(key)
            kind = r.type(key)
            if kind == "string":
                out.append(r.get(key) or "")
            elif kind == "hash":
                out.extend(f"{k} {v}" for k, v in r.hgetall(key).items())
            elif kind == "zset":
                out.extend(r.zrange(key, 0, -1))
            elif kind == "set":
                out.extend(r.smembers(key))
            elif kind == "list":
                out.extend(r.lrange(key, 0, -1))
            elif kind == "stream":
                out.extend(f"{i} {fields}" for i, fields in r.xrange(key))
        return out
