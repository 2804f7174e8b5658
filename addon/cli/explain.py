"""`python -m addon explain`: what the rules would do to a request, without sending anything.

Requests come from a saved mitmproxy flows file (`mitmdump -w`), a curl command
line, or a method and URL. For each: is it streaming, which rules match, the
request as it would leave the proxy with each change annotated, and, for saved
flows with a response, what the `on_response` rules would do with it. Tokens and
named values are shown masked (unless a value says `secret: false`); no command is run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import connection, exceptions, http, io

from addon.mitm import helpers
from addon.recovery.verdict import applies, verdict
from addon.request import jsonbody
from addon.request.apply import apply_plan
from addon.request.plan import BodySkipped, Edit, Plan, Skipped, plan_request
from addon.rules.records import DISABLE, PASS, REFRESH, REFRESH_CAPTCHA, ROTATE, Config
from addon.rules.template import TOKEN
from addon.exits.binding import exit_order
from addon.runtime.sources import sources_for
from addon.tokens import statefile
from addon.tokens.pool import TokenPool
from addon.tokens.tokenfile import TokensFileError, read_tokens
from addon.util.masking import mask


class InputError(ValueError):
    """A request to explain cannot be read."""


ACTIONS = {
    ROTATE: "retry with the next token (and a fresh captcha value)",
    DISABLE: "retire this token, then retry with the next one (and a fresh captcha value)",
    REFRESH: "retry with the same token and a new {values}",
    PASS: "hand it to the client as it is",
}

# curl options this understands; the others that take a value are skipped with it
_CURL_SKIP_WITH_VALUE = {
    "-x", "--proxy", "-o", "--output", "-m", "--max-time", "--connect-timeout", "--cacert", "--capath",
    "-u", "--user", "-w", "--write-out", "--retry", "-E", "--cert", "--key", "--resolve", "--proxy-cacert",
}  # fmt: skip


def flows_from_file(path: Path) -> list[http.HTTPFlow]:
    """The HTTP flows of a flows file.

    Raises:
        InputError: it cannot be read, or is not a flows file mitmproxy can load (one line, no traceback).
    """
    try:
        flows = [f for f in io.read_flows_from_paths([str(path)]) if isinstance(f, http.HTTPFlow)]
    except exceptions.FlowReadException as e:
        raise InputError(f"{path}: cannot read flows: {str(e)[:200]}") from None
    except RecursionError:
        raise InputError(f"{path}: cannot read flows: they are nested too deeply to be a flow") from None
    except Exception as e:  # a flow of an unexpected shape: mitmproxy raises whatever its loading meets
        problem = f"{type(e).__name__}: {e}"[:200]
        raise InputError(f"{path}: cannot read flows: not a flow mitmproxy can load ({problem})") from None
    if not flows:
        raise InputError(f"{path}: no HTTP flows in the file")
    return flows


def flow_from_curl(command: str) -> http.HTTPFlow:
    """A flow from a curl command line, as copied from a browser's developer tools."""
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise InputError(f"cannot split the curl command: {e}") from None
    if words[:1] == ["curl"]:
        words = words[1:]
    method, url, headers, body = None, None, [], None
    it = iter(words)
    for word in it:
        opt, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        def value() -> str:  # noqa: E306
            if eq:
                return inline
            try:
                return next(it)
            except StopIteration:
                raise InputError(f"curl option {opt} needs a value") from None
        if opt in ("-X", "--request"):
            method = value()
        elif opt in ("-H", "--header"):
            headers.append(_header(value(), "curl header"))
        elif opt in ("-d", "--data", "--data-raw", "--data-binary", "--data-ascii"):
            data = value()
            body = (body + "&" if body else "") + data
        elif opt == "--json":
            body = value()
            headers += [("Content-Type", "application/json"), ("Accept", "application/json")]
        elif opt in ("-b", "--cookie"):
            headers.append(("Cookie", value()))
        elif opt in ("-A", "--user-agent"):
            headers.append(("User-Agent", value()))
        elif opt == "--url":
            url = value()
        elif opt in _CURL_SKIP_WITH_VALUE:
            value()
        elif opt.startswith("-"):
            continue  # a flag without a value: -s, -N, --compressed, --http2, ...
        elif url is None:
            url = word
        else:
            raise InputError(f"more than one URL in the curl command: {url} and {word}")
    if url is None:
        raise InputError("no URL in the curl command")
    if body is not None and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl does
    return make_flow(method or ("POST" if body is not None else "GET"), url, headers, body)


def make_flow(method: str, url: str, headers: Sequence[tuple[str, str]], body: str | None) -> http.HTTPFlow:
    try:
        fields = http.Headers([(k.encode(), v.encode()) for k, v in headers])
        request = http.Request.make(method.upper(), url, (body or "").encode(), fields)
    except ValueError as e:
        raise InputError(f"bad request {method} {url}: {e}") from None
    if body is None:
        request.headers.pop("content-length", None)
    if "host" not in request.headers:
        request.headers.insert(0, "Host", helpers.url_hostport(request.scheme, request.host, request.port))
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0), timestamp_start=time.time())
    flow = http.HTTPFlow(client, connection.Server(address=(request.host, request.port)))
    flow.request = request
    return flow


def stand_in_values(config: Config) -> dict[str, str]:
    """Masked stand-ins for the values the proxy would draw (it would draw the real ones); each
    pool's token as `token` and, when the file names its pools, as `token:POOL` too; the exits of a
    pool with exits, in that token's order, as `exits:POOL`; a value each exit has its own as NAME@EXIT."""
    values: dict[str, str] = {}
    for name, spec in reversed(config.pools.items()):
        try:
            pool = TokenPool(read_tokens(spec.file), spec.strategy)
        except TokensFileError:
            pool = TokenPool()
        if spec.state_file and spec.state_file.exists():
            pool.load_state(statefile.load_state(spec.state_file))
        token = pool.draw()
        if token is not None:
            values[TOKEN] = mask(token)
            if config.named_pools:
                values[f"{TOKEN}:{name}"] = values[TOKEN]
            if spec.exits:
                values[f"exits:{name}"] = ", ".join(exit_order(token, spec.exits))
    for name, source in sources_for(config, {}).items():  # named as the proxy names them (NAME@EXIT: an exit's)
        spec = source.spec
        if spec.command is not None:
            values[name] = f"‹{name} from the command, not run›"
            continue
        try:
            raw = spec.file.read_text(encoding="utf-8-sig") if spec.file else os.environ.get(spec.env or "", "")
        except (OSError, UnicodeDecodeError):
            raw = ""
        if raw.strip():
            values[name] = mask(raw.strip()) if spec.secret else raw.strip()
    return values


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0 and C1 controls, DEL, line and paragraph separators


def printable(text: str) -> str:
    """The text with its control characters escaped (`\\x1b`, `\\u2028`): a flow's ESC and OSC
    sequences reach the terminal as text, never as commands to it."""
    return _CONTROL.sub(lambda m: ascii(m[0])[1:-1], text)


def explain(config: Config, flow: http.HTTPFlow, values: dict[str, str]) -> Iterator[str]:
    """What the rules would do to the flow, line by line, control characters escaped."""
    return map(printable, _explain(config, flow, values))


def _explain(config: Config, flow: http.HTTPFlow, values: dict[str, str]) -> Iterator[str]:
    req = flow.request
    yield f"{req.method} {req.pretty_url}"
    plan = plan_request(config, flow)
    if plan is None:
        yield "  no rule matches: the request leaves the proxy as it came"
        return
    yield f"  streaming: {'yes' if plan.streaming else 'no'}"
    yield f"  rules: {', '.join(r.name for r in plan.rules)}"
    if plan.pool is not None and TOKEN in plan.uses:
        token = values.get(f"{TOKEN}:{plan.pool}")
        yield f"  token from pool: {plan.pool}" + ("" if token else " (none of its tokens is usable now)")
        values = {k: v for k, v in values.items() if k != TOKEN} | ({TOKEN: token} if token else {})
    pool = plan.pool or next(iter(config.pools), None)
    order = values.get(f"exits:{pool}") if TOKEN in plan.uses and TOKEN in values else None
    exit = order.partition(", ")[0] if pool is not None and order else ""
    if exit:
        first = config.exits[exit]
        failover = "on" if config.pools[pool].failover else "off"
        yield f"  leaves through exit {first.name} ({first.shown}); the token's order: {order} (failover {failover})"
    # a value each exit has its own: its exit's, or none (as the proxy sends it)
    own = f"@{exit}" if exit else None
    values = {(k.removesuffix(own) if own and k.endswith(own) else k): v for k, v in values.items()
              if "@" not in k or (own and k.endswith(own))}
    sent = req.copy()
    removed: set[Edit] = set()  # as the flow comment: only what the request had
    notes = apply_plan(plan, sent, values, removed)
    decided = {e.name.lower(): e.rule for e in plan.headers}
    cookie_note = "; ".join(
        f"{e.name} removed by {e.rule}" if e.value is None else f"{e.name} ← {e.rule}"
        for e in plan.cookies
        if e.value is not None or e in removed
    )
    yield "  as it would leave the proxy:"
    yield f"    {sent.method} {sent.path} {sent.http_version}"
    for key, shown in sent.headers.items(multi=True):
        note = ""
        if key.lower() in decided:
            note = f"   ← {decided[key.lower()]}"
        elif key.lower() == "cookie" and cookie_note:
            note = f"   ({cookie_note})"
        yield f"    {key}: {shown}{note}"
    for e in plan.headers:
        if e.value is None and e in removed:
            yield f"    (removed) {e.name}   ← {e.rule}"
    yield from _body_lines(plan, sent, notes, removed)
    for line in notes:
        if isinstance(line, Skipped):
            yield f"  note: {line}"
    if flow.response is not None:
        rule = verdict(config.on_response, flow.response, plan.streaming)
        if not applies(rule, plan.uses):
            yield f"  response {flow.response.status_code}: {PASS}: {ACTIONS[PASS]}"
        else:
            assert rule is not None
            action = REFRESH if rule.action == REFRESH_CAPTCHA else rule.action
            refreshed = " and ".join(sorted(rule.refreshes & plan.uses))
            by = " (by its first event)" if rule.first_event is not None else ""
            yield f"  response {flow.response.status_code}{by}: {action}: {ACTIONS[action].format(values=refreshed)}"


def _body_lines(plan: Plan, sent: http.Request, notes: list[str], removed: set[Edit]) -> Iterator[str]:
    """The body fields the rules set, as they would leave the proxy, and those they removed."""
    if not plan.body or any(isinstance(line, BodySkipped) for line in notes):
        return
    skipped = {line.what for line in notes if isinstance(line, Skipped)}
    try:
        doc = jsonbody.read_object(sent)
    except jsonbody.NotEditable:
        return
    yield "    body (JSON):"
    for e in plan.body:
        if e.value is None:
            if e in removed:
                yield f"      (removed) {e.name}   ← {e.rule}"
        elif f"body {e.name}" not in skipped:
            found, value = _field(doc, e.name.split("."))
            if found:  # (not when a later edit removed what holds it)
                yield f"      {e.name}: {json.dumps(value, ensure_ascii=False)}   ← {e.rule}"


def _field(doc: Any, path: list[str]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return False, None
        doc = doc[key]
    return True, doc


def requests_from_args(args: argparse.Namespace) -> list[http.HTTPFlow]:
    if args.flows:
        return flows_from_file(Path(args.flows))
    if args.curl:
        return [flow_from_curl(args.curl)]
    if not args.request or len(args.request) != 2:
        raise InputError("give --flows FILE, --curl 'curl ...', or METHOD URL")
    method, url = args.request
    headers = [_header(h, "header") for h in args.header or []]
    return [make_flow(method, url, headers, args.data)]


def _header(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise InputError(f"bad {what} {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()
