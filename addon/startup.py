"""Options mitmproxy could not set stop the start, instead of a proxy that rewrites nothing.

mitmproxy keeps `--set name=value` for an option that no addon has added yet in
`options.deferred`, and applies it when a script adds the option. When that fails
(`--set rules=a --set rules=b`: "Received multiple values"; `--set retry_timeout=abc`),
the error is raised inside mitmproxy's script loader, which drops it: the script is
left out of the addon chain and the proxy runs on without it, rewriting nothing and
saying nothing. This part looks, right after the script has loaded, for options that
exist now but are still deferred, and logs mitmproxy's own error for them; at start-up
mitmproxy's error check then stops the proxy with exit status 1.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions

logger = logging.getLogger(__name__)


class OptionCheck:
    def load(self, loader) -> None:
        # mitmproxy applies the deferred values after every `load` of the script has run
        try:
            asyncio.get_running_loop().call_soon(self.check)
        except RuntimeError:  # no event loop: not loaded by a running mitmproxy (tests, scripts)
            pass

    def check(self) -> None:
        stuck = sorted(name for name in ctx.options.deferred if name in ctx.options)
        if not stuck:
            return
        try:
            ctx.options.process_deferred()  # again, to get mitmproxy's own words for the problem
            problem = "mitmproxy did not apply them"
        except exceptions.OptionsError as e:
            problem = str(e)
        logger.error(
            f"mitmproxy could not set the rules addon's options: {problem} (not applied: {', '.join(stuck)}). "
            "The rules addon is not running: requests would pass unchanged. Give each option once, with a valid value."
        )
