"""Loading the rules file: good files become records, bad ones one exact message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from addon.rules.config import load_config
from addon.rules.records import DEFAULT_ON_RESPONSE, BreakerSpec, TokensSpec
from addon.rules.schema import RulesError, RulesErrors
from helpers import ISSUE_16_RULES
from helpers import POOLS as SHARED_POOLS

GOOD = """\
rules:
  - name: ua
    match:
      host: [api.example.com, "*.example.org:8443"]
      path: /v1/*
      method: post
      stream: true
      filter: "~h X-Foo"
    headers:
      User-Agent: Mozilla/5.0
      X-Token: "Bearer {token}"
      X-Debug: null
    cookies:
      session: "{captcha}"
      tracking: null
stream:
  json_field: options.stream
tokens:
  file: tokens.txt
  strategy: sticky
captcha:
  file: captcha.txt
  ttl: 110
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tokens.txt").write_text("tok-aaaaaaaaaaaa\n")
    (tmp_path / "captcha.txt").write_text("cap-1\n")
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_becomes_records(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    (rule,) = config.rules
    assert rule.name == "ua"
    assert [h.text for h in rule.match.hosts] == ["api.example.com", "*.example.org:8443"]
    assert rule.match.hosts[1].port == 8443
    assert rule.match.methods == {"POST"}
    assert rule.match.stream is True
    assert [name for name, _ in rule.headers] == ["User-Agent", "X-Token", "X-Debug"]
    assert rule.headers[2][1] is None
    assert rule.uses == {"token", "captcha"}
    assert config.stream.json_field == ("options", "stream")
    assert config.tokens.file == tmp_path / "tokens.txt" and config.tokens.strategy == "sticky"
    captcha = config.values["captcha"]
    assert captcha.file == tmp_path / "captcha.txt" and captcha.ttl == 110 and captcha.cwd == tmp_path
    assert captcha.name == "captcha" and captcha.secret is True
    assert config.on_response == DEFAULT_ON_RESPONSE  # rotate on 403


def test_recovery_settings(tmp_path):
    text = R + textwrap.dedent("""\
        tokens:
          file: tokens.txt
          max_attempts: 5
          cooldown: 60
          state_file: health.json
          breaker: {tokens: 4, window: 30, pause: 120}
        on_response:
          - match: {status: 403, body: "(?i)captcha"}
            action: refresh_captcha
          - match: {status: [401, 403]}
            action: rotate
        """)
    config = load_config(write(tmp_path, text))
    assert config.tokens == TokensSpec(
        file=tmp_path / "tokens.txt", max_attempts=5, cooldown=60, state_file=tmp_path / "health.json",
        breaker=BreakerSpec(tokens=4, window=30, pause=120), sessions_file=tmp_path / "health.sessions.json",
    )  # fmt: skip
    first, second = config.on_response
    assert (first.statuses, first.body.pattern, first.action) == ({403}, "(?i)captcha", "refresh_captcha")
    assert (second.statuses, second.body, second.action) == ({401, 403}, None, "rotate")


def test_a_first_event_rule(tmp_path):
    text = R + "tokens: {file: tokens.txt}\n" + textwrap.dedent("""\
        on_response:
          - match: {status: 200, first_event: "(?m)^event: error$"}
            action: rotate
          - match: {status: 200, first_event: "^$"}
            action: rotate
        """)
    first, empty = load_config(write(tmp_path, text)).on_response
    assert (first.statuses, first.body, first.first_event.pattern, first.action) == ({200}, None, "(?m)^event: error$", "rotate")
    assert first.first_event.search("data: {}\nevent: error") and not first.first_event.search("event: errors")
    assert empty.first_event.search("") and not empty.first_event.search("data: {}")


def test_the_intended_file_of_issue_16(tmp_path):
    (tmp_path / "mint-recaptcha").write_text("#!/bin/sh\necho cap-x\n")
    (tmp_path / "cf_clearance.txt").write_text("cf-1\n")
    config = load_config(write(tmp_path, ISSUE_16_RULES))
    (rule,) = config.rules
    assert rule.uses == {"token", "captcha", "cf_clearance"}
    assert [(path, value.source) for path, value in rule.body] == [("recaptchaV3Token", "{captcha}")]
    captcha, clearance = config.values["captcha"], config.values["cf_clearance"]
    assert (captcha.command, captcha.ttl, captcha.secret) == (("./mint-recaptcha",), 110, True)
    assert (clearance.file, clearance.wait, clearance.ttl) == (tmp_path / "cf_clearance.txt", 30, 0)
    assert [(r.action, r.refreshes) for r in config.on_response] == [
        ("refresh", {"cf_clearance"}), ("refresh", {"captcha"}), ("rotate", frozenset())
    ]


def test_values_and_body_edits(tmp_path):
    text = R.replace("headers: {X: y}", "body: {a.b: 1, c: [x, {d: null}], e: '{k} {env:E}', f: null, g: 1.5, h: false}") + (
        "values:\n"
        "  k: {file: captcha.txt, wait: 2.5, ttl: 5}\n"
        "  shown: {env: E, secret: false}\n"
        "on_response:\n"
        "  - {match: {status: 403}, action: refresh}\n"
        "  - {match: {status: 401}, action: refresh_captcha}\n"
        "captcha: {env: E}\n"
    )
    config = load_config(write(tmp_path, text), environ={"E": "from-env"})
    body = dict(config.rules[0].body)
    assert [body[k].text for k in ("a.b", "c", "g", "h")] == ["1", '["x",{"d":null}]', "1.5", "false"]
    assert body["e"].render({"k": "K"}) == "K from-env" and body["f"] is None
    assert body["c"].value() is not body["c"].value()  # every use gets a list of its own
    assert config.values["k"].wait == 2.5 and config.values["shown"].secret is False
    assert config.public == {"shown"}
    # refresh without values: every value from a file or a command (not the environment)
    assert [r.refreshes for r in config.on_response] == [{"k"}, {"captcha"}]


def test_state_file_defaults_to_beside_the_tokens_file(tmp_path):
    config = load_config(write(tmp_path, R + "tokens: {file: tokens.txt}\n"))
    assert config.tokens.state_file == tmp_path / "tokens.state.json"


def test_a_shared_store(tmp_path):
    path = write(tmp_path, R + "tokens: {file: tokens.txt, store: 'rediss://:{env:PW}@redis.internal:6380/2', namespace: shop}\n")
    store = load_config(path, environ={"PW": "s3cret-pw"}).tokens.store
    assert store.url == "rediss://:s3cret-pw@redis.internal:6380/2"
    assert store.shown == "rediss://:****@redis.internal:6380/2" and store.namespace == "shop"
    assert load_config(write(tmp_path, R + TOK)).tokens.store is None
    path = write(tmp_path, R + "tokens: {file: tokens.txt, store: 'redis://u:{env:PW}@h:1/0?ssl_ca_certs=/ca.pem'}\n")
    store = load_config(path, environ={"PW": "p@ss/w#rd?"}).tokens.store
    assert store.url == "redis://u:p%40ss%2Fw%23rd%3F@h:1/0?ssl_ca_certs=/ca.pem"  # redis-py decodes it
    assert store.shown == "redis://u:****@h:1/0"


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: y}\n"))
    assert config.rules[0].name == "rules[0]"
    assert config.stream.json_field == ("stream",)
    assert config.tokens is None and config.values == {}


def test_paths_are_relative_to_the_rules_file(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, "rules:\n  - match: {host: a.com}\n    headers: {X: '{token}'}\ntokens: {file: tokens.txt}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("conf/rules.yaml")).tokens.file == sub / "tokens.txt"


def test_env_placeholder_is_resolved_at_load(tmp_path):
    path = write(tmp_path, "rules:\n  - match: {host: a.com}\n    headers: {X: 'k={env:MY_KEY} {{x}}'}\n")
    config = load_config(path, environ={"MY_KEY": "v1"})
    assert config.rules[0].headers[0][1].render({}) == "k=v1 {x}"


R = "rules:\n  - match: {host: a.com}\n    headers: {X: y}\n"
TOK = "tokens: {file: tokens.txt}\n"

BAD = [
    # the document itself
    ("", "1:1: the rules file is empty; it needs at least a 'rules:' list"),
    ("rules: [\n", "2:1: invalid YAML: expected the node content, but found '<stream end>'"),
    ("- a\n", "1:1: expected a mapping, got a list"),
    ("rule: []\n", "1:1: unknown key 'rule' (did you mean 'rules'?)"),
    ("rules: []\nrules: []\n", "2:1: duplicate key 'rules'"),
    ("stream: {}\n", "1:1: missing required key 'rules'"),
    # rules and their keys
    ("rules: {}\n", "1:8: rules: expected a list of a mapping (rule), got a mapping"),
    ("rules:\n  - match: {host: a.com}\n", "2:5: rules[0]: a rule needs 'headers', 'cookies' or 'body'"),
    ("rules:\n  - match: {host: a.com}\n    heders: {X: y}\n",
     "3:5: rules[0]: unknown key 'heders' (did you mean 'headers'?)"),
    ("rules:\n  - headers: {X: y}\n", "2:5: rules[0]: missing required key 'match'"),
    ("rules:\n  - match: {path: /x}\n    headers: {X: y}\n", "2:12: rules[0].match: missing required key 'host'"),
    ("rules:\n  - match: {host: a.com, hots: b}\n    headers: {X: y}\n",
     "2:26: rules[0].match: unknown key 'hots' (did you mean 'host'?)"),
    ("rules:\n  - match: {host: []}\n    headers: {X: y}\n",
     "2:19: rules[0].match.host: expected at least 1 item(s), got 0"),
    # globs, methods, filters
    ("rules:\n  - match: {host: 'https://a.com'}\n    headers: {X: y}\n",
     "2:19: rules[0].match.host: bad host 'https://a.com': give a host name or glob, without a scheme or path "
     "(path: goes in its own key)"),
    ("rules:\n  - match: {host: 'a.com:99999'}\n    headers: {X: y}\n",
     "2:19: rules[0].match.host: bad port in host 'a.com:99999': expected a number from 1 to 65535 or *"),
    ("rules:\n  - match: {host: 'a[b.com'}\n    headers: {X: y}\n",
     "2:19: rules[0].match.host: bad glob 'a[b.com': '[' is never closed"),
    ("rules:\n  - match: {host: a.com, path: v1/*}\n    headers: {X: y}\n",
     "2:32: rules[0].match.path: bad path 'v1/*': a path glob starts with '/' or '*'"),
    ("rules:\n  - match: {host: a.com, method: [GET, 'P OST']}\n    headers: {X: y}\n",
     "2:40: rules[0].match.method[1]: bad method 'P OST': expected a word such as GET or POST"),
    ("rules:\n  - match: {host: a.com, filter: '~h ('}\n    headers: {X: y}\n",
     "2:34: rules[0].match.filter: bad filter '~h (': Invalid filter expression: '~h ('"),
    ("rules:\n  - match: {host: a.com, stream: yes please}\n    headers: {X: y}\n",
     "2:34: rules[0].match.stream: expected true or false, got a string"),
    # headers, cookies and placeholders
    ("rules:\n  - match: {host: a.com}\n    headers: {X: [1]}\n",
     "3:18: rules[0].headers.X: expected a string or null, got a list"),
    ("rules:\n  - match: {host: a.com}\n    headers: {X: 1}\n",
     "3:18: rules[0].headers.X: expected a string or null, got a number (quote it to make it a string)"),
    ("rules:\n  - match: {host: a.com}\n    headers: {'Bad Name': y}\n",
     "3:15: rules[0].headers.Bad Name: bad header name 'Bad Name'"),
    ("rules:\n  - match: {host: a.com}\n    headers: {X: '{tokn}'}\n",
     "3:18: rules[0].headers.X: unknown placeholder {tokn} (did you mean {token}?)"),
    ("rules:\n  - match: {host: a.com}\n    headers: {X: 'a { b'}\n",
     "3:18: rules[0].headers.X: unmatched '{' in 'a { b' (write {{ for a literal brace)"),
    ("rules:\n  - match: {host: a.com}\n    headers: {X: '{env:NOPE_NOT_SET}'}\n",
     "3:18: rules[0].headers.X: environment variable NOPE_NOT_SET (used as {env:NOPE_NOT_SET}) is not set"),
    ("rules:\n  - match: {host: a.com}\n    cookies: {s: 'a;b'}\n",
     "3:18: rules[0].cookies.s: a cookie value cannot contain ';' or ',': 'a;b'"),
    # tokens must not leave for every host
    ("rules:\n  - match: {host: '*'}\n    headers: {X: '{token}'}\n" + TOK,
     "2:19: rules[0].match.host: this rule sends {token} but its host '*' could match any host; "
     "that would send tokens to every host: name the hosts this rule is for"),
    ("rules:\n  - match: {host: [a.com, '[a-z]*:443']}\n    cookies: {s: '{captcha}'}\ncaptcha: {env: HOME}\n",
     "2:19: rules[0].match.host: this rule sends {captcha} but its host '[a-z]*:443' could match any host; "
     "that would send tokens to every host: name the hosts this rule is for"),
    ("rules:\n  - match: {host: a.com}\n    cookies: {s: 'x{env:SEMI}'}\n",
     "3:18: rules[0].cookies.s: a cookie value cannot contain ';' or ',': 'x{env:SEMI}'"),
    (R + "captcha: {env: HOME, ttl: .inf}\n", "4:27: captcha.ttl: expected a finite number, got inf"),
    # the sections a placeholder needs
    ("rules:\n  - match: {host: a.com}\n    headers: {X: '{token}'}\n",
     "2:5: rules[0]: this rule uses {token} but the file has no 'tokens' section"),
    ("rules:\n  - match: {host: a.com}\n    headers: {X: '{captcha}'}\n",
     "2:5: rules[0]: this rule uses {captcha} but the file has no 'captcha' section (or values: {captcha: ...})"),
    (R + "tokens: {file: missing.txt}\n", "4:16: tokens.file: tokens file not found: {dir}/missing.txt"),
    (R + "tokens: {file: tokens.txt, strategy: sticki}\n",
     "4:38: tokens.strategy: expected one of round_robin, sticky; got 'sticki' (did you mean 'sticky'?)"),
    (R + "captcha: {file: nope.txt}\n", "4:17: captcha.file: captcha file not found: {dir}/nope.txt"),
    (R + "captcha: {file: captcha.txt, env: HOME}\n",
     "4:10: captcha: give exactly one captcha source (file, env or command); got file, env"),
    (R + "captcha: {ttl: 5}\n", "4:10: captcha: give exactly one captcha source (file, env or command); got none"),
    (R + "captcha: {env: NOPE_NOT_SET}\n", "4:16: captcha.env: environment variable NOPE_NOT_SET is not set"),
    (R + "captcha: {command: [./nope.sh]}\n",
     "4:20: captcha.command: captcha command not found: ./nope.sh (relative paths start at {dir})"),
    (R + "captcha: {env: HOME, ttl: -1}\n", "4:27: captcha.ttl: expected a number of at least 0, got -1"),
    # recovery: tokens settings and on_response rules
    (R + "on_response: [{match: {status: 403}, action: retry}]\n",
     "4:46: on_response[0].action: expected one of rotate, disable, refresh, refresh_captcha, pass; got 'retry'"),
    (R + "on_response: [{match: {status: 403, body: '('}, action: rotate}]\n",
     "4:43: on_response[0].match.body: bad regular expression '(': missing ): ("),
    # body regexes run on RE2 (linear time): what it cannot run is refused when the file loads
    (R + "on_response: [{match: {status: 403, body: '(a)\\1'}, action: rotate}]\n",
     "4:43: on_response[0].match.body: bad regular expression '(a)\\\\1': invalid escape sequence: \\1 "
     "(body regexes run on RE2, which matches in linear time and so has no backreferences or lookaround)"),
    (R + "on_response: [{match: {status: 403, body: 'token(?!ok)'}, action: rotate}]\n",
     "4:43: on_response[0].match.body: bad regular expression 'token(?!ok)': invalid perl operator: (?! "
     "(body regexes run on RE2, which matches in linear time and so has no backreferences or lookaround)"),
    (R + "on_response: [{match: {status: 200, first_event: '(?<=x)'}, action: rotate}]\n",
     "4:50: on_response[0].match.first_event: bad regular expression '(?<=x)': invalid perl operator: (?<= "
     "(first_event regexes run on RE2, which matches in linear time and so has no backreferences or lookaround)"),
    (R + "on_response: [{match: {status: 200, first_event: '['}, action: rotate}]\n",
     "4:50: on_response[0].match.first_event: bad regular expression '[': missing ]: ["),
    (R + "on_response: [{match: {status: 200, body: x, first_event: y}, action: rotate}]\n",
     "4:59: on_response[0].match.first_event: give body or first_event, not both: body waits for the whole answer, "
     "first_event judges a stream by its start"),
    (R + "on_response: [{match: {body: x}, action: rotate}]\n", "4:23: on_response[0].match: missing required key 'status'"),
    (R + "on_response: [{match: {status: '403'}, action: rotate}]\n",
     "4:32: on_response[0].match.status: expected a whole number, got a string"),
    (R + "tokens: {file: tokens.txt, max_attempts: 0}\n", "4:42: tokens.max_attempts: expected a whole number of at least 1, got 0"),
    (R + "tokens: {file: tokens.txt, breaker: {tokens: 1}}\n",
     "4:46: tokens.breaker.tokens: expected a whole number of at least 2, got 1"),
    (R + "tokens: {file: tokens.txt, cooldown: soon}\n", "4:38: tokens.cooldown: expected a number, got a string"),
    # body edits
    ("rules:\n  - match: {host: a.com}\n    body: {a..b: 1}\n",
     "3:12: rules[0].body.a..b: bad field path 'a..b': expected names separated by dots, like 'recaptchaV3Token' or "
     "'params.model'"),
    ("rules:\n  - match: {host: a.com}\n    body: {.a: 1}\n",
     "3:12: rules[0].body..a: bad field path '.a': expected names separated by dots, like 'recaptchaV3Token' or "
     "'params.model'"),
    ("rules:\n  - match: {host: a.com}\n    body: {a: .inf}\n",
     "3:15: rules[0].body.a: expected a finite number, got inf (JSON has no such number)"),
    ("rules:\n  - match: {host: a.com}\n    body: {a: [1, {b: 2001-01-01}]}\n",
     "3:23: rules[0].body.a[1].b: expected a JSON value (a string, number, true or false, list, mapping or null), got a date"),
    ("rules:\n  - match: {host: a.com}\n    body: {a: {1: x}}\n", "3:16: rules[0].body.a: keys must be strings"),
    ("rules:\n  - match: {host: a.com}\n    body: {a: '{captcha'}\n",
     "3:15: rules[0].body.a: unmatched '{' in '{captcha' (write {{ for a literal brace)"),
    # named values
    ("rules:\n  - match: {host: a.com}\n    headers: {X: '{cf_clearanse}'}\nvalues: {cf_clearance: {env: HOME}}\n",
     "3:18: rules[0].headers.X: unknown placeholder {cf_clearanse} (did you mean {cf_clearance}?)"),
    ("rules:\n  - match: {host: a.com}\n    body: {x: '{zz}'}\nvalues: {cf: {env: HOME}}\n",
     "3:15: rules[0].body.x: unknown placeholder {zz} (expected {token}, {captcha}, {cf} or {env:NAME})"),
    (R + "values: {token: {env: HOME}}\n",
     "4:10: values.token: 'token' is the rotation of the tokens file ({token}); give this value another name"),
    (R + "values: {'cf clearance': {env: HOME}}\n",
     "4:10: values.cf clearance: bad value name 'cf clearance': expected a letter or _, then letters, digits, _ or -, "
     "like cf_clearance"),
    (R + "values: {cf: {}}\n", "4:14: values.cf: give exactly one cf source (file, env or command); got none"),
    (R + "values: {cf: {file: nope.txt}}\n", "4:21: values.cf.file: cf file not found: {dir}/nope.txt"),
    (R + "values: {cf: {command: ./nope.sh}}\n",
     "4:24: values.cf.command: cf command not found: ./nope.sh (relative paths start at {dir})"),
    (R + "values: {cf: {env: HOME, wait: 5}}\n",
     "4:32: values.cf.wait: wait is for a file source (a refresh runs a command again, and the environment never changes)"),
    (R + "values: {cf: {env: HOME, secret: no thanks}}\n", "4:34: values.cf.secret: expected true or false, got a string"),
    (R + "values: {captcha: {env: HOME}}\ncaptcha: {env: HOME}\n",
     "5:10: captcha: captcha is given twice, here and in values; keep one (captcha: is short for values: {captcha: ...})"),
    # refresh
    (R + "values: {cf: {file: captcha.txt}}\non_response: [{match: {status: 403}, action: refresh, values: [cf, cff]}]\n",
     "5:68: on_response[0].values[1]: no value named 'cff' (did you mean 'cf'?)"),
    (R + "values: {cf: {env: HOME}}\non_response: [{match: {status: 403}, action: refresh, values: cf}]\n",
     "5:63: on_response[0].values: cf comes from an environment variable, which never changes under a running proxy: "
     "it cannot be refreshed"),
    (R + "on_response: [{match: {status: 403}, action: refresh}]\n",
     "4:46: on_response[0].action: action refresh needs a value from a file or command to fetch anew; "
     "the file has none (values:)"),
    (R + "values: {cf: {file: captcha.txt}}\non_response: [{match: {status: 403}, action: rotate, values: [cf]}]\n",
     "5:62: on_response[0].values: values goes with action refresh, not rotate"),
    (R + "captcha: {file: captcha.txt}\non_response: [{match: {status: 403}, action: refresh_captcha, values: [captcha]}]\n",
     "5:71: on_response[0].values: values goes with action refresh, not refresh_captcha; "
     "refresh_captcha is refresh with values [captcha]"),
    # a shared store
    (R + "tokens: {file: tokens.txt, store: 'http://127.0.0.1:6379'}\n",
     "4:35: tokens.store: expected redis://HOST:PORT/DB or rediss://…, not 'http://127.0.0.1:6379'"),
    (R + "tokens: {file: tokens.txt, store: 'redis://:{env:NOPE}@127.0.0.1'}\n",
     "4:35: tokens.store: environment variable NOPE (used as {env:NOPE}) is not set"),
    (R + "tokens: {file: tokens.txt, store: 'redis://127.0.0.1/x'}\n",
     "4:35: tokens.store: the path of 'redis://127.0.0.1/x' is the database number, like /0"),
    (R + "tokens: {file: tokens.txt, store: 'redis://:hunter2-pw@127.0.0.1:99999/0'}\n",
     "4:35: tokens.store: bad port in 'redis://:****@127.0.0.1:99999/0'"),
    (R + "tokens: {file: tokens.txt, store: 'redis://127.0.0.1/0?socket_timeout=7'}\n",
     "4:35: tokens.store: the store URL cannot set 'socket_timeout' (it may set ssl_ca_certs, ssl_ca_path, "
     "ssl_cert_reqs, ssl_certfile, ssl_check_hostname, ssl_keyfile)"),
    (R + "tokens: {file: tokens.txt, store: 'redis://127.0.0.1/0?password=pw'}\n",
     "4:35: tokens.store: the store URL cannot set 'password' (put a password before the host: redis://:PASSWORD@host)"),
    (R + "tokens: {file: tokens.txt, namespace: shop}\n",
     "4:39: tokens.namespace: 'namespace' names a pool on a shared store: it needs 'store' (redis://…)"),
    (R + "tokens: {file: tokens.txt, store: 'redis://127.0.0.1', namespace: 'a b'}\n",
     "4:67: tokens.namespace: bad namespace 'a b': up to 64 letters, digits, '.', '_' or '-'"),
    (R + "stream: {json_field: 'a..b'}\n",
     "4:22: stream.json_field: bad field path 'a..b': expected names separated by dots, like 'stream' or "
     "'options.stream'"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(": ", 1)[1][:50] for _, m in BAD])
def test_bad_file_gets_one_exact_message(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_config(path, environ={"HOME": "/root", "SEMI": "a;b"})
    assert str(e.value) == f"{path}:" + message.replace("{dir}", str(tmp_path))


def test_missing_rules_file(tmp_path):
    with pytest.raises(RulesError, match=r"^.*/nope\.yaml:1:1: rules file not found$"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "raw, where",
    [
        (b"# r\xc3\xa8gles\nrules: \xff\n", "2:8"),
        (b"\xef\xbb\xbf# \xc3\xa9\xc3\xa9 \xff\n", "1:6"),  # after a BOM; columns count characters
    ],
    ids=["second line", "BOM and accents"],
)
def test_rules_file_not_utf8(tmp_path, raw, where):
    path = tmp_path / "rules.yaml"
    path.write_bytes(raw)
    with pytest.raises(RulesError, match=rf"rules.yaml:{where}: the rules file is not UTF-8 text \(byte 0xff\)$"):
        load_config(path)


def test_rules_file_unreadable(tmp_path):
    (tmp_path / "rules.yaml").mkdir()
    with pytest.raises(RulesError, match=r"rules.yaml:1:1: cannot read the rules file: Is a directory$"):
        load_config(tmp_path / "rules.yaml")


def test_every_problem_is_reported_in_file_order(tmp_path):
    text = """\
        rules:
          - match: {host: 'https://a.com', path: v1}
            heders: {X: y}
          - match: {host: a.com}
            headers: {X: '{tokn}'}
        tokens: {file: nope.txt, strategy: sticki}
        """
    path = write(tmp_path, text)
    with pytest.raises(RulesErrors) as e:
        load_config(path)
    assert [f"{x.line}:{x.column}" for x in e.value.errors] == ["2:19", "2:42", "3:5", "5:18", "6:16", "6:36"]
    assert str(e.value) == str(e.value.errors[0])  # reads as the first, for the proxy's one-line message


POOLS = SHARED_POOLS.replace("openai: {file: openai.txt}", 'openai: {file: openai.txt, store: "redis://127.0.0.1:6379/0"}')


def write_pools(tmp_path: Path, text: str = POOLS) -> Path:
    (tmp_path / "openai.txt").write_text("sk-aaaaaaaaaaaa\n")
    return write(tmp_path, text)


def test_tokens_may_name_several_pools(tmp_path):
    config = load_config(write_pools(tmp_path))
    assert config.named_pools and list(config.pools) == ["arena", "openai"]
    arena, openai = config.pools.values()
    assert (arena.name, arena.file, arena.strategy, arena.state_file) == (
        "arena", tmp_path / "tokens.txt", "sticky", tmp_path / "tokens.state.json")
    assert (openai.name, openai.file, openai.sessions_file) == ("openai", tmp_path / "openai.txt", tmp_path / "openai.sessions.json")
    assert openai.store.namespace == "openai"  # each pool's health in a namespace of its own on a store
    assert [r.pools for r in config.rules] == [{"arena"}, {"openai"}]
    assert [r.uses for r in config.rules] == [{"token"}, {"token"}]
    assert config.tokens is arena  # the first pool


def test_a_tokens_section_of_one_pool_loads_as_before_as_the_pool_default(tmp_path):
    config = load_config(write(tmp_path, R.replace("{X: y}", "{X: '{token}'}") + TOK))
    assert not config.named_pools and list(config.pools) == ["default"]
    assert config.tokens.name == "default" and config.tokens.store is None
    assert config.rules[0].pools == {None}  # {token}: the only pool


def test_token_without_a_pool_in_a_file_of_one_named_pool_is_that_pool(tmp_path):
    text = POOLS.replace("{token:arena}", "{token}").replace("{token:openai}", "{token}")
    text = text.replace('  openai: {file: openai.txt, store: "redis://127.0.0.1:6379/0"}\n', "")
    text = text.replace("api.example}\n    headers", "api.example}\n    headers").replace("Bearer {token}", "none")
    config = load_config(write_pools(tmp_path, text))
    assert [r.pools for r in config.rules] == [{"arena"}, frozenset()]


POOL_ERRORS = [
    (POOLS.replace("{token:arena}", "{token:arenna}"),
     "4:24: rules[0].cookies.session: no token pool named 'arenna' in {token:arenna} (did you mean {token:arena}?)"),
    (POOLS.replace("{token:arena}", "{token:shop}"),
     "4:24: rules[0].cookies.session: no token pool named 'shop' in {token:shop} (the file has arena, openai)"),
    (POOLS.replace("{token:arena}", "{token}"),
     "4:24: rules[0].cookies.session: {token} does not say which pool: the file has arena, openai; write "
     "{token:arena}, say"),
    (POOLS.replace("{token:arena}", "{token:arena}-{token:openai}"),
     "4:24: rules[0].cookies.session: one value draws tokens from one pool; this one names arena and openai"),
    (POOLS.replace('headers: {Authorization: "Bearer {token:openai}"}',
                   'headers: {Authorization: "Bearer {token:openai}"}\n    cookies: {s: "{token:arena}"}'),
     "5:5: rules[1]: this rule draws tokens from arena and openai; a request carries one account: give each pool a "
     "rule of its own"),
    (POOLS.replace('openai: {file: openai.txt, store: "redis://127.0.0.1:6379/0"}', "openai: {file: tokens.txt}"),
     "10:11: tokens.openai: pools arena and openai would keep their health in the state file {dir}/tokens.state.json; "
     "give each its own tokens file, state_file or namespace"),
    (POOLS.replace("arena: {file: tokens.txt, strategy: sticky}",
                   "arena: {file: tokens.txt, store: 'redis://127.0.0.1:6379/0', namespace: openai}"),
     "10:11: tokens.openai: pools arena and openai would keep their health in namespace 'openai' of one store; "
     "give each its own tokens file, state_file or namespace"),
    (POOLS.replace("  arena:", "  'a b':").replace("{token:arena}", "x"),
     "9:3: tokens.a b: bad pool name 'a b': expected a letter or _, then letters, digits, _ or -, like arena (up to 64)"),
    (POOLS.replace("strategy: sticky", "strategy: sticky, fil: x"),
     "9:47: tokens.arena: unknown key 'fil' (did you mean 'file'?)"),
    (POOLS.replace("arena: {file: tokens.txt, strategy: sticky}", "arena: {file: tokens.txt, state_file: s.json}")
     .replace('openai: {file: openai.txt, store: "redis://127.0.0.1:6379/0"}', "openai: {file: tokens.txt, state_file: s.state.json}"),
     "10:11: tokens.openai: pools arena and openai would keep renewed sessions in {dir}/s.sessions.json (named after "
     "the state file); give each its own tokens file, state_file or namespace"),
    (R.replace("{X: y}", "{X: '{token:x}'}") + TOK,
     "3:18: rules[0].headers.X: unknown placeholder {token:x} (a pool is named only in a tokens section of several: "
     "tokens: {x: {file: …}, …}; a tokens section of one pool is {token})"),
    ("rules: []\ntokens: {}\n", "2:9: tokens: missing required key 'file'"),
]


def test_a_misspelled_key_of_one_pool_is_named_as_such(tmp_path):
    path = write_pools(tmp_path, "rules: []\ntokens: {fiel: tokens.txt}\n")
    with pytest.raises(RulesErrors) as e:
        load_config(path)
    assert [str(x).removeprefix(f"{path}:") for x in e.value.errors] == [
        "2:9: tokens: missing required key 'file'", "2:10: tokens: unknown key 'fiel' (did you mean 'file'?)"]


@pytest.mark.parametrize("text, message", POOL_ERRORS, ids=[m.split(": ", 2)[-1][:50] for _, m in POOL_ERRORS])
def test_a_bad_pool_gets_one_exact_message(tmp_path, text, message):
    path = write_pools(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:" + message.replace("{dir}", str(tmp_path))
