"""End to end: the token pool through a real mitmdump in front of an upstream that revokes tokens:
retirement (refused `retire_after` times in a row, or at once by an on_response rule with action
disable), kept across a restart."""

from __future__ import annotations

import json
import time

import httpx

from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {{host: "127.0.0.1:{port}"}}
    headers: {{User-Agent: "Mozilla/5.0 (X11; Linux x86_64)", Accept: application/json, X-Captcha-Token: "{{captcha}}"}}
    cookies: {{session: "{{token}}"}}
tokens: {{file: tokens.txt, cooldown: {cooldown}, retire_after: {retire_after}}}
captcha: {{file: captcha.txt}}
on_response:
  - match: {{status: 401}}
    action: disable
  - match: {{status: 403}}
    action: rotate
"""


def rules_for(folder, port, cooldown=300, retire_after=3):
    return write_rules(folder, RULES.format(port=port, cooldown=cooldown, retire_after=retire_after))


def posts(proxy, upstream, n: int) -> list[int]:
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        return [client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", json={"n": i}).status_code
                for i in range(n)]  # fmt: skip


def sent(upstream) -> list[str]:
    return [r.cookie("session") for r in upstream.app.received]


def health(rules, token) -> dict:
    from addon.tokens.tokenfile import token_key

    return json.loads((rules.parent / "tokens.state.json").read_text())["tokens"][token_key(token)]


def test_a_401_with_a_disable_rule_retires_the_token_at_once_and_for_good(tmp_path, start_proxy, upstream):
    upstream.app.tokens, upstream.app.revoked = {TOKENS[1], TOKENS[2]}, {TOKENS[0]}
    rules = rules_for(tmp_path, upstream.port)
    proxy = start_proxy(rules)
    assert posts(proxy, upstream, 6) == [200] * 6
    assert sent(upstream).count(TOKENS[0]) == 1  # answered 401 once, then never drawn again
    proxy.stop()
    warning = (f"tokens: …{TOKENS[0][-4:]} retired (an on_response rule with action disable, the last 401); "
               f"it is not used again until tokens.enable …{TOKENS[0][-4:]}")  # fmt: skip
    assert proxy.log().count(warning) == 1
    assert health(rules, TOKENS[0])["retired_at"] > 0
    upstream.app.received.clear()
    proxy = start_proxy(rules)  # kept across a restart
    assert posts(proxy, upstream, 6) == [200] * 6
    assert TOKENS[0] not in sent(upstream)


def test_a_token_refused_retire_after_times_in_a_row_is_retired(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}  # T0 is refused (403) every time
    rules = rules_for(tmp_path, upstream.port, cooldown=0, retire_after=2)  # no cooldown: drawn again at its turn
    proxy = start_proxy(rules)
    assert posts(proxy, upstream, 9) == [200] * 9
    assert sent(upstream).count(TOKENS[0]) == 2
    proxy.stop()
    assert proxy.log().count(f"tokens: …{TOKENS[0][-4:]} retired (refused 2 time(s) in a row, the last 403)") == 1
    assert "different tokens were refused" not in proxy.log()


def test_two_proxies_on_one_state_file_the_second_says_so_and_does_not_write_it(tmp_path, start_proxy, upstream):
    """A forward and a reverse proxy on one tokens file, as a new user would start them."""
    upstream.app.tokens = {TOKENS[1], TOKENS[2]}  # T0 is refused: its health changes
    rules = rules_for(tmp_path, upstream.port)
    state = tmp_path / "tokens.state.json"
    first = start_proxy(rules)
    second = start_proxy(rules, "--mode", f"reverse:http://127.0.0.1:{upstream.port}")
    second.wait_for_log(r"uses the state file .*tokens\.state\.json")
    assert "tokens.store" in second.log() and "tokens.store" not in first.log()
    with httpx.Client(timeout=60) as client:  # through the reverse proxy: T0 refused, then T1
        assert client.post(f"{second.url}/v1/chat/completions", json={}).status_code == 200
    second.stop()  # a proxy writes what changed at shut-down at the latest
    assert not state.exists()
    assert posts(first, upstream, 1) == [200]  # the first: T0 refused here too, and it is written
    first.stop()
    assert health(rules, TOKENS[0])["refusals"] == 1


def test_expired_tokens_are_not_sent_the_next_usable_one_goes_instead(tmp_path, start_proxy, upstream):
    """JWTs, and a Supabase-style session value carrying its expiry: the upstream would take them all
    (it does not read them), so only the proxy's own judgement keeps the expired ones back."""
    from helpers import jwt, session

    now = time.time()
    expired, expiring = jwt({"sub": "u1", "exp": now - 10}, "sig1"), jwt({"sub": "u2", "exp": now + 30}, "sig2")  # 30 s: within the margin
    good = jwt({"sub": "u3", "exp": now + 3600}, "sig3")
    old_session = session({"access_token": jwt({"exp": now + 3600}), "expires_at": now - 5})
    tokens = [expired, TOKENS[0], expiring, old_session, good]
    upstream.app.tokens = set(tokens)
    rules = write_rules(tmp_path, RULES.format(port=upstream.port, cooldown=300, retire_after=3), tokens=tokens)
    proxy = start_proxy(rules)
    assert posts(proxy, upstream, 6) == [200] * 6
    assert sent(upstream) == [TOKENS[0], good] * 3  # no request wasted on an expired one
    proxy.stop()
    log = proxy.log()
    for token in (expired, expiring, old_session):
        assert log.count(f"tokens: …{token[-4:]} expired (") == 1 and token not in log
