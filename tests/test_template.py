import pytest

from addon.template import parse_template


@pytest.mark.parametrize(
    "text, values, out",
    [
        ("plain", {}, "plain"),
        ("Bearer {token}", {"token": "T"}, "Bearer T"),
        ("{token}:{captcha}", {"token": "T", "captcha": "C"}, "T:C"),
        ("{{literal}} {token}", {"token": "T"}, "{literal} T"),
        ("a}}b{{c", {}, "a}b{c"),
        ("{env:K}-x", {}, "v-x"),
    ],
)
def test_render(text, values, out):
    assert parse_template(text, {"K": "v"}).render(values) == out


def test_uses_names_dynamic_placeholders_only():
    assert parse_template("{env:K} {token}", {"K": "v"}).uses == {"token"}
    assert parse_template("x", {}).uses == frozenset()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{tokens}", "unknown placeholder {tokens} (did you mean {token}?)"),
        ("{zzz}", "unknown placeholder {zzz} (expected {token}, {captcha} or {env:NAME})"),
        ("a}b", "unmatched '}' in 'a}b' (write }} for a literal brace)"),
        ("{env:}", "{env:} needs a variable name, like {env:API_KEY}"),
        ("{env:MISSING}", "environment variable MISSING (used as {env:MISSING}) is not set"),
        ("{env:NL}", "environment variable NL (used as {env:NL}) contains a line break"),
        ("a\nb", "a header or cookie value cannot contain a line break"),
    ],
)
def test_errors(text, message):
    with pytest.raises(ValueError) as e:
        parse_template(text, {"NL": "a\nb"})
    assert str(e.value) == message
