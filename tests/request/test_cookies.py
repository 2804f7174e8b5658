import pytest

from addon.request.cookies import edit_cookie_headers


@pytest.mark.parametrize(
    "values, edits, out",
    [
        # set one cookie; every other byte stays
        (["a=1; session=old;b=2 ;  c=3"], {"session": "new"}, ["a=1; session=new;b=2 ;  c=3"]),
        # remove one cookie, first, middle or last
        (["tracking=x; a=1"], {"tracking": None}, ["a=1"]),
        (["a=1; tracking=x; b=2"], {"tracking": None}, ["a=1; b=2"]),
        (["a=1; tracking=x"], {"tracking": None}, ["a=1"]),
        # a header left empty is dropped
        (["tracking=x"], {"tracking": None}, []),
        # absent cookies are added to the last header, or make one
        (["a=1"], {"s": "v"}, ["a=1; s=v"]),
        ([], {"s": "v"}, ["s=v"]),
        ([], {"gone": None}, []),
        # several Cookie headers (HTTP/2 splits them): each edited in place
        (["a=1", "s=old", "b=2"], {"s": "new"}, ["a=1", "s=new", "b=2"]),
        # a repeated name: the first is set, repeats removed
        (["s=1; a=1; s=2"], {"s": "v"}, ["s=v; a=1"]),
        # odd pairs without '=' and empty pairs are kept as they were
        (["flag; a=1;; s=1"], {"s": "2"}, ["flag; a=1;; s=2"]),
    ],
)
def test_edit(values, edits, out):
    assert edit_cookie_headers(values, edits) == out
