"""addon/tokens/redisbound.py: no Redis reply over the bound is read; with a fake Redis speaking RESP on a
loopback socket (answers announcing more than they send), and with a real redis-server holding a
hostile record (the shared store's clients, storeconnection.py, and storerecords.parse_record)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from addon.tokens import storeconnection, storerecords
from addon.tokens.redisbound import MAX_REPLY, BoundedParser, ReplyTooLarge
from addon.tokens.shared import SharedStore
from addon.tokens.storerecords import parse_record
from addon.tokens.tokenfile import token_key
from test_shared import TOKENS, started, store

SENT_AT_MOST = 64 * 2**20  # what the fake Redis sends after its header, then it stalls (a real attack goes on)


class FakeRedis:
    """Answers every connection's first command with `header`, then sends `body` in 1 MiB pieces, up
    to SENT_AT_MOST bytes, as fast as the client takes them; counts what went out."""

    def __init__(self, header: bytes, body: bytes) -> None:
        self.header, self.body, self.sent, self.connections = header, body, 0, 0

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.read(65536)  # the command
            writer.write(self.header)
            piece = self.body * (2**20 // len(self.body))
            while self.sent < SENT_AT_MOST:
                writer.write(piece)
                await writer.drain()
                self.sent += len(piece)
            await asyncio.sleep(30)  # then nothing: a client still waiting for the rest waits for ever
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def client(url: str, timeout: float = 5.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, retry=Retry(NoBackoff(), 0), parser_class=BoundedParser)


@pytest.mark.parametrize(
    "header, body, announced",
    [
        (b"$2000000000\r\n", b"x", "2000000000 bytes"),  # a bulk string of 2 GB
        (b"*2000000000\r\n", b":1\r\n", "2000000000 elements"),  # an array of two billion integers
        (b"%2000000000\r\n", b":1\r\n", "2000000000 elements"),  # a RESP3 map
        (b"*2\r\n$3\r\nabc\r\n$2000000000\r\n", b"x", "2000000000 bytes"),  # inside an array
    ],
    ids=["bulk", "array", "map", "nested"],
)
def test_a_reply_announcing_more_than_the_bound_fails_before_it_is_read(header, body, announced):
    async def main():
        async with FakeRedis(header, body) as fake:
            r = client(fake.url)
            with pytest.raises(ReplyTooLarge, match=f"announced a reply of {announced}, over the bound of 16 MiB"):
                await r.get("k")
            await r.aclose()
            await asyncio.sleep(0.1)
            return fake.sent

    sent = asyncio.run(main())
    assert sent < SENT_AT_MOST  # the client closed the connection: the fake could not send it all


def test_many_small_elements_are_bounded_by_bytes():
    """An array of many elements, each under the bound, stops once the reply has passed the bound in
    all (counted in bytes read), not when the fake stops sending."""

    class Small(BoundedParser):
        max_reply = 2**20

    async def main():
        async with FakeRedis(b"*500000\r\n", b"$3\r\nabc\r\n") as fake:  # 4.5 MB in all, 500,000 elements
            r = Redis.from_url(fake.url, socket_timeout=5, retry=Retry(NoBackoff(), 0), parser_class=Small)
            with pytest.raises(ReplyTooLarge, match="a reply of more than 1 MiB"):
                await r.lrange("k", 0, -1)
            await r.aclose()

    asyncio.run(main())


def test_a_line_over_the_stream_limit_is_a_failure_redis_py_knows():
    async def main():
        async with FakeRedis(b"+", b"y") as fake:  # a simple string that never ends
            r = client(fake.url)
            with pytest.raises(ReplyTooLarge, match="reply line longer than the stream's limit"):
                await r.get("k")
            await r.aclose()

    asyncio.run(main())


def test_replies_within_the_bound_read_as_before(redis_server):
    async def main():
        r = Redis.from_url(redis_server.url, decode_responses=True, parser_class=BoundedParser)
        big = "v" * (MAX_REPLY - 100)
        await r.set("big", big)
        await r.rpush("list", *range(1000))
        await r.hset("h", mapping={"a": "1", "b": "2"})
        got = await r.get("big"), await r.lrange("list", 0, -1), await r.hgetall("h")
        r3 = Redis.from_url(redis_server.url, decode_responses=True, parser_class=BoundedParser, protocol=3)
        got3 = await r3.hgetall("h")
        too_big = Redis.from_url(redis_server.url, parser_class=BoundedParser)
        await too_big.set("bigger", b"w" * (MAX_REPLY + 1))
        with pytest.raises(ReplyTooLarge):
            await too_big.get("bigger")
        for c in (r, r3, too_big):
            await c.aclose()
        return big, got, got3

    big, (value, items, mapping), mapping3 = asyncio.run(main())
    assert value == big and items == [str(n) for n in range(1000)] and mapping == mapping3 == {"a": "1", "b": "2"}


# the shared store


def test_a_hostile_redis_turns_sharing_off_with_one_alert(caplog):
    caplog.set_level(logging.INFO)

    async def main():
        async with FakeRedis(b"$2000000000\r\n", b"x") as fake:
            s = store(fake.url)
            s.start()
            await asyncio.sleep(storeconnection.KEEP_EVERY * 2.5)  # the keeper tries again, twice
            online = s.online
            s.stop()
            await asyncio.sleep(0.05)
            return online, fake

    online, fake = asyncio.run(main())
    assert not online and fake.connections >= 2
    assert fake.sent < SENT_AT_MOST
    assert caplog.text.count("cannot be reached") == 1
    assert "announced a reply of 2000000000 bytes, over the bound of 16 MiB" in caplog.text
    assert "Traceback" not in caplog.text and "keeper failed" not in caplog.text


def test_a_record_too_large_in_a_real_redis_turns_sharing_off(redis_server, caplog):
    caplog.set_level(logging.INFO)
    r = redis_server.client()
    r.hset("mitm-rules:{default}:health", token_key(TOKENS[0]), "0 " * (MAX_REPLY // 2 + 10))

    async def main():
        s = store(redis_server.url)
        s.start()
        await asyncio.sleep(storeconnection.KEEP_EVERY * 1.5)
        online = s.online
        s.stop()
        await asyncio.sleep(0.05)
        return online

    assert asyncio.run(main()) is False
    assert caplog.text.count("cannot be reached") == 1 and "over the bound of 16 MiB" in caplog.text


@pytest.mark.parametrize(
    "record",
    ["1e400 0 0 0 0", "nan 0 0 0 0", "0 0 0 -1 0", "-5 0 0 0 0", "0 0 0 1e400 0", "0 0 7 0 0", "0 0 0 0", "a b c d e"],
    ids=["infinite-time", "nan-time", "negative-count", "negative-time", "infinite-count", "disabled-7", "four", "words"],
)
def test_parse_record_ignores_records_that_are_not_sane_numbers(record, caplog, monkeypatch):
    monkeypatch.setattr(storerecords, "_warned", set())
    assert parse_record(record) is None
    assert parse_record(record) is None
    assert caplog.text.count("a token health record in Redis is ignored") == 1


def test_parse_record_reads_a_good_one():
    assert parse_record("1765000000.5 1764999000.25 1 3 2") == (1765000000.5, 1764999000.25, True, 3, 2, 0, 0.0, 0)
    assert parse_record("0.0 0.0 0 0 0") == (0.0, 0.0, False, 0, 0, 0, 0.0, 0)
    assert parse_record("0.0 0.0 0 4 1 1 1765000000.5 2") == (0.0, 0.0, False, 4, 1, 1, 1765000000.5, 2)  # retirement


def test_a_hostile_record_in_a_real_redis_is_ignored_with_one_warning(redis_server, caplog, monkeypatch):
    """`"successes": 1e400` in Redis gave a traceback every second and sharing never resumed."""
    monkeypatch.setattr(storerecords, "_warned", set())
    caplog.set_level(logging.INFO)
    r = redis_server.client()
    health = "mitm-rules:{default}:health"
    r.hset(health, token_key(TOKENS[0]), "0 0 0 1e400 0")
    r.hset(health, token_key(TOKENS[1]), "nan 0 0 0 0")

    async def main():
        a, b = store(redis_server.url), store(redis_server.url)
        await started(a, b)
        await asyncio.sleep(storeconnection.KEEP_EVERY * 2.5)  # the keeper's turns: reading the stream, idle
        online = a.online
        r.xadd("mitm-rules:{default}:events", {"h": token_key(TOKENS[2]), "r": "1 2 3"})  # through the stream too
        b.pool.refused(TOKENS[3])  # and a good one from another proxy is still shared
        b.refused(TOKENS[3], None)
        await asyncio.sleep(storeconnection.KEEP_EVERY * 1.5)
        cooling = a.pool.health.get(token_key(TOKENS[3]))
        a.stop(), b.stop()
        await asyncio.sleep(0.05)
        return online, cooling, a

    online, cooling, a = asyncio.run(main())
    assert online and cooling is not None and cooling.cooling_until > 0
    assert not {token_key(t) for t in TOKENS[:3]} & set(a.pool.health)
    assert "Traceback" not in caplog.text and "keeper failed" not in caplog.text
    # one per kind of fault (out of range: both stores, both records; not five numbers: the stream's)
    assert caplog.text.count("a token health record in Redis is ignored") == 2
    assert caplog.text.count("cannot be reached") == 0


def test_the_shared_store_uses_the_bounded_parser():
    s = store("redis://127.0.0.1:1/0")
    for c in (s._fast, s._slow, s._follow):
        assert c.connection_pool.connection_kwargs["parser_class"] is BoundedParser
    assert isinstance(s, SharedStore)
