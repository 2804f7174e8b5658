"""Tools for rules files: `mitm-rules check|explain|status|schema|reference` (also `python -m addon …` from the
repository root)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from addon import __version__
from addon.cli.check import check
from addon.cli.explain import InputError, explain, printable, requests_from_args, stand_in_values
from addon.cli.reference import render as render_reference
from addon.rules.config import json_schema, load_config
from addon.rules.schema import RulesError, RulesErrors
from addon.status import document, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mitm-rules", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mitm-rules {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="load a rules file as the proxy would; print ok or every problem")
    p.add_argument("rules", nargs="?", default="rules.yaml")

    p = sub.add_parser("explain", help="what the rules would do to a request (nothing is sent)")
    p.add_argument("--rules", default="rules.yaml")
    p.add_argument("--flows", help="a flows file saved by mitmproxy (mitmdump -w FILE)")
    p.add_argument("--curl", help="a curl command line, in quotes")
    p.add_argument("request", nargs="*", metavar="METHOD URL", help="a request given by method and URL")
    p.add_argument("-H", "--header", action="append", help="a request header, 'Name: value' (repeatable)")
    p.add_argument("-d", "--data", help="the request body")

    p = sub.add_parser("status", help="each pool's tokens, breaker and value sources, from the state file or store "
                                      "(no running proxy needed)")
    p.add_argument("rules", nargs="?", default="rules.yaml")
    p.add_argument("--json", action="store_true", help="the status document as JSON (as the status server's /status)")

    p = sub.add_parser("schema", help="print the JSON Schema of the rules file (for editors)")
    p = sub.add_parser("reference", help="print the rules file's reference in Markdown (docs/reference.md)")

    args = parser.parse_args(argv)
    if args.command == "check":
        ok, lines = check(Path(args.rules))
        print("\n".join(lines))
        return 0 if ok else 1
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.command == "reference":
        sys.stdout.write(render_reference())
        return 0
    try:
        config = load_config(args.rules)
    except RulesError as e:
        for error in e.errors if isinstance(e, RulesErrors) else [e]:
            print(error, file=sys.stderr)
        return 1
    if args.command == "status":
        try:
            doc = document.offline(config, args.rules)
        except document.StatusUnavailable as e:
            print(printable(f"error: {e}"), file=sys.stderr)
            return 1
        print(json.dumps(doc, indent=2, ensure_ascii=False) if args.json else "\n".join(text.rows(doc)))
        return 0
    try:
        flows = requests_from_args(args)
    except InputError as e:
        print(printable(f"error: {e}"), file=sys.stderr)
        return 1
    values = stand_in_values(config)
    for i, flow in enumerate(flows):
        if i:
            print()
        print("\n".join(explain(config, flow, values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
