import pytest

from addon.rules.template import DEFAULT_NAMES, parse_template


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


def test_named_values_are_placeholders_when_the_file_declares_them():
    names = frozenset({"token", "captcha", "cf_clearance"})
    template = parse_template("{cf_clearance}-{token}", {}, names)
    assert template.uses == {"cf_clearance", "token"} and template.render({"cf_clearance": "C", "token": "T"}) == "C-T"
    with pytest.raises(ValueError, match=r"^unknown placeholder \{cf_clearance\} \(expected \{token\}, \{captcha\} or \{env:NAME\}\)$"):
        parse_template("{cf_clearance}", {})  # not declared


def test_a_body_string_may_have_line_breaks():
    assert parse_template("a\nb {env:NL}", {"NL": "x\ny"}, line_breaks=True).render({}) == "a\nb x\ny"


def test_a_token_placeholder_names_its_pool_and_renders_as_the_token():
    pools = ("arena", "openai")
    t = parse_template("Bearer {token:openai}", names=DEFAULT_NAMES, pools=pools)
    assert (t.uses, t.pool, t.render({"token": "sk-1"})) == ({"token"}, "openai", "Bearer sk-1")
    assert parse_template("{token}", names=DEFAULT_NAMES, pools=("arena",)).pool == "arena"  # the only pool
    assert parse_template("{token}").pool is None  # a `tokens:` of one pool
    assert parse_template("{captcha}", pools=pools).pool is None
    with pytest.raises(ValueError, match=r"unknown placeholder \{tokn\} \(expected \{token:arena\}, \{token:openai\}, "):
        parse_template("{tokn}", pools=pools)
