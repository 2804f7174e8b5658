"""End to end: the status server of a real mitmdump, scraped by a real Prometheus and shown in a real
headless Chromium (Debian's packages, which scripts/test installs), after a real recovery."""

from __future__ import annotations

import html.parser
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port, run_mitmdump
from fake_upstream import stop_process
from helpers import TOKENS, write_rules

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "status-e2e-password-77"

RULES = """\
rules:
  - name: account
    match: {{host: "127.0.0.1:{port}"}}
    headers: {{X-Captcha-Token: cap-test-value-9999, User-Agent: "Mozilla/5.0 (X11) Chrome/126.0", Accept: application/json}}
    cookies: {{session: "{{token}}"}}
tokens:
  file: tokens.txt
  strategy: sticky
  retire_after: 1
"""


@pytest.fixture
def status_proxy(tmp_path, upstream, start_proxy):
    """mitmdump with the status server on a free loopback port, with a password; the upstream takes only
    the second token, so the first request is refused once (retiring the first token) and recovered."""
    upstream.app.tokens = {TOKENS[1]}
    rules = write_rules(tmp_path, RULES.format(port=upstream.port))
    port = free_port()
    proxy = start_proxy(rules, "--set", f"status_listen=127.0.0.1:{port}", "--set", f"status_password={PASSWORD}")
    proxy.wait_for_log(rf"status server: http://127\.0\.0\.1:{port}/")
    proxy.status_port = port
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        answer = client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", content=b'{"model": "m"}')
    assert answer.status_code == 200
    assert [r.cookie("session") for r in upstream.app.received] == TOKENS[:2]
    return proxy


def test_prometheus_scrapes_the_recovery(status_proxy, tmp_path):
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""\
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: mitm-rules
    authorization: {{credentials: {PASSWORD}}}
    static_configs: [{{targets: ["127.0.0.1:{status_proxy.status_port}"]}}]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result = _query_until(prometheus_port, 'mitm_rules_recoveries_total{outcome="recovered"}', proc, tmp_path)
        assert [(r["metric"]["pool"], r["value"][1]) for r in result] == [("default", "1")]
        (retired,) = _query_until(prometheus_port, 'mitm_rules_tokens{state="retired"}', proc, tmp_path)
        assert retired["value"][1] == "1"
        up = _query_until(prometheus_port, "up", proc, tmp_path)
        assert [r["value"][1] for r in up] == ["1"]  # scraped with the password
    finally:
        stop_process(proc)
        log.close()


def _query_until(port: int, query: str, proc: subprocess.Popen, folder: Path, timeout: float = 90) -> list:
    """The result of an instant query once it has one (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{(folder / 'prometheus.log').read_text()}")
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
            result = answer.json()["data"]["result"] if answer.status_code == 200 else []
        except httpx.HTTPError:
            result = []
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result for {query} after {timeout} s:\n{(folder / 'prometheus.log').read_text()}")
        time.sleep(0.5)


class _Rows(html.parser.HTMLParser):
    """The token rows of the page's DOM: (pool, data-state, the cells' text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, list[str]]] = []
        self.pool = ""
        self._cells: list[str] | None = None
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-pool" in a:
            self.pool = a["data-pool"]
        if tag == "tr" and a.get("class") == "token":
            self._cells = []
            self.rows.append((self.pool, a.get("data-state", ""), self._cells))
        if tag == "td" and self._cells is not None:
            self._cells.append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False
        if tag == "tr":
            self._cells = None

    def handle_data(self, data):
        if self._in_cell and self._cells is not None:
            self._cells[-1] += data


def test_the_page_shows_the_pool_in_a_real_browser(status_proxy, tmp_path):
    """Chromium loads the page, which fetches /status itself; what is checked is the DOM it built."""
    url = f"http://:{PASSWORD}@127.0.0.1:{status_proxy.status_port}/"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000"]  # fmt: skip
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert dom.returncode == 0, dom.stderr
    rows = _Rows()
    rows.feed(dom.stdout)
    shown = [(pool, state, cells[0], cells[1]) for pool, state, cells in rows.rows]
    masks = [f"…{t[-4:]}" for t in TOKENS]
    assert shown == [("default", "retired", masks[0], "retired"), ("default", "active", masks[1], "active"),
                     ("default", "active", masks[2], "active")]  # fmt: skip
    token, state, until, ok, refused, last, why = rows.rows[0][2]
    assert (until[:6], ok, refused, last[:7], why) == ("since ", "0", "1", "403 at ", "refused 1 time(s) in a row")
    assert "1 recovered" in dom.stdout and "POST /v1/chat/completions" in dom.stdout
    for token in TOKENS:
        assert token not in dom.stdout
    if os.environ.get("STATUS_SCREENSHOT"):  # docs/status-page.png is taken this way (docs/operations.md)
        subprocess.run([*browser, "--window-size=1100,640", "--hide-scrollbars",
                        f"--screenshot={Path(os.environ['STATUS_SCREENSHOT']).resolve()}", url],
                       capture_output=True, timeout=120, stdin=subprocess.DEVNULL, check=True)  # fmt: skip


def test_a_taken_status_port_stops_the_start(tmp_path, upstream):
    rules = write_rules(tmp_path, RULES.format(port=upstream.port))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_mitmdump_with(rules, f"status_listen=127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"status server: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stdout + result.stderr


def test_a_status_server_beyond_loopback_without_a_password_stops_the_start(tmp_path, upstream):
    rules = write_rules(tmp_path, RULES.format(port=upstream.port))
    result = run_mitmdump_with(rules, f"status_listen=0.0.0.0:{free_port()}")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "is not a loopback address" in output and "set status_password too" in output


def run_mitmdump_with(rules: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run_mitmdump(rules, extra=[x for o in options for x in ("--set", o)])


def test_a_proxy_client_cannot_reach_the_status_server(status_proxy):
    """The guard keeps requests sent through the proxy off the status server, as off mitmweb."""
    with httpx.Client(proxy=status_proxy.url, timeout=30) as client:
        for host in ("127.0.0.1", "2130706433"):  # the second: 127.0.0.1 spelled as a number
            answer = client.get(f"http://{host}:{status_proxy.status_port}/status",
                                headers={"Authorization": f"Bearer {PASSWORD}"})  # fmt: skip
            assert answer.status_code == 403 and "refused" in answer.text, answer.text
    assert "refused a proxied request to the proxy itself" in status_proxy.log()
