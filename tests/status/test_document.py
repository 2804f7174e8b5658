"""addon/status/document.py: the status document of a running proxy (`live`), and of a rules file
from where its pools keep their health (`offline`): a state file, or a shared store."""

import asyncio
import json
import re
import socket
import time

import pytest
from mitmproxy.test import taddons, tflow

from addon.request.rewriter import Rewriter
from addon.rules.config import load_config
from addon.runtime.loader import Runtime
from addon.status.document import StatusUnavailable, live, offline, when
from addon.tokens.health import BY_RULE, IN_A_ROW
from addon.tokens.storerecords import Keys, format_record
from addon.tokens.tokenfile import token_key
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {host: a.com}
    headers: {X-Captcha: "{captcha}"}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt, breaker: {tokens: 4, window: 30, pause: 120}}
captcha: {file: captcha.txt, ttl: 60}
"""
CAPTCHA = "cap-test-value-9999"  # what helpers.write_rules puts in captcha.txt
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")  # local time, with its offset, to the second
NO_STATE = {"active": 0, "on trial": 0, "cooling": 0, "retired": 0, "disabled": 0, "expired": 0}


def assert_no_secrets(doc) -> None:
    text = json.dumps(doc, ensure_ascii=False)
    leaked = [s for s in [*TOKENS, CAPTCHA] if s in text]
    assert not leaked, f"written whole in the status document: {leaked}"


def test_when_is_local_iso_to_the_second():
    assert when(None) is None and when(0.0) is None
    assert ISO.fullmatch(when(1_700_000_000.5))
    assert when(1_700_000_000.5) == when(1_700_000_000.0)


# live: a running proxy's runtime


@pytest.fixture
def runtime(tmp_path):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        yield loader


def test_live_shows_each_token_by_its_last_four_characters_with_its_state(runtime, tmp_path):
    tokens = runtime.pool.tokens
    tokens.refused(TOKENS[0], status=403)
    tokens.refused(TOKENS[1], retire=True, status=401)
    tokens.succeeded(TOKENS[2], time.time())
    first, second = (tokens.health[token_key(t)] for t in TOKENS[:2])

    doc = live(runtime, "rules.yaml")
    assert (doc["rules"], doc["loaded"]) == ("rules.yaml", True) and ISO.fullmatch(doc["now"])
    (pool,) = doc["pools"]
    assert {k: pool[k] for k in ("name", "file", "strategy", "health_kept_in")} == {
        "name": "default", "file": str(tmp_path / "tokens.txt"), "strategy": "round_robin",
        "health_kept_in": f"state file {tmp_path / 'tokens.state.json'}",
    }  # fmt: skip
    assert pool["counts"] == {**NO_STATE, "active": 1, "cooling": 1, "retired": 1}
    assert pool["tokens"] == [
        {"token": "…1111", "state": "cooling", "exit": None, "until": when(first.cooling_until), "expires": None, "successes": 0,
         "refusals": 1, "last_refusal": {"status": 403, "at": when(first.refused_at)}, "retired": None},
        {"token": "…2222", "state": "retired", "exit": None, "until": None, "expires": None, "successes": 0, "refusals": 1,
         "last_refusal": {"status": 401, "at": when(second.refused_at)},
         "retired": {"at": when(second.retired_at), "reason": "an on_response rule with action disable"}},
        {"token": "…3333", "state": "active", "exit": None, "until": None, "expires": None, "successes": 1, "refusals": 0,
         "last_refusal": None, "retired": None},
    ]  # fmt: skip
    assert ISO.fullmatch(pool["tokens"][0]["until"])
    assert pool["breaker"] == {"open": False, "until": None, "opens_after": {"tokens": 4, "within_seconds": 30},
                               "pause_seconds": 120}  # fmt: skip
    assert pool["tokens_not_shown"] == 0
    assert "state_exists" not in pool  # (the offline document's: a running proxy has its state)
    assert_no_secrets(doc)


def test_live_shows_an_open_breaker_until_it_closes(runtime):
    until = time.time() + 120
    runtime.pool.breaker.opened(until)
    assert live(runtime)["pools"][0]["breaker"]["until"] == when(until)
    assert live(runtime)["pools"][0]["breaker"]["open"] is True
    runtime.pool.breaker.close()
    assert live(runtime)["pools"][0]["breaker"]["open"] is False


def test_live_counts_what_the_hooks_counted_and_the_value_sources(runtime):
    flow = tflow.tflow()
    flow.request.host, flow.request.port = "a.com", 443
    asyncio.run(Rewriter(runtime).request(flow))  # draws a token and the captcha value (read from its file)
    counters = runtime.counters
    counters.refusals["default", "rotate"] += 2
    counters.refusals["default", "pass"] += 1
    counters.retries["default"] += 2
    counters.recovery("default", True, 0.2, "POST", "/v1/chat?key=x", "403 with …1111 → 200 with …2222")
    counters.recovery("default", False, 0.4, "GET", "/v1/models", "403 with …2222 → 403 with …3333")
    counters.value_refreshes["captcha", "failed"] += 1

    doc = live(runtime, "rules.yaml")
    part = doc["counters"]
    assert ISO.fullmatch(part["since"])
    assert part["requests"] == {"default": 1}
    assert part["refusals"] == {"default": {"rotate": 2, "refresh": 0, "disable": 0, "pass": 1}}
    assert part["retries"] == {"default": 2}
    assert part["recoveries"] == {"default": {"recovered": 1, "failed": 1}}
    assert part["value_refreshes"] == {"captcha": {"ok": 1, "failed": 1}}  # the request's read counted as ok
    assert [(r["method"], r["path"], r["recovered"]) for r in part["last_recoveries"]] == [
        ("GET", "/v1/models", False), ("POST", "/v1/chat", True)]  # newest first; no query  # fmt: skip
    (value,) = doc["values"]
    source = runtime.values["captcha"]
    assert value == {"name": "captcha", "source": f"file {source.spec.file}", "ttl_seconds": 60,
                     "fetched_at": when(source.fetched_at), "expires_at": when(source.expires_at),
                     "failed_at": None, "runs": source.runs}  # fmt: skip
    assert ISO.fullmatch(value["fetched_at"]) and ISO.fullmatch(value["expires_at"])
    assert_no_secrets(doc)


def test_live_before_a_rules_file_loaded():
    doc = live(Runtime())
    assert (doc["loaded"], doc["pools"], doc["values"]) == (False, [], [])
    assert doc["counters"]["requests"] == {} and doc["counters"]["last_recoveries"] == []


# offline: the state file


def state_file(tmp_path, entries, open_until=None) -> None:
    data = {"version": 1, "tokens": entries}
    if open_until is not None:
        data["breaker"] = {"open_until": open_until}
    (tmp_path / "tokens.state.json").write_text(json.dumps(data))


def entry(suffix, **kw):
    return {"suffix": suffix, "cooling_until": 0.0, "refused_at": 0.0, "disabled": False, "successes": 0,
            "refusals": 0, "in_a_row": 0, "retired_at": 0.0, "retired_why": 0, "last_status": 0, **kw}  # fmt: skip


def test_offline_reads_the_state_file(tmp_path):
    rules = write_rules(tmp_path, RULES)
    now = time.time()
    state_file(tmp_path, {
        token_key(TOKENS[0]): entry("…1111", cooling_until=now + 240, refused_at=now - 60, successes=2, refusals=1,
                                    in_a_row=1, last_status=403),
        token_key(TOKENS[1]): entry("…2222", cooling_until=now - 100, refused_at=now - 400, refusals=3, in_a_row=3,
                                    retired_at=now - 400, retired_why=IN_A_ROW, last_status=429),
        token_key(TOKENS[2]): entry("…3333", disabled=True, successes=7),
    }, open_until=now + 600)  # fmt: skip

    doc = offline(load_config(rules), str(rules))
    assert (doc["rules"], doc["loaded"], doc["counters"]) == (str(rules), True, None)
    (pool,) = doc["pools"]
    assert (pool["state_exists"], pool["health_kept_in"]) == (True, f"state file {tmp_path / 'tokens.state.json'}")
    assert pool["counts"] == {**NO_STATE, "cooling": 1, "retired": 1, "disabled": 1}
    cooling, retired, disabled = pool["tokens"]
    assert (cooling["state"], cooling["until"], cooling["successes"], cooling["refusals"]) == ("cooling", when(now + 240), 2, 1)
    assert cooling["last_refusal"] == {"status": 403, "at": when(now - 60)}
    assert (retired["state"], retired["until"]) == ("retired", None)
    assert retired["retired"] == {"at": when(now - 400), "reason": "refused 3 time(s) in a row"}
    assert retired["last_refusal"] == {"status": 429, "at": when(now - 400)}
    assert (disabled["state"], disabled["successes"], disabled["last_refusal"], disabled["retired"]) == ("disabled", 7, None, None)
    assert pool["breaker"] == {"open": True, "until": when(now + 600), "opens_after": {"tokens": 4, "within_seconds": 30},
                               "pause_seconds": 120}  # fmt: skip
    assert doc["values"] == [{"name": "captcha", "source": f"file {tmp_path / 'captcha.txt'}", "ttl_seconds": 60}]
    assert_no_secrets(doc)


def test_offline_a_refusal_from_a_file_written_before_statuses_were_kept(tmp_path):
    rules = write_rules(tmp_path, RULES)
    now = time.time()
    old = entry("…1111", cooling_until=now + 240, refused_at=now - 60, refusals=1, in_a_row=1, retired_why=BY_RULE)
    del old["last_status"]
    state_file(tmp_path, {token_key(TOKENS[0]): old}, open_until=now - 5)  # a breaker that has closed since
    (pool,) = offline(load_config(rules), str(rules))["pools"]
    assert pool["tokens"][0]["last_refusal"] == {"status": None, "at": when(now - 60)}
    assert pool["breaker"]["open"] is False and pool["breaker"]["until"] is None


def test_offline_before_any_proxy_ran_every_token_is_active(tmp_path):
    rules = write_rules(tmp_path, RULES)
    (pool,) = offline(load_config(rules), str(rules))["pools"]
    assert pool["state_exists"] is False
    assert pool["counts"] == {**NO_STATE, "active": 3}
    assert [(t["token"], t["state"], t["last_refusal"]) for t in pool["tokens"]] == [
        ("…1111", "active", None), ("…2222", "active", None), ("…3333", "active", None)]  # fmt: skip
    assert pool["breaker"]["open"] is False
    assert not (tmp_path / "tokens.state.json").exists()  # looked at, not made


def test_offline_without_a_tokens_section(tmp_path):
    rules = write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: x}\n", captcha=None)
    doc = offline(load_config(rules), str(rules))
    assert (doc["pools"], doc["values"]) == ([], [])


# offline: a shared store


STORE_RULES = """\
rules:
  - match: {host: a.com}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt, store: "URL"}
"""


def test_offline_reads_a_shared_store(tmp_path, redis_server):
    rules = write_rules(tmp_path, STORE_RULES.replace("URL", redis_server.url))
    now = time.time()
    keys, client = Keys("default"), redis_server.client()
    client.hset(keys.health, token_key(TOKENS[1]), format_record((now + 240, now - 60, False, 4, 2, 1, 0.0, 0)))
    client.hset(keys.health, token_key(TOKENS[2]), format_record((0.0, now - 900, False, 0, 1, 1, now - 900, BY_RULE)))
    client.set(keys.breaker, repr(now + 90))

    doc = offline(load_config(rules), str(rules))
    (pool,) = doc["pools"]
    assert pool["health_kept_in"] == f"store {redis_server.url} (namespace default)"
    assert "state_exists" not in pool
    assert [(t["token"], t["state"]) for t in pool["tokens"]] == [("…1111", "active"), ("…2222", "cooling"), ("…3333", "retired")]
    _, cooling, retired = pool["tokens"]
    assert (cooling["until"], cooling["successes"], cooling["refusals"]) == (when(now + 240), 4, 2)
    assert cooling["last_refusal"] == {"status": None, "at": when(now - 60)}  # a store keeps no status
    assert retired["retired"] == {"at": when(now - 900), "reason": "an on_response rule with action disable"}
    assert pool["breaker"]["open"] is True and pool["breaker"]["until"] == when(now + 90)
    assert_no_secrets(doc)


def test_offline_a_store_that_does_not_answer_is_unavailable_without_its_password(tmp_path):
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rules = write_rules(tmp_path, STORE_RULES.replace("URL", f"redis://:hunter2-secret-pw@127.0.0.1:{port}/0"))
    with pytest.raises(StatusUnavailable) as e:
        offline(load_config(rules), str(rules))
    assert str(e.value).startswith(f"the store redis://:****@127.0.0.1:{port}/0 does not answer: ")
    assert "hunter2" not in str(e.value)


def test_offline_a_tokens_file_gone_since_the_rules_loaded_is_unavailable(tmp_path):
    rules = write_rules(tmp_path, RULES)
    config = load_config(rules)
    (tmp_path / "tokens.txt").unlink()
    with pytest.raises(StatusUnavailable) as e:
        offline(config, str(rules))
    assert str(e.value) == f"{tmp_path / 'tokens.txt'}: tokens file not found"
