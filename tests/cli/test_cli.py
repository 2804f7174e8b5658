"""The rules tools: `python -m addon check|explain|status|schema`, in process (end-to-end runs are in tests/e2e)."""

import json
import re
import socket
import time

from addon.cli.main import main
from addon.rules.config import json_schema
from addon.tokens.statefile import StateStore
from addon.tokens.tokenfile import token_key
from helpers import CLOCK, ROOT, TOKENS, write_rules


def test_schema_file_is_current():
    """rules.schema.json is generated from the loader's own definitions: regenerate it with
    `.venv/bin/python -m addon schema > rules.schema.json` when this fails."""
    assert json.loads((ROOT / "rules.schema.json").read_text()) == json_schema()


def test_example_rules_point_editors_at_the_schema():
    assert (ROOT / "rules.yaml").read_text().splitlines()[0] == "# yaml-language-server: $schema=rules.schema.json"


def test_schema_knows_every_key_and_forbids_others():
    schema = json_schema()
    assert set(schema["properties"]) == {"rules", "stream", "tokens", "exits", "values", "captcha", "on_response"}
    rule = schema["properties"]["rules"]["items"]
    assert rule["additionalProperties"] is False and rule["required"] == ["match"]
    assert set(rule["properties"]["match"]["properties"]) == {"host", "path", "method", "stream", "filter"}
    headers = rule["properties"]["headers"]
    assert headers["additionalProperties"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    body = rule["properties"]["body"]
    assert body["additionalProperties"] == {"type": ["string", "number", "boolean", "array", "object", "null"]}
    source = schema["properties"]["values"]["additionalProperties"]
    assert source["additionalProperties"] is False
    assert set(source["properties"]) == {"file", "env", "command", "ttl", "timeout", "wait", "secret"}
    assert schema["properties"]["captcha"]["properties"] == source["properties"]
    response_rule = schema["properties"]["on_response"]["items"]
    assert response_rule["properties"]["action"]["enum"] == ["rotate", "disable", "refresh", "refresh_captcha", "pass"]
    assert set(response_rule["properties"]) == {"match", "action", "values"}
    assert set(response_rule["properties"]["match"]["properties"]) == {"status", "body", "first_event"}
    one, named = schema["properties"]["tokens"]["anyOf"]  # one pool, or pools by name
    assert one["properties"]["strategy"]["enum"] == ["round_robin", "sticky"]
    assert one["required"] == ["file"] and named["additionalProperties"] == one
    assert {"exits", "failover"} <= set(one["properties"])
    exit = schema["properties"]["exits"]["items"]
    assert set(exit["properties"]) == {"name", "url", "cooldown"} and exit["required"] == ["name", "url"]


def test_schema_command_prints_it(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


# status: from the state file, with no proxy running

STATUS_RULES = """\
rules:
  - match: {host: a.com}
    headers: {X-Captcha: "{captcha}"}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt}
captcha: {file: captcha.txt}
"""


def refused_state(tmp_path, now: float) -> None:
    """A state file as a proxy leaves it: the first token refused with a 403 and cooling."""
    entry = {"suffix": f"…{TOKENS[0][-4:]}", "cooling_until": now + 200, "refused_at": now - 100, "disabled": False,
             "successes": 0, "refusals": 1, "in_a_row": 1, "retired_at": 0.0, "retired_why": 0, "last_status": 403}
    StateStore(tmp_path / "tokens.state.json", {token_key(TOKENS[0]): entry}, 86400).write()  # fmt: skip


def assert_no_secrets(text: str) -> None:
    leaked = [s for s in [*TOKENS, "cap-test-value-9999"] if s in text]
    assert not leaked, f"written whole: {leaked}"


def test_status_prints_each_token_of_the_state_file(tmp_path, capsys):
    rules = write_rules(tmp_path, STATUS_RULES)
    refused_state(tmp_path, time.time())
    assert main(["status", str(rules)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and lines[0].startswith(f"{rules}, ")
    assert lines[2] == f"pool default: {tmp_path / 'tokens.txt'} (round_robin), health in state file {tmp_path / 'tokens.state.json'}"
    assert lines[3].split() == ["token", "state", "until", "ok", "refused", "last", "refusal"]
    assert re.fullmatch(rf"  …1111  cooling  {CLOCK} \(in \d+ min\) +0 +1  403 at {CLOCK} \(\d+ (s|min) ago\)", lines[4]), lines[4]
    assert [line.split()[:2] for line in lines[5:7]] == [["…2222", "active"], ["…3333", "active"]]
    assert lines[7] == "  2 active, 1 cooling; breaker closed (opens when 3 different tokens are refused within 60 s)"
    assert lines[9:] == ["values:", f"  captcha: file {tmp_path / 'captcha.txt'}"]
    assert_no_secrets(out)


def test_status_json_is_the_document(tmp_path, capsys):
    rules = write_rules(tmp_path, STATUS_RULES)
    refused_state(tmp_path, time.time())
    assert main(["status", str(rules), "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert (doc["rules"], doc["loaded"], doc["counters"]) == (str(rules), True, None)
    (pool,) = doc["pools"]
    assert (pool["name"], pool["state_exists"]) == ("default", True)
    assert [(t["token"], t["state"]) for t in pool["tokens"]] == [("…1111", "cooling"), ("…2222", "active"), ("…3333", "active")]
    assert pool["tokens"][0]["last_refusal"]["status"] == 403
    assert_no_secrets(out)


def test_status_before_any_proxy_ran(tmp_path, capsys):
    rules = write_rules(tmp_path, STATUS_RULES)
    assert main(["status", str(rules)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == "  no state yet: every token is active until a proxy has run with this file"
    assert lines[8] == "  3 active; breaker closed (opens when 3 different tokens are refused within 60 s)"


def test_status_of_a_bad_rules_file_says_where_it_is_wrong(tmp_path, capsys):
    path = write_rules(tmp_path, "rules:\n  - match: {host: a.com}\n")
    assert main(["status", str(path)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{path}:2:5: rules[0]: a rule needs 'headers', 'cookies' or 'body'\n")


def test_status_of_a_store_that_does_not_answer_is_one_line(tmp_path, capsys):
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rules = write_rules(tmp_path, STATUS_RULES.replace("tokens: {file: tokens.txt}",
                                                       f"tokens: {{file: tokens.txt, store: 'redis://:pw-0000secret@127.0.0.1:{port}/0'}}"))
    assert main(["status", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: the store redis://:****@127.0.0.1:{port}/0 does not answer: ")
    assert len(err.splitlines()) == 1 and "pw-0000secret" not in err
