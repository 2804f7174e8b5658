"""addon/shared.py against a real redis-server: two stores in one process stand for two proxies."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from addon.breaker import Breaker
from addon.config import BreakerSpec, StoreSpec, ValueSpec, load_config
from addon.shared import KEEP_EVERY, LATE_IN_A_ROW, SharedStore
from addon.sources import ValueSource
from addon.tokens import TokenPool, token_key
from redisserver import RedisServer

TOKENS = [f"tok-shared-{n}-{word}" for n, word in enumerate(["alpha-0001", "bravo-0002", "charlie-03", "delta-0004"])]


def store(url: str, namespace: str = "default", strategy: str = "round_robin", breaker: BreakerSpec = BreakerSpec(),
          tokens=TOKENS) -> SharedStore:  # fmt: skip
    pool = TokenPool(tokens, strategy, cooldown=300)
    return SharedStore(StoreSpec(url, url, namespace), pool, Breaker(breaker))


async def started(*stores: SharedStore) -> None:
    for s in stores:
        s.start()
    for _ in range(200):
        if all(s.online for s in stores):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not connected")


def run(main):
    return asyncio.run(main())


def test_a_refusal_on_one_is_seen_by_the_others_next_draw(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        assert await a.refused(TOKENS[0], None) is True
        assert await a.refused(TOKENS[0], None) is False  # cooling already: marked once, counted twice
        drawn = [await b.draw() for _ in range(6)]
        health = b.pool.health[token_key(TOKENS[0])]
        a.stop(), b.stop()
        return drawn, health

    drawn, health = run(main)
    assert TOKENS[0] not in drawn
    assert health.state(health.cooling_until - 1) == "cooling" and health.refusals == 2


def test_round_robin_is_one_rotation_for_all(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        drawn = [await (a if i % 2 else b).draw() for i in range(8)]
        a.stop(), b.stop()
        return drawn

    drawn = run(main)
    assert sorted(drawn) == sorted(TOKENS * 2)
    assert drawn[:4] == TOKENS  # in file order, whichever proxy draws


def test_draws_at_once_share_round_trips_and_places(redis_server):
    async def main():
        a = store(redis_server.url)
        await started(a)
        before = a.round_trips
        drawn = await asyncio.gather(*(a.draw() for _ in range(40)))
        a.stop()
        return drawn, a.round_trips - before

    drawn, trips = run(main)
    assert sorted(drawn) == sorted(TOKENS * 10)  # forty places of the rotation, none taken twice
    assert 1 <= trips < 40


def test_namespaces_keep_pools_apart(redis_server):
    async def main():
        a, b = store(redis_server.url, "one"), store(redis_server.url, "two")
        await started(a, b)
        await a.refused(TOKENS[0], None)
        drawn = [await b.draw() for _ in range(4)]
        a.stop(), b.stop()
        return drawn

    assert TOKENS[0] in run(main)


def test_the_breaker_opened_by_one_holds_on_the_other_and_undoes_the_cooldowns(redis_server, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        spec = BreakerSpec(tokens=2, window=60, pause=300)
        a, b = store(redis_server.url, breaker=spec), store(redis_server.url, breaker=spec)
        await started(a, b)
        await a.refused(TOKENS[0], None)
        await b.refused(TOKENS[1], None)  # the second different token, through the other proxy: it opens
        opened_here = b.breaker.is_open
        await a.draw()  # reads the stream
        states = [a.pool.health[token_key(t)].state(a.clock()) for t in TOKENS[:2]]
        a.stop(), b.stop()
        return opened_here, a.breaker.is_open, states

    opened_here, open_there, states = run(main)
    assert opened_here and open_there
    assert states == ["active", "active"]  # the breaker's refusals are not the tokens' fault
    assert "another proxy on the shared store opened the breaker" in caplog.text


def test_a_success_ends_a_cooldown_only_when_sent_after_the_refusal(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        await a.refused(TOKENS[0], None)
        refused_at = a.pool.health[token_key(TOKENS[0])].refused_at
        a.succeeded(TOKENS[0], sent_at=refused_at - 1)  # a long request sent before the refusal
        await a.draw()  # the successes go with the next round trip
        await b.draw()
        still = b.pool.health[token_key(TOKENS[0])].state(b.clock())
        a.succeeded(TOKENS[0], sent_at=refused_at + 1)
        await a.draw()
        await b.draw()
        after = b.pool.health[token_key(TOKENS[0])]
        counted = redis_server.client().hget(a.keys.health, token_key(TOKENS[0]))
        a.stop(), b.stop()
        return still, after.state(b.clock()), counted

    still, after, counted = run(main)
    assert (still, after) == ("cooling", "active")
    assert counted.split()[3] == "2"  # both successes counted in Redis


def test_disable_and_reset_by_hand_hold_everywhere(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        a.set_disabled(TOKENS[1][-6:], True)
        await a.refused(TOKENS[2], None)
        await asyncio.sleep(0.1)  # the command's script runs in the background
        disabled = [await b.draw() for _ in range(8)]
        a.reset()
        await asyncio.sleep(0.1)
        after = [await b.draw() for _ in range(8)]
        a.set_disabled(TOKENS[1][-6:], False)
        await asyncio.sleep(0.1)
        enabled = [await b.draw() for _ in range(8)]
        a.stop(), b.stop()
        return disabled, after, enabled

    disabled, after, enabled = run(main)
    assert TOKENS[1] not in disabled and TOKENS[2] not in disabled
    assert TOKENS[1] not in after and TOKENS[2] in after  # reset ends cooldowns, not a disable
    assert TOKENS[1] in enabled


def test_a_retirement_holds_everywhere_until_an_enable(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        await a.refused(TOKENS[0], None, retire=True)  # an on_response rule with action disable
        retired = [await b.draw() for _ in range(6)], b.pool.status()[0][0]
        a.set_disabled(TOKENS[0][-6:], False)  # tokens.enable
        await asyncio.sleep(0.1)  # the command's script runs in the background
        await b.draw()
        enabled = b.pool.status()[0][0], a.pool.status()[0][0]
        a.stop(), b.stop()
        return retired, enabled

    (drawn, state), enabled = run(main)
    assert TOKENS[0] not in drawn and state == "retired"
    assert enabled == ("cooling", "cooling")  # no longer retired; its refusal's cooldown runs on


def test_records_written_before_retirement_still_load(redis_server):
    """A store written by the version before (5 fields a record) is read, and refusals extend its records."""
    old = store(redis_server.url)
    key = token_key(TOKENS[0])
    redis_server.client().hset(old.keys.health, key, "9999999999.5 1000.25 0 7 2")

    async def main():
        a = store(redis_server.url)
        await started(a)
        read = a.pool.health[key].record
        await a.refused(TOKENS[1], None)
        a.stop()
        return read

    assert run(main) == (9999999999.5, 1000.25, False, 7, 2, 0, 0.0, 0)
    assert len(redis_server.client().hget(old.keys.health, token_key(TOKENS[1])).split()) == 8


def test_redis_gone_then_back(redis_server, caplog):
    """Nothing fails while Redis is down; one alert; what changed meanwhile is merged in when it is back."""
    caplog.set_level(logging.INFO)

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        redis_server.kill()
        drawn = [await a.draw() for _ in range(5)]  # on its own: every draw still gets a token
        assert await a.refused(TOKENS[3], None) is None  # judged here
        a.pool.refused(TOKENS[3])
        assert not a.online and (await b.draw()) is not None and not b.online
        redis_server.start()  # empty: nothing persisted
        for _ in range(int(5 / 0.05)):
            if a.online and b.online:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        seen = [await b.draw() for _ in range(8)]
        a.stop(), b.stop()
        return drawn, seen

    drawn, seen = run(main)
    assert all(drawn)
    assert TOKENS[3] not in seen  # a's refusal while Redis was down reached b once it was back
    assert caplog.text.count("cannot be reached") == 2  # once per proxy, not once per failed call
    assert caplog.text.count("is back: token health is shared again") == 2


def test_no_token_goes_to_redis(redis_server):
    async def main():
        a = store(redis_server.url)
        await started(a)
        for t in TOKENS[:3]:
            await a.refused(t, None)
            a.succeeded(t, 0)
        a.set_disabled(TOKENS[3][-5:], True)
        await a.draw()
        await asyncio.sleep(0.1)
        a.stop()

    run(main)
    stored = "\n".join(redis_server.everything())
    assert token_key(TOKENS[0]) in stored
    for t in TOKENS:
        assert t[-8:] not in stored


def test_a_command_value_runs_once_for_every_proxy(redis_server, tmp_path: Path):
    (tmp_path / "mint.sh").write_text('sleep 0.3; echo run >> runs.txt; echo "cap-$(wc -l < runs.txt | tr -d " ")-minted"\n')
    spec = ValueSpec("captcha", ttl=300, timeout=5, cwd=tmp_path, command=("sh", "mint.sh"))

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        sources = [ValueSource(spec), ValueSource(spec)]
        sources[0].shared, sources[1].shared = a, b
        got = await asyncio.gather(*(sources[i % 2].get() for i in range(20)))
        stale = got[0]
        fresh = await asyncio.gather(sources[0].fresh(stale), sources[1].fresh(stale))  # both refused with it
        a.stop(), b.stop()
        return got, fresh

    got, fresh = run(main)
    assert set(got) == {"cap-1-minted"}
    assert fresh == ["cap-2-minted", "cap-2-minted"]  # one run for both refusals of the same value
    assert (tmp_path / "runs.txt").read_text().count("run") == 2


def test_an_idle_proxy_keeps_up_with_the_stream(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        await a.refused(TOKENS[0], None)
        await asyncio.sleep(KEEP_EVERY * 2.5)  # b draws nothing: its keeper reads the stream
        cooling = b.pool.health.get(token_key(TOKENS[0]))
        a.stop(), b.stop()
        return cooling

    cooling = run(main)
    assert cooling is not None and cooling.refusals == 1


def test_tls_and_a_password_from_the_environment(tmp_path, caplog):
    """rediss:// with the password as {env:NAME}, as the rules file gives it; a wrong password is an
    alert that does not show it, and the proxy goes on alone."""
    caplog.set_level(logging.INFO)
    server = RedisServer(tmp_path, password="pw-redis-secret-1", tls=True).start()
    try:
        (tmp_path / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
        url = server.url.replace("pw-redis-secret-1", "{env:REDIS_PW}")
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"rules: [{{match: {{host: a.com}}, headers: {{X: '{{token}}'}}}}]\n"
                         f"tokens: {{file: tokens.txt, store: '{url}'}}\n")  # fmt: skip
        good = load_config(rules, environ={"REDIS_PW": "pw-redis-secret-1"}).tokens.store
        bad = load_config(rules, environ={"REDIS_PW": "pw-wrong-secret-2"}).tokens.store

        async def main():
            a, b = store(good.url), store(good.url)
            wrong = SharedStore(bad, TokenPool(TOKENS), Breaker())
            await started(a, b)
            await a.refused(TOKENS[0], None)
            drawn = [await b.draw() for _ in range(4)]
            wrong.start()
            await asyncio.sleep(0.5)
            alone = wrong.online, await wrong.draw()
            for s in (a, b, wrong):
                s.stop()
            return drawn, alone

        drawn, (online, token) = run(main)
    finally:
        server.kill()
    assert TOKENS[0] not in drawn
    assert not online and token in TOKENS  # served on its own
    assert "cannot be reached" in caplog.text and "pw-wrong-secret-2" not in caplog.text
    assert "****" in bad.shown


def test_a_hung_redis_costs_each_request_one_timeout_then_none(redis_server, caplog):
    """Redis that stops answering: a late answer or two leave sharing on (the request draws on this
    proxy's picture), the third in a row turns it off; after that, no request waits on Redis."""
    caplog.set_level(logging.INFO)

    async def main():
        a = store(redis_server.url)
        await started(a)
        redis_server.pause()
        try:
            first = [await asyncio.wait_for(a.draw(), 5) for _ in range(LATE_IN_A_ROW - 1)]
            still = a.online
            more = [await asyncio.wait_for(a.draw(), 5) for _ in range(3)]
            trips, off = a.round_trips, not a.online
            later = [await asyncio.wait_for(a.draw(), 5) for _ in range(20)]
            waited = a.round_trips - trips
        finally:
            redis_server.resume()
        a.stop()
        return first, still, more, off, later, waited

    first, still, more, off, later, waited = run(main)
    assert all(first + more + later)  # every draw got a token
    assert still and off
    assert waited == 0  # off: no round trip, so no wait
    assert caplog.text.count("cannot be reached") == 1 and "Timeout" in caplog.text


def test_a_late_answer_alone_leaves_sharing_on(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        redis_server.pause()
        await a.draw()  # late: drawn on a's picture
        redis_server.resume()
        await b.refused(TOKENS[0], None)
        drawn = [await a.draw() for _ in range(4)]
        online = a.online
        a.stop(), b.stop()
        return online, drawn

    online, drawn = run(main)
    assert online and TOKENS[0] not in drawn


def test_coming_back_does_not_undo_what_the_others_changed(redis_server):
    """A proxy cut off from Redis sends back only what changed on it meanwhile: a reset made by
    another proxy in the meantime stays (Redis was not empty)."""

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        await a.refused(TOKENS[0], None)
        await b.draw()  # b has it cooling
        b._went_offline(ConnectionError("cut off for the test"))
        b.pool.refused(TOKENS[1])  # judged on b alone meanwhile
        a.reset()
        await asyncio.sleep(0.1)
        for _ in range(int(5 / 0.05)):  # b's keeper comes back within a second
            if b.online:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        records = redis_server.client().hgetall(a.keys.health)
        a.stop(), b.stop()
        return {k: float(v.split()[0]) for k, v in records.items()}

    cooling_until = run(main)
    assert cooling_until[token_key(TOKENS[0])] == 0  # the reset holds
    assert cooling_until[token_key(TOKENS[1])] > 0  # b's own refusal got there
