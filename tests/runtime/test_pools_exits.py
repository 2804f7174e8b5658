"""A pool whose tokens leave through exits: draws pass over tokens whose exit cannot take them, and a
refusal through an exit is judged by that exit's breaker, not the pool's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from addon.exits.health import ExitHealth
from addon.rules.records import BreakerSpec, ExitSpec, StoreSpec, TokensSpec
from addon.runtime.pools import SKIPPED_AT_MOST, Pool
from addon.tokens.tokenfile import TokenList, token_key
from helpers import TOKENS

EXIT = ExitSpec(name="a", scheme="http", host="127.0.0.1", port=3128, shown="http://127.0.0.1:3128", cooldown=120)
MANY = [f"tok-many-{i:08d}" for i in range(100)]


def make_pool(tokens: list[str], store: StoreSpec | None = None) -> Pool:
    pool = Pool()
    spec = TokensSpec(file=Path("tokens.txt"), breaker=BreakerSpec(tokens=3), exits=("a",), store=store)
    pool.use(spec, TokenList.of(tokens), None, labelled=False)
    return pool


def test_draw_passes_over_tokens_usable_refuses():
    pool = make_pool(TOKENS)
    drawn = [pool.draw(lambda t: t != TOKENS[0]) for _ in range(6)]
    assert set(drawn) == {TOKENS[1], TOKENS[2]}


@pytest.mark.parametrize("tokens", [TOKENS, MANY], ids=["3 tokens", "100 tokens"])
def test_draw_gives_up_when_usable_refuses_every_token(tokens):
    pool = make_pool(tokens)
    asked: list[str] = []
    assert pool.draw(lambda t: asked.append(t) or False) is None
    assert len(asked) == len(set(asked)) == min(len(tokens), SKIPPED_AT_MOST)  # each once, and a bounded number


def test_replacement_is_a_usable_token_not_tried_and_is_added_to_tried():
    pool = make_pool([*TOKENS, "tok-delta-0000004444"])
    tried = {TOKENS[0]}
    assert pool.replacement(TOKENS[0], tried, lambda t: t != TOKENS[1]) == TOKENS[2]
    assert tried == {TOKENS[0], TOKENS[2]}
    assert pool.replacement(TOKENS[0], tried, lambda t: False) is None
    assert tried == {TOKENS[0], TOKENS[2]}


def test_refusals_through_an_exit_rest_the_exit_not_the_pool():
    pool = make_pool(TOKENS)
    exit = ExitHealth(EXIT)
    pool.refused(TOKENS[0], 403, None, exit=exit)
    assert pool.tokens.health[token_key(TOKENS[0])].cooling_until > 0  # blamed, for now
    pool.refused(TOKENS[1], 403, None, exit=exit)
    pool.refused(TOKENS[2], 403, None, exit=exit)
    assert exit.resting and exit.refusals == 3
    assert not pool.breaker.is_open
    # the refusals that made the exit rest blame no token
    assert [pool.tokens.health[token_key(t)].cooling_until for t in TOKENS] == [0, 0, 0]


def test_refusals_without_an_exit_open_the_pools_breaker():
    pool = make_pool(TOKENS)
    for token in TOKENS:
        pool.refused(token, 403, None)
    assert pool.breaker.is_open


def test_refusals_that_rest_an_exit_blame_no_token_on_a_shared_store(redis_server):
    async def main() -> list[bool]:
        pool = make_pool(TOKENS, StoreSpec(redis_server.url, redis_server.url))
        for _ in range(1000):  # connected (in the background)
            if pool.shared.online:
                break
            await asyncio.sleep(0.01)
        assert pool.shared.online
        exit = ExitHealth(EXIT)
        for token in TOKENS:  # one request after the other, each answered by Redis
            pool.refused(token, 403, None, exit=exit)
            await pool.shared.settled()
        pool.stop()
        return [pool.tokens.health[token_key(t)].cooling_until > 0 for t in TOKENS]

    assert asyncio.run(main()) == [False, False, False]
