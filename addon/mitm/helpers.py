"""mitmproxy's undocumented helpers and other addons' objects, as the addon uses them: the rest of the
addon reads nothing that mitmproxy does not document but through addon/mitm/ (tests/test_layers.py
keeps it so). Each is a thin wrapper, so that a change in mitmproxy breaks one file.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, http, optmanager
from mitmproxy.hooks import UpdateHook
from mitmproxy.net import encoding
from mitmproxy.net.http.url import hostport
from mitmproxy.utils import human

format_address = human.format_address  # ("::1", 8080) -> "[::1]:8080"
parse_size = human.parse_size  # "1m" -> 1048576
encode = encoding.encode  # a body in a Content-Encoding (gzip, br, zstd, deflate)
url_hostport = hostport  # the Host header's value for a scheme, host and port


async def update(flows: Sequence[http.HTTPFlow]) -> None:
    """Tell mitmweb and the other addons that these flows changed (mitmproxy's `update` event)."""
    await ctx.master.addons.trigger_event(UpdateHook(list(flows)))


def flow_list():
    """mitmweb's and the console's flow list (the `view` addon), or None under mitmdump."""
    return ctx.master.addons.get("view")


def proxy_listen_addrs() -> list[tuple[str, int]]:
    """Where the proxy's servers listen now (they restart when their options change)."""
    proxy = ctx.master.addons.get("proxyserver")
    return [(str(a[0]), a[1]) for a in proxy.listen_addrs()] if proxy else []


def given_with_set() -> type:
    """The type mitmproxy gives an option's value that came from `--set` and waits for its addon
    (object when this mitmproxy has no such type: then every waiting value counts as given so)."""
    return getattr(optmanager, "_UnconvertedStrings", object)
