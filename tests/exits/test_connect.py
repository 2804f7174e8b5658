"""A flow's way out through an exit: its own route, the exit's login, and what counts as the exit failing."""

from __future__ import annotations

import base64

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.flow import Error
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from addon.exits.connect import failure, logged_out, login, send_through
from addon.exits.routing import Exits
from addon.rules.records import ExitSpec

AUTH = "Proxy-Authorization"
LOGGED_IN = ExitSpec(name="a", scheme="http", host="127.0.0.1", port=3128, shown="http://exit-user:****@127.0.0.1:3128",
                     username="exit-user", password="exit-pass-4242")  # fmt: skip
OPEN = ExitSpec(name="b", scheme="https", host="127.0.0.1", port=3129, shown="https://127.0.0.1:3129")
BASIC = "Basic " + base64.b64encode(b"exit-user:exit-pass-4242").decode()


def flow(scheme: str = "http", upstream: bool = False, tunnelled: bool = False) -> tflow.tflow:
    """A request as a client sends it to a proxy: in absolute form (with an authority), or inside a
    tunnel of its own (origin form)."""
    f = tflow.tflow()
    f.request.scheme = scheme
    if not tunnelled:
        f.request.authority = f"{f.request.host}:{f.request.port}"
    if upstream:
        f.client_conn.proxy_mode = ProxyMode.parse("upstream:http://127.0.0.1:9")
    return f


def test_send_through_gives_the_flow_a_server_of_its_own():
    f = flow()
    old = f.server_conn
    old.via = ("http", ("10.0.0.9", 8080))  # the client connection's route, shared by later requests
    send_through(f, LOGGED_IN)
    assert f.server_conn is not old and old.via == ("http", ("10.0.0.9", 8080))
    assert f.server_conn.via == ("http", ("127.0.0.1", 3128)) and f.server_conn.address == old.address


@pytest.mark.parametrize(
    "scheme, upstream, exit, before, after",
    [
        # upstream mode, plain http: the request goes to the exit as it is, with its login
        ("http", True, LOGGED_IN, None, BASIC),
        ("http", True, LOGGED_IN, "Basic b3RoZXI6bG9naW4=", BASIC),
        ("http", True, OPEN, "Basic b3RoZXI6bG9naW4=", None),  # no other proxy's login reaches it
        # in a CONNECT (login does it): the request itself carries none
        ("https", True, LOGGED_IN, None, None),
        ("http", False, LOGGED_IN, None, None),
        ("https", False, LOGGED_IN, None, None),
    ],
    ids=["upstream http", "upstream http replaces", "upstream http no login", "upstream https", "regular http",
         "regular https"],
)  # fmt: skip
def test_send_through_logs_in_on_the_request_only_in_absolute_form(scheme, upstream, exit, before, after):
    f = flow(scheme, upstream)
    if before is not None:
        f.request.headers[AUTH] = before
    send_through(f, exit)
    assert f.request.headers.get(AUTH) == after


def test_plain_http_in_a_tunnel_of_the_clients_own_carries_no_login_to_the_origin():
    f = flow("http", upstream=True, tunnelled=True)  # mitmproxy sends it through the exit in a CONNECT
    send_through(f, LOGGED_IN)
    assert AUTH not in f.request.headers


def test_the_exits_login_leaves_the_flow_once_the_request_has_gone():
    f, other = flow("http", upstream=True), flow("http", upstream=True)
    send_through(f, LOGGED_IN)
    other.request.headers[AUTH] = "Basic b3RoZXI6bG9naW4="  # the client's own, not the addon's
    logged_out(f)
    logged_out(other)
    assert AUTH not in f.request.headers and other.request.headers[AUTH] == "Basic b3RoZXI6bG9naW4="


@pytest.fixture
def exits():
    with taddons.context(Proxyserver()):
        exits = Exits()
        exits.use({"a": LOGGED_IN, "b": OPEN})
        yield exits


@pytest.mark.parametrize(
    "address, before, after",
    [
        (("127.0.0.1", 3128), None, BASIC),
        (("127.0.0.1", 3128), "Basic b3RoZXI6bG9naW4=", BASIC),
        (("127.0.0.1", 3129), "Basic b3RoZXI6bG9naW4=", None),  # an exit without login gets none
        (("127.0.0.1", 8080), "Basic b3RoZXI6bG9naW4=", "Basic b3RoZXI6bG9naW4="),  # not an exit: untouched
        (("127.0.0.1", 8080), None, None),
    ],
    ids=["exit", "exit replaces", "exit without login", "not an exit", "not an exit, none"],
)
def test_a_connect_to_an_exit_carries_its_login(exits, address, before, after):
    f = tflow.tflow()
    f.request.method = "CONNECT"
    f.server_conn.address = address
    if before is not None:
        f.request.headers[AUTH] = before
    login(f, exits)
    assert f.request.headers.get(AUTH) == after


EXIT_FAILURES = [
    "Upstream proxy 127.0.0.1:3128 refused HTTP CONNECT request: 407 Proxy Authentication Required",
    "Upstream proxy 127.0.0.1:3128 refused HTTP CONNECT request: 401 Unauthorized",  # Debian's tinyproxy 1.11.1
    "[Errno 111] Connect call failed ('127.0.0.1', 3128)",
    "connection closed",
    "exit timeout",
]


def failed(msg: str) -> tflow.tflow:
    f = tflow.tflow()
    f.server_conn.timestamp_start = None  # never connected
    f.error = Error(msg)
    return f


@pytest.mark.parametrize("msg", EXIT_FAILURES)
def test_failure_is_the_exits_words(msg):
    assert failure(failed(msg)) == msg


def test_failure_is_none_when_the_exit_is_not_the_cause():
    answered = failed("connection closed")
    answered.response = tflow.tresp()
    connected = failed("connection closed")
    connected.server_conn.timestamp_start = 946681202
    assert failure(answered) is None and failure(connected) is None
    assert failure(failed("TLS handshake failed")) is None
    # the exit could not reach the origin: every exit would say so alike, and none is to blame
    assert failure(failed("Upstream proxy 127.0.0.1:3128 refused HTTP CONNECT request: 502 Bad Gateway")) is None
    assert failure(tflow.tflow()) is None  # no error
