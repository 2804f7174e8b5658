"""The status server: `/metrics` for Prometheus, `/status` (the status document as JSON) and `/`, a page
for people, on an address of its own, in the proxy's process and event loop.

Off by default. `--set status_listen=127.0.0.1:9464` (a port alone means 127.0.0.1) starts it; an address
that is not loopback needs `--set status_password=…`, asked for as a Bearer token or as the password of
HTTP basic authentication (any user name). A wrong or missing password is a 401 with no detail; an
unknown path a 404. A port that is taken stops the start with exit status 1, as a bad option does
(mitmproxy's start-up check exits on an error logged before the proxy runs); changed at run time
(mitmweb's options), the server moves, or stays where it was with an error in the log. Without a
password it answers only requests whose Host is an address or `localhost`: a web page elsewhere could
otherwise point a name of its own at 127.0.0.1 and read the status through a browser (DNS rebinding).

It is served by tornado, the web framework mitmweb itself runs on. Nothing it serves is computed on a
request's path: the hooks keep counts (addon/runtime/counters.py), and the documents are built when
they are asked for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass
from importlib import resources

import tornado.httpserver
import tornado.netutil
import tornado.web
from mitmproxy import ctx, exceptions

from addon.runtime.loader import Runtime
from addon.status import document
from addon.status.metrics import CONTENT_TYPE, exposition, registry_of

logger = logging.getLogger(__name__)

PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}  # fmt: skip


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve anywhere
            return False


def parse_listen(text: str) -> Listen | None:
    """`status_listen` as an address (None: off).

    Raises:
        ValueError: it is not `PORT`, `HOST:PORT` or `[IPV6]:PORT`.
    """
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not (bracketed and _is_ip(host))):
        raise ValueError(f"{text!r} is not PORT, HOST:PORT or [IPV6]:PORT")
    return Listen(host, int(port))


def _names_this_machine(host: str) -> bool:
    """A Host header's name, as a request to a server without a password may give it: an address, or localhost."""
    return host.lower() in ("localhost", "localhost.") or _is_ip(host.strip("[]"))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _Handler(tornado.web.RequestHandler):
    server: StatusServer

    def initialize(self, server: StatusServer) -> None:
        self.server = server

    def prepare(self) -> None:
        if not self.server.password and not _names_this_machine(self.request.host_name):
            # a page elsewhere that has its own name point at 127.0.0.1 (DNS rebinding) would read the status
            raise tornado.web.HTTPError(403)
        if not self.server.authorized(self.request.headers.get("Authorization", "")):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="mitm-rules status"')
            self.finish()

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(f"{status_code}\n")  # no traceback, no detail


class MetricsHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(exposition(self.server.registry))


class StatusHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(self.server.document(), ensure_ascii=False))


class PageHandler(_Handler):
    def get(self) -> None:
        name, kind = PAGE_FILES[self.request.path]
        self.set_header("Content-Type", kind)
        self.set_header("Content-Security-Policy", "default-src 'self'")  # nothing from outside, no inline script
        self.finish(resources.files("addon.status").joinpath("page", name).read_bytes())


class NotFound(_Handler):
    """Any other path (after the password: an unknown path tells nothing to who has none)."""

    def get(self) -> None:
        raise tornado.web.HTTPError(404)

    head = post = put = delete = patch = options = get


class StatusServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = registry_of(runtime)
        self.listen: Listen | None = None
        self.password = b""
        self._http: tornado.httpserver.HTTPServer | None = None
        self._serving: Listen | None = None
        self.listening: tuple[tuple[str, int], ...] = ()  # the addresses bound (the guard keeps proxy clients off them)
        self._running = False
        self._closing: set[asyncio.Task] = set()  # connections being closed after a stop

    def load(self, loader) -> None:
        loader.add_option(
            "status_listen", str, "",
            "Where the status server listens: HOST:PORT, [IPV6]:PORT, or a port alone for 127.0.0.1 (empty: no "
            "server). It serves /metrics (Prometheus), /status (JSON) and / (a page). An address that is not "
            "loopback needs status_password.",
        )  # fmt: skip
        loader.add_option(
            "status_password", str, "",
            "The status server's password, asked for as a Bearer token or as the password of HTTP basic "
            "authentication (any user name). Empty: none, which only a loopback status_listen allows.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if not updated & {"status_listen", "status_password"}:
            return
        try:
            listen = parse_listen(ctx.options.status_listen)
        except ValueError as e:
            raise exceptions.OptionsError(f"status_listen: {e}") from None
        password = ctx.options.status_password.encode()
        if listen is not None and not listen.loopback and not password:
            raise exceptions.OptionsError(
                f"status_listen: {listen} is not a loopback address, and the status server shows token health "
                "and counts to whoever reaches it: set status_password too (or listen on 127.0.0.1)"
            )
        self.listen, self.password = listen, password
        if self._running:
            self._start()

    def running(self) -> None:
        self._running = True
        self._start()

    def done(self) -> None:
        self._running = False
        self._stop()

    def authorized(self, header: str) -> bool:
        if not self.password:
            return True
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer":
            offered = given.strip().encode()
        elif scheme.lower() == "basic":
            try:
                offered = base64.b64decode(given.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(offered, self.password)

    def document(self) -> dict:
        return document.live(self.runtime, ctx.options.rules if "rules" in ctx.options else None)

    def _start(self) -> None:
        """Serve on `listen` (stop when it is None). An address that cannot be had is an error in the log,
        and a server already running stays where it was (the new sockets are bound before the old close)."""
        if self._serving == self.listen and self._http is not None:
            return
        if self.listen is None:
            self._stop()
            return
        if self._serving is not None and self._serving.port == self.listen.port:
            self._stop()  # the same port on another address of this machine: let go of it first
        app = tornado.web.Application(
            [(r"/metrics", MetricsHandler, {"server": self}), (r"/status", StatusHandler, {"server": self}),
             (r"/(?:page\.js|page\.css)?", PageHandler, {"server": self})],
            default_handler_class=NotFound, default_handler_args={"server": self},
            log_function=lambda handler: None,  # no access log: mitmproxy's log is the proxy's
        )  # fmt: skip
        try:
            sockets = tornado.netutil.bind_sockets(self.listen.port, self.listen.host)
        except OSError as e:
            logger.error(f"status server: cannot listen on {self.listen}: {e.strerror or e}. Give status_listen "
                         "another address (or none for no status server).")  # fmt: skip
            return
        self._stop()
        http = tornado.httpserver.HTTPServer(app, xheaders=False, max_body_size=0, max_header_size=16 * 1024,
                                             idle_connection_timeout=60)  # fmt: skip
        http.add_sockets(sockets)
        self._http, self._serving = http, self.listen
        self.listening = tuple(s.getsockname()[:2] for s in sockets)
        auth = "password" if self.password else "no password"
        logger.info(f"status server: http://{self.listen}/ (/metrics, /status), {auth}")

    def _stop(self) -> None:
        """Stop listening, and close the connections kept alive (a scraper's would go on reading this
        server's counts after a reload of the script, or after the address moved)."""
        if self._http is not None:
            self._http.stop()
            try:
                task = asyncio.get_running_loop().create_task(self._http.close_all_connections())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            except RuntimeError:  # no event loop (tests): nothing is connected
                pass
            self._http, self._serving, self.listening = None, None, ()
