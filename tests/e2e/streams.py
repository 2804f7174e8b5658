"""Reading Server-Sent Events as they arrive, checking they were not held back, and an HTTP/2 client that leaves."""

from __future__ import annotations

import json
from collections.abc import Callable
import socket
import ssl
import time
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx


def read_sse(response: httpx.Response) -> list[tuple[float, dict]]:
    """(arrival time, event) for every data event but [DONE]."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: {"):
            events.append((time.time(), json.loads(line[6:])))
    return events


def assert_spread_out(events: list[tuple[float, dict]]) -> None:
    """Events arrive as the upstream sends them (0.3 s apart), not in one lump at the end.

    Generous margins: the first event must arrive well before the last one was even sent,
    and arrivals must span at least half of the upstream's own spacing.
    """
    assert len(events) >= 5
    first_arrival, last_sent = events[0][0], events[-1][1]["sent_at"]
    sent_span = events[-1][1]["sent_at"] - events[0][1]["sent_at"]
    arrived_span = events[-1][0] - events[0][0]
    assert sent_span > 1.0
    assert first_arrival < last_sent - 0.5, "the first event was held back until the stream ended"
    assert arrived_span > 0.5 * sent_span


def h2_read_then_reset(proxy_url: str, url: str, body: bytes, ca: str, events: int,
                       wait: float | Callable[[], object] = 0.3) -> ssl.SSLSocket:
    """A plain HTTP/2 client (the h2 library) through the proxy: CONNECT, TLS with ALPN h2, a POST of
    `body`; once `events` data events have come, it resets the stream (RST_STREAM, CANCEL) and
    returns its socket, still connected, for the caller to close (`events` 0: it resets the stream
    `wait` seconds after sending the request, or once `wait()` returns). (httpx, on leaving a stream early, drops it without telling the
    server.)"""
    target, proxy = urlsplit(url), urlsplit(proxy_url)
    authority = f"{target.hostname}:{target.port}"
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname=target.hostname)
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":path", target.path + (f"?{target.query}" if target.query else "")), (":scheme", "https"), (":authority", authority),
               ("content-type", "application/json")]  # fmt: skip
    conn.send_headers(1, headers)
    conn.send_data(1, body, end_stream=True)
    tls.sendall(conn.data_to_send())
    if events == 0:  # reset while the request waits for its answer
        wait() if callable(wait) else time.sleep(wait)
        conn.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
        tls.sendall(conn.data_to_send())
        return tls
    received = b""
    while received.count(b"data: {") < events:
        data = tls.recv(65535)
        assert data, "the proxy closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        tls.sendall(conn.data_to_send())
    conn.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
    tls.sendall(conn.data_to_send())
    return tls
