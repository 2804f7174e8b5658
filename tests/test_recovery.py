"""The recovery's options: what a retry may take, and whether its answer streams."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addon.pipeline import Pipeline
from addon.replay import Limits


def test_defaults():
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        assert (tctx.options.retry_timeout, tctx.options.retry_idle_timeout, tctx.options.stream_retries) == (120, 300, True)
        tctx.configure(pipeline, retry_timeout=120)
        assert pipeline.recovery.limits == Limits(headers=120.0, idle=300.0)


def test_limits_follow_the_options():
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, retry_timeout=5, retry_idle_timeout=7)
        assert pipeline.recovery.limits == Limits(headers=5.0, idle=7.0)


@pytest.mark.parametrize("option", ["retry_timeout", "retry_idle_timeout"])
@pytest.mark.parametrize("value", [0, -3])
def test_limits_must_be_positive(option, value):
    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(pipeline, **{option: value})
        assert str(e.value) == f"{option} must be a positive number of seconds"
