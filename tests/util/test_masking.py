"""addon/util/masking.py: how a secret shows in logs, comments and error bodies: at most its last four
characters, and none of a value shorter than twelve (the last four of eight would be half of it)."""

import pytest

from addon.util.masking import mask

VALUE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"  # every character a different one


@pytest.mark.parametrize("length", [8, 9, 10, 11])
def test_a_value_of_8_to_11_characters_shows_none_of_itself(length):
    value = VALUE[:length]
    assert mask(value) == "…"
    assert not set(mask(value)) & set(value)


@pytest.mark.parametrize("length", [0, 1, 4, 7])
def test_a_shorter_value_shows_none_of_itself(length):
    assert mask(VALUE[:length]) == "…"


@pytest.mark.parametrize("length", [12, 13, 20, len(VALUE)])
def test_from_twelve_characters_on_the_last_four_show(length):
    value = VALUE[:length]
    assert mask(value) == "…" + value[-4:]


@pytest.mark.parametrize("length", range(len(VALUE) + 1))
def test_never_more_than_the_last_four_characters(length):
    value = VALUE[:length]
    shown = mask(value)
    assert shown.startswith("…")
    assert len(shown) <= 5 and value.endswith(shown[1:])
    assert len(shown) == 1 or len(value) >= 3 * (len(shown) - 1)  # at most a third of it
