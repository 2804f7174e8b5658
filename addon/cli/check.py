"""`python -m addon check`: load a rules file as the proxy would and report every problem."""

from __future__ import annotations

from pathlib import Path

from addon.rules.config import load_config
from addon.rules.records import Config
from addon.rules.schema import RulesError, RulesErrors
from addon.tokens.tokenfile import TokensFileError, read_tokens


def check(path: Path) -> tuple[bool, list[str]]:
    """(ok, lines to print): a one-line summary, or one line per problem."""
    try:
        config = load_config(path)
    except RulesErrors as e:
        return False, [str(x) for x in e.errors]
    except RulesError as e:
        return False, [str(e)]
    problems: list[str] = []
    tokens: dict[str, int] = {}  # by pool
    for name, spec in config.pools.items():
        try:
            tokens[name] = len(read_tokens(spec.file))
        except TokensFileError as e:
            problems.append(str(e))
        else:
            if not tokens[name]:
                problems.append(f"{spec.file}: the tokens file has no tokens (requests that need one would get a 503)")
    for name, spec in config.values.items():
        if spec.file is None:
            continue
        try:
            if not spec.file.read_text(encoding="utf-8-sig").strip():
                problems.append(f"{spec.file}: the {name} file is empty")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{spec.file}: cannot read the {name} file: {e}")
    if problems:
        return False, problems
    return True, [summary(config, tokens)]


def summary(config: Config, tokens: dict[str, int]) -> str:
    """One line: the rules, hosts, pools (with `tokens` read from each file), values and stream judges."""
    hosts = sorted({h.text for rule in config.rules for h in rule.match.hosts})
    shown = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
    parts = [f"{len(config.rules)} rule(s) for {len(hosts)} host(s) ({shown})"]
    for name, spec in config.pools.items():
        pool = f"pool {name}: " if config.named_pools else ""
        parts.append(f"{pool}{tokens.get(name, 0)} token(s) from {spec.file} ({spec.strategy})")
        if spec.store is not None:
            store = spec.store
            parts.append(f"token health shared on {store.shown} (namespace {store.namespace}; not contacted by check)")
    for name, spec in config.values.items():
        parts.append(f"{name} from {spec.describe()}")
    by_first_event = sum(rule.first_event is not None for rule in config.on_response)
    if by_first_event:
        parts.append(f"{by_first_event} on_response rule(s) judging a stream by its first event (held until it comes)")
    return "ok: " + ", ".join(parts)
