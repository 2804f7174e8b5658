import json
import sys

import pytest

from addon.tokens.health import Health, health_from_state
from addon.tokens.pool import TokenPool
from addon.tokens.tokenfile import TokenList, token_key
from addon.util.masking import mask


def test_round_robin_cycles():
    pool = TokenPool(["a", "b", "c"])
    assert [pool.draw() for _ in range(5)] == ["a", "b", "c", "a", "b"]


def test_sticky_keeps_one():
    pool = TokenPool(["a", "b"], "sticky")
    assert [pool.draw() for _ in range(3)] == ["a", "a", "a"]


def test_no_tokens():
    assert TokenPool([]).draw() is None


def test_rotation_follows_values_when_the_file_is_edited():
    pool = TokenPool(["a", "b", "c"])
    assert pool.draw() == "a"
    assert pool.draw() == "b"
    pool.replace(["new", "c", "b", "a"])  # reordered, one added: the next after b is a
    assert pool.draw() == "a"
    pool.replace(["x", "y"])  # the last token is gone: start again at the top
    assert pool.draw() == "x"


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_refused_token_cools_down_and_comes_back(clock):
    pool = TokenPool(["a", "b", "c"], "sticky", cooldown=300, clock=clock)
    assert pool.draw() == "a"
    assert pool.refused("a") is True
    assert pool.draw() == "b"  # sticky moves on
    assert [s for s, _ in pool.status()] == ["cooling", "active", "active"]
    clock.now += 301  # usable again, but not active until it works
    assert [s for s, _ in pool.status()] == ["on trial", "active", "active"]
    pool.succeeded("a", clock.now)
    assert [s for s, _ in pool.status()] == ["active", "active", "active"]


def test_retry_after_longer_than_cooldown_wins(clock):
    pool = TokenPool(["a"], cooldown=10, clock=clock)
    pool.refused("a", retry_after=100)
    assert pool.health[token_key("a")].cooling_until == clock.now + 100
    pool2 = TokenPool(["a"], cooldown=10, clock=clock)
    pool2.refused("a", retry_after=5)
    assert pool2.health[token_key("a")].cooling_until == clock.now + 10


def test_a_token_already_cooling_is_marked_once(clock):
    pool = TokenPool(["a", "b"], cooldown=300, clock=clock)
    assert pool.refused("a") is True
    until = pool.health[token_key("a")].cooling_until
    clock.now += 5
    assert pool.refused("a") is False  # a request sent before the mark: changes nothing
    assert pool.health[token_key("a")].cooling_until == until
    assert pool.health[token_key("a")].refusals == 2


def test_replacement_does_not_move_the_rotation(clock):
    pool = TokenPool(["a", "b", "c", "d"], clock=clock)
    assert pool.draw() == "a"
    pool.refused("a")
    # many requests refused with "a" all move to "b"
    assert {pool.replacement("a", exclude={"a"}) for _ in range(10)} == {"b"}
    assert pool.draw() == "b"  # the rotation goes on where it was


def test_sticky_stays_on_the_replacement_when_the_cooldown_ends(clock):
    pool = TokenPool(["a", "b", "c"], "sticky", cooldown=300, clock=clock)
    assert pool.draw() == "a"
    pool.refused("a")
    assert pool.replacement("a", exclude={"a"}) == "b"
    clock.now += 301  # a is active again
    assert [pool.draw() for _ in range(3)] == ["b", "b", "b"]


def test_replacement_skips_tokens_already_tried(clock):
    pool = TokenPool(["a", "b", "c"], clock=clock)
    assert pool.replacement("a", exclude={"a", "b"}) == "c"
    assert pool.replacement("a", exclude={"a", "b", "c"}) is None


def test_has_replacement_says_whether_there_is_one_and_changes_nothing(clock):
    pool = TokenPool(["a", "b", "c"], strategy="sticky", clock=clock)
    assert pool.draw() == "a"
    pool.set_disabled("c", True)
    assert pool.has_replacement("a", exclude={"a"}) is True
    assert pool.draw() == "a"  # still on "a": asking moved nothing (`replacement` moves sticky on)
    assert pool.has_replacement("a", exclude={"a", "b"}) is False  # c is disabled
    pool.refused("b")
    assert pool.has_replacement("a", exclude={"a"}) is True  # a cooling token is a last resort, still one


def test_cooling_tokens_are_used_only_when_no_active_one_is_left_soonest_first(clock):
    pool = TokenPool(["a", "b", "c"], cooldown=100, clock=clock)
    pool.refused("b")
    clock.now += 50
    pool.refused("a")
    assert pool.draw() == "c"
    pool.refused("c")
    assert pool.draw() == "b"  # all cooling: b is ready first
    assert pool.replacement("c", exclude={"c", "b"}) == "a"


def test_success_makes_a_cooling_token_active(clock):
    pool = TokenPool(["a"], clock=clock)
    pool.refused("a")
    pool.succeeded("a", sent_at=clock.now + 1)
    assert pool.status()[0][0] == "active" and pool.status()[0][1].successes == 1


def test_success_of_a_request_sent_before_the_refusal_keeps_the_cooldown(clock):
    pool = TokenPool(["a"], clock=clock)
    sent_at = clock.now  # a long stream starts with "a"
    clock.now += 10
    pool.refused("a", retry_after=3600)
    clock.now += 10
    pool.succeeded("a", sent_at)  # ... and finishes after "a" was refused
    assert pool.status()[0][0] == "cooling" and pool.status()[0][1].successes == 1


def test_restore_puts_cooldowns_back(clock):
    pool = TokenPool(["a", "b"], clock=clock)
    before = Health("…").undo_point
    pool.refused("a")
    pool.restore({token_key("a"): before, "unknown-key": before})
    assert [s for s, _ in pool.status()] == ["active", "active"]
    assert pool.health[token_key("a")].refusals == 1  # counted, not blamed


# retirement: refused `retire_after` times in a row (each one after a cooldown)

def refused_after_cooldowns(pool, clock, token, times):
    for _ in range(times):
        pool.refused(token)
        clock.now += pool.cooldown + 1


def test_a_token_refused_retire_after_times_in_a_row_is_retired_for_good(clock):
    pool = TokenPool(["a", "b"], cooldown=10, clock=clock, retire_after=3)
    refused_after_cooldowns(pool, clock, "a", 2)
    assert pool.status()[0][0] == "on trial"
    pool.refused("a")
    state, health = pool.status()[0]
    assert (state, health.retired_reason, health.retired_at > 0) == ("retired", "refused 3 time(s) in a row", True)
    clock.now += 10_000
    assert {pool.draw() for _ in range(4)} == {"b"}
    assert pool.replacement("b", exclude=()) is None  # not even when no other token is left
    pool.set_disabled("a", False)  # tokens.enable brings it back, its count started again
    assert pool.status()[0][0] == "active" and pool.health[token_key("a")].in_a_row == 0


def test_a_success_starts_the_count_again_and_refusals_while_cooling_do_not_count(clock):
    pool = TokenPool(["a"], cooldown=10, clock=clock, retire_after=3)
    refused_after_cooldowns(pool, clock, "a", 2)
    pool.succeeded("a", clock.now)
    pool.refused("a")
    pool.refused("a")  # in flight before it was marked: counted as a refusal, not in the row
    pool.refused("a")
    clock.now += 11
    refused_after_cooldowns(pool, clock, "a", 1)
    assert pool.status()[0][0] == "on trial" and pool.health[token_key("a")].in_a_row == 2


@pytest.mark.parametrize("retire_after", [0, 1])
def test_retire_after_zero_is_never_and_one_is_the_first_refusal(clock, retire_after):
    pool = TokenPool(["a"], cooldown=10, clock=clock, retire_after=retire_after)
    refused_after_cooldowns(pool, clock, "a", 1 if retire_after else 20)
    assert pool.status()[0][0] == ("retired" if retire_after else "on trial")


def test_a_disable_rule_retires_at_once_even_a_cooling_token(clock):
    pool = TokenPool(["a", "b"], cooldown=10, clock=clock, retire_after=3)
    pool.refused("a")
    assert pool.refused("a", retire=True) is False  # cooling already: not marked again, but retired
    health = pool.health[token_key("a")]
    assert (pool.status()[0][0], health.retired_reason) == ("retired", "an on_response rule with action disable")


def test_retirement_is_kept_in_the_state_and_old_entries_load(clock):
    pool = TokenPool(["a", "b"], cooldown=10, clock=clock, retire_after=1)
    pool.refused("a")
    pool.refused("b")
    clock.now += 11
    fresh = TokenPool(["a", "b"], clock=clock)
    fresh.load_state(pool.to_state())
    assert [s for s, _ in fresh.status()] == ["retired", "retired"]
    old = {"k": {"suffix": "…1111", "cooling_until": 5.0, "refused_at": 1.0, "disabled": False, "successes": 2, "refusals": 1}}
    assert health_from_state(old)["k"] == Health("…1111", 5.0, 1.0, False, 2, 1)  # written before retirement


def test_status_tells_the_states_apart(clock):
    pool = TokenPool(["a", "b", "c", "d", "e"], cooldown=10, clock=clock, retire_after=1)
    pool.retire_after = 2
    refused_after_cooldowns(pool, clock, "b", 1)  # on trial
    pool.refused("a")  # cooling
    pool.refused("c", retire=True)
    pool.set_disabled("d", True)
    assert [s for s, _ in pool.status()] == ["cooling", "on trial", "retired", "disabled", "active"]


def test_disabled_tokens_are_never_drawn(clock):
    pool = TokenPool(["tok-aaaa-00001111", "tok-bbbb-00002222"], clock=clock)
    assert [h.suffix for h in pool.set_disabled("…1111", True)] == ["…1111"]
    assert {pool.draw() for _ in range(4)} == {"tok-bbbb-00002222"}
    pool.set_disabled("2222", True)
    assert pool.draw() is None
    pool.set_disabled("1111", False)
    assert pool.draw() == "tok-aaaa-00001111"
    assert pool.set_disabled("9999", True) == []


def test_reset_clears_cooldowns_not_disables(clock):
    pool = TokenPool(["tok-a-000000001", "tok-b-000000002"], clock=clock)
    pool.refused("tok-a-000000001")
    pool.set_disabled("0002", True)
    pool.reset()
    assert [s for s, _ in pool.status()] == ["active", "disabled"]


def test_health_is_kept_by_hash_across_edits_and_state(clock):
    a, b = "tok-secret-aaaaaaaa-1111", "tok-secret-bbbbbbbb-2222"
    pool = TokenPool([a, b], clock=clock)
    pool.refused(b)
    state = pool.to_state()
    assert "secret" not in json.dumps(state)  # keys are hashes, values masked
    assert set(state) == {token_key(b)}  # only tokens something happened to have a record
    assert state[token_key(b)]["suffix"] == "…2222"
    fresh = TokenPool(clock=clock)
    fresh.load_state(state)
    fresh.replace(["tok-new-000000000000", b, a])  # reordered, one added
    assert [s for s, _ in fresh.status()] == ["active", "cooling", "active"]


def test_malformed_state_entries_are_skipped(clock, caplog):
    pool = TokenPool(clock=clock)
    pool.load_state({"k1": {"suffix": "…", "cooling_until": "soon"}, "k2": "x"})
    assert pool.health == {}
    assert caplog.text.count("skipped a malformed entry") == 2


def test_every_change_is_announced(clock):
    changes = []
    pool = TokenPool(["tok-aaaaaaaa-1111"], clock=clock)
    pool.on_change = lambda counts_only=False: changes.append(1)
    pool.refused("tok-aaaaaaaa-1111")
    pool.succeeded("tok-aaaaaaaa-1111", clock.now)
    pool.set_disabled("1111", True)
    pool.reset()
    pool.restore({})
    assert len(changes) == 5


# sizes: a draw looks at a bitmap and a heap, not at every token

def test_many_cooling_tokens_round_robin_skips_them(clock):
    tokens = [f"tok-{i:06d}-xxxxxxxx" for i in range(10_000)]
    pool = TokenPool(tokens, cooldown=100, clock=clock)
    for t in tokens[1:9_999]:
        pool.refused(t)
    assert [pool.draw() for _ in range(4)] == [tokens[0], tokens[9_999], tokens[0], tokens[9_999]]
    assert pool.replacement(tokens[0], exclude={tokens[9_999]}) == tokens[1]  # none active: soonest ready
    clock.now += 101  # every cooldown over
    assert [pool.draw() for _ in range(3)] == tokens[:3]  # the rotation goes on from 9,999


def test_a_cooling_token_comes_back_at_its_place_in_the_rotation(clock):
    pool = TokenPool(["a", "b", "c"], cooldown=10, clock=clock)
    pool.refused("b")
    assert [pool.draw() for _ in range(3)] == ["a", "c", "a"]
    clock.now += 11
    assert [pool.draw() for _ in range(3)] == ["b", "c", "a"]


def test_a_new_list_keeps_cooldowns_and_disables_by_value(clock):
    pool = TokenPool(["tok-a-00000001", "tok-b-00000002", "tok-c-00000003"], cooldown=100, clock=clock)
    pool.refused("tok-b-00000002")
    pool.set_disabled("0003", True)
    pool.replace(TokenList.of(["tok-c-00000003", "tok-d-00000004", "tok-b-00000002"]))
    assert [s for s, _ in pool.status()] == ["disabled", "active", "cooling"]
    assert {pool.draw() for _ in range(3)} == {"tok-d-00000004"}


def test_only_what_changed_is_handed_to_the_writer(clock):
    pool = TokenPool([f"tok-{i:04d}-yyyyyyyy" for i in range(1000)], clock=clock)
    pool.refused("tok-0007-yyyyyyyy")
    pool.succeeded("tok-0008-yyyyyyyy", clock.now)
    assert set(pool.take_changes()) == {token_key("tok-0007-yyyyyyyy"), token_key("tok-0008-yyyyyyyy")}
    assert pool.take_changes() == {}
    pool.forget([token_key("tok-0007-yyyyyyyy")])  # still in the file: kept
    assert token_key("tok-0007-yyyyyyyy") in pool.health
    pool.replace(["tok-0008-yyyyyyyy"])
    pool.forget([token_key("tok-0007-yyyyyyyy")])
    assert set(pool.health) == {token_key("tok-0008-yyyyyyyy")}


def python_lines(fn, *args):
    """How many lines of Python run while `fn` does (a loop over the tokens would run one per token):
    a measure of work that is not a time."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += event == "line"
        return trace

    sys.settrace(trace)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return count, result


BIG = [f"tok-{i:06d}-wwwwwwww" for i in range(100_000)]


@pytest.fixture(scope="module")
def big_list():
    return TokenList.of(BIG)  # hashed once, as the loader does off the event loop


def test_a_draw_costs_the_same_however_many_tokens_cool(big_list, clock):
    pool = TokenPool(big_list, cooldown=100, clock=clock)
    for t in BIG[:99_990]:
        pool.refused(t)
    lines, token = python_lines(pool.draw)
    assert token == BIG[99_990] and lines < 100
    for t in BIG[99_990:]:
        pool.refused(t)
    lines, token = python_lines(pool.draw)  # every token cooling: the soonest ready one
    assert token == BIG[0] and lines < 100
    lines, token = python_lines(pool.replacement, BIG[0], {BIG[0]})
    assert token == BIG[1] and lines < 100


def test_a_new_list_and_a_save_cost_what_changed_not_all_tokens(big_list, clock):
    pool = TokenPool(clock=clock)
    lines, _ = python_lines(pool.replace, big_list)
    assert lines < 100
    for t in BIG[:3]:
        pool.refused(t)
    lines, changes = python_lines(pool.take_changes)
    assert len(changes) == 3 and lines < 100
    lines, _ = python_lines(pool.replace, TokenList.of(BIG[:2]))  # 99,998 tokens leave: nothing per token now
    assert lines < 200


# expiry: a token that says when it expires (see test_expiry.py) is not drawn after that, less the margin

def test_an_expired_token_is_passed_over_and_status_says_when(clock, caplog):
    from test_expiry import jwt

    soon, later = jwt({"exp": clock.now + 100}), jwt({"exp": clock.now + 10_000})
    pool = TokenPool([soon, "plain-token-0001", later], clock=clock, expiry_margin=60)
    assert [pool.draw() for _ in range(3)] == [soon, "plain-token-0001", later]
    clock.now += 41  # 59 s before it expires: within the margin
    with caplog.at_level("INFO"):
        assert [pool.draw() for _ in range(4)] == ["plain-token-0001", later] * 2
        assert pool.replacement(later, exclude={"plain-token-0001"}) is None  # never, not even as a last resort
    state, health = pool.status()[0]
    assert (state, health.expires_at) == ("expired", clock.now + 59)
    assert caplog.text.count(f"tokens: {mask(soon)} expired (") == 1 and soon not in caplog.text
    clock.now += 10_000
    assert pool.draw() == "plain-token-0001" and [s for s, _ in pool.status()] == ["expired", "active", "expired"]


def test_an_expired_and_cooling_token_is_not_the_last_resort(clock):
    from test_expiry import jwt

    token = jwt({"exp": clock.now + 100})
    pool = TokenPool([token], clock=clock, cooldown=300, expiry_margin=0)
    pool.refused(token)
    assert pool.draw() == token  # cooling, the only one: still the last resort
    clock.now += 101
    assert pool.draw() is None
