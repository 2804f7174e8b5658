import pytest

from addon.tokens import TokenPool, TokensFileError, read_tokens


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
