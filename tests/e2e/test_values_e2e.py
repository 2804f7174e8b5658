"""End to end: the rules file of issue 16 (named values, a JSON body field, refresh on a challenge page)
through a real mitmdump, with local stand-ins: the upstream's chat front-end (scripts/fake_upstream.py,
/nextjs-api/stream/), a command that mints reCAPTCHA tokens, a clearance file a test rewrites as a
browser script would. Assertions are on what the upstream received and what the client got.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from addon.tokens.tokenfile import token_key
from helpers import ISSUE_16_RULES, TOKENS, write_rules

# a stand-in for a reCAPTCHA minting script: a new token for every run
MINT = """\
#!{python}
import pathlib
p = pathlib.Path("runs.txt")
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
print(f"cap-minted-{{n}}-recaptcha-token")
"""

PATH = "/nextjs-api/stream/create-evaluation"
BODY = {"id": "eval-1", "mode": "direct", "modelAId": "m", "userMessageId": "u-1", "recaptchaV3Token": ""}


def clearance(n: int) -> str:
    return f"cf-clearance-e2e-value-{n:04d}"


def captcha(n: int) -> str:
    return f"cap-minted-{n}-recaptcha-token"


@pytest.fixture
def make_rules(tmp_path, upstream):
    def make(text: str = ISSUE_16_RULES):
        mint = tmp_path / "mint-recaptcha"
        mint.write_text(MINT.format(python=sys.executable))
        mint.chmod(0o755)
        (tmp_path / "cf_clearance.txt").write_text(clearance(1) + "\n")
        return write_rules(tmp_path, text.replace("arena.example.com", f'"127.0.0.1:{upstream.port}"'), captcha=None)

    upstream.app.clearances = {clearance(1)}
    return make


def post(proxy, upstream, body=BODY, **kw):
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        return client.post(f"http://127.0.0.1:{upstream.port}{PATH}", json=body, **kw)


def runs(rules) -> int:
    return int((rules.parent / "runs.txt").read_text())


def cooling_until(proxy, rules, token: str) -> float:
    """The end of the token's cooldown in the state file (0: active); a token nothing happened to
    is not in it, and with no refusal and no success there is no file at all."""
    proxy.stop()
    path = rules.parent / "tokens.state.json"
    tokens = json.loads(path.read_text())["tokens"] if path.exists() else {}
    return tokens.get(token_key(token), {}).get("cooling_until", 0)


def test_the_upstream_gets_the_token_the_clearance_from_the_file_and_the_captcha_in_the_body(make_rules, start_proxy, upstream):
    rules = make_rules()
    proxy = start_proxy(rules)
    assert post(proxy, upstream, headers={"Cookie": "theme=dark"}).json()["ok"] is True
    (got,) = upstream.app.received
    assert got.cookie("arena-auth-prod-v1") == TOKENS[0]
    assert got.cookie("cf_clearance") == clearance(1)
    assert got.cookie("theme") == "dark"
    assert got.json() == {**BODY, "recaptchaV3Token": captcha(1)}
    assert got.header("user-agent").encode("latin-1") == "Mozilla/5.0 …".encode()  # as written, in UTF-8
    assert int(got.header("content-length")) == len(got.body)

    # the file changes (a browser script wrote a new clearance): the next request carries it
    upstream.app.clearances = {clearance(1), clearance(2)}
    (rules.parent / "cf_clearance.txt").write_text(clearance(2) + "\n")
    proxy.wait_for_log(r"cf_clearance: .*cf_clearance\.txt changed")
    assert post(proxy, upstream).status_code == 200
    assert upstream.app.received[-1].cookie("cf_clearance") == clearance(2)
    assert upstream.app.received[-1].json()["recaptchaV3Token"] == captcha(1)  # reused: ttl 110
    assert runs(rules) == 1
    proxy.stop()
    first, _ = sorted(proxy.saved_flows(), key=lambda f: f.request.timestamp_start)
    assert first.comment.splitlines() == [
        "rules: arena (non-streaming request)",
        "· User-Agent ← arena",
        f"· cookie cf_clearance ← arena (cf_clearance …{clearance(1)[-4:]})",
        f"· cookie arena-auth-prod-v1 ← arena (token …{TOKENS[0][-4:]})",
        f"· body recaptchaV3Token ← arena (captcha …{captcha(1)[-4:]})",
    ]


def test_a_challenge_page_leads_to_one_refresh_and_a_retry_with_the_same_token(make_rules, start_proxy, upstream):
    rules = make_rules()
    proxy = start_proxy(rules)
    upstream.app.clearances = {clearance(2)}  # the clearance in the file has expired

    def browser_script():  # solves the challenge a little after it was shown, and writes the file
        threading.Timer(0.5, lambda: (rules.parent / "cf_clearance.txt").write_text(clearance(2) + "\n")).start()

    upstream.app.on_challenge = browser_script
    answer = post(proxy, upstream)
    assert answer.status_code == 200 and answer.json()["id"] == "eval-1"
    challenged, retried = upstream.app.received
    assert (challenged.status, retried.status) == (403, 200)
    assert challenged.cookie("arena-auth-prod-v1") == retried.cookie("arena-auth-prod-v1") == TOKENS[0]
    assert (challenged.cookie("cf_clearance"), retried.cookie("cf_clearance")) == (clearance(1), clearance(2))
    assert challenged.json() == retried.json() == {**BODY, "recaptchaV3Token": captcha(1)}
    assert runs(rules) == 1  # the captcha was not what was refused: it is sent again
    proxy.wait_for_log(r"recovered POST")
    assert f"tokens: …{TOKENS[0][-4:]} refused" not in proxy.log()
    assert cooling_until(proxy, rules, TOKENS[0]) == 0
    original = next(f for f in proxy.saved_flows() if not f.is_replay)
    assert original.comment.splitlines()[-1] == (
        f"· attempts: 403 with …{TOKENS[0][-4:]} → 200 with …{TOKENS[0][-4:]} (new cf_clearance …{clearance(2)[-4:]})"
    )


def test_a_refresh_that_brings_no_new_value_hands_the_refusal_on_and_blames_no_token(make_rules, start_proxy, upstream):
    rules = make_rules(ISSUE_16_RULES.replace("{file: cf_clearance.txt}", "{file: cf_clearance.txt, wait: 1}"))
    proxy = start_proxy(rules)
    upstream.app.clearances = {clearance(2)}  # and nobody rewrites the file
    answer = post(proxy, upstream)
    assert answer.status_code == 403 and "Just a moment..." in answer.text
    assert len(upstream.app.received) == 1
    proxy.wait_for_log(r"cf_clearance: file .* did not change within 1 s \(wait\); the refusal goes to the client")
    assert cooling_until(proxy, rules, TOKENS[0]) == 0
    original = next(f for f in proxy.saved_flows() if not f.is_replay)
    assert original.comment.splitlines()[-1] == f"· attempts: 403 with …{TOKENS[0][-4:]} (no new cf_clearance value)"


def test_concurrent_refusals_of_the_same_captcha_share_one_refresh(make_rules, start_proxy, upstream):
    rules = make_rules()
    proxy = start_proxy(rules)
    upstream.app.rejected_captchas = {captcha(1)}
    # the refusals are held 1 s, so that all six go out with the first value, even on a busy machine
    upstream.app.refusal_delay = 1.0
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: post(proxy, upstream, {**BODY, "id": f"eval-{i}"}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert sorted(a.json()["id"] for a in answers) == [f"eval-{i}" for i in range(6)]
    assert runs(rules) == 2  # one minting for the six requests, one for the six refusals
    sent = [r.json()["recaptchaV3Token"] for r in upstream.app.received]
    assert sorted(sent) == [captcha(1)] * 6 + [captcha(2)] * 6
    assert {r.cookie("arena-auth-prod-v1") for r in upstream.app.received[6:]} <= set(TOKENS)


def test_a_gzip_encoded_json_body_is_edited_and_still_decodes(make_rules, start_proxy, upstream):
    rules = make_rules()
    proxy = start_proxy(rules)
    raw = gzip.compress(json.dumps(BODY).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        answer = client.post(f"http://127.0.0.1:{upstream.port}{PATH}", content=raw, headers=headers)
    assert answer.status_code == 200
    (got,) = upstream.app.received
    assert got.header("content-encoding") == "gzip"
    assert int(got.header("content-length")) == len(got.body)
    assert json.loads(gzip.decompress(got.body)) == {**BODY, "recaptchaV3Token": captcha(1)}


class Opens:
    """Counts the times a file is opened (Linux inotify, IN_OPEN): when the proxy reads it."""

    IN_OPEN = 0x20

    def __init__(self, path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_OPEN) < 0:
            pytest.skip(f"no inotify here: {os.strerror(ctypes.get_errno())}")
        self.count = 0

    def take(self) -> int:
        """Opens since the last call (the kernel queued each as it happened)."""
        before = self.count
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return self.count - before
            while data:  # struct inotify_event: wd, mask, cookie, len, name[len]
                self.count += 1
                data = data[16 + int.from_bytes(data[12:16], sys.byteorder):]

    def close(self) -> None:
        os.close(self.fd)


def test_a_client_that_leaves_while_a_refresh_waits_on_the_file_gets_no_retry(make_rules, start_proxy, upstream):
    """The challenge page leads to a refresh of cf_clearance, which waits for the file to change (a
    browser script solving the challenge). The client leaves meanwhile; then the file changes: the
    refresh has its new value, and no retry goes to the upstream, as nobody would get its answer."""
    rules = make_rules()
    path = rules.parent / "cf_clearance.txt"
    proxy = start_proxy(rules)
    upstream.app.clearances = {clearance(2)}  # the clearance in the file has expired
    opens = Opens(path)
    challenged = threading.Event()
    upstream.app.on_challenge = lambda: (opens.take(), challenged.set())  # the reads for the request are done
    body = json.dumps(BODY).encode()
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        sock.sendall(f"POST http://127.0.0.1:{upstream.port}{PATH} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        client = sock.getsockname()
        assert challenged.wait(30), "the upstream never showed the challenge"
        deadline = time.monotonic() + 30
        while not opens.take():  # the refresh reads the file once it starts, then waits for it to change
            assert time.monotonic() < deadline, "the refresh never read the file"
            time.sleep(0.02)
        sock.close()
        proxy.wait_for_log(rf"\[{client[0]}:{client[1]}\] client disconnect")
        assert len(upstream.app.received) == 1  # the refresh is still waiting: nothing sent since
        path.write_text(clearance(2) + "\n")  # the browser script solved it, after the client left
        proxy.wait_for_log(r"recovered POST")  # the recovery's end, whatever it was
        time.sleep(1.5)  # a retry would have reached the upstream by now
    finally:
        opens.close()
    assert [r.status for r in upstream.app.received] == [403], proxy.log()
    assert re.search(r"not recovered POST .*: 403 with …1111 → error with …1111 \(new cf_clearance …0002\) "
                     r"\(attempt 2 failed: the client left\)", proxy.log())
    assert cooling_until(proxy, rules, TOKENS[0]) == 0  # and no token is blamed
