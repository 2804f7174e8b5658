"""A flow's way out through an exit, with mitmproxy's public API.

mitmproxy connects a request to `flow.server_conn.via` as it is after the `request` hook: `send_through`
gives the flow a `Server` of its own with the exit as its route (never the client connection's shared
one: that would become the route of every later request on it, mitmproxy issue #4840). mitmproxy's
pool of connections keys on the route, so a connection is never reused across exits. An `https://`
origin, and any origin in regular, reverse or transparent mode, is reached with a CONNECT to the exit,
which `login` gives the exit's Proxy-Authorization (the `http_connect_upstream` hook); a plain `http://`
request in upstream mode goes to the exit in absolute form, with the header on the request itself.

Each request's exit is known only when its token is drawn, so mitmproxy must not connect before:
`connection_strategy` is `lazy` while the rules file has exits (routing.Exits.use).
"""

from __future__ import annotations

import re

from mitmproxy import connection, http
from mitmproxy.proxy.mode_specs import UpstreamMode

from addon.exits.routing import Exits
from addon.rules.records import ExitSpec

PROXY_AUTHORIZATION = "Proxy-Authorization"


def send_through(flow: http.HTTPFlow, exit: ExitSpec) -> None:
    """Send this request out through `exit` (from the `request` hook, or to a retry's copy before it
    is replayed)."""
    flow.server_conn = connection.Server(
        address=flow.server_conn.address, via=exit.via, transport_protocol=flow.server_conn.transport_protocol
    )
    if absolute_form(flow):  # the exit reads this request itself: it carries the login
        if exit.proxy_authorization is not None:
            flow.request.headers[PROXY_AUTHORIZATION] = exit.proxy_authorization
        else:  # (mitmproxy's upstream_auth is the login of the mode's upstream proxy, not of this one)
            flow.request.headers.pop(PROXY_AUTHORIZATION, None)


def absolute_form(flow: http.HTTPFlow) -> bool:
    """Does the request go to its upstream proxy as it is (plain http in upstream mode), not in a CONNECT?"""
    return flow.request.scheme == "http" and isinstance(flow.client_conn.proxy_mode, UpstreamMode)


def login(flow: http.HTTPFlow, exits: Exits) -> None:
    """The `http_connect_upstream` hook: a CONNECT to an exit carries that exit's login (and no other)."""
    health = exits.at(flow.server_conn.address)
    if health is None:
        return
    auth = health.spec.proxy_authorization
    if auth is not None:
        flow.request.headers[PROXY_AUTHORIZATION] = auth
    else:
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)


# what mitmproxy says when it could not get through an upstream proxy to the origin (its error text,
# the same on 11.0 and 12.3): the exit's answer to the CONNECT, an answer that is not HTTP, a closed
# connection, the operating system's refusal or time-out, a name that does not resolve, or this
# addon's own time limit
_EXIT_FAILURE = re.compile(
    r"Upstream proxy .* refused HTTP CONNECT request|Error connecting to |connection closed|Connect call failed"
    r"|Name or service not known|Temporary failure in name resolution|Multiple exceptions|exit timeout",
    re.IGNORECASE,
)


def failure(flow: http.HTTPFlow) -> str | None:
    """Why a flow that went to an exit got no answer, when the exit is the cause: its words, or None.
    An answer, or an error after the connection through the exit was made, is not the exit's."""
    if flow.error is None or flow.response is not None or flow.server_conn.timestamp_start is not None:
        return None
    return flow.error.msg if _EXIT_FAILURE.search(flow.error.msg) else None

