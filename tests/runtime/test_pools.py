"""Several token pools at run time: the loader keeps each by name, the request hook draws from the
pool its rule names, and the commands show and change every pool."""

import asyncio
import logging
import time

import pytest
from mitmproxy.test import taddons, tflow

from addon.request.rewriter import Rewriter
from addon.runtime.commands import TokenCommands
from addon.runtime.loader import Runtime
from addon.runtime.pools import Pool, pools_line
from addon.tokens import statefile
from addon.tokens.tokenfile import token_key
from helpers import POOLS, TOKENS, write_rules

OPENAI = ["sk-openai-account-0000aaaa", "sk-openai-account-0000bbbb"]

RULES = POOLS


@pytest.fixture
def pools(tmp_path):
    (tmp_path / "openai.txt").write_text("\n".join(OPENAI) + "\n")
    loader = Runtime()
    rewriter = Rewriter(loader)
    commands = TokenCommands(loader)
    with taddons.context(loader, rewriter, commands) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        yield loader, rewriter, tctx


def request(rewriter, host: str) -> tflow.tflow:
    f = tflow.tflow()
    f.request.host, f.request.port = host, 443
    asyncio.run(rewriter.request(f))
    return f


def test_each_rule_draws_from_its_own_pool(pools):
    loader, rewriter, _ = pools
    assert list(loader.pools) == ["arena", "openai"] and loader.pool is loader.pools["arena"]
    assert [len(p.tokens) for p in loader.pools.values()] == [3, 2]
    sessions = [request(rewriter, "arena.example").request.cookies["session"] for _ in range(3)]
    auth = [request(rewriter, "api.example").request.headers["Authorization"] for _ in range(3)]
    assert sessions == [TOKENS[0]] * 3  # sticky
    assert auth == [f"Bearer {OPENAI[0]}", f"Bearer {OPENAI[1]}", f"Bearer {OPENAI[0]}"]  # round robin


def test_a_reload_keeps_each_pool_by_name_and_a_pool_the_file_drops_stops(pools, tmp_path):
    loader, _, _ = pools
    arena, openai = loader.pools["arena"], loader.pools["openai"]
    arena.tokens.refused(TOKENS[0])
    (tmp_path / "rules.yaml").write_text(RULES.replace("strategy: sticky", "strategy: round_robin"))
    loader._watcher.poll()
    assert loader.pools["arena"] is arena and loader.pools["openai"] is openai
    assert arena.tokens.strategy == "round_robin" and [s for s, _ in arena.tokens.status()][0] == "cooling"
    (tmp_path / "rules.yaml").write_text(RULES.replace("  openai: {file: openai.txt}\n", "").replace(
        "Bearer {token:openai}", "none"))
    loader._watcher.poll()
    assert list(loader.pools) == ["arena"] and openai._state_lock is None  # stopped: its state file let go


def test_a_pools_tokens_file_is_read_again_alone(pools, tmp_path):
    loader, rewriter, _ = pools
    (tmp_path / "openai.txt").write_text("sk-openai-account-0000cccc\n")
    loader._watcher.poll()
    assert [len(p.tokens) for p in loader.pools.values()] == [3, 1]
    assert request(rewriter, "api.example").request.headers["Authorization"] == "Bearer sk-openai-account-0000cccc"


def test_a_pool_without_usable_tokens_answers_503_naming_its_file(pools, tmp_path):
    loader, rewriter, tctx = pools
    for token in OPENAI:
        tctx.master.commands.execute(f"tokens.disable {token[-4:]}")
    f = request(rewriter, "api.example")
    assert f.response.status_code == 503 and str(tmp_path / "openai.txt") in f.response.text
    assert request(rewriter, "arena.example").response is None  # the other pool goes on


def test_status_shows_each_pool_under_its_name(pools, tmp_path, caplog):
    loader, _, tctx = pools
    caplog.set_level(logging.INFO)
    loader.pools["openai"].tokens.refused(OPENAI[1])
    line = tctx.master.commands.execute("tokens.status")
    assert line == "tokens: arena 3 active; openai 1 active, 1 cooling (one row a token in the event log)"
    (entry,) = [m for m in caplog.messages if m.startswith("tokens.status:")]  # the rows, in the event log
    rows = entry.split("\n")[1:]
    assert rows[0] == f"pool arena ({tmp_path / 'tokens.txt'}):" and rows[4] == f"pool openai ({tmp_path / 'openai.txt'}):"
    assert [r.split()[:2] for r in rows[5:]] == [["…aaaa", "active"], ["…bbbb", "cooling"]]
    tctx.master.commands.execute("tokens.reset")  # every pool
    assert [s for s, _ in loader.pools["openai"].tokens.status()] == ["active", "active"]
    tctx.master.commands.execute("tokens.disable bbbb")
    assert "tokens openai: …bbbb disabled" in caplog.text


def test_rules_for_two_pools_on_one_request_send_the_later_rules_pool(pools, tmp_path, caplog):
    loader, rewriter, _ = pools
    both = RULES.replace("match: {host: api.example}", "match: {host: arena.example}")
    (tmp_path / "rules.yaml").write_text(both)
    loader._watcher.poll()
    with caplog.at_level(logging.WARNING):
        f = request(rewriter, "arena.example")
    assert f.request.headers["Authorization"] == f"Bearer {OPENAI[0]}" and "session" not in f.request.cookies
    assert ("rules: arena and openai match the same request but draw tokens from different pools; it is sent "
            "with a token of openai (openai is the later rule), without arena's token edits") in caplog.text


def test_a_later_rules_token_edit_of_the_same_place_decides_the_pool_without_a_warning(pools, tmp_path, caplog):
    loader, rewriter, _ = pools
    both = RULES.replace("match: {host: api.example}", "match: {host: arena.example}").replace(
        'cookies: {session: "{token:arena}"}', 'headers: {Authorization: "{token:arena}"}')
    (tmp_path / "rules.yaml").write_text(both)
    loader._watcher.poll()
    with caplog.at_level(logging.WARNING):
        f = request(rewriter, "arena.example")
    assert f.request.headers["Authorization"] == f"Bearer {OPENAI[0]}" and "different pools" not in caplog.text


ONE_POOL = RULES.replace(
    "tokens:\n  arena: {file: tokens.txt, strategy: sticky}\n  openai: {file: openai.txt}\n", "tokens: {file: tokens.txt}\n"
).replace("{token:arena}", "{token}").replace("Bearer {token:openai}", "x")


def test_a_pool_given_a_name_keeps_its_health_and_its_state_file(pools, tmp_path):
    loader, rewriter, _ = pools
    (tmp_path / "rules.yaml").write_text(ONE_POOL)
    loader._watcher.poll()
    pool = loader.pool
    assert list(loader.pools) == ["default"] and pool.saver.path == tmp_path / "tokens.state.json"
    pool.tokens.refused(TOKENS[0])
    (tmp_path / "rules.yaml").write_text(RULES.replace("arena", "chat"))  # the pool of tokens.txt is named "chat"
    loader._watcher.poll()
    assert loader.pools["chat"] is pool and pool.name == "chat" and pool.label == "tokens chat"
    assert pool.saver.path == tmp_path / "tokens.state.json"  # still written (its lock was not lost to itself)
    assert [s for s, _ in pool.tokens.status()][0] == "cooling"
    pool.tokens.refused(TOKENS[1])
    pool.saver.flush()
    assert TOKENS[1][-4:] in (tmp_path / "tokens.state.json").read_text()


def test_a_request_out_during_a_reload_reports_to_the_pool_it_drew_from(pools, tmp_path):
    loader, rewriter, _ = pools
    f = request(rewriter, "api.example")
    openai = loader.pools["openai"]
    (tmp_path / "rules.yaml").write_text(RULES.replace("  openai: {file: openai.txt}\n", "").replace(
        "Bearer {token:openai}", "none"))
    loader._watcher.poll()
    assert "openai" not in loader.pools and rewriter.sent[f].pool is openai


def test_two_pools_of_one_tokens_file_both_read_it_again(pools, tmp_path):
    loader, _, _ = pools
    (tmp_path / "rules.yaml").write_text(RULES.replace("openai: {file: openai.txt}", "openai: {file: tokens.txt, state_file: o.json}"))
    loader._watcher.poll()
    (tmp_path / "tokens.txt").write_text("one-token-only-0000dddd\n")
    loader._watcher.poll()
    assert [len(p.tokens) for p in loader.pools.values()] == [1, 1]


def test_a_file_of_one_pool_is_the_default_pool_as_before(tmp_path):
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, ONE_POOL)))
        default = loader.pool
        assert list(loader.pools) == ["default"] and loader.pools["default"] is default and isinstance(default, Pool)
        assert loader.pool.tokens is default.tokens and default.label == "tokens" and len(default.tokens) == 3


def test_two_pools_on_one_store_keep_their_health_apart(tmp_path, redis_server):
    """Each pool in its own namespace: a refusal in one is never heard in the other."""
    (tmp_path / "openai.txt").write_text("\n".join(OPENAI) + "\n")
    shared = RULES.replace("strategy: sticky}", f"strategy: sticky, store: '{redis_server.url}'}}").replace(
        "openai: {file: openai.txt}", f"openai: {{file: openai.txt, store: '{redis_server.url}'}}")

    async def main():
        loader = Runtime()
        with taddons.context(loader) as tctx:
            tctx.configure(loader, rules=str(write_rules(tmp_path, shared)))
            loader.running()
            arena, openai = loader.pools["arena"], loader.pools["openai"]
            assert (arena.shared.spec.namespace, openai.shared.spec.namespace) == ("arena", "openai")
            assert loader.store is arena.shared  # command values are shared through the first pool's store
            for _ in range(500):
                if arena.shared.online and openai.shared.online:
                    break
                await asyncio.sleep(0.01)
            arena.shared.refused(TOKENS[0], None)
            redis = arena.shared._slow
            for _ in range(500):  # the refusal goes to Redis in the background
                if await redis.hexists(arena.shared.keys.health, token_key(TOKENS[0])):
                    break
                await asyncio.sleep(0.01)
            assert await redis.hexists(arena.shared.keys.health, token_key(TOKENS[0]))
            assert not await redis.exists(openai.shared.keys.health)
            assert openai.tokens.health == {}
            loader.done()

    asyncio.run(main())


# the breaker in the state file: written when it opens or closes, open again after a restart


def test_the_breaker_is_kept_in_the_state_file_and_open_again_after_a_restart(tmp_path):
    rules = str(write_rules(tmp_path, ONE_POOL))
    state = tmp_path / "tokens.state.json"
    until = time.time() + 300
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=rules)
        loader.pool.breaker.opened(until)  # (no event loop here: the state file is written at once)
        assert statefile.read_state(state)[1] == until
        loader.done()
        restarted = Runtime()  # (a context inside the first: mitmproxy's log handler of the first lives on)
        with taddons.context(restarted) as again:
            again.configure(restarted, rules=rules)
            breaker = restarted.pool.breaker
            assert breaker.is_open and breaker.open_until == until
            assert pools_line(restarted.pools.values()) == (
                f"default 3 active, breaker open until {time.strftime('%H:%M:%S', time.localtime(until))}")
            restarted.pool.reset()  # tokens.reset closes it, and the file says so
            assert not breaker.is_open and statefile.read_state(state)[1] == 0.0
            restarted.done()


@pytest.mark.parametrize("ago", [5.0, 3600.0])
def test_a_breaker_that_closed_while_the_proxy_was_stopped_stays_closed(tmp_path, ago):
    rules = str(write_rules(tmp_path, ONE_POOL))
    statefile.StateStore(tmp_path / "tokens.state.json", {}, 86400, breaker_open_until=time.time() - ago).write()
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=rules)
        assert not loader.pool.breaker.is_open
        assert pools_line(loader.pools.values()) == "default 3 active"


def test_a_reload_does_not_reopen_a_breaker_closed_by_hand(tmp_path):
    rules = write_rules(tmp_path, ONE_POOL)
    statefile.StateStore(tmp_path / "tokens.state.json", {}, 86400, breaker_open_until=time.time() + 300).write()
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=str(rules))
        assert loader.pool.breaker.is_open
        loader.pool.reset()
        rules.write_text(ONE_POOL.replace("tokens: {file: tokens.txt}", "tokens: {file: tokens.txt, cooldown: 60}"))
        loader._watcher.poll()  # the rules file changed: read again (its state file is the one in use: not read)
        assert loader.pool.tokens.cooldown == 60
        assert not loader.pool.breaker.is_open


def test_a_breaker_kept_open_is_held_no_longer_than_the_pause_the_file_asks_for_now(tmp_path):
    """A pause lowered after a breaker opened by mistake takes effect at the restart."""
    rules = str(write_rules(tmp_path, ONE_POOL.replace("tokens: {file: tokens.txt}",
                                                       "tokens: {file: tokens.txt, breaker: {pause: 30}}")))  # fmt: skip
    statefile.StateStore(tmp_path / "tokens.state.json", {}, 86400, breaker_open_until=time.time() + 3600).write()
    loader = Runtime()
    with taddons.context(loader) as tctx:
        tctx.configure(loader, rules=rules)
        assert loader.pool.breaker.is_open and loader.pool.breaker.open_until <= time.time() + 30
