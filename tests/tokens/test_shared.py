"""addon/tokens/shared.py against a real redis-server: two stores in one process stand for two proxies."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from addon.rules.config import load_config
from addon.rules.records import BreakerSpec, StoreSpec, ValueSpec
from addon.runtime.sources import ValueSource
from addon.tokens import storeconnection
from addon.tokens.breaker import Breaker, refuse_here
from addon.tokens.pool import TokenPool
from addon.tokens.shared import SharedStore
from addon.tokens.storevalues import OP_TIMEOUT
from addon.tokens.tokenfile import token_key
from latency_relay import LatencyRelay
from redisserver import RedisServer

TOKENS = [f"tok-shared-{n}-{word}" for n, word in enumerate(["alpha-0001", "bravo-0002", "charlie-03", "delta-0004"])]


def store(url: str, namespace: str = "default", strategy: str = "round_robin", breaker: BreakerSpec = BreakerSpec(),
          tokens=TOKENS) -> SharedStore:  # fmt: skip
    pool = TokenPool(tokens, strategy, cooldown=300)
    return SharedStore(StoreSpec(url, url, namespace), pool, Breaker(breaker))


async def started(*stores: SharedStore) -> None:
    for s in stores:
        s.start()
    await eventually(lambda: all(s.online for s in stores), "connected")


def run(main):
    return asyncio.run(main())


def refuse(s: SharedStore, token: str, retire: bool = False) -> bool:
    """A refusal as the recovery judges it (addon/recovery/retry.py `Retrier.refused`): here at once, then in Redis."""
    marked = refuse_here(s.pool, s.breaker, token, None, retire)
    s.refused(token, None, retire)
    return marked


async def eventually(ready, what: str, timeout: float = 10.0) -> None:
    """Wait until `ready()`: what another proxy does reaches this one in the background."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not ready():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


def cooling(s: SharedStore, token: str) -> bool:
    health = s.pool.health.get(token_key(token))
    return health is not None and health.state(s.clock()) == "cooling"


def test_a_refusal_on_one_reaches_the_other_in_the_background(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        assert refuse(a, TOKENS[0]) is True
        assert refuse(a, TOKENS[0]) is False  # cooling already: marked once, counted twice
        await eventually(lambda: b.pool.health.get(token_key(TOKENS[0])) is not None
                         and b.pool.health[token_key(TOKENS[0])].refusals == 2, "both refusals on b")  # fmt: skip
        drawn = [b.draw() for _ in range(6)]
        health = b.pool.health[token_key(TOKENS[0])]
        trips = a.round_trips + b.round_trips
        a.stop(), b.stop()
        return drawn, health, trips

    drawn, health, trips = run(main)
    assert TOKENS[0] not in drawn
    assert health.state(health.cooling_until - 1) == "cooling" and health.refusals == 2
    assert trips == 0  # no draw and no refusal waited for Redis


def test_round_robin_takes_places_of_one_rotation(redis_server):
    """Each draw takes a place of the shared rotation fetched ahead: draws that alternate between
    proxies, one at a time, walk one rotation; together the proxies use every token equally."""

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        drawn = []
        for i in range(8):
            s = (a, b)[i % 2]
            await eventually(lambda: bool(s._places), "a place fetched ahead")
            drawn.append(s.draw())
        rr = int(redis_server.client().get(a.keys.rr))
        a.stop(), b.stop()
        return drawn, rr

    drawn, rr = run(main)
    assert sorted(drawn) == sorted(TOKENS * 2)
    assert set(drawn[:4]) == set(drawn[4:]) == set(TOKENS)  # one rotation, not one for each proxy
    assert rr >= 8


def test_a_burst_of_draws_waits_for_nothing(redis_server):
    async def main():
        a = store(redis_server.url)
        await started(a)
        drawn = [a.draw() for _ in range(40)]  # no await between them: not one waits for Redis
        await a.settled()
        asked = int(redis_server.client().get(a.keys.rr))
        a.stop()
        return drawn, a.round_trips, asked

    drawn, trips, asked = run(main)
    assert sorted(drawn) == sorted(TOKENS * 10)  # the rotation goes on here when no place has come
    assert trips == 0
    assert 2 <= asked <= 41  # the places drawn meanwhile are asked for in one round trip


def test_namespaces_keep_pools_apart(redis_server):
    async def main():
        a, b = store(redis_server.url, "one"), store(redis_server.url, "two")
        c = store(redis_server.url, "two")
        await started(a, b, c)
        refuse(a, TOKENS[0])
        refuse(c, TOKENS[1])  # after a's: once b has c's refusal, it would have had a's
        await eventually(lambda: cooling(b, TOKENS[1]), "c's refusal on b")
        seen = cooling(b, TOKENS[0])
        a.stop(), b.stop(), c.stop()
        return seen

    assert run(main) is False


def test_the_breaker_opened_by_one_holds_on_the_other_and_undoes_the_cooldowns(redis_server, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        spec = BreakerSpec(tokens=2, window=60, pause=300)
        a, b = store(redis_server.url, breaker=spec), store(redis_server.url, breaker=spec)
        await started(a, b)
        refuse(a, TOKENS[0])
        await a.settled()
        refuse(b, TOKENS[1])  # the second different token, through the other proxy: Redis opens it
        await b.settled()
        opened_here = b.breaker.is_open
        await eventually(lambda: a.breaker.is_open, "the breaker open on a")
        await eventually(lambda: not cooling(a, TOKENS[0]) and not cooling(a, TOKENS[1]), "the cooldowns undone on a")
        # b undoes a's refusal when the stream brings Redis's undo of it (its own, with the script's answer)
        await eventually(lambda: not cooling(b, TOKENS[0]), "a's refusal undone on b")
        states = [b.pool.health[token_key(t)].state(b.clock()) for t in TOKENS[:2]]
        a.stop(), b.stop()
        return opened_here, states

    opened_here, states = run(main)
    assert opened_here
    assert states == ["active", "active"]  # the breaker's refusals are not the tokens' fault
    assert caplog.text.count("another proxy on the shared store opened the breaker") == 1  # on a, not on b
    assert "2 different tokens were refused within 60 s" in caplog.text  # on b, which opened it


def test_a_success_ends_a_cooldown_only_when_sent_after_the_refusal(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        refuse(a, TOKENS[0])
        await a.settled()
        await eventually(lambda: cooling(b, TOKENS[0]), "the refusal on b")
        refused_at = a.pool.health[token_key(TOKENS[0])].refused_at
        a.succeeded(TOKENS[0], sent_at=refused_at - 1)  # a long request sent before the refusal
        counted = lambda n: (redis_server.client().hget(a.keys.health, token_key(TOKENS[0])) or "0 0 0 0 0").split()[3] == n  # noqa: E731
        await eventually(lambda: counted("1"), "the first success in Redis")
        still = cooling(b, TOKENS[0])
        a.succeeded(TOKENS[0], sent_at=refused_at + 1)
        await eventually(lambda: not cooling(b, TOKENS[0]), "the cooldown ended on b")
        await eventually(lambda: counted("2"), "both successes in Redis")
        a.stop(), b.stop()
        return still

    assert run(main) is True


def test_disable_and_reset_by_hand_hold_everywhere(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        disabled = lambda: (h := b.pool.health.get(token_key(TOKENS[1]))) is not None and h.disabled  # noqa: E731
        a.set_disabled(TOKENS[1][-6:], True)
        refuse(a, TOKENS[2])
        await eventually(lambda: disabled() and cooling(b, TOKENS[2]), "the disable and the refusal on b")
        first = [b.draw() for _ in range(8)]
        a.reset()
        await eventually(lambda: not cooling(b, TOKENS[2]), "the reset on b")
        after = [b.draw() for _ in range(8)]
        a.set_disabled(TOKENS[1][-6:], False)
        await eventually(lambda: not disabled(), "the enable on b")
        enabled = [b.draw() for _ in range(8)]
        a.stop(), b.stop()
        return first, after, enabled

    first, after, enabled = run(main)
    assert TOKENS[1] not in first and TOKENS[2] not in first
    assert TOKENS[1] not in after and TOKENS[2] in after  # reset ends cooldowns, not a disable
    assert TOKENS[1] in enabled


def test_a_retirement_holds_everywhere_until_an_enable(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        refuse(a, TOKENS[0], retire=True)  # an on_response rule with action disable
        await eventually(lambda: b.pool.status()[0][0] == "retired", "retired on b")
        retired = [b.draw() for _ in range(6)], b.pool.status()[0][0]
        a.set_disabled(TOKENS[0][-6:], False)  # tokens.enable
        await eventually(lambda: b.pool.status()[0][0] != "retired", "enabled on b")
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
        refuse(a, TOKENS[1])
        await a.settled()
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
        await eventually(lambda: not a.online and not b.online, "both proxies on their own")
        drawn = [a.draw() for _ in range(5)]  # on its own: every draw still gets a token
        refuse(a, TOKENS[3])  # judged here only
        redis_server.start()  # empty: nothing persisted
        await eventually(lambda: a.online and b.online, "both back")
        await eventually(lambda: cooling(b, TOKENS[3]), "a's refusal on b")
        seen = [b.draw() for _ in range(8)]
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
            refuse(a, t)
            a.succeeded(t, 0)
        a.set_disabled(TOKENS[3][-5:], True)
        a.draw()
        await a.settled()
        await eventually(lambda: not a._successes, "the successes sent")
        await a.settled()
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
        await a.settled(), await b.settled()  # the value kept in Redis, the lock let go
        stale = got[0]
        fresh = await asyncio.gather(sources[0].fresh(stale), sources[1].fresh(stale))  # both refused with it
        a.stop(), b.stop()
        return got, fresh

    got, fresh = run(main)
    assert set(got) == {"cap-1-minted"}
    assert fresh == ["cap-2-minted", "cap-2-minted"]  # one run for both refusals of the same value
    assert (tmp_path / "runs.txt").read_text().count("run") == 2


def test_an_idle_proxy_follows_the_stream(redis_server):
    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        refuse(a, TOKENS[0])
        await eventually(lambda: cooling(b, TOKENS[0]), "the refusal on b, which draws nothing")
        health = b.pool.health.get(token_key(TOKENS[0]))
        a.stop(), b.stop()
        return health

    assert run(main).refusals == 1


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
            refuse(a, TOKENS[0])
            await eventually(lambda: cooling(b, TOKENS[0]), "b has the refusal")
            drawn = [b.draw() for _ in range(4)]
            wrong.start()
            await asyncio.sleep(0.5)
            alone = wrong.online, wrong.draw()
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


def test_a_hung_redis_keeps_no_request_waiting(redis_server, caplog, monkeypatch):
    """Redis that stops answering: no draw waits at all, a command value's look waits OP_TIMEOUT at
    most and does not turn sharing off; the follower, which gets no answer, does, with one alert."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(storeconnection, "SLOW_TIMEOUT", 1.0)  # how long the follower waits before it gives up

    async def main():
        a = store(redis_server.url)
        await started(a)
        redis_server.pause()
        try:
            drawn = [a.draw() for _ in range(20)]
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            claim = await a.claim("captcha", None, 1)
            waited = loop.time() - started_at
            still = a.online
            await eventually(lambda: not a.online, "the follower notices")
        finally:
            redis_server.resume()
        a.stop()
        return drawn, a.round_trips, claim, waited, still

    drawn, trips, claim, waited, still = run(main)
    assert all(drawn)
    assert trips == 1 and claim is None  # only the claim waited, and it gave up: the command runs here
    assert waited < OP_TIMEOUT + 5  # bounded (the bound itself is OP_TIMEOUT; the margin is for a busy machine)
    assert still  # a late look alone is not an outage
    assert caplog.text.count("cannot be reached") == 1 and "Timeout" in caplog.text


def test_coming_back_does_not_undo_what_the_others_changed(redis_server):
    """A proxy cut off from Redis sends back only what changed on it meanwhile: a reset made by
    another proxy in the meantime stays (Redis was not empty)."""

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        refuse(a, TOKENS[0])
        await eventually(lambda: cooling(b, TOKENS[0]), "b has it cooling")
        b._went_offline(ConnectionError("cut off for the test"))
        b.pool.refused(TOKENS[1])  # judged on b alone meanwhile
        a.reset()
        await a.settled()
        await eventually(lambda: b.online, "b back")
        await b.settled()
        records = redis_server.client().hgetall(a.keys.health)
        a.stop(), b.stop()
        return {k: float(v.split()[0]) for k, v in records.items()}

    cooling_until = run(main)
    assert cooling_until[token_key(TOKENS[0])] == 0  # the reset holds
    assert cooling_until[token_key(TOKENS[1])] > 0  # b's own refusal got there


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_store_50_ms_away_is_shared_without_waiting(tmp_path, caplog, tls):
    """Redis behind a relay that holds every byte 50 ms each way: no request waits for it, a
    refusal on one proxy reaches the other, and sharing stays on (no alert)."""
    caplog.set_level(logging.INFO)
    server = RedisServer(tmp_path, password="pw-far-away-3" if tls else None, tls=tls).start()
    relay = LatencyRelay(server.port, 0.05).start()
    url = server.url.replace(f":{server.port}/", f":{relay.port}/")

    async def main():
        a, b = store(url), store(url)
        await started(a, b)
        drawn = [b.draw() for _ in range(8)]
        refuse(a, TOKENS[0])
        await eventually(lambda: cooling(b, TOKENS[0]), "the refusal on b")
        for _ in range(3):  # a while of traffic: draws, refusals and successes, through the slow store
            for t in TOKENS[1:]:
                b.succeeded(b.draw() or t, time.time())
            await asyncio.sleep(0.4)
        after = [b.draw() for _ in range(6)]
        online = a.online and b.online
        trips = a.round_trips + b.round_trips
        a.stop(), b.stop()
        return drawn, after, online, trips

    try:
        drawn, after, online, trips = run(main)
    finally:
        relay.stop()
        server.kill()
    assert all(drawn) and TOKENS[0] not in after
    assert online and trips == 0
    assert "cannot be reached" not in caplog.text


def test_a_malformed_stream_entry_does_not_stop_the_follower(redis_server, caplog):
    """A breaker entry that is not a number, a token entry without its record: one warning, and what
    comes after them still reaches the proxy."""
    caplog.set_level(logging.INFO)

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        r = redis_server.client()
        r.xadd(a.keys.events, {"b": "not-a-number"})
        r.xadd(a.keys.events, {"h": token_key(TOKENS[1])})
        refuse(a, TOKENS[0])
        await eventually(lambda: cooling(b, TOKENS[0]), "a's refusal on b, after the bad entries")
        online = b.online
        a.stop(), b.stop()
        return online

    assert run(main)
    assert "follower failed" not in caplog.text and "cannot be reached" not in caplog.text
    assert "a time is not a sane number" in caplog.text


def test_a_late_look_for_a_value_lets_go_of_the_lock_it_took(redis_server):
    """Redis 50 ms away: the look for a command value is late (the command runs on this proxy), but
    Redis ran it and took the value's lock for this proxy: the lock is let go at once, so that the
    other proxies do not wait for a value that this one will not publish."""
    relay = LatencyRelay(redis_server.port, 0.05).start()

    async def main():
        far, near = store(f"redis://127.0.0.1:{relay.port}/0"), store(redis_server.url)
        await started(far, near)
        got = await far.claim("captcha", None, 30)
        await asyncio.sleep(0.3)  # the claim reached Redis (50 ms), and so did what followed it
        await far.settled()
        after = await near.claim("captcha", None, 30)
        far.stop(), near.stop()
        return got, after

    try:
        got, after = run(main)
    finally:
        relay.stop()
    assert got is None  # late: the command runs on the far proxy
    assert after[0] == "run"  # not "wait" (for the far proxy's lock, which would last 30 s)


# renewed session values (addon/tokens/sessions.py): sealed on the store


def with_sessions(url: str, key: str | None = "a-session-key-for-the-tests") -> SharedStore:
    from addon.tokens.sessions import Sessions

    s = store(url)
    sessions = Sessions(s.pool)
    sessions.use(None, True, key)
    s.sessions = sessions
    sessions.publish = s.publish_session
    return s


RENEWED = ["sess-renewed-first-0001aaaa", "sess-renewed-second-0002bbbb"]


async def renewed_on_a_then_on_b(url: str, value: str) -> tuple[SharedStore, SharedStore]:
    """Two started stores with sessions; the account of TOKENS[1] renewed on a, and the value seen on b."""
    a, b = with_sessions(url), with_sessions(url)
    await started(a, b)
    a.sessions.take(token_key(TOKENS[1]), value)
    await eventually(lambda: b.sessions.applied({"token": TOKENS[1]})["token"] == value, f"{value[-4:]} on b")
    return a, b


def test_a_renewed_session_reaches_the_other_sealed(redis_server):
    async def main():
        a, b = await renewed_on_a_then_on_b(redis_server.url, RENEWED[0])
        a.stop(), b.stop()

    run(main)
    everything = redis_server.everything()
    assert "mitm-rules:{default}:sessions" in everything
    for value in RENEWED:
        assert not [item for item in everything if value[-12:] in item]


def test_a_session_renewed_while_redis_is_down_reaches_the_other_when_it_is_back(redis_server):
    async def main():
        a, b = await renewed_on_a_then_on_b(redis_server.url, RENEWED[0])
        redis_server.kill()
        await eventually(lambda: not a.online and not b.online, "both proxies on their own")
        a.sessions.take(token_key(TOKENS[1]), RENEWED[1])
        redis_server.start()
        await eventually(lambda: a.online and b.online, "both back")
        await eventually(lambda: b.sessions.applied({"token": TOKENS[1]})["token"] == RENEWED[1], "the second on b")
        here = a.sessions.applied({"token": TOKENS[1]})["token"]
        a.stop(), b.stop()
        return here

    assert run(main) == RENEWED[1]  # not put back to the older value Redis held
