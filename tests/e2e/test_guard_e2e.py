"""End to end: nothing sent through the proxy may reach mitmweb or the proxy itself, however the
destination is spelled, through a CONNECT tunnel or raw TCP, and no request can loop into the proxy."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import struct
from pathlib import Path

import pytest

from conftest import Mitmweb, free_port
from helpers import write_rules

RULES = "rules:\n  - match: {host: a.example}\n    headers: {X: y}\n"
REFUSED = "is this proxy or its web interface"


def loopback_names() -> list[str]:
    """localhost and every name /etc/hosts maps to 127.0.0.0/8 on this machine."""
    names = {"localhost"}
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#")[0].split()
        try:
            if fields and ipaddress.ip_address(fields[0]) in ipaddress.ip_network("127.0.0.0/8"):
                names.update(fields[1:])
        except ValueError:
            continue
    return sorted(names)


SPELLINGS = [
    # issue 15: each reached mitmweb through the guard that judged the host's text with
    # `ipaddress` (on 11.0.2; most on 12.3.1 too, for a client that knows mitmweb's token)
    "127.1", "0", "127.0.1", "0177.0.0.1", "127.000.000.001", "2130706433", "0x7f000001",
    "[::ffff:7f00:1]", "[::ffff:127.0.0.1]",
    *loopback_names(),
    # more of the resolver's spellings that got through the same way
    "0x7f.1", "0x7f.0.0.1", "017700000001", "[0:0:0:0:0:ffff:7f00:1]",
    # the plain ones, refused before as well
    "127.0.0.1", "127.0.0.2", "[::1]", "0.0.0.0", "[::]",
]  # fmt: skip
# mitmweb checks the Host header against DNS rebinding, so some spellings got through only with
# a Host header it accepts
HOST_HEADERS = [pytest.param(None, id="Host as spelled"), pytest.param("127.0.0.1", id="Host 127.0.0.1")]


@pytest.fixture(scope="module")
def mitmweb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guard")
    web = Mitmweb(write_rules(folder, RULES), folder).start()
    yield web
    web.stop()


def web_credentials(web: Mitmweb) -> dict[str, str]:
    """What lets a client into mitmweb's API (its token on 12, the XSRF pair on both): a proxy
    client that has learned them."""
    cookies = "; ".join(f"{name}={value}" for name, value in web.web.cookies.items())
    headers = web.web.headers
    return {"Authorization": headers["Authorization"], "X-XSRFToken": headers["X-XSRFToken"], "Cookie": cookies}


def proxied(proxy_port: int, method: str, url: str, host: str, headers: dict[str, str], body: bytes | None = None):
    """Send `method url` through the proxy in absolute form, exactly as spelled, with this Host."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    try:
        conn.request(method, url, body=body, headers={"Host": host, **headers})
        answer = conn.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    finally:
        conn.close()


def assert_refused(status: int, text: str) -> None:
    assert not text.lstrip().startswith(("[", "{")), f"mitmweb answered through the proxy: {status} {text[:200]}"
    assert status == 403 and REFUSED in text, (status, text)


def test_the_client_knows_how_to_get_into_mitmweb(mitmweb):
    """The table below means something: sent directly, its requests get flows and set options."""
    conn = http.client.HTTPConnection("127.0.0.1", mitmweb.web_port, timeout=30)
    conn.request("GET", "/flows", headers=web_credentials(mitmweb))
    answer = conn.getresponse()
    assert answer.status == 200 and isinstance(json.loads(answer.read()), list)
    options = {**web_credentials(mitmweb), "Content-Type": "application/json"}
    conn.request("PUT", "/options", body=b'{"anticache": false}', headers=options)
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.parametrize("host_header", HOST_HEADERS)
@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
def test_mitmweb_is_refused_however_it_is_spelled(mitmweb, spelling, host_header):
    authority = f"{spelling}:{mitmweb.web_port}"
    host = f"{host_header}:{mitmweb.web_port}" if host_header else authority
    status, text = proxied(mitmweb.port, "GET", f"http://{authority}/flows", host, web_credentials(mitmweb))
    assert_refused(status, text)

    options = {**web_credentials(mitmweb), "Content-Type": "application/json"}
    status, text = proxied(mitmweb.port, "PUT", f"http://{authority}/options", host, options, b'{"anticache": true}')
    assert_refused(status, text)
    assert mitmweb.web.get("/options").json()["anticache"]["value"] is False


def test_a_refusal_says_what_the_name_resolved_to(mitmweb):
    _, text = proxied(mitmweb.port, "GET", f"http://2130706433:{mitmweb.web_port}/flows", "x", {})
    assert f"refused: 2130706433:{mitmweb.web_port} (127.0.0.1) {REFUSED}" in text
    logged = f"refused a proxied request to the proxy itself (2130706433:{mitmweb.web_port} (127.0.0.1)): GET /flows"
    assert logged in mitmweb.log()


def read_to_the_end(s: socket.socket) -> bytes:
    """Everything until the other side closes; a reset counts as a close (the proxy closes a
    refused connection with what we sent still unread, and the kernel then sends a reset)."""
    received = b""
    try:
        while chunk := s.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def connect_then(proxy_port: int, target: str, then: bytes) -> tuple[str, bytes]:
    """CONNECT to target, send `then` into the tunnel whatever the answer, close our side, and
    return the CONNECT answer's status line and everything that came after it."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = http.client.HTTPResponse(s, method="CONNECT")
        answer.begin()
        status = f"{answer.status} {answer.read().decode(errors='replace')}"
        try:
            s.sendall(then)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the proxy has closed the connection
            return status, b""
        return status, read_to_the_end(s)


@pytest.mark.parametrize("spelling", ["127.0.0.1", "127.1", "2130706433", "localhost"])
def test_connect_then_crlf_does_not_reach_mitmweb(mitmweb, spelling):
    # a CRLF first: mitmproxy takes the tunnel for raw TCP, and mitmweb skips the CRLF and answers
    get = f"\r\nGET /flows HTTP/1.1\r\nHost: 127.0.0.1:{mitmweb.web_port}\r\nConnection: close\r\n".encode()
    get += "".join(f"{k}: {v}\r\n" for k, v in web_credentials(mitmweb).items()).encode() + b"\r\n"
    status, rest = connect_then(mitmweb.port, f"{spelling}:{mitmweb.web_port}", get)
    assert b"HTTP/1.1 200" not in rest and b"[" not in rest, rest[:300]
    assert status.startswith("403 ") and REFUSED in status, status


def web_with_mode(folder: Path, mode: str) -> Mitmweb:
    """mitmweb whose only mode is `mode`, with {web_port} in it filled in."""
    web_port = free_port()
    mode = mode.format(web_port=web_port)
    return Mitmweb(write_rules(folder, RULES), folder, "--mode", mode, web_port=web_port).start()


@pytest.mark.parametrize("spelling", ["127.1", "2130706433", "[::ffff:7f00:1]"])
def test_a_raw_tcp_connection_to_mitmweb_is_closed_and_logged_once(tmp_path, spelling):
    """No HTTP hook sees a raw TCP connection (reverse:tcp here): it is refused at connect time."""
    web = web_with_mode(tmp_path, f"reverse:tcp://{spelling}:{{web_port}}")
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=30) as s:
            s.sendall(f"GET /flows HTTP/1.1\r\nHost: 127.0.0.1:{web.web_port}\r\nConnection: close\r\n\r\n".encode())
            assert read_to_the_end(s) == b""  # closed, nothing from mitmweb
        web.wait_for_log("killed before connect: refused by the mitm_rules guard")
        assert web.log().count("refused a connection to the proxy itself") == 1
    finally:
        web.stop()


def test_a_socks5_connection_to_mitmweb_is_refused(tmp_path):
    web = web_with_mode(tmp_path, "socks5")
    try:
        for name in [b"127.1", b"2130706433", *(n.encode() for n in loopback_names())]:
            with socket.create_connection(("127.0.0.1", web.port), timeout=30) as s:
                s.sendall(b"\x05\x01\x00")
                assert s.recv(2) == b"\x05\x00"
                s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", web.web_port))
                assert s.recv(2) == b"\x05\x04", name  # SOCKS5: host unreachable
    finally:
        web.stop()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_request_to_the_proxy_port_cannot_loop(tmp_path, start_proxy, upstream):
    proxy = start_proxy(write_rules(tmp_path, RULES))
    before = open_files(proxy.proc.pid)
    for spelling in ["2130706433", "127.1", "0", "[::ffff:7f00:1]", "localhost"]:
        status, text = proxied(proxy.port, "GET", f"http://{spelling}:{proxy.port}/", f"{spelling}:{proxy.port}", {})
        assert_refused(status, text)
    status, text = connect_then(proxy.port, f"2130706433:{proxy.port}", b"GET / HTTP/1.1\r\n\r\n")
    assert status.startswith("403 ")
    # each turn of a loop opens two descriptors, and keeps them: one request made 6,261 in 12 s
    assert open_files(proxy.proc.pid) <= before + 10
    # and the proxy still serves
    status, _ = proxied(proxy.port, "GET", f"http://127.0.0.1:{upstream.port}/echo", f"127.0.0.1:{upstream.port}", {})
    assert status == 200 and upstream.app.received[-1].path == "/echo"


def test_a_raw_tcp_connection_to_the_proxy_port_cannot_loop(tmp_path, start_proxy, upstream):
    loop_port = free_port()
    loop = f"reverse:tcp://2130706433:{loop_port}@{loop_port}"  # a second mode, beside the regular one
    proxy = start_proxy(write_rules(tmp_path, RULES), "--mode", "regular", "--mode", loop)
    before = open_files(proxy.proc.pid)
    with socket.create_connection(("127.0.0.1", loop_port), timeout=30) as s:
        s.sendall(b"hello")
        assert read_to_the_end(s) == b""  # refused and closed, no turn of a loop
    assert open_files(proxy.proc.pid) <= before + 10
    status, _ = proxied(proxy.port, "GET", f"http://127.0.0.1:{upstream.port}/echo", f"127.0.0.1:{upstream.port}", {})
    assert status == 200


def test_an_upstream_proxy_that_is_the_proxy_itself_cannot_loop(tmp_path, start_proxy):
    port = free_port()
    proxy = start_proxy(write_rules(tmp_path, RULES), "--mode", f"upstream:http://2130706433:{port}", port=port)
    before = open_files(proxy.proc.pid)
    status, _ = proxied(proxy.port, "GET", "http://a.example/", "a.example", {})
    assert status == 502  # mitmproxy's answer when a connection is refused
    assert open_files(proxy.proc.pid) <= before + 10
    assert f"refused by the mitm_rules guard: 2130706433:{port} (127.0.0.1) {REFUSED}" in proxy.log()


def test_listening_beyond_loopback_without_proxyauth_is_warned(tmp_path, start_proxy):
    proxy = start_proxy(write_rules(tmp_path, RULES), "--listen-host", "0.0.0.0")
    proxy.wait_for_log("beyond this machine, without proxyauth")


def test_loopback_listening_is_not_warned(tmp_path, start_proxy):
    proxy = start_proxy(write_rules(tmp_path, RULES))
    status, _ = proxied(proxy.port, "GET", f"http://127.0.0.1:{proxy.port}/", "x", {})
    assert status == 403  # an answer: the proxy is surely running
    assert "without proxyauth" not in proxy.log()
