"""The rules file's schema, as data: `rules_schema` puts together the sections of the modules here
(rule.py: `rules:` and `stream:`; tokens.py; exits.py; on_response.py; values.py: `values:` and `captcha:`) and
builds the whole into a `Config`, checking what spans sections (a {token} needs `tokens:`, one pool
per rule, the values a refresh names).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from addon.rules import matching
from addon.rules.records import REFRESH, Config, Rule, ValueSpec
from addon.rules.schema import At
from addon.rules.sections.exits import distinct_exits, exits_field
from addon.rules.sections.on_response import on_response_field, refresh_values
from addon.rules.sections.rule import rules_field, stream_field
from addon.rules.sections.tokens import distinct_pools, tokens_field
from addon.rules.sections.values import captcha_field, values_field
from addon.rules.structures import Record
from addon.rules.template import CAPTCHA, TOKEN


def rules_schema(
    base: Path, file: Path, environ: Mapping[str, str], names: frozenset[str] = frozenset(), pools: tuple[str, ...] = (),
    exits: tuple[str, ...] = (),
) -> Record:
    """The whole file, as data; `base` is the folder relative paths start from; `names`: the values
    the file declares (placeholders other than {token} and {captcha} must be one of them); `pools`:
    the token pools it names ({token:NAME}), when `tokens:` names them; `exits`: the names of its exits."""
    return Record(
        "rules file",
        {
            "rules": rules_field(environ, names, pools),
            "stream": stream_field(),
            "tokens": tokens_field(base, environ, exits),
            "exits": exits_field(environ),
            "on_response": on_response_field(),
            "values": values_field(base, environ, exits),
            "captcha": captcha_field(base, environ, exits),
        },
        build=partial(_build_config, file),
    )


def _build_config(file: Path, v: dict[str, Any], at: At, where: dict[str, At]) -> Config:
    values: dict[str, ValueSpec] = dict(v["values"])
    if v["captcha"] is not None:
        if CAPTCHA in values:
            where["captcha"].fail(
                "captcha is given twice, here and in values; keep one (captcha: is short for values: {captcha: ...})"
            )
        values[CAPTCHA] = v["captcha"]
    rules: tuple[Rule, ...] = v["rules"]
    pools = {spec.name: spec for _, spec in v["tokens"] or ()}
    if v["tokens"] is not None:
        distinct_pools(v["tokens"], where["tokens"])
    if v["exits"]:
        distinct_exits(v["exits"], where["exits"])
    for i, rule in enumerate(rules):
        if TOKEN in rule.uses and not pools:
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                "this rule uses {token} but the file has no 'tokens' section"
            )
        if len(rule.pools) > 1:
            drawn = " and ".join(sorted(str(p) for p in rule.pools))
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                f"this rule draws tokens from {drawn}; a request carries one account: give each pool a rule of its own"
            )
        missing = sorted(rule.uses - values.keys() - {TOKEN})
        if missing:  # only {captcha} gets here: other names are checked where they are written
            where["rules"].index(i, where["rules"].node.value[i]).fail(
                f"this rule uses {{{missing[0]}}} but the file has no 'captcha' section (or values: {{{missing[0]}: ...}})"
            )
    refreshable = frozenset(name for name, spec in values.items() if spec.refreshable)
    on_response = tuple(
        refresh_values(rule, refreshable, values, where["on_response"].index(i, where["on_response"].node.value[i]))
        if rule.action == REFRESH else rule
        for i, rule in enumerate(v["on_response"])
    )  # fmt: skip
    return Config(
        file=file,
        rules=rules,
        stream=v["stream"],
        pools=pools,
        values=values,
        index=matching.RuleIndex(rules),
        on_response=on_response,
        named_pools=v["tokens"] is not None and v["tokens"][0][0] is not None,
        exits={spec.name: spec for spec in v["exits"]},
    )
