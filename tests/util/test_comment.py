"""The flow comment's items: one to a line, and still a list when mitmweb runs the lines together."""

from mitmproxy.test import tflow

from addon.util.comment import add_note, join


def test_items_after_the_heading_are_bulleted():
    text = join(["rules: a, b (streaming request)", "User-Agent ← a", "cookie session ← b (token …0001)"])
    assert text == "rules: a, b (streaming request)\n· User-Agent ← a\n· cookie session ← b (token …0001)"
    # as mitmweb shows it: its line breaks render as spaces
    assert " ".join(text.splitlines()) == "rules: a, b (streaming request) · User-Agent ← a · cookie session ← b (token …0001)"


def test_a_note_is_appended_as_one_more_item_or_becomes_the_comment():
    f = tflow.tflow()
    add_note(f, "attempts: 403 with …0001 → 200 with …0002")
    assert f.comment == "attempts: 403 with …0001 → 200 with …0002"
    add_note(f, "streamed body: 20 bytes, the first 10 kept")
    assert f.comment == "attempts: 403 with …0001 → 200 with …0002\n· streamed body: 20 bytes, the first 10 kept"
