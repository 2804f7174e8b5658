"""An HTTP/1.1 upstream that misbehaves on cue, for the fault tests.

Each request it reads takes the next step of its script: answer, reset the
connection, or hang. Once the script is used up, every request gets a small
200. It speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) for a
proxy in front of it, records every request, and listens on loopback only.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie

Step = Callable[[socket.socket], bool]  # does its thing to the connection; True: keep it open


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def cookie(self, name: str) -> str | None:
        jar = SimpleCookie(self.headers.get("cookie", ""))
        return jar[name].value if name in jar else None


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None, close: bool = False) -> Step:
    def step(conn: socket.socket) -> bool:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if close:
            head.append("Connection: close")
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return not close

    return step


def refuse(close: bool = False, padding: int = 0) -> Step:
    """A 403 for the account token (optionally with `padding` bytes of filler in its JSON body)."""
    body = json.dumps({"error": "unknown account", "padding": "x" * padding}).encode()
    return answer(403, body, close=close)


def reset(conn: socket.socket) -> bool:
    """Drop the connection with a TCP reset instead of answering."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


OK = answer(200, b'{"ok": true}')


class ScriptedUpstream:
    def __init__(self) -> None:
        self.script: deque[Step] = deque()
        self.received: list[Request] = []
        self.released = threading.Event()  # set to let hanging steps go
        self.hung_up = threading.Event()  # set when the proxy closed a hanging connection
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self, conn: socket.socket) -> bool:
        """Read the request, then say nothing until the proxy hangs up (or the test releases it)."""
        conn.settimeout(0.05)
        while not self.released.is_set():
            try:
                if not conn.recv(1):
                    self.hung_up.set()
                    break
            except TimeoutError:
                continue
            except OSError:
                self.hung_up.set()
                break
        return False

    def stop(self) -> None:
        self.released.set()
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn, reader:
            while request := _read_request(reader):
                with self._lock:
                    self.received.append(request)
                    step = self.script.popleft() if self.script else OK
                if not step(conn):
                    return


def _read_request(reader) -> Request | None:
    line = reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (line := reader.readline().decode("latin-1").strip()) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", 0)))
    return Request(method, target, headers, body)
