"""addon/tokens/tokenfile.py: the tokens file read."""

import pytest

from addon.tokens.tokenfile import TokensFileError, read_tokens


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


# issue 23, attack 9: lines end at \n or \r\n only; a line with another control character is skipped
@pytest.mark.parametrize(
    "separator",
    ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\x1b", "\x00", "\t"],
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_a_line_with_a_control_character_is_skipped_never_split(tmp_path, caplog, separator):
    path = tmp_path / "tokens.txt"
    path.write_text(f"tok-a\r\ntok-first-1111{separator}tok-second-2222\n\ttok-b  \n", encoding="utf-8", newline="")
    assert read_tokens(path) == ("tok-a", "tok-b")  # before: tok-first-1111 and tok-second-2222 were both used
    assert caplog.messages == [f"{path}:2: skipped: the line holds the control character U+{ord(separator):04X} "
                               "(a token is one line of printable text)"]  # fmt: skip
    assert "1111" not in caplog.text and "2222" not in caplog.text
