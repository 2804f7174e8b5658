"""Recovery's parts that need no process (the replays themselves are in tests/e2e): what the
client's flow is given, what the next attempt draws, and the options: what a retry may take, and
whether its answer streams."""

import asyncio
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addon.pipeline import Pipeline
from addon.recovery import streamed
from addon.recovery.recovery import Recovery
from addon.recovery.replay import Limits
from addon.recovery.retry import Action
from addon.recovery.streamed import take_response
from addon.request.rewriter import Rewriter
from addon.rules.records import REFRESH, ROTATE
from addon.runtime.loader import Runtime
from addon.tokens.tokenfile import token_key
from helpers import TOKENS, write_rules

RULES = """\
rules:
  - match: {host: a.com}
    headers: {X-Captcha: "{captcha}"}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt, max_attempts: 5}
captcha: {command: [./fetch.sh], ttl: 300}
"""


def refused_flow():
    f = tflow.tflow(resp=True)
    f.request.timestamp_start = 1000.0
    f.response.status_code, f.response.timestamp_start, f.response.timestamp_end = 403, 1000.010, 1000.018
    return f


# the time mitmweb shows is response.timestamp_end - request.timestamp_start
def test_the_client_gets_the_retry_answer_ending_when_the_recovery_did(monkeypatch):
    f = refused_flow()
    retry = tflow.tresp(status_code=200, content=b'{"ok": true}')
    retry.timestamp_start, retry.timestamp_end = 1001.0, 1001.2
    monkeypatch.setattr(streamed.time, "time", lambda: 1001.25)
    take_response(f, retry)
    assert (f.response.status_code, f.response.content) == (200, b'{"ok": true}')
    assert (f.response.timestamp_start, f.response.timestamp_end) == (1001.0, 1001.25)


def test_a_client_given_its_own_refusal_after_a_failed_retry_waited_for_it_too(monkeypatch):
    f = refused_flow()
    monkeypatch.setattr(streamed.time, "time", lambda: 1121.0)  # the retry was hung up after 120 s
    take_response(f, f.response)
    assert (f.response.status_code, f.response.timestamp_start, f.response.timestamp_end) == (403, 1000.010, 1121.0)


@pytest.fixture
def recover(tmp_path):
    fetch = tmp_path / "fetch.sh"
    fetch.write_text("#!/bin/sh\necho run >> runs.txt\necho cap-recovery-test-$(wc -l < runs.txt)\n")
    fetch.chmod(0o755)
    loader = Runtime()
    rewriter = Rewriter(loader)
    addon = Recovery(loader, rewriter)
    with taddons.context(loader, rewriter, addon) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, RULES)))
        yield addon


def runs(tmp_path) -> int:
    path = tmp_path / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


SENT = {"token": TOKENS[0], "captcha": "cap-recovery-test-0"}


@pytest.mark.parametrize(
    "action, tried, expected, fetched",
    [
        # another token and a fresh captcha value
        (Action(ROTATE), {TOKENS[0]}, {"token": TOKENS[1], "captcha": "cap-recovery-test-1"}, 1),
        # every token tried: no retry follows, so no captcha value is fetched for it
        (Action(ROTATE), set(TOKENS), "no other token to try", 0),
        # the same token and a fresh captcha value
        (Action(REFRESH, frozenset({"captcha"})), {TOKENS[0]}, {"token": TOKENS[0], "captcha": "cap-recovery-test-1"}, 1),
    ],
    ids=["rotate", "rotate, no token left", "refresh captcha"],
)
def test_next_values_fetch_a_captcha_value_only_for_a_retry(recover, tmp_path, action, tried, expected, fetched):
    assert asyncio.run(recover.retrier.next_values(recover.runtime.pool, action, dict(SENT), set(tried))) == expected
    assert runs(tmp_path) == fetched


CLEARANCE_RULES = """\
rules:
  - match: {host: a.com}
    cookies: {session: "{token}", cf_clearance: "{cf_clearance}"}
    body: {recaptchaV3Token: "{captcha}"}
tokens: {file: tokens.txt}
values:
  captcha: {command: [./fetch.sh], ttl: 300}
  cf_clearance: {file: cf.txt, wait: 0.5}
on_response:
  - {match: {status: 403, body: "(?i)just a moment"}, action: refresh, values: [cf_clearance]}
  - {match: {status: 403}, action: refresh}
"""


@pytest.fixture
def refresh(tmp_path):
    fetch = tmp_path / "fetch.sh"
    fetch.write_text("#!/bin/sh\necho run >> runs.txt\necho cap-recovery-test-$(wc -l < runs.txt)\n")
    fetch.chmod(0o755)
    (tmp_path / "cf.txt").write_text("cf-clearance-old-0001\n")
    loader = Runtime()
    rewriter = Rewriter(loader)
    addon = Recovery(loader, rewriter)
    with taddons.context(loader, rewriter, addon) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, CLEARANCE_RULES)))
        yield addon


SENT_CF = {"token": TOKENS[0], "captcha": "cap-recovery-test-0", "cf_clearance": "cf-clearance-old-0001"}


def test_a_refresh_fetches_only_its_values_and_keeps_the_token(refresh, tmp_path):
    (tmp_path / "cf.txt").write_text("cf-clearance-new-0002\n")  # as a browser script rewrites it
    got = asyncio.run(refresh.retrier.next_values(refresh.runtime.pool, Action(REFRESH, frozenset({"cf_clearance"})), dict(SENT_CF), {TOKENS[0]}))
    assert got == {**SENT_CF, "cf_clearance": "cf-clearance-new-0002"}
    assert runs(tmp_path) == 0  # the captcha command did not run


def test_a_refresh_that_brings_no_new_value_is_no_retry(refresh, tmp_path):
    got = asyncio.run(refresh.retrier.next_values(refresh.runtime.pool, Action(REFRESH, frozenset({"cf_clearance"})), dict(SENT_CF), {TOKENS[0]}))
    assert got == "no new cf_clearance value"  # the file did not change within its wait


def test_refresh_without_values_refreshes_every_refreshable_value_the_request_used(refresh, tmp_path):
    config = refresh.runtime.config
    challenge = tflow.tresp(status_code=403, content=b"Just a moment...")
    other = tflow.tresp(status_code=403, content=b"forbidden")
    assert refresh._action(config, challenge, SENT_CF) == Action(REFRESH, frozenset({"cf_clearance"}))
    assert refresh._action(config, other, SENT_CF) == Action(REFRESH, frozenset({"captcha", "cf_clearance"}))
    assert refresh._action(config, other, {"token": TOKENS[0], "captcha": "c"}) == Action(REFRESH, frozenset({"captcha"}))
    assert refresh._action(config, other, {"token": TOKENS[0]}) is None  # nothing to refresh: handed on


def test_an_attempt_shows_the_token_and_the_new_values_masked(refresh):
    attempt = refresh._attempt_of(200, {**SENT_CF, "cf_clearance": "cf-clearance-new-0002"}, frozenset({"cf_clearance"}))
    assert attempt.describe() == f"200 with …{TOKENS[0][-4:]} (new cf_clearance …0002)"
    assert refresh._attempt_of(403, {"captcha": "cap-recovery-test-0001"}).describe() == "403 with captcha …0001"


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


DISABLE_RULES = RULES + """\
on_response:
  - match: {status: 401}
    action: disable
  - match: {status: 403}
    action: rotate
"""


# a streamed answer judged by its first event (the FirstEventHook's side that needs no process)
STREAM_RULES = """\
rules:
  - match: {host: a.com, path: /v1/*}
    cookies: {session: "{token}"}
  - match: {host: a.com}
    headers: {User-Agent: browser}
tokens: {file: tokens.txt}
on_response:
  - match: {status: 200, first_event: "(?m)^event: error$"}
    action: rotate
"""


@pytest.mark.parametrize("status, action", [(401, Action(ROTATE, retire=True)), (403, Action(ROTATE)), (200, None)])
def test_a_disable_rule_asks_for_a_rotation_that_retires_the_token(tmp_path, status, action):
    (tmp_path / "fetch.sh").write_text("#!/bin/sh\necho cap-recovery-test\n")
    (tmp_path / "fetch.sh").chmod(0o755)
    loader = Runtime()
    addon = Recovery(loader, Rewriter(loader))
    with taddons.context(loader, addon) as tctx:
        tctx.configure(loader, rules=str(write_rules(tmp_path, DISABLE_RULES)))
        assert addon._action(loader.config, tflow.tresp(status_code=status), dict(SENT)) == action


def test_a_retirement_is_logged_once_with_the_last_four_characters(recover, caplog):
    response = tflow.tresp(status_code=401)
    pool = recover.runtime.pool.tokens
    with caplog.at_level("INFO"):
        recover.runtime.pool.refused(TOKENS[0], response.status_code, None, retire=True)
        recover.runtime.pool.refused(TOKENS[0], response.status_code, None, retire=True)  # a second answer of one in flight
    assert pool.status()[0][0] == "retired"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [
        f"tokens: …{TOKENS[0][-4:]} retired (an on_response rule with action disable, the last 401); it is not used "
        f"again until tokens.enable …{TOKENS[0][-4:]}"
    ]
    assert TOKENS[0] not in caplog.text


def _streamed_answer(pipeline, path="/v1/chat", status=200, content_type="text/event-stream"):
    """A flow through the request hook, with its answer's headers just come (and the hook run)."""
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.path = "a.com", 443, path
    asyncio.run(pipeline.request(f))
    f.response = tflow.tresp(status_code=status, content=None)
    f.response.headers["content-type"] = content_type
    pipeline.responseheaders(f)
    return f


@pytest.mark.parametrize(
    "path, status, content_type, held",
    [
        ("/v1/chat", 200, "text/event-stream", True),
        ("/free", 200, "text/event-stream", False),  # no token in it: a rotate cannot retry it
        ("/v1/chat", 201, "text/event-stream", False),  # no rule for the status
        ("/v1/chat", 200, "application/json", False),  # not streamed (nor a streaming request)
    ],
)
def test_only_a_streamed_answer_a_first_event_rule_could_retry_is_held_for_its_first_event(
    tmp_path, path, status, content_type, held
):
    from addon.mitm import httplayer

    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, rules=str(write_rules(tmp_path, STREAM_RULES)), stream_retries=True, retry_timeout=7)
        f = _streamed_answer(pipeline, path, status, content_type)
        hold = httplayer.first_event_held(f)
        assert (hold is not None and hold[0].sse and hold[1] == 7.0) is held
        tctx.configure(pipeline, stream_retries=False)  # the fallback: held whole instead, and judged when complete
        f = _streamed_answer(pipeline, path, status, content_type)
        assert httplayer.first_event_held(f) is None and (not f.response.stream) is (held or content_type == "application/json")


def test_an_answer_whose_first_event_passes_goes_on_as_it_was(tmp_path):
    from addon.mitm.handover import Handover

    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, rules=str(write_rules(tmp_path, STREAM_RULES)), stream_retries=True)
        f = _streamed_answer(pipeline)
        stream = f.response.stream
        handover = Handover(f)
        handover.head = b'data: {"n": 1}\n\nevent: error\ndata: {}\n\n'  # an error, but not the first event
        asyncio.run(pipeline.mitm_rules_first_event(handover))
        assert not handover.answered and f.response.stream is stream and f.response.raw_content is None
        assert f not in pipeline.rewriter.sent  # judged: the response hook has nothing more to do


def test_an_answer_whose_first_event_does_not_come_in_time_goes_on_unjudged(tmp_path):
    from addon.mitm.handover import Handover

    pipeline = Pipeline()
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, rules=str(write_rules(tmp_path, STREAM_RULES)), stream_retries=True)
        f = _streamed_answer(pipeline)
        handover = Handover(f)
        handover.unjudged = "its first event did not come within 7 s (retry_timeout)"
        asyncio.run(pipeline.mitm_rules_first_event(handover))
        assert f.comment.splitlines()[-1] == "· not judged: its first event did not come within 7 s (retry_timeout)"
        assert f not in pipeline.rewriter.sent


# what a recovery counts (addon/runtime/counters.py): each retry answered here as the test says (the
# replays themselves are tests/e2e's), the rest as in the proxy: the request hook, then the response hook

COUNTED_RULES = """\
rules:
  - match: {host: a.com}
    headers: {X-Captcha: "{captcha}"}
    cookies: {session: "{token}"}
tokens: {file: tokens.txt}
captcha: {command: [./fetch.sh], ttl: 300}
on_response:
  - {match: {status: 401}, action: disable}
  - {match: {status: 403}, action: rotate}
"""
FETCH = "#!/bin/sh\necho run >> runs.txt\necho cap-recovery-test-$(wc -l < runs.txt)\n"


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A request to a.com answered `first`, each retry answered by the next of `retries` (a status, or
    None: the attempt failed); returns the runtime, the client's flow and the tokens the retries took."""

    def run(first: int, retries: list[int | None], fetch: str = FETCH, before=lambda runtime: None):
        (tmp_path / "fetch.sh").write_text(fetch)
        (tmp_path / "fetch.sh").chmod(0o755)
        loader = Runtime()
        rewriter = Rewriter(loader)
        addon = Recovery(loader, rewriter)
        answers, tried = list(retries), []

        async def attempt(flow, sent, values, n, config, client, pool, exit=None):
            tried.append(values["token"])
            status = answers.pop(0)
            if status is None:
                return SimpleNamespace(failure="connection reset", flow=tflow.tflow(), streaming=False)
            return SimpleNamespace(failure=None, flow=tflow.tflow(resp=tflow.tresp(status_code=status)), streaming=False)

        monkeypatch.setattr(addon.retrier, "_attempt", attempt)
        with taddons.context(loader, rewriter, addon) as tctx:
            tctx.configure(loader, rules=str(write_rules(tmp_path, COUNTED_RULES)))
            before(loader)
            flow = tflow.tflow()
            flow.request.host, flow.request.port, flow.request.path = "a.com", 443, "/v1/chat?key=k"

            async def go():
                await rewriter.request(flow)
                flow.response = tflow.tresp(status_code=first)
                await addon.response(flow)

            asyncio.run(go())
        assert answers == []  # every answer the test gave was asked for
        return loader, flow, tried

    return run


def test_a_recovered_refusal_counts_a_rotation_a_retry_and_a_recovery(counted):
    runtime, flow, tried = counted(403, [200])
    assert (flow.response.status_code, tried) == (200, [TOKENS[1]])
    counters = runtime.counters
    assert counters.requests == {"default": 1}
    assert counters.refusals == {("default", "rotate"): 1}
    assert counters.retries == {"default": 1}
    assert counters.recoveries == {("default", "recovered"): 1}
    assert sum(counters.recovery_seconds.counts) == 1
    (recent,) = counters.recent
    assert (recent.method, recent.path, recent.recovered) == ("GET", "/v1/chat", True)
    assert recent.attempts == f"403 with …{TOKENS[0][-4:]} → 200 with …{TOKENS[1][-4:]}"
    assert counters.totals() == (1, 1, 1)
    # and the refused token's status, for `mitm-rules status`
    assert runtime.pool.tokens.health[token_key(TOKENS[0])].last_status == 403


def test_a_recovery_that_gives_up_hands_the_last_refusal_on_as_a_pass(counted):
    runtime, flow, tried = counted(403, [403, 403])  # max_attempts 3
    assert (flow.response.status_code, tried) == (403, [TOKENS[1], TOKENS[2]])
    counters = runtime.counters
    assert counters.refusals == {("default", "rotate"): 2, ("default", "pass"): 1}
    assert counters.retries == {"default": 2}
    assert counters.recoveries == {("default", "failed"): 1}
    assert counters.totals() == (1, 3, 0)
    assert counters.recent[0].recovered is False


def test_a_disable_rule_counts_as_disable(counted):
    runtime, flow, tried = counted(401, [200])
    assert (flow.response.status_code, tried) == (200, [TOKENS[1]])
    assert runtime.counters.refusals == {("default", "disable"): 1}
    assert runtime.counters.recoveries == {("default", "recovered"): 1}
    assert runtime.pool.tokens.status()[0][0] == "retired"
    assert runtime.pool.tokens.health[token_key(TOKENS[0])].last_status == 401


def test_a_retry_that_failed_leaves_no_refusal_to_pass(counted):
    runtime, flow, tried = counted(403, [None])
    assert (flow.response.status_code, tried) == (403, [TOKENS[1]])  # the client gets the refusal it replaced
    counters = runtime.counters
    assert counters.refusals == {("default", "rotate"): 1}
    assert counters.retries == {"default": 1}
    assert counters.recoveries == {("default", "failed"): 1}


def test_a_refusal_not_retried_as_its_captcha_was_missing_counts_as_a_pass(counted):
    runtime, flow, tried = counted(403, [], fetch="#!/bin/sh\nexit 3\n")
    assert (flow.response.status_code, tried) == (403, [])
    counters = runtime.counters
    assert counters.requests == {"default": 1}
    assert counters.refusals == {("default", "pass"): 1}
    assert (counters.retries, counters.recoveries) == ({}, {})
    assert counters.value_refreshes == {("captcha", "failed"): 1}  # the request's fetch, which failed


def test_a_refusal_with_the_breaker_open_counts_as_a_pass_and_no_retry(counted):
    runtime, flow, tried = counted(403, [], before=lambda runtime: runtime.pool.breaker.opened(runtime.pool.breaker.clock() + 300))
    assert (flow.response.status_code, tried) == (403, [])
    assert runtime.counters.refusals == {("default", "pass"): 1}
    assert runtime.counters.retries == {}
