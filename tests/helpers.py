"""Shared test helpers: rules files written into a temporary folder."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository

# the rules file of issue 16, as written there (the e2e test points its host at the local upstream)
ISSUE_16_RULES = """\
values:
  captcha: {command: ["./mint-recaptcha"], ttl: 110}
  cf_clearance: {file: cf_clearance.txt}
rules:
  - name: arena
    match: {host: arena.example.com, path: /nextjs-api/stream/*}
    headers: {User-Agent: "Mozilla/5.0 …"}
    cookies: {cf_clearance: "{cf_clearance}", arena-auth-prod-v1: "{token}"}
    body: {recaptchaV3Token: "{captcha}"}
tokens: {file: tokens.txt}
on_response:
  - match: {status: 403, body: "(?i)just a moment"}
    action: refresh
    values: [cf_clearance]
  - match: {status: 403, body: "(?i)recaptcha validation failed"}
    action: refresh
    values: [captcha]
  - match: {status: [401, 403]}
    action: rotate
"""

CLOCK = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d"  # a time as `status` shows it: the date only when not today

TOKENS = ["tok-alpha-000000001111", "tok-bravo-000000002222", "tok-charlie-0000003333"]


# two exits (upstream proxies), a's password from the environment as EXIT_PW (docs/exits.md)
TWO_EXITS = """\
exits:
  - name: a
    url: http://exit-user:{env:EXIT_PW}@127.0.0.1:3128
  - name: b
    url: https://10.0.0.2:8443
"""

# a file of two token pools: arena's token in a cookie, openai's in a header
POOLS = """\
rules:
  - name: arena
    match: {host: arena.example}
    cookies: {session: "{token:arena}"}
  - name: openai
    match: {host: api.example}
    headers: {Authorization: "Bearer {token:openai}"}
tokens:
  arena: {file: tokens.txt, strategy: sticky}
  openai: {file: openai.txt}
"""

def write_rules(folder: Path, rules: str, tokens: list[str] | None = None, captcha: str | None = "cap-test-value-9999") -> Path:
    """Write rules.yaml (dedented) plus tokens.txt and captcha.txt beside it."""
    (folder / "tokens.txt").write_text("\n".join(TOKENS if tokens is None else tokens) + "\n")
    if captcha is not None:
        (folder / "captcha.txt").write_text(captcha + "\n")
    path = folder / "rules.yaml"
    path.write_text(textwrap.dedent(rules))
    return path


def compressed_json(encoding: str, size: int) -> bytes:
    """`{"stream": true, "pad": "   …"}` of about `size` bytes (whole MiB of padding), compressed with `encoding` (gzip, deflate, br, zstd)
    a MiB at a time: small to make and to send, big when decoded whole."""
    import zlib

    import brotli
    from mitmproxy.net.encoding import encode

    head, tail = b'{"stream": true, "pad": "', b'"}'
    mib = b" " * (1 << 20)
    pieces = [head, *([mib] * ((size - len(head) - len(tail)) // len(mib))), tail]
    if encoding == "zstd":  # frames one after the other decode as one body
        frames = {len(p): encode(p, "zstd") for p in pieces}
        return b"".join(frames[len(p)] if p is mib else encode(p, "zstd") for p in pieces)
    if encoding == "br":
        c = brotli.Compressor(quality=5)
        return b"".join(c.process(p) for p in pieces) + c.finish()
    z = zlib.compressobj(6, zlib.DEFLATED, {"gzip": 31, "deflate": 15}[encoding])
    return b"".join(z.compress(p) for p in pieces) + z.flush()


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def jwt(claims, signature: str = "c2lnbmF0dXJl") -> str:
    """A token that is a JWT with these claims (the signature is not checked by anyone)."""
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{signature}"


def session(obj) -> str:
    """A Supabase-style session cookie value: `base64-` and the JSON."""
    return "base64-" + base64.b64encode(json.dumps(obj).encode()).decode()
