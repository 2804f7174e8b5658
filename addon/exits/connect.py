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
import weakref

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
            _LOGGED_IN.add(flow)
        else:  # (mitmproxy's upstream_auth is the login of the mode's upstream proxy, not of this one)
            flow.request.headers.pop(PROXY_AUTHORIZATION, None)


def absolute_form(flow: http.HTTPFlow) -> bool:
    """Does the request go to its upstream proxy as it is, not in a CONNECT? mitmproxy does so for plain
    http in upstream mode, when the client sent it in absolute form (with an authority) rather than
    inside a tunnel of its own: that one goes through the exit in a CONNECT, and a header on the
    request would go on to the origin."""
    return (flow.request.scheme == "http" and bool(flow.request.authority)
            and isinstance(flow.client_conn.proxy_mode, UpstreamMode))  # fmt: skip


def logged_out(flow: http.HTTPFlow) -> None:
    """The request has gone (responseheaders, error): the exit's login it carried leaves the flow, so that
    mitmweb, flow dumps, saved flows and the copies a recovery shows never hold it."""
    if _LOGGED_IN and flow in _LOGGED_IN:  # (most flows: an empty set, and no weak reference made to ask)
        _LOGGED_IN.discard(flow)
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)


_LOGGED_IN: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()  # flows that carry an exit's login


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


# what mitmproxy says when it could not get through an upstream proxy (its error text, the same on 11.0
# and 12.3): the exit turned the CONNECT down (its login: 407, or 401 from Debian's tinyproxy; 403), an
# answer that is not HTTP, a closed connection, the operating system's refusal or time-out, a name that
# does not resolve, or this addon's own time limit. A 5xx answer to the CONNECT is the exit saying it
# cannot reach the origin: the origin's failure, which every exit would report alike.
_EXIT_FAILURE = re.compile(
    r"Upstream proxy .* refused HTTP CONNECT request: (401|403|407)\b|Error connecting to |connection closed"
    r"|Connect call failed|Name or service not known|Temporary failure in name resolution|Multiple exceptions"
    r"|exit timeout",
    re.IGNORECASE,
)


def failure(flow: http.HTTPFlow) -> str | None:
    """Why a flow that went to an exit got no answer, when the exit is the cause: its words, or None.
    An answer, or an error after the connection through the exit was made, is not the exit's."""
    if flow.error is None or flow.response is not None or flow.server_conn.timestamp_start is not None:
        return None
    return flow.error.msg if _EXIT_FAILURE.search(flow.error.msg) else None

