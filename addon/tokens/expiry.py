"""When a token expires, read from the token itself: a JWT's `exp`, or a session cookie value that
carries one (Supabase-style `base64-` followed by base64 JSON with `expires_at` or an
`access_token` JWT). Nothing is verified: the time only keeps the proxy from sending a token the
upstream would refuse anyway. Read once, where the tokens file is read (tokens.TokenList).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

SESSION_PREFIX = "base64-"


def expires_at(token: str) -> float | None:
    """The token's expiry (seconds since the epoch), or None when it carries none."""
    if token.startswith(SESSION_PREFIX):
        session = _b64_json(token[len(SESSION_PREFIX) :])
        if not isinstance(session, dict):
            return None
        if _is_time(session.get("expires_at")):
            return float(session["expires_at"])
        access = session.get("access_token")
        return _jwt_expiry(access) if isinstance(access, str) else None
    return _jwt_expiry(token)


def might_expire(token: str) -> bool:
    """Cheap: could `expires_at` find a time? (Most tokens are neither, and a file may hold a million.)"""
    return token.startswith(SESSION_PREFIX) or (token.startswith("eyJ") and token.count(".") == 2)


def _jwt_expiry(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3 or not token.startswith("eyJ"):  # a JWT's header is base64 JSON: {"…
        return None
    claims = _b64_json(parts[1])
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if _is_time(exp) else None


def _b64_json(text: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e11
