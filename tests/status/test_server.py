"""The status server in the event loop, as the proxy runs it: its options, its password, its paths, and
/metrics read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket

import httpx
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from addon.runtime.loader import Runtime
from addon.status.server import Listen, StatusServer, parse_listen
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {host: a.com}
    headers: {X: "{token}"}
tokens: {file: tokens.txt}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "text, listen",
    [
        ("", None),
        ("9464", Listen("127.0.0.1", 9464)),  # a port alone: loopback
        ("127.0.0.1:9464", Listen("127.0.0.1", 9464)),
        ("[::1]:9464", Listen("::1", 9464)),
        ("0.0.0.0:80", Listen("0.0.0.0", 80)),
        ("localhost:9464", Listen("localhost", 9464)),
    ],
)
def test_listen_is_parsed(text, listen):
    assert parse_listen(text) == listen


@pytest.mark.parametrize("text", ["abc", "127.0.0.1:", "127.0.0.1:99999", ":9464", "::1:9464", "0"])
def test_a_bad_listen_is_an_error(text):
    with pytest.raises(ValueError, match="is not PORT, HOST:PORT or \\[IPV6\\]:PORT"):
        parse_listen(text)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_loopback(host, loopback):
    assert Listen(host, 1).loopback is loopback


def test_an_address_beyond_loopback_needs_a_password(tmp_path):
    runtime = Runtime()
    server = StatusServer(runtime)
    with taddons.context(server) as tctx:
        with pytest.raises(exceptions.OptionsError, match="0.0.0.0:9464 is not a loopback address.*set status_password"):
            tctx.configure(server, status_listen="0.0.0.0:9464")
        tctx.configure(server, status_listen="0.0.0.0:9464", status_password="s3cret-pass")
        assert server.listen == Listen("0.0.0.0", 9464)  # (not started: `running` never came)


def test_a_bad_listen_option_says_which(tmp_path):
    server = StatusServer(Runtime())
    with taddons.context(server) as tctx:
        with pytest.raises(exceptions.OptionsError, match="status_listen: 'nine' is not PORT"):
            tctx.configure(server, status_listen="nine")


async def _fetch(port: int, path: str, **headers) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


def run_server(tmp_path, password: str, check) -> None:
    """Start a Runtime (RULES) and a StatusServer on a free port in one event loop, and run `check(port, runtime)`."""
    rules = write_rules(tmp_path, RULES)

    async def main() -> None:
        runtime = Runtime()
        server = StatusServer(runtime)
        port = free_port()
        with taddons.context(runtime, server) as tctx:
            tctx.configure(runtime, rules=str(rules))
            tctx.configure(server, status_listen=f"127.0.0.1:{port}", status_password=password)
            server.running()
            try:
                await check(port, runtime)
            finally:
                server.done()

    asyncio.run(main())


def test_metrics_read_by_prometheus_clients_parser(tmp_path):
    async def check(port, runtime):
        c = runtime.counters
        c.requests["default"] += 7
        c.refusals["default", "rotate"] += 2
        c.refusals["default", "pass"] += 1
        c.retries["default"] += 2
        c.recovery("default", True, 0.004, "POST", "/v1/chat?key=secret", "403 with …1111 → 200 with …2222")
        c.value_refreshes["captcha", "failed"] += 1
        c.first_event_seconds[True].observe(0.2)
        runtime.pool.tokens.refused(TOKENS[0], status=403)
        answer = await _fetch(port, "/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(answer.text) for s in family.samples}  # fmt: skip
        assert samples[("mitm_rules_requests_total", (("pool", "default"),))] == 7
        assert samples[("mitm_rules_refusals_total", (("action", "rotate"), ("pool", "default")))] == 2
        assert samples[("mitm_rules_refusals_total", (("action", "pass"), ("pool", "default")))] == 1
        assert samples[("mitm_rules_refusals_total", (("action", "disable"), ("pool", "default")))] == 0
        assert samples[("mitm_rules_retries_total", (("pool", "default"),))] == 2
        assert samples[("mitm_rules_recoveries_total", (("outcome", "recovered"), ("pool", "default")))] == 1
        assert samples[("mitm_rules_recoveries_total", (("outcome", "failed"), ("pool", "default")))] == 0
        assert samples[("mitm_rules_value_refreshes_total", (("outcome", "failed"), ("value", "captcha")))] == 1
        assert samples[("mitm_rules_tokens", (("pool", "default"), ("state", "cooling")))] == 1
        assert samples[("mitm_rules_tokens", (("pool", "default"), ("state", "active")))] == 2
        assert samples[("mitm_rules_breaker_open", (("pool", "default"),))] == 0
        assert samples[("mitm_rules_recovery_seconds_bucket", (("le", "0.0025"),))] == 0
        assert samples[("mitm_rules_recovery_seconds_bucket", (("le", "0.005"),))] == 1
        assert samples[("mitm_rules_recovery_seconds_count", ())] == 1
        assert samples[("mitm_rules_first_event_seconds_count", (("recovered", "true"),))] == 1
        assert samples[("mitm_rules_first_event_seconds_count", (("recovered", "false"),))] == 0
        for token in TOKENS:
            assert token not in answer.text

    run_server(tmp_path, "", check)


def test_status_is_the_live_document(tmp_path):
    async def check(port, runtime):
        runtime.pool.tokens.refused(TOKENS[1], status=429)
        answer = await _fetch(port, "/status")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json; charset=utf-8"
        doc = answer.json()
        (pool,) = doc["pools"]
        assert [(t["token"], t["state"]) for t in pool["tokens"]] == [
            (f"…{TOKENS[0][-4:]}", "active"), (f"…{TOKENS[1][-4:]}", "cooling"), (f"…{TOKENS[2][-4:]}", "active")]
        assert pool["tokens"][1]["last_refusal"]["status"] == 429
        assert doc["counters"]["requests"] == {}
        assert not any(token in answer.text for token in TOKENS)

    run_server(tmp_path, "", check)


def test_the_page_and_its_files_are_served_with_nothing_from_outside(tmp_path):
    async def check(port, runtime):
        page = await _fetch(port, "/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == "default-src 'self'"
        assert '<script src="page.js"' in page.text and "http" not in page.text.replace('http-equiv', '')
        script = await _fetch(port, "/page.js")
        assert script.status_code == 200 and '"status"' in script.text and "fetch(url" in script.text
        assert (await _fetch(port, "/page.css")).status_code == 200

    run_server(tmp_path, "", check)


def test_an_unknown_path_is_a_404(tmp_path):
    async def check(port, runtime):
        answer = await _fetch(port, "/admin")
        assert (answer.status_code, answer.text) == (404, "404\n")

    run_server(tmp_path, "", check)


def test_a_password_is_asked_for_as_bearer_or_basic(tmp_path):
    password = "status-pass-0000"
    basic = lambda user, pw: "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()  # noqa: E731

    async def check(port, runtime):
        for path in ("/metrics", "/status", "/", "/nowhere"):
            refused = await _fetch(port, path)
            assert (refused.status_code, refused.text) == (401, "")
            assert refused.headers["www-authenticate"] == 'Basic realm="mitm-rules status"'
        for wrong in (f"Bearer {password}x", basic("any", "nope"), "Basic !!!", f"Token {password}", password):
            assert (await _fetch(port, "/status", Authorization=wrong)).status_code == 401
        assert (await _fetch(port, "/status", Authorization=f"Bearer {password}")).status_code == 200
        assert (await _fetch(port, "/metrics", Authorization=basic("prometheus", password))).status_code == 200
        assert (await _fetch(port, "/nowhere", Authorization=f"Bearer {password}")).status_code == 404

    run_server(tmp_path, password, check)


def test_a_taken_port_is_an_error_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            server = StatusServer(Runtime())
            with taddons.context(server) as tctx:
                tctx.configure(server, status_listen=str(port))
                server.running()
                server.done()

        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"status server: cannot listen on 127.0.0.1:{port}: Address already in use. Give "
                      "status_listen another address (or none for no status server)."]  # fmt: skip


def test_without_a_password_only_a_host_that_names_this_machine_is_answered(tmp_path):
    """DNS rebinding: a page of evil.example that points its name at 127.0.0.1 sends Host: evil.example."""

    async def check(port, runtime):
        assert (await _fetch(port, "/status", Host="evil.example")).status_code == 403
        assert (await _fetch(port, "/status", Host=f"evil.example:{port}")).status_code == 403
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]"):
            assert (await _fetch(port, "/status", Host=host)).status_code == 200, host

    run_server(tmp_path, "", check)


def test_with_a_password_any_host_may_ask(tmp_path):
    async def check(port, runtime):
        answer = await _fetch(port, "/status", Host="status.example", Authorization="Bearer pw-0000")
        assert answer.status_code == 200

    run_server(tmp_path, "pw-0000", check)


def test_a_move_to_a_taken_port_keeps_the_server_where_it_was(tmp_path, caplog):
    async def main() -> None:
        server = StatusServer(Runtime())
        first = free_port()
        with taddons.context(server) as tctx, socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            tctx.configure(server, status_listen=str(first))
            server.running()
            try:
                tctx.configure(server, status_listen=str(taken.getsockname()[1]))
                assert (await _fetch(first, "/status")).status_code == 200
                assert server.listening == (("127.0.0.1", first),)
            finally:
                server.done()

    asyncio.run(main())
    assert any("cannot listen on" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_new_address_at_run_time_moves_the_server(tmp_path):
    async def main() -> None:
        server = StatusServer(Runtime())
        first, second = free_port(), free_port()
        with taddons.context(server) as tctx:
            tctx.configure(server, status_listen=str(first))
            server.running()
            try:
                assert (await _fetch(first, "/status")).status_code == 200
                tctx.configure(server, status_listen=str(second))
                assert (await _fetch(second, "/status")).status_code == 200
                with pytest.raises(httpx.ConnectError):
                    await _fetch(first, "/status")
                tctx.configure(server, status_listen="")
                with pytest.raises(httpx.ConnectError):
                    await _fetch(second, "/status")
            finally:
                server.done()

    asyncio.run(main())

