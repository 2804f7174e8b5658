"""Options mitmproxy could not set, or that no addon declares, stop the start (end to end: tests/e2e/test_run_e2e.py)."""

import logging

from mitmproxy.test import taddons

from addon.pipeline import Pipeline


def ours(caplog) -> list[logging.LogRecord]:
    """The addon's log records (not, say, asyncio's about a child process an earlier test left)."""
    return [r for r in caplog.records if r.name.startswith("addon.")]


def test_an_unknown_option_from_the_command_line_is_an_error_naming_the_nearest(caplog):
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.options.set("retry_timout=30", "zzzz=1", defer=True)  # as mitmdump keeps `--set` it does not know
        pipeline.options_check.running()
    assert [(r.levelno, r.getMessage()) for r in ours(caplog)] == [
        (logging.ERROR, "unknown option retry_timout (--set retry_timout=…): neither mitmproxy nor a script it loaded "
                        "has it (did you mean retry_timeout?). The proxy does not start with an option it would ignore."),
        (logging.ERROR, "unknown option zzzz (--set zzzz=…): neither mitmproxy nor a script it loaded has it. "
                        "The proxy does not start with an option it would ignore."),
    ]  # fmt: skip
    assert "30" not in caplog.text  # a value is never shown: it may be a secret


def test_an_unknown_option_from_config_yaml_is_a_warning(caplog):
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.options.update_defer(stream_copy_limt="1m")  # as mitmproxy keeps config.yaml's options
        pipeline.options_check.running()
    assert [(r.levelno, r.getMessage()) for r in ours(caplog)] == [
        (logging.WARNING, "unknown option stream_copy_limt in mitmproxy's config.yaml: neither mitmproxy nor a script "
                          "it loaded has it (did you mean stream_copy_limit?); it is ignored"),
    ]  # fmt: skip


def test_options_that_are_known_are_not_reported(caplog):
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.options.set("retry_timeout=30", defer=True)
        pipeline.options_check.running()
    assert ours(caplog) == []


def test_an_option_of_another_of_mitmproxys_tools_is_a_warning(caplog):
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:  # mitmproxy's core options only: no dumper, web or console
        tctx.options.set("flow_detail=0", "web_port=8081", "console_layout=single", "dumper_filtr=~q", defer=True)
        pipeline.options_check.running()
    assert [(r.levelno, r.getMessage()) for r in ours(caplog)] == [
        (logging.WARNING, "option console_layout is one of mitmproxy's console's; this tool of mitmproxy ignores it"),
        (logging.WARNING, "option dumper_filtr is one of mitmdump's; this tool of mitmproxy ignores it"),
        (logging.WARNING, "option flow_detail is one of mitmdump's; this tool of mitmproxy ignores it"),
        (logging.WARNING, "option web_port is one of mitmweb's; this tool of mitmproxy ignores it"),
    ]
