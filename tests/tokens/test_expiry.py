"""addon/tokens/expiry.py: a token's expiry read from the token itself."""

import base64
import json

import pytest

from addon.tokens.expiry import expires_at, might_expire
from helpers import b64, jwt, session


@pytest.mark.parametrize(
    "token, expected",
    [
        # a JWT's exp
        (jwt({"sub": "u1", "exp": 1_800_000_000}), 1_800_000_000.0),
        (jwt({"sub": "u1", "exp": 1_800_000_000.5}), 1_800_000_000.5),
        # a Supabase-style session cookie value: expires_at first, else the access token's exp
        (session({"access_token": jwt({"exp": 1_700_000_000}), "expires_at": 1_700_000_100}), 1_700_000_100.0),
        (session({"access_token": jwt({"exp": 1_700_000_000}), "refresh_token": "r"}), 1_700_000_000.0),
        # no expiry: none is guessed
        (jwt({"sub": "u1"}), None),
        (jwt({"exp": "tomorrow"}), None),
        (jwt({"exp": True}), None),
        (session({"access_token": "opaque"}), None),
        ("base64-not base64 at all!", None),
        ("base64-" + base64.b64encode(b"[1, 2]").decode(), None),
        ("eyJhbGciOi.not-json.x", None),
        ("sk-live-0000000000000000", None),
        ("tok-alpha-000000001111", None),
    ],
    ids=["jwt", "jwt-fraction", "session-expires_at", "session-access_token", "jwt-no-exp", "exp-text", "exp-bool",
         "session-opaque", "session-garbage", "session-not-object", "jwt-garbage", "api-key", "plain"],
)  # fmt: skip
def test_expires_at(token, expected):
    assert expires_at(token) == expected
    if expected is not None:
        assert might_expire(token)


def test_might_expire_is_false_for_plain_tokens():
    assert not might_expire("tok-alpha-000000001111") and not might_expire("sk-a.b.c")
