"""The status document (document.py) as people read it: the rows of `mitm-rules status`."""

from __future__ import annotations

import datetime
from typing import Any

from addon.tokens.health import counts_text


def ago(iso: str | None, now: datetime.datetime) -> str:
    """ "14:59:30 (in 4 min)", "14:50:00 (5 min ago)"; the date too when it is not today."""
    if iso is None:
        return ""
    at = datetime.datetime.fromisoformat(iso)
    shown = at.strftime("%H:%M:%S") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M:%S")
    seconds = (at - now).total_seconds()
    span = _span(abs(seconds))
    return f"{shown} ({'in ' + span if seconds > 0 else span + ' ago'})"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def rows(document: dict[str, Any]) -> list[str]:
    """The status as `mitm-rules status` prints it: a table of tokens per pool, then the values."""
    now = datetime.datetime.fromisoformat(document["now"])
    out = [f"{document['rules']}, {now.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}"]
    if not document["pools"]:
        out.append("no token pool (the rules file has no tokens: section)")
    for pool in document["pools"]:
        out += ["", f"pool {pool['name']}: {pool['file']} ({pool['strategy']}), health in {pool['health_kept_in']}"]
        if pool.get("state_exists") is False:
            out.append("  no state yet: every token is active until a proxy has run with this file")
        out += _token_table(pool["tokens"], now)
        if pool["tokens_not_shown"]:
            out.append(f"  … and {pool['tokens_not_shown']} more")
        out.append(f"  {counts_text(pool['counts'])}; breaker {_breaker(pool['breaker'], now)}")
    if document.get("exits"):
        out += ["", "exits:"]
        for exit in document["exits"]:
            out.append(f"  {exit['name']}: {exit['url']}, {_exit(exit, now)}")
    if document["values"]:
        out += ["", "values:"]
        for value in document["values"]:
            out.append(f"  {value['name']}: {_value(value, now)}")
    counters = document.get("counters")
    if counters:
        requests, refusals = sum(counters["requests"].values()), sum(sum(a.values()) for a in counters["refusals"].values())
        recovered = sum(o["recovered"] for o in counters["recoveries"].values())
        out += ["", f"since {ago(counters['since'], now)}: {requests} requests rewritten, {refusals} refused, "
                    f"{recovered} recovered"]  # fmt: skip
    return out


def _token_table(tokens: list[dict[str, Any]], now: datetime.datetime) -> list[str]:
    if not tokens:
        return ["  (the tokens file has no tokens)"]
    routed = any(t.get("exit") for t in tokens)
    table = [("token", *(("exit",) if routed else ()), "state", "until", "ok", "refused", "last refusal", "")]
    for t in tokens:
        until = ago(t["until"], now) if t["until"] else ""
        if t["state"] == "expired":
            until = "since " + ago(t["expires"], now)
        elif t["retired"]:
            until = "since " + ago(t["retired"]["at"], now)
        last = t["last_refusal"]
        last_text = f"{last['status'] or 'refused'} at {ago(last['at'], now)}" if last else ""
        why = t["retired"]["reason"] if t["retired"] else ""
        exit = (t["exit"],) if routed else ()
        table.append((t["token"], *exit, t["state"], until, str(t["successes"]), str(t["refusals"]), last_text, why))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {4, 5} if routed else {3, 4}  # counts
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in table]  # fmt: skip


def _breaker(breaker: dict[str, Any], now: datetime.datetime) -> str:
    if breaker["open"]:
        return f"open until {ago(breaker['until'], now)}: refusals go to the client as they are"
    rule = breaker["opens_after"]
    if rule is None:
        return "closed"
    return f"closed (opens when {rule['tokens']} different tokens are refused within {rule['within_seconds']:g} s)"


def _exit(exit: dict[str, Any], now: datetime.datetime) -> str:
    bound = ", ".join(f"{n} of pool {pool}" for pool, n in exit["tokens"].items()) or "no token"
    if exit["state"] is None:
        return f"{bound} bound to it (its state is a running proxy's: its status server's /status and page)"
    state = f"resting until {ago(exit['until'], now)}" if exit["state"] == "resting" else "up"
    text = f"{state}; {bound}; {exit['successes']} ok, {exit['refusals']} refused, {exit['failures']} could not connect"
    if exit["last_failure"]:
        text += f" (last at {ago(exit['last_failure']['at'], now)}: {exit['last_failure']['why']})"
    return text


def _value(value: dict[str, Any], now: datetime.datetime) -> str:
    text = value["source"] + (f", ttl {value['ttl_seconds']:g} s" if value["ttl_seconds"] else "")
    if value.get("fetched_at"):
        text += f"; last value {ago(value['fetched_at'], now)}"
    if value.get("expires_at"):
        text += f", fetched anew at {ago(value['expires_at'], now)}"
    if value.get("failed_at"):
        text += f"; last failure {ago(value['failed_at'], now)}"
    return text
