"""End to end: one proxy in front of two kinds of account (two token pools), through a real mitmdump.

The upstream takes the `session` cookie of either kind; the rules put an arena account into requests
for /arena/ and an openai account into those for /openai/. A refusal rotates the pool whose token the
request carried, and nothing of one pool (its tokens, health, breaker) touches the other."""

from __future__ import annotations

import json

import httpx

from helpers import TOKENS, write_rules

OPENAI = ["sk-openai-account-0000aaaa", "sk-openai-account-0000bbbb"]

RULES = """\
rules:
  - name: browser
    match: {{host: "127.0.0.1:{port}"}}
    headers: {{User-Agent: "Mozilla/5.0 (X11; Linux x86_64)", Accept: application/json, X-Captcha-Token: "{{captcha}}"}}
  - name: arena account
    match: {{host: "127.0.0.1:{port}", path: /arena/*}}
    cookies: {{session: "{{token:arena}}"}}
  - name: openai account
    match: {{host: "127.0.0.1:{port}", path: /openai/*}}
    cookies: {{session: "{{token:openai}}"}}
tokens:
  arena: {{file: tokens.txt, strategy: sticky, breaker: {{tokens: 2}}}}
  openai: {{file: openai.txt, max_attempts: 2}}
captcha: {{file: captcha.txt}}
"""


def pools_rules(folder, port):
    (folder / "openai.txt").write_text("\n".join(OPENAI) + "\n")
    return write_rules(folder, RULES.format(port=port))


def post(client, upstream, path: str, i: int) -> int:
    return client.post(f"http://127.0.0.1:{upstream.port}{path}?i={i}", json={"n": i}).status_code


def sent_to(upstream, path: str) -> list[str]:
    return [r.cookie("session") for r in upstream.app.received if r.path.startswith(path)]


def state(folder, name: str) -> dict:
    file = folder / f"{name}.state.json"
    return json.loads(file.read_text())["tokens"] if file.exists() else {}


def test_a_refusal_rotates_the_pool_of_the_requests_token_and_no_other(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2], *OPENAI}  # TOKENS[0], the sticky arena account, is refused
    rules = pools_rules(tmp_path, upstream.port)
    proxy = start_proxy(rules)
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        codes = [post(client, upstream, path, i) for i in range(4) for path in ("/arena/chat", "/openai/chat")]
    assert codes == [200] * 8
    assert sent_to(upstream, "/arena/") == [TOKENS[0], TOKENS[1], TOKENS[1], TOKENS[1], TOKENS[1]]  # refused once, then sticky
    assert sent_to(upstream, "/openai/") == OPENAI * 2  # its own rotation, not moved by the arena's refusal
    proxy.stop()
    from addon.tokens.tokenfile import token_key

    arena, openai = state(tmp_path, "tokens"), state(tmp_path, "openai")
    assert arena[token_key(TOKENS[0])]["refusals"] == 1
    assert not any(h["refusals"] for h in openai.values())
    assert token_key(TOKENS[0]) not in openai and not set(map(token_key, OPENAI)) & arena.keys()
    log = proxy.log()
    assert f"tokens arena: …{TOKENS[0][-4:]} refused (403)" in log  # a log line says which pool
    assert "pool arena" in log and "pool openai" in log  # (the load's summary)
    assert not any(t in log for t in OPENAI)


def test_a_pool_whose_tokens_are_all_refused_opens_its_own_breaker_only(tmp_path, start_proxy, upstream):
    upstream.app.tokens = set(OPENAI)  # every arena account is refused: the cause is not the accounts
    rules = pools_rules(tmp_path, upstream.port)
    proxy = start_proxy(rules)
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        assert post(client, upstream, "/arena/chat", 0) == 403  # T0, then T1: two tokens, the breaker opens
        proxy.wait_for_log("tokens arena: 2 different tokens were refused")
        assert [post(client, upstream, "/openai/chat", i) for i in range(4)] == [200] * 4
        assert post(client, upstream, "/arena/chat", 1) == 403  # passed on as it is: no token cools
    arena = sent_to(upstream, "/arena/")
    assert arena[:2] == [TOKENS[0], TOKENS[1]] and len(arena) == 3  # (the breaker put back their cooldowns)
    assert sent_to(upstream, "/openai/") == OPENAI * 2
    proxy.stop()
    assert "tokens openai: " not in proxy.log()


def test_a_reload_keeps_each_pools_health(tmp_path, start_proxy, upstream):
    upstream.app.tokens = {TOKENS[1], TOKENS[2], *OPENAI}
    rules = pools_rules(tmp_path, upstream.port)
    proxy = start_proxy(rules)
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        assert post(client, upstream, "/arena/chat", 0) == 200
    rules.write_text(rules.read_text().replace("openai: {file: openai.txt, max_attempts: 2}", "openai: {file: openai.txt}"))
    proxy.wait_for_log(r"rules: loaded .*pool arena.*pool openai", count=2)  # a reload keeps both pools' health
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        assert post(client, upstream, "/arena/chat", 1) == 200
    assert sent_to(upstream, "/arena/") == [TOKENS[0], TOKENS[1], TOKENS[1]]  # T0 still cooling after the reload
