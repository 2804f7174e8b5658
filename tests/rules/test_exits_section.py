"""The `exits:` section and a pool's `exits:`: good files become ExitSpecs, bad ones one exact message
that never shows a password."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from addon.rules.config import load_config
from addon.rules.schema import RulesError
from helpers import write_rules

PASSWORD = "Zq9:exit/pw!#7"  # distinctive, and with characters a URL must percent-encode
ENVIRON = {"EXIT_PW": PASSWORD}

GOOD = """\
exits:
  - name: a
    url: http://exit%2Buser:{env:EXIT_PW}@127.0.0.1:3128
  - name: b
    url: https://10.0.0.2:8443
    cooldown: 60
rules:
  - match: {host: example.com}
    headers: {X-Token: "{token}"}
tokens:
  file: tokens.txt
  exits: all
  failover: true
"""
NO_EXITS = "rules:\n" + GOOD.split("rules:\n", 1)[1]  # the same file without its exits: section


def load(tmp_path, text: str):
    return load_config(write_rules(tmp_path, text), environ=ENVIRON)


def test_exits_become_specs(tmp_path):
    config = load(tmp_path, GOOD)
    assert list(config.exits) == ["a", "b"]
    a, b = config.exits.values()
    assert (a.scheme, a.host, a.port, a.cooldown) == ("http", "127.0.0.1", 3128, 300)
    assert (a.username, a.password) == ("exit+user", PASSWORD)  # percent-encoding decoded
    assert (b.scheme, b.host, b.port, b.cooldown, b.username, b.password) == ("https", "10.0.0.2", 8443, 60, "", "")
    assert a.shown == "http://exit%2Buser:****@127.0.0.1:3128"
    assert config.tokens.exits == ("a", "b") and config.tokens.failover is True


@pytest.mark.parametrize(
    "written, names",
    [("all", ("a", "b")), ("[b]", ("b",)), ("[b, a]", ("b", "a")), ("a", ("a",))],
    ids=["all", "list", "list in its order", "one name"],
)
def test_a_pools_exits(tmp_path, written, names):
    config = load(tmp_path, GOOD.replace("exits: all", f"exits: {written}"))
    assert config.tokens.exits == names


def test_without_exits(tmp_path):
    config = load(tmp_path, NO_EXITS.replace("  exits: all\n  failover: true\n", ""))
    assert config.exits == {} and config.tokens.exits == () and config.tokens.failover is False


def test_the_password_is_only_in_the_login(tmp_path):
    a, b = load(tmp_path, GOOD).exits.values()
    assert PASSWORD not in repr(a) and urllib.parse.quote(PASSWORD, safe="") not in repr(a)
    assert a.proxy_authorization == "Basic " + base64.b64encode(f"exit+user:{PASSWORD}".encode()).decode()
    assert b.proxy_authorization is None  # no login


ERRORS = [
    # the URL
    ("http://exit", "socks5://exit", 3, 10,
     "exits[0].url: an exit is an HTTP proxy: expected http://HOST:PORT or https://…, not socks5:// "
     "('socks5://exit%2Buser:****@127.0.0.1:3128')"),
    ("10.0.0.2:8443", "10.0.0.2", 5, 10,
     "exits[1].url: no port in 'https://10.0.0.2': proxies have no usual port; write it, like http://10.0.0.2:3128"),
    ("127.0.0.1:3128", "127.0.0.1:3128/proxy", 3, 10,
     "exits[0].url: an exit's URL is only scheme, login, host and port: "
     "'http://exit%2Buser:****@127.0.0.1:3128/proxy' has more"),
    ("{env:EXIT_PW}", "{env:EXIT_PW_UNSET}", 3, 10,
     "exits[0].url: environment variable EXIT_PW_UNSET (used as {env:EXIT_PW_UNSET}) is not set"),
    # names and addresses
    ("name: b", "name: 1b", 4, 11,
     "exits[1].name: bad exit name '1b': expected a letter or _, then letters, digits, _ or -, like eu-1 (up to 64)"),
    ("name: b", "name: all", 4, 11,
     "exits[1].name: 'all' is what a pool writes for every exit (exits: all); give this exit another name"),
    ("name: b", "name: a", 4, 5, "exits[1]: exit 'a' is named twice (item 1 too)"),
    ("https://10.0.0.2:8443", "http://127.0.0.1:3128", 4, 5,
     "exits[1]: exits a and b are one proxy (127.0.0.1:3128): give each exit its own address"),
    # a pool's exits
    ("exits: all", "exits: [a, bb]", 12, 14, "tokens.exits[1]: no exit named 'bb' (did you mean 'b'?)"),
]


@pytest.mark.parametrize("old, new, line, column, message", ERRORS,
                         ids=["socks5", "no port", "path", "unset env", "bad name", "all", "same name", "same address",
                              "unknown exit"])  # fmt: skip
def test_a_bad_exit_is_one_message_without_the_password(tmp_path, old, new, line, column, message):
    assert old in GOOD
    path = write_rules(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(RulesError) as e:
        load_config(path, environ=ENVIRON)
    assert str(e.value) == f"{path}:{line}:{column}: {message}"
    assert PASSWORD not in str(e.value) and urllib.parse.quote(PASSWORD, safe="") not in str(e.value)


@pytest.mark.parametrize(
    "text, line, column, message",
    [
        (NO_EXITS, 6, 10, "tokens.exits: this pool names exits but the file has no 'exits' section"),
        (NO_EXITS.replace("  exits: all\n", ""), 6, 13,
         "tokens.failover: failover is between exits: this pool has no 'exits'"),
    ],
    ids=["pool exits, no section", "failover without exits"],
)
def test_a_pool_needs_the_files_exits(tmp_path, text, line, column, message):
    path = write_rules(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_config(path, environ=ENVIRON)
    assert str(e.value) == f"{path}:{line}:{column}: {message}"


def test_a_url_without_a_scheme_is_shown_once_with_its_password_masked(tmp_path):
    path = write_rules(tmp_path, GOOD.replace("http://exit%2Buser:{env:EXIT_PW}@", "exit%2Buser:Zq9exitpw7@", 1))
    with pytest.raises(RulesError) as e:
        load_config(path, environ=ENVIRON)
    assert "Zq9exitpw7" not in str(e.value) and str(e.value).count("127.0.0.1:3128") == 1
    assert "('exit%2Buser:****@127.0.0.1:3128')" in str(e.value)


def test_a_literal_password_with_url_delimiters_is_read_whole_and_never_shown(tmp_path):
    path = write_rules(tmp_path, GOOD.replace("{env:EXIT_PW}", "Zq9exit/pw7?#"))
    config = load_config(path, environ=ENVIRON)
    exit = next(iter(config.exits.values()))
    assert exit.password == "Zq9exit/pw7?#" and "pw7" not in exit.shown and ":****@" in exit.shown
    bad = write_rules(tmp_path, GOOD.replace("{env:EXIT_PW}", "Zq9exit/pw7").replace(":3128", ":31x8", 1))
    with pytest.raises(RulesError) as e:
        load_config(bad, environ=ENVIRON)
    assert "pw7" not in str(e.value) and "bad port" in str(e.value)
