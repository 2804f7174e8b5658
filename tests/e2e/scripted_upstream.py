"""An HTTP/1.1 upstream that misbehaves on cue, for the fault tests.

Each request it reads takes the next step of its script: answer, reset the
connection, hang, or stream Server-Sent Events (and perhaps go silent halfway).
Once the script is used up, every request gets a small 200. It speaks just
enough HTTP/1.1 (Content-Length request bodies, keep-alive, chunked event
streams) for a proxy in front of it, over TLS if given a certificate, records
every request, and listens on loopback only.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
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
    def __init__(self, cert: tuple[str, str] | None = None) -> None:
        self.script: deque[Step] = deque()
        self.received: list[Request] = []
        self.released = threading.Event()  # set to let hanging steps go
        self.hung_up = threading.Event()  # set when the proxy closed a hanging or streaming connection
        self.events_sent = 0  # by the `events` steps
        self.sent_bodies: list[list[bytes]] = []  # by the `sse` steps: the chunks each sent
        self.gate_timed_out = threading.Event()  # an `sse` step waited in vain for its Event
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._tls: ssl.SSLContext | None = None
        if cert:  # HTTPS, HTTP/1.1 only
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*cert)
            self._tls.set_alpn_protocols(["http/1.1"])
        threading.Thread(target=self._accept, daemon=True).start()

    def events(self, count: int, interval: float = 0.3, silent_after: int | None = None,
               reset_after: int | None = None) -> Step:
        """A 200 that streams `count` Server-Sent Events, chunked, `interval` seconds apart, each with
        the time it was sent (`sent_at`). With `silent_after`, it says nothing more after that many
        and waits for the proxy to hang up; with `reset_after`, it resets the connection. A proxy that
        closes the connection ends it early, and `hung_up` is set."""

        def step(conn: socket.socket) -> bool:
            head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            conn.sendall(head.encode())
            for n in range(count):
                if n == silent_after:
                    return self.hang(conn)
                if n == reset_after:
                    return reset(conn)
                data = f"data: {json.dumps({'n': n, 'sent_at': time.time()})}\n\n".encode()
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                except OSError:
                    self.hung_up.set()
                    return False
                with self._lock:
                    self.events_sent += 1
                if self._closed_within(conn, interval):
                    self.hung_up.set()
                    return False
            conn.sendall(b"0\r\n\r\n")
            return True

        return step

    def sse(self, *parts: bytes | Callable[[], bytes] | float | threading.Event, length: int | None = None) -> Step:
        """A 200 `text/event-stream` that sends `parts` in order, each a chunk of its own: bytes as
        they are, a callable's bytes made when it is sent, a float a pause of that many seconds, an
        Event a wait (up to 30 s; `gate_timed_out` is set if it never comes, `hung_up` if the proxy
        closes the connection meanwhile). What it sent is kept in
        `sent_bodies`, one entry per step. `length`: a Content-Length body (the parts are its bytes),
        not chunks. A proxy that closes the connection ends it early, and `hung_up` is set."""

        def step(conn: socket.socket) -> bool:
            framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{framing}\r\n\r\n".encode())
            sent: list[bytes] = []
            with self._lock:
                self.sent_bodies.append(sent)
            for part in parts:
                if isinstance(part, threading.Event):
                    deadline = time.monotonic() + 30
                    while not part.is_set():
                        if time.monotonic() > deadline:
                            self.gate_timed_out.set()
                            break
                        if self._closed_within(conn, 0.05):
                            self.hung_up.set()
                            return False
                    continue
                if isinstance(part, float):
                    if self._closed_within(conn, part):
                        self.hung_up.set()
                        return False
                    continue
                data = part() if callable(part) else part
                try:
                    conn.sendall(data if length is not None else b"%x\r\n%s\r\n" % (len(data), data))
                except OSError:
                    self.hung_up.set()
                    return False
                sent.append(data)
            if length is None:
                conn.sendall(b"0\r\n\r\n")
            return True

        return step

    @staticmethod
    def _closed_within(conn: socket.socket, seconds: float) -> bool:
        """Did the peer close the connection within `seconds`? (It sends nothing while it reads a stream.)"""
        conn.settimeout(seconds)
        try:
            return not conn.recv(1)
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            conn.settimeout(None)

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

    def silent_body(self, conn: socket.socket) -> bool:
        """A 200 that promises 100 bytes, sends 10, and says nothing more until the proxy hangs up."""
        conn.sendall(b"HTTP/1.1 200 X\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"ok\": tru")
        return self.hang(conn)

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
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
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
