"""The rules tools: `python -m addon check|explain|schema`, in process (end-to-end runs are in tests/e2e)."""

import json

from addon.cli.main import main
from addon.rules.config import json_schema
from helpers import ROOT


def test_schema_file_is_current():
    """rules.schema.json is generated from the loader's own definitions: regenerate it with
    `.venv/bin/python -m addon schema > rules.schema.json` when this fails."""
    assert json.loads((ROOT / "rules.schema.json").read_text()) == json_schema()


def test_example_rules_point_editors_at_the_schema():
    assert (ROOT / "rules.yaml").read_text().splitlines()[0] == "# yaml-language-server: $schema=rules.schema.json"


def test_schema_knows_every_key_and_forbids_others():
    schema = json_schema()
    assert set(schema["properties"]) == {"rules", "stream", "tokens", "values", "captcha", "on_response"}
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


def test_schema_command_prints_it(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
