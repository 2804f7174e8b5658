"""End to end: requests through the proxy may not reach mitmweb or the proxy itself."""

from __future__ import annotations

import httpx
import pytest

from conftest import Mitmweb
from helpers import write_rules

RULES = "rules:\n  - match: {host: a.example}\n    headers: {X: y}\n"


@pytest.fixture
def mitmweb(tmp_path):
    web = Mitmweb(write_rules(tmp_path, RULES), tmp_path).start()
    yield web
    web.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2"])
def test_proxied_requests_to_mitmweb_are_refused(mitmweb, host):
    assert mitmweb.web.get("/flows").status_code == 200  # mitmweb itself works, opened directly
    # through the proxy it is refused, even for a client that knows mitmweb's token (12.x)
    with httpx.Client(proxy=mitmweb.url, timeout=30, headers=mitmweb.web.headers) as client:
        proxied = client.get(f"http://{host}:{mitmweb.web_port}/flows")
    assert proxied.status_code == 403
    assert "is this proxy or its web interface" in proxied.text
    assert "refused a proxied request to the proxy itself" in mitmweb.log()


def test_proxied_requests_to_the_proxy_port_are_refused(mitmweb):
    with httpx.Client(proxy=mitmweb.url, timeout=30) as client:
        answer = client.get(f"http://127.0.0.1:{mitmweb.port}/")
    assert answer.status_code == 403 and "is this proxy or its web interface" in answer.text


def test_listening_beyond_loopback_without_proxyauth_is_warned(tmp_path, start_proxy):
    proxy = start_proxy(write_rules(tmp_path, RULES), "--listen-host", "0.0.0.0")
    proxy.wait_for_log("beyond this machine, without proxyauth")


def test_loopback_listening_is_not_warned(tmp_path, start_proxy):
    proxy = start_proxy(write_rules(tmp_path, RULES))
    with httpx.Client(proxy=proxy.url, timeout=30) as client:  # a request: the proxy is surely running
        assert client.get(f"http://127.0.0.1:{proxy.port}/").status_code == 403
    assert "without proxyauth" not in proxy.log()
