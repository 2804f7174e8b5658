"""Real processes: a local upstream (HTTP, and HTTPS with HTTP/2) and mitmdump with the addon.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import httpx
from mitmproxy import http, io
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from fake_upstream import ProtectedAPI, UpstreamServer, stop_process
from helpers import TOKENS

ROOT = Path(__file__).resolve().parents[2]
# captcha values the tests' captcha sources produce (and the upstream accepts)
SECRET_CAPTCHAS = ["cap-e2e-captcha-value-0042", "cap-1-captcha-value", "cap-2-captcha-value", "cap-test-value-9999"]
# named values of tests/e2e/test_values_e2e.py: clearances from a file, and a minted captcha for each run
SECRET_VALUES = [*(f"cf-clearance-e2e-value-{n:04d}" for n in range(1, 6)), *(f"cap-minted-{n}-recaptcha-token" for n in range(1, 6))]
MITMDUMP = Path(sys.executable).with_name("mitmdump")  # of the venv running this
MITMPROXY_MAJOR = int(MITMPROXY_VERSION.split(".")[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def upstream_cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("cert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(certfile), str(keyfile)


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer(ProtectedAPI(tokens=set(TOKENS), interval=0.3), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream_tls(upstream_cert) -> Iterator[UpstreamServer]:
    certfile, keyfile = upstream_cert
    server = UpstreamServer(ProtectedAPI(tokens=set(TOKENS), interval=0.3), free_port(), certfile, keyfile).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(request):
    """Each test starts with an empty upstream log and the upstream's default behaviour."""
    for name in ("upstream", "upstream_tls"):
        if name in request.fixturenames:
            fresh(request.getfixturevalue(name))


def fresh(server: UpstreamServer) -> UpstreamServer:
    """The upstream with an empty log and its default behaviour (for one a test asks for by name)."""
    app = server.app
    app.received.clear()
    app.tokens = set(TOKENS)
    app.rejected_captchas = set()
    app.revoked = set()
    app.retry_after = app.refuse_all = app.stall_after = None
    app.refusal_delay = 0.0
    app.padding = {}
    app.chunks, app.events_sent, app.interval = 5, 0, 0.3
    app.linger, app.refuse_odd, app.firehose, app.firehose_sent = 0.0, False, 0, 0
    app.hung_up.clear()
    app.clearances = app.on_challenge = app.clearance_by_address = None
    app.banned = set()
    app.error_first = set()
    app.renew_sessions, app.renewed = False, {}
    return server


class Proxy:
    """A real `mitmdump -s addon/main.py` process (or another mitmproxy tool) on a free loopback port."""

    tool = "mitmdump"

    def __init__(self, rules: Path, workdir: Path, *extra: str, addon: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.confdir = workdir / "mitmproxy-conf"
        self.logfile = workdir / f"{self.tool}-{self.port}.log"
        self.flows_file = workdir / f"{self.tool}-{self.port}.mitm"  # save_stream_file; scanned for secrets
        script = ["-s", str(ROOT / "addon" / "main.py"), "--set", f"rules={rules}"] if addon else []
        self.args = [
            str(MITMDUMP.with_name(self.tool)), *script,
            "--listen-host", "127.0.0.1", "--listen-port", str(self.port), "--set", f"confdir={self.confdir}",
            "--set", "ssl_insecure=true", "--set", "flow_detail=0", "--set", "termlog_verbosity=debug",
            "--set", f"save_stream_file={self.flows_file}",
            *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """Trusts this proxy's CA (for httpx's `verify`)."""
        return ssl.create_default_context(cafile=self.ca)

    def start(self) -> Proxy:
        self._log = open(self.logfile, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        self.wait_for_log(r"listening at", timeout=30)
        return self

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 15, count: int = 1) -> None:
        """Wait until the log has `count` lines that match `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            if len(re.findall(pattern, self.log())) >= count:
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"{self.tool} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} in the {self.tool} log after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()

    def saved_flows(self) -> list[http.HTTPFlow]:
        """The flows it saved; stop it first, so that the file is whole."""
        with open(self.flows_file, "rb") as f:
            return list(io.FlowReader(f).stream())


class Mitmweb(Proxy):
    """A real `mitmweb -s addon/main.py`: proxy and web UI on free loopback ports, with a client
    of the web API (`web`) that is let in as mitmweb's own web app is: on mitmproxy 12 the web
    token (`web_password`, sent as `Authorization: Bearer`), and on both lines tornado's XSRF
    check, which wants the `X-XSRFToken` header to echo the XSRF cookie (`_xsrf` on 11,
    `_mitmproxy_xsrf` on 12)."""

    tool = "mitmweb"

    def __init__(self, rules: Path, workdir: Path, *extra: str, web_port: int | None = None) -> None:
        self.web_port = web_port or free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.web_token = secrets.token_hex(16)
        web = ["--set", f"web_port={self.web_port}", "--set", "web_host=127.0.0.1", "--set", "web_open_browser=false"]
        if MITMPROXY_MAJOR >= 12:
            web += ["--set", f"web_password={self.web_token}"]
        super().__init__(rules, workdir, *web, *extra)
        self.web: httpx.Client | None = None

    def start(self) -> Mitmweb:
        super().start()
        self.wait_for_log(r"Web server listening at", timeout=30)
        xsrf = secrets.token_hex(16)
        self.web = httpx.Client(
            base_url=self.web_url, timeout=15,
            headers={"Authorization": f"Bearer {self.web_token}", "X-XSRFToken": xsrf},
            cookies={"_xsrf": xsrf, "_mitmproxy_xsrf": xsrf},
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.web is not None:
            self.web.close()
        super().stop()


@pytest.fixture
def start_proxy(tmp_path) -> Iterator:
    started: list[Proxy] = []

    def start(rules: Path, *extra: str, port: int | None = None) -> Proxy:
        proxy = Proxy(rules, tmp_path, *extra, port=port).start()
        started.append(proxy)
        return proxy

    yield start
    for p in started:
        p.stop()
    assert_no_secrets(tmp_path)


def written(folder: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for what the proxies in this folder wrote: logs (at debug level), state files,
    and in the flows they saved, every comment and the bodies of answers the proxy made itself."""
    for f in [*folder.rglob("mitm*-*.log"), *folder.rglob("*.state.json")]:
        yield str(f), f.read_text(errors="replace")
    for f in folder.rglob("*.mitm"):
        with open(f, "rb") as stream:
            for flow in io.FlowReader(stream).stream():
                yield f"{f}: comment of flow {flow.id}", flow.comment
                if isinstance(flow, http.HTTPFlow) and flow.response and flow.server_conn.timestamp_start is None:
                    yield f"{f}: body of flow {flow.id}", flow.response.get_text(strict=False) or ""


def assert_no_secrets(folder: Path, *outputs: str) -> None:
    """No whole token, captcha or other named value in anything the addon wrote, or in these outputs."""
    secrets = [*TOKENS, *SECRET_CAPTCHAS, *SECRET_VALUES]
    for where, text in [*written(folder), *(("command output", o) for o in outputs)]:
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"secret values written whole in {where}: {leaked}"


def run_mitmdump(rules: Path, timeout: float = 30, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run mitmdump to completion (for start-up failures); `extra`: more arguments."""
    return subprocess.run(
        [str(MITMDUMP), "-s", str(ROOT / "addon" / "main.py"), "--listen-host", "127.0.0.1",
         "--listen-port", str(free_port()), "--set", f"rules={rules}", *extra],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "TERM": "dumb"},
    )  # fmt: skip
