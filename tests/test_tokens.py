import json

import pytest

from addon.tokens import TokenPool, TokensFileError, read_tokens, token_key


def test_read_tokens_skips_blanks_comments_bom_and_repeats(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_bytes(b"\xef\xbb\xbf# comment\r\ntok-a\r\n\r\n   \r\n  tok-b  \r\ntok-a\n#tok-c\n")
    assert read_tokens(path) == ("tok-a", "tok-b")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "{p}: tokens file not found"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "{p}: the tokens file is not UTF-8 text (byte 0)"),
        (lambda p: p.mkdir(), "{p}: cannot read the tokens file: Is a directory"),
    ],
)
def test_read_tokens_errors(tmp_path, setup, message):
    path = tmp_path / "tokens.txt"
    setup(path)
    with pytest.raises(TokensFileError) as e:
        read_tokens(path)
    assert str(e.value) == message.format(p=path)


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
    clock.now += 301
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
    pool.refused("a")
    pool.restore({token_key("a"): 0.0, "unknown-key": 5.0})
    assert [s for s, _ in pool.status()] == ["active", "active"]


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
    assert set(state) == {token_key(a), token_key(b)}
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
    pool.on_change = lambda: changes.append(1)
    pool.refused("tok-aaaaaaaa-1111")
    pool.succeeded("tok-aaaaaaaa-1111", clock.now)
    pool.set_disabled("1111", True)
    pool.reset()
    pool.restore({})
    assert len(changes) == 5
