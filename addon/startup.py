"""Options mitmproxy could not set stop the start, instead of a proxy that rewrites nothing.

mitmproxy keeps `--set name=value` for an option that no addon has added yet in
`options.deferred`, and applies it when a script adds the option. When that fails
(`--set rules=a --set rules=b`: "Received multiple values"; `--set retry_timeout=abc`),
the error is raised inside mitmproxy's script loader, which drops it: the script is
left out of the addon chain and the proxy runs on without it, rewriting nothing and
saying nothing. This part looks, right after the script has loaded, for options that
exist now but are still deferred, and logs mitmproxy's own error for them; at start-up
mitmproxy's error check then stops the proxy with exit status 1.

An option no addon declares (`--set retry_timout=30`) stays deferred for ever, in silence.
Once every script has loaded (the `running` hook: mitmproxy loads the scripts while it reads its
options, before it runs), a `--set` option that is still unknown is an error naming the nearest
known one, and the start stops the same way. Two kinds only get a warning: options of another of
mitmproxy's tools (`--set flow_detail=0`, mitmdump's, given to mitmweb: one command line or
config.yaml often serves them all), and options from mitmproxy's config.yaml. They are told apart
from `--set` by what mitmproxy keeps: `--set` values unconverted, in `optmanager._UnconvertedStrings`
(11.0.2, 12.3.1); without that class every unknown option counts as given with `--set`.
"""

from __future__ import annotations

import asyncio
import difflib
import logging

from mitmproxy import ctx, exceptions

from addon.mitm import helpers

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

    def running(self) -> None:
        known = list(ctx.options.keys())
        unknown = sorted((name, value) for name, value in ctx.options.deferred.items() if name not in ctx.options)
        given = helpers.given_with_set()
        for name, value in unknown:
            tool = _other_tool(name, known)
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            if tool is not None:
                logger.warning(f"option {name} is one of {tool}'s; this tool of mitmproxy ignores it")
            elif given is object or isinstance(value, given):
                logger.error(f"unknown option {name} (--set {name}=…): neither mitmproxy nor a script it loaded has "
                             f"it{hint}. The proxy does not start with an option it would ignore.")  # fmt: skip
            else:
                logger.warning(f"unknown option {name} in mitmproxy's config.yaml: neither mitmproxy nor a script "
                               f"it loaded has it{hint}; it is ignored")  # fmt: skip


# mitmproxy's tools, each with an option only it declares and the prefixes of the options only it declares
TOOLS = {
    "mitmdump": ("flow_detail", ("flow_detail", "dumper_")),
    "mitmweb": ("web_port", ("web_",)),
    "mitmproxy's console": ("console_layout", ("console_",)),
}


def _other_tool(name: str, known: list[str]) -> str | None:
    """The tool of mitmproxy's that declares this option, when it is not the one running."""
    for tool, (mark, prefixes) in TOOLS.items():
        if name.startswith(prefixes) and mark not in known:
            return tool
    return None
