"""Sessions kept alive (addon/tokens/sessions.py): a Set-Cookie for the {token} cookie renews the account."""

import asyncio
import json
import logging
import stat

import pytest
from mitmproxy.test import taddons, tflow

from addon.pipeline import Pipeline
from addon.rules.config import RulesError, load_config
from addon.tokens.pool import TokenPool
from addon.tokens.sessions import Sessions, cookie_value, sealer
from addon.tokens.tokenfile import token_key
from helpers import TOKENS, write_rules
from helpers import jwt

RULES = """\
rules:
  - match: {{host: a.com}}
    cookies: {{session: "{{token}}", theme: "dark-{{token}}"}}
tokens: {{file: tokens.txt, strategy: sticky{more}}}
on_response:
  - match: {{status: 403}}
    action: rotate
"""
NEW = "sess-renewed-value-0000abcd"
NEWER = "sess-renewed-value-1111wxyz"


# what a Set-Cookie sets for the cookie `session`
@pytest.mark.parametrize(
    "header, expected",
    [
        # taken
        (f"session={NEW}; Path=/; HttpOnly; Secure", NEW),
        (f"session = {NEW}", NEW),
        (f'session="{NEW}"', f'"{NEW}"'),
        (f"session={NEW}; Max-Age=3600; Expires=Wed, 01 Jan 2200 00:00:00 GMT", NEW),
        # for another cookie
        (f"theme={NEW}", None),
        (f"sessionx={NEW}", None),
        ("session", None),
        # for this cookie, but nothing to take: not a cookie value, or a deletion
        ("session=", ""),
        ('session=""', ""),
        ("session=two words", ""),
        ("session=a,b", ""),
        ('session=a"b', ""),
        ("session=caf\u00e9", ""),
        ("session=a\\b", ""),
        (f"session={NEW}; Max-Age=0", ""),
        (f"session={NEW}; Max-Age=-1", ""),
        (f"session={NEW}; Expires=Thu, 01 Jan 1970 00:00:00 GMT", ""),
    ],
)
def test_cookie_value(header, expected):
    assert cookie_value(header, "session") == expected


@pytest.fixture
def proxy(tmp_path):
    """A Pipeline on a rules file (`more`: further tokens: keys), and one request's round trip."""
    pipelines = []

    def start(more=""):
        pipeline = Pipeline()
        ctx = taddons.context(pipeline)
        tctx = ctx.__enter__()
        pipelines.append(ctx)
        tctx.configure(pipeline, rules=str(write_rules(tmp_path, RULES.format(more=more))))
        return pipeline

    yield start
    for ctx in pipelines:
        ctx.__exit__(None, None, None)


def exchange(pipeline, *set_cookies, status=200):
    """One request through the pipeline, answered with these Set-Cookie headers; the flow."""
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.path = "a.com", 443, "/v1/chat"
    asyncio.run(pipeline.request(f))
    f.response = tflow.tresp(status_code=status, content=b"{}")
    for value in set_cookies:
        f.response.headers.add("set-cookie", value)
    pipeline.responseheaders(f)
    asyncio.run(pipeline.response(f))
    return f


def test_a_set_cookie_for_the_token_cookie_renews_the_account_and_is_not_passed_on(proxy, tmp_path):
    pipeline = proxy()
    f = exchange(pipeline, f"session={NEW}; Path=/; HttpOnly", "tracking=t1; Path=/", f"theme={NEWER}")
    assert f.request.cookies["session"] == TOKENS[0]
    # the client gets the others: `theme` held more than the token, so it is not the account's value
    assert f.response.headers.get_all("set-cookie") == ["tracking=t1; Path=/", f"theme={NEWER}"]
    f = exchange(pipeline)
    # {token} is the account's current value wherever it goes
    assert f.request.cookies["session"] == NEW and f.request.cookies["theme"] == f"dark-{NEW}"
    # health stays the account's: keyed by the token of the file
    assert pipeline.runtime.pool.tokens.health[token_key(TOKENS[0])].successes == 2
    assert token_key(NEW) not in pipeline.runtime.pool.tokens.health
    kept = tmp_path / "tokens.sessions.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text()) == {"version": 1, "sessions": {token_key(TOKENS[0]): NEW}}
    pipeline.runtime.pool.saver.done()  # the state file written now
    assert NEW[-12:] not in (tmp_path / "tokens.state.json").read_text()


def test_a_request_sent_with_a_renewed_value_is_judged_as_the_account(proxy):
    pipeline = proxy()
    exchange(pipeline, f"session={NEW}")
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.path = "a.com", 443, "/v1/chat"
    asyncio.run(pipeline.request(f))
    assert f.request.cookies["session"] == NEW
    sent = pipeline.rewriter.sent[f]
    assert sent.values["token"] == TOKENS[0]  # what the recovery blames, rotates from and excludes: the account
    pipeline.runtime.pool.refused(sent.values["token"], 403, None)
    health = pipeline.runtime.pool.tokens.health[token_key(TOKENS[0])]
    assert health.refusals == 1 and health.suffix == "…" + TOKENS[0][-4:]


def test_renewed_values_survive_a_restart(proxy):
    exchange(proxy(), f"session={NEW}")
    f = exchange(proxy())  # another proxy process on the same files
    assert f.request.cookies["session"] == NEW


def test_a_corrupt_renewed_values_file_means_a_start_from_the_tokens_file(proxy, tmp_path, caplog):
    (tmp_path / "tokens.sessions.json").write_text('{"version": 1, "sessions": {')
    with caplog.at_level(logging.WARNING):
        f = exchange(proxy())
    assert f.request.cookies["session"] == TOKENS[0]
    assert f"cannot use the renewed session values in {tmp_path / 'tokens.sessions.json'}" in caplog.text


@pytest.mark.parametrize("content", ['{"version": 1, "sessions": {"k": "two words"}}', '{"version": 2}', "[]"])
def test_a_renewed_values_file_that_does_not_hold_cookie_values_is_not_used(proxy, tmp_path, caplog, content):
    (tmp_path / "tokens.sessions.json").write_text(content)
    with caplog.at_level(logging.WARNING):
        assert exchange(proxy()).request.cookies["session"] == TOKENS[0]
    assert "every account starts with its value in the tokens file" in caplog.text


def test_an_invalid_value_is_not_taken_nor_passed_on(proxy, caplog):
    pipeline = proxy()
    with caplog.at_level(logging.WARNING):
        f = exchange(pipeline, "session=two words")
    assert f.response.headers.get_all("set-cookie") == []
    assert exchange(pipeline).request.cookies["session"] == TOKENS[0]
    assert "not a valid cookie value" in caplog.text and "two words" not in caplog.text


def test_follow_set_cookie_false_passes_it_on_and_keeps_the_value(proxy):
    exchange(proxy(), f"session={NEWER}")  # renewed while it was on
    pipeline = proxy(", follow_set_cookie: false")
    f = exchange(pipeline, f"session={NEW}")
    assert f.response.headers.get_all("set-cookie") == [f"session={NEW}"]
    assert exchange(pipeline).request.cookies["session"] == TOKENS[0]


def test_the_log_shows_at_most_the_last_four_characters(proxy, caplog):
    with caplog.at_level(logging.DEBUG):
        exchange(proxy(), f"session={NEW}")
    assert f"tokens: …{TOKENS[0][-4:]}: session renewed by the upstream's Set-Cookie (now …{NEW[-4:]})" in caplog.text
    assert NEW not in caplog.text and TOKENS[0] not in caplog.text


# shared: sealed with the key, opened by a proxy with the same key


def test_a_renewed_value_goes_to_the_store_sealed_and_another_proxy_takes_it(caplog):
    published = []
    here, there, elsewhere = (Sessions(TokenPool(TOKENS)) for _ in range(3))
    here.use(None, True, "a-session-key-of-some-length")
    there.use(None, True, "a-session-key-of-some-length")
    elsewhere.use(None, True, "another-key-of-some-length!!")
    here.publish = lambda key, sealed: published.append((key, sealed))
    here.take(token_key(TOKENS[1]), NEW)
    [(key, sealed)] = published
    assert key == token_key(TOKENS[1]) and NEW not in sealed and NEW[-4:] not in sealed
    there.from_store(key, sealed)
    assert there.applied({"token": TOKENS[1]}) == {"token": NEW}
    with caplog.at_level(logging.WARNING):
        elsewhere.from_store(key, sealed)
        elsewhere.from_store(key, sealed)
    assert elsewhere.applied({"token": TOKENS[1]}) == {"token": TOKENS[1]}
    assert caplog.text.count("cannot be opened with this proxy's tokens.session_key") == 1


def test_without_a_key_renewed_values_stay_here_and_the_log_says_so_once(caplog):
    published = []
    here = Sessions(TokenPool(TOKENS))
    here.use(None, True, None)
    here.publish = lambda key, sealed: published.append((key, sealed))
    with caplog.at_level(logging.WARNING):
        here.take(token_key(TOKENS[0]), NEW)
        here.take(token_key(TOKENS[1]), NEWER)
    assert published == []
    assert caplog.text.count("renewed session values stay on this proxy") == 1


def test_a_sealed_value_is_not_readable_without_the_key():
    sealed = sealer("a-session-key-of-some-length").encrypt(NEW.encode())
    assert NEW.encode() not in sealed and sealer("a-session-key-of-some-length").decrypt(sealed) == NEW.encode()


# expiry follows the renewed value


def test_an_expired_session_renewed_with_a_later_expiry_is_sent_again():
    old, renewed = jwt({"exp": 1_000_000_000}), jwt({"exp": 2_000_000_000})
    pool = TokenPool([old], clock=lambda: 1_500_000_000)
    assert pool.draw() is None  # expired
    pool.renewed(token_key(old), renewed)
    assert pool.draw() == old  # the account, sent as its renewed value
    pool.renewed(token_key(old), jwt({"exp": 1_200_000_000}))
    assert pool.draw() is None


def test_a_session_renewed_before_it_expires_is_not_expired_at_its_old_time():
    now = [1_500_000_000.0]
    old = jwt({"exp": 1_600_000_000})
    pool = TokenPool([old], clock=lambda: now[0], expiry_margin=0)
    assert pool.draw() == old
    pool.renewed(token_key(old), jwt({"exp": 1_800_000_000}))
    now[0] = 1_700_000_000.0  # past the old value's expiry, not the renewed one's
    assert pool.draw() == old and [state for state, _ in pool.status()] == ["active"]


# the key comes from the environment, and is long enough


@pytest.mark.parametrize(
    "value, environ, message",
    [
        ('"a-literal-session-key-here"', {}, "session_key must come from the environment: write {env:NAME}"),
        ('"{env:SESSION_KEY}"', {}, "environment variable SESSION_KEY (used as session_key) is not set"),
        ('"{env:SESSION_KEY}"', {"SESSION_KEY": "short"}, "has 5 characters; it needs at least 16"),
    ],
)
def test_session_key_errors(tmp_path, value, environ, message):
    rules = write_rules(tmp_path, RULES.format(more=f", session_key: {value}"))
    with pytest.raises(RulesError, match="tokens.session_key") as e:
        load_config(rules, environ)
    assert message in str(e.value)


def test_session_key_from_the_environment(tmp_path):
    rules = write_rules(tmp_path, RULES.format(more=', session_key: "{env:SESSION_KEY}"'))
    config = load_config(rules, {"SESSION_KEY": "k" * 16})
    assert config.tokens.session_key == "k" * 16 and "k" * 16 not in repr(config.tokens)
    assert config.tokens.sessions_file == tmp_path / "tokens.sessions.json"
