"""Sessions kept alive: an upstream's Set-Cookie for the cookie that carried `{token}` renews that account.

An account is a token of the tokens file; its health stays keyed by that token's hash
(tokenfile.token_key), whatever value it is sent with. When the upstream answers a request with
`Set-Cookie` for a cookie whose whole value was `{token}` (a rule's `cookies: {session: "{token}"}`),
the new value is the account's from then on: requests put it where `{token}` goes (`applied`), and
that Set-Cookie is taken off the answer before it reaches the client (`responseheaders`), which never
gets an account's secret. A value that is not a valid cookie value (RFC 6265), or that deletes the
cookie (empty, Max-Age 0 or less, Expires in the past), is not taken; the Set-Cookie is removed all the same.

Renewed values are kept in a file of this addon's own (`tokens.sessions.json` beside `tokens.state.json`:
JSON, written atomically, mode 0600, values as they are, keyed by token key), never the tokens file,
never the state file; a corrupt one means a start from the tokens file with a warning. With a shared
store (addon/tokens/shared.py) they go to the other proxies sealed with Fernet (AES-128-CBC and HMAC-SHA256,
from `cryptography`) under a key derived from `tokens.session_key`; without a key they stay on this
proxy, and the log says so once. Logs show at most a value's last four characters (masking.py).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from cryptography.fernet import Fernet, InvalidToken
from mitmproxy import http

from addon.rules.template import TOKEN
from addon.tokens.pool import TokenPool
from addon.util.fields import header_values
from addon.util.flowmap import FlowMap
from addon.util.masking import mask

logger = logging.getLogger(__name__)

VERSION = 1
MAX_FILE_BYTES = 64 * 2**20  # a renewed-values file over this is not read
# RFC 6265 4.1.1: cookie-value = *cookie-octet / ( DQUOTE *cookie-octet DQUOTE )
_COOKIE_VALUE = re.compile(r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+|"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"')


def cookie_value(set_cookie: str, name: str) -> str | None:
    """The value a Set-Cookie header sets for cookie `name`: "" when it is for `name` but sets nothing
    usable (not a valid cookie value, or it deletes the cookie); None when it is for another cookie."""
    pair, _, attributes = set_cookie.partition(";")
    got, eq, value = pair.partition("=")
    if not eq or got.strip() != name:
        return None
    value = value.strip(" \t")
    if not _COOKIE_VALUE.fullmatch(value) or value == '""':
        return ""
    for attribute in attributes.split(";"):
        key, _, arg = attribute.partition("=")
        key, arg = key.strip().lower(), arg.strip()
        if key == "max-age" and re.fullmatch(r"-?\d+", arg) and int(arg) <= 0:
            return ""
        if key == "expires":
            try:
                when = email.utils.parsedate_to_datetime(arg).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
            if when <= time.time():
                return ""
    return value


# a flow whose request carries an account's token in a cookie: the Sessions of its pool, the token,
# the cookies (one registry: a reload may rename or drop the pool while the request is out)
_CARRIED: FlowMap[http.HTTPFlow, tuple[Sessions, str, tuple[str, ...]]] = FlowMap()


def sealer(secret: str) -> Fernet:
    """The cipher of renewed values on a shared store, from `tokens.session_key`."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"mitm-rules sessions\0" + secret.encode()).digest()))


def take_renewed(flow: http.HTTPFlow) -> None:
    """Take an account's renewed value off the answer, in the pool whose token the request carried
    (the pipeline's first response hook: the client never gets it)."""
    carried = _CARRIED.pop(flow, None)
    if carried is not None:
        carried[0].take_from(flow, *carried[1:])


class Sessions:
    """Each account's current session value: its token in the file until the upstream sets another."""

    def __init__(self, pool: TokenPool) -> None:
        self.pool = pool
        self.follow = True  # tokens.follow_set_cookie
        self.path: Path | None = None  # where renewed values are kept
        self.cipher: Fernet | None = None  # from tokens.session_key
        self.publish: Callable[[str, str], None] | None = None  # a shared store's: (key, sealed value)
        self.by_key: dict[str, str] = {}  # token key -> its current value, when the upstream renewed it
        self._said_local = False
        self._said_unsealed = False

    # set-up (the loader)

    def use(self, path: Path | None, follow: bool, secret: str | None) -> None:
        """Keep renewed values in `path` (read now, when it is another file)."""
        self.follow = follow
        self.cipher = sealer(secret) if secret else None
        if path != self.path:
            self.path = path
            self.by_key = load_sessions(path) if path is not None else {}
            for key, value in self.by_key.items():
                self.pool.renewed(key, value)

    # the request side

    def applied(self, values: Mapping[str, str]) -> Mapping[str, str]:
        """The values to put into a request: `{token}` as the account's current value (follow_set_cookie:
        false: the value in the tokens file)."""
        if not self.by_key or not self.follow or TOKEN not in values:
            return values
        current = self.by_key.get(self.pool.key_of(values[TOKEN]))  # (every request with a token passes here)
        return values if current is None else {**values, TOKEN: current}

    def carried(self, flow: http.HTTPFlow, token_cookies: tuple[str, ...], values: Mapping[str, str]) -> None:
        """This flow's request carries the token of `values` in these cookies (the plan's whose whole
        value is {token}; if any)."""
        if self.follow and TOKEN in values and token_cookies:
            _CARRIED[flow] = (self, values[TOKEN], token_cookies)

    # the response side

    def take_from(self, flow: http.HTTPFlow, token: str, names: tuple[str, ...]) -> None:
        """Take the renewed value of the account whose `token` the request carried in these cookies off
        the answer: the client never gets it."""
        if flow.response is None:
            return
        fields = header_values(flow.response.headers, b"set-cookie")
        kept, renewed = [], None
        for field in fields:
            for name in names:
                value = cookie_value(field, name)
                if value is not None:
                    break
            else:
                kept.append(field)
                continue
            if value:
                renewed = value  # the last one wins, as in a browser
            else:
                logger.warning(f"{self.pool.label}: {mask(token)}: the upstream's Set-Cookie for {name} is not a valid cookie "
                               "value (or deletes the cookie); not taken, not passed on")
        if len(kept) == len(fields):
            return
        flow.response.headers.set_all("set-cookie", kept)
        if renewed is not None:
            self.take(self.pool.key_of(token), renewed, shown=mask(token))

    def take(self, key: str, value: str, shown: str | None = None, elsewhere: bool = False) -> None:
        """`value` is this account's from now on (`elsewhere`: another proxy renewed it)."""
        if self.by_key.get(key, None) == value or (key not in self.by_key and self._file_token(key) == value):
            return
        self.by_key[key] = value
        self.pool.renewed(key, value)
        shown = shown or self._shown(key)
        how = "through another proxy" if elsewhere else "by the upstream's Set-Cookie"
        logger.info(f"{self.pool.label}: {shown}: session renewed {how} (now {mask(value)})")
        self._save()
        if not elsewhere:
            self._share(key, value)

    def from_store(self, key: str, sealed: str) -> None:
        """A value another proxy renewed, sealed (a shared store's follower)."""
        if self.cipher is None or not self.follow:
            return
        try:
            value = self.cipher.decrypt(sealed.encode()).decode()
        except (InvalidToken, UnicodeDecodeError, ValueError):
            if not self._said_unsealed:
                self._said_unsealed = True
                logger.warning("tokens: a renewed session value on the shared store cannot be opened with this "
                               "proxy's tokens.session_key (another key?); such values are skipped")
            return
        if _COOKIE_VALUE.fullmatch(value):
            self.take(key, value, elsewhere=True)

    def _share(self, key: str, value: str) -> None:
        if self.publish is None:
            return
        if self.cipher is None:
            if not self._said_local:
                self._said_local = True
                logger.warning("tokens: renewed session values stay on this proxy: the other proxies on the shared "
                               "store do not get them without tokens.session_key ({env:NAME})")
            return
        self.publish(key, self.cipher.encrypt(value.encode()).decode())

    def _file_token(self, key: str) -> str | None:
        i = self.pool.list.key_position.get(key)
        return None if i is None else self.pool.list.tokens[i]

    def _shown(self, key: str) -> str:
        token = self._file_token(key)
        return mask(token) if token is not None else f"token {key[:8]}…"

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            save_sessions(self.path, self.by_key)
        except OSError as e:
            logger.warning(f"tokens: cannot write {self.path} ({e.strerror or e}); renewed session values are "
                           "kept in memory only until it can be written")


def load_sessions(path: Path) -> dict[str, str]:
    """The renewed values kept in `path`, or {} (with a warning when the file is there but not usable)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"over {MAX_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("sessions"), dict):
            raise ValueError("not a file this version wrote")
        sessions = data["sessions"]
        bad = [k for k, v in sessions.items() if not isinstance(v, str) or not _COOKIE_VALUE.fullmatch(v)]
        if bad:
            raise ValueError(f"the entry {bad[0][:8]}… is not a cookie value")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        logger.warning(f"tokens: cannot use the renewed session values in {path} ({e}); every account starts "
                       "with its value in the tokens file")
        return {}
    return dict(sessions)


def save_sessions(path: Path, by_key: Mapping[str, str]) -> None:
    """Write the renewed values atomically, readable by this user only (0600).

    Raises:
        OSError: the folder is not writable, the disk is full, ...
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "sessions": dict(by_key)}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
