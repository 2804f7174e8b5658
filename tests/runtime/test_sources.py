import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

from addon.rules.records import ValueSpec
from addon.runtime.counters import Counters
from addon.runtime.sources import ValueSource


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def script(tmp_path: Path, body: str) -> tuple[str, ...]:
    path = tmp_path / "fetch.py"
    path.write_text(body)
    return (sys.executable, str(path))


COUNTING = """\
import pathlib, time
p = pathlib.Path("runs.txt")
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
time.sleep(0.2)
print(f"  cap-value-{n:08d}  ")
"""


def spec(tmp_path, **kw):  # a captcha source unless told
    return ValueSpec(name=kw.pop("name", "captcha"), ttl=kw.pop("ttl", 100), timeout=kw.pop("timeout", 10), cwd=tmp_path, **kw)


def test_command_runs_once_for_concurrent_requests_and_is_reused_for_ttl(tmp_path):
    clock = Clock()
    source = ValueSource(spec(tmp_path, command=script(tmp_path, COUNTING)), clock)

    async def main():
        first = await asyncio.gather(*(source.get() for _ in range(100)))
        clock.now += 99
        again = await source.get()
        clock.now += 2  # past the ttl
        fresh = await source.get()
        return first, again, fresh

    first, again, fresh = asyncio.run(main())
    assert set(first) == {"cap-value-00000001"}  # stripped, and one run for all hundred
    assert again == "cap-value-00000001"
    assert fresh == "cap-value-00000002"
    assert (tmp_path / "runs.txt").read_text() == "2"


def test_ttl_zero_fetches_every_time(tmp_path):
    source = ValueSource(spec(tmp_path, ttl=0, command=script(tmp_path, COUNTING)))

    async def main():
        return [await source.get() for _ in range(3)]

    assert asyncio.run(main()) == ["cap-value-00000001", "cap-value-00000002", "cap-value-00000003"]


def test_file_and_env_sources(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("\ufeffcap-from-file\n")
    monkeypatch.setenv("CAP_TEST", " cap-from-env ")
    assert asyncio.run(ValueSource(spec(tmp_path, file=tmp_path / "c.txt")).get()) == "cap-from-file"
    assert asyncio.run(ValueSource(spec(tmp_path, env="CAP_TEST")).get()) == "cap-from-env"


def test_invalidate_reads_the_file_again(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one")
    source = ValueSource(spec(tmp_path, file=path))
    assert asyncio.run(source.get()) == "one"
    path.write_text("two")
    assert asyncio.run(source.get()) == "one"
    source.invalidate()
    assert asyncio.run(source.get()) == "two"


@pytest.mark.parametrize(
    "body, timeout, message",
    [
        ("import time; time.sleep(5)", 0.3, "failed: timed out after 0.3 s"),
        ("import sys; print('x-secret-out'); sys.exit('x-secret-err')", 10,
         "failed: exit status 1 (13 byte(s) on stderr, not logged: they may hold a secret)"),
        ("import sys; sys.exit(3)", 10, "failed: exit status 3; requests go on"),
        ("pass", 10, "gave an empty value"),
        ("print('a'); print('b')", 10, "gave a value with a line break"),
    ],
)
def test_failures_are_logged_and_give_none(tmp_path, caplog, body, timeout, message):
    source = ValueSource(spec(tmp_path, timeout=timeout, command=script(tmp_path, body)))
    with caplog.at_level(logging.INFO):
        assert asyncio.run(source.get()) is None
    assert message in caplog.text
    assert "requests go on without" in caplog.text
    assert "x-secret-out" not in caplog.text and "x-secret-err" not in caplog.text


# attacks 1 and 4 of issue 23: a command that leaves a child holding its output, or prints without end

ORPHAN = ("sh", "-c", "sleep 100000 & echo $! > child.pid; wait")  # the sleep holds stdout and stderr


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("ttl", [0, 100], ids=["ttl 0", "ttl 100"])
def test_a_timed_out_command_is_killed_with_its_children_and_the_request_goes_on(tmp_path, caplog, ttl):
    source = ValueSource(spec(tmp_path, ttl=ttl, timeout=0.5, command=ORPHAN))

    async def main():
        return await asyncio.wait_for(source.get(), 60)  # before: until the child died, 100000 s

    assert asyncio.run(main()) is None
    assert "failed: timed out after 0.5 s; it and the processes it started were killed" in caplog.text
    child = int((tmp_path / "child.pid").read_text())
    for _ in range(100):
        if gone(child):
            break
        time.sleep(0.1)
    assert gone(child)


def peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> float:
    """MiB, since the last reset."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024


def test_a_command_printing_500_mib_fails_and_memory_stays_flat(tmp_path, caplog):
    body = "import sys\nchunk = b'x' * 2**20\nfor _ in range(500):\n    sys.stdout.buffer.write(chunk)\n"
    source = ValueSource(spec(tmp_path, timeout=60, command=script(tmp_path, body)))
    peak_rss_reset()
    before = peak_rss()
    assert asyncio.run(source.get()) is None
    assert peak_rss() - before < 100  # before: + 500 MiB (and more), all of it read
    assert "failed: printed more than 64 KiB (a value is one line); it and the processes it started were killed" in caplog.text


def test_64_kib_is_still_a_value(tmp_path):
    body = "print('v' * (64 * 1024 - 1))"  # and the line break: 64 KiB
    assert asyncio.run(ValueSource(spec(tmp_path, command=script(tmp_path, body))).get()) == "v" * (64 * 1024 - 1)


def test_a_command_output_that_is_not_utf8_is_refused_as_a_files_is(tmp_path, caplog):
    body = "import sys; sys.stdout.buffer.write(b'cap-\\xff\\xfe-value')"
    assert asyncio.run(ValueSource(spec(tmp_path, command=script(tmp_path, body))).get()) is None
    assert "failed: its output is not UTF-8 text (byte 4); requests go on without the captcha value" in caplog.text


def test_missing_file_at_fetch_time(tmp_path, caplog):
    source = ValueSource(spec(tmp_path, file=tmp_path / "gone.txt"))
    assert asyncio.run(source.get()) is None
    assert f"captcha: file {tmp_path}/gone.txt failed: cannot read it" in caplog.text


def test_log_shows_only_the_last_four_characters(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CAP_TEST", "cap-0123456789abcdef")
    with caplog.at_level(logging.INFO):
        asyncio.run(ValueSource(spec(tmp_path, env="CAP_TEST")).get())
    assert "…cdef" in caplog.text and "0123456789" not in caplog.text


def test_a_file_value_is_kept_until_the_file_changes_whatever_the_ttl(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one")
    clock = Clock()
    source = ValueSource(spec(tmp_path, ttl=0, file=path), clock)
    assert asyncio.run(source.get()) == "one"
    path.write_text("two")
    clock.now += 10**6
    assert source.cached() == "one"  # ttl 0 is no expiry for a file: the loader's watcher invalidates it
    source.invalidate()
    assert asyncio.run(source.get()) == "two"


def test_a_secret_value_is_masked_and_a_public_one_shown(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CF_TEST", "cf-clearance-0123456789")
    with caplog.at_level(logging.INFO):
        asyncio.run(ValueSource(spec(tmp_path, name="cf", env="CF_TEST")).get())
        asyncio.run(ValueSource(spec(tmp_path, name="shown", env="CF_TEST", secret=False)).get())
    assert "cf: new value …6789 from environment variable CF_TEST" in caplog.text
    assert "shown: new value cf-clearance-0123456789 from environment variable CF_TEST" in caplog.text


# refreshes: refusals of the same value share one; a refresh that brings nothing new gives None
@pytest.mark.parametrize("ttl", [0, 100], ids=["ttl 0", "ttl 100"])
def test_concurrent_refreshes_of_the_same_value_run_the_command_once(tmp_path, ttl):
    source = ValueSource(spec(tmp_path, ttl=ttl, command=script(tmp_path, COUNTING)))

    async def main():
        stale = await source.get()
        return stale, await asyncio.gather(*(source.refresh(stale) for _ in range(20)))

    stale, fresh = asyncio.run(main())
    assert stale == "cap-value-00000001" and set(fresh) == {"cap-value-00000002"}
    assert (tmp_path / "runs.txt").read_text() == "2"


def test_a_late_refusal_of_a_value_already_replaced_gets_the_new_one(tmp_path):
    source = ValueSource(spec(tmp_path, ttl=100, command=script(tmp_path, COUNTING)))

    async def main():
        stale = await source.get()
        first = await source.refresh(stale)
        return first, await source.refresh(stale)  # after the first refresh is over

    assert asyncio.run(main()) == ("cap-value-00000002", "cap-value-00000002")
    assert (tmp_path / "runs.txt").read_text() == "2"


def test_a_command_that_gives_the_same_value_again_is_no_refresh(tmp_path, caplog):
    source = ValueSource(spec(tmp_path, command=script(tmp_path, "print('cap-always-the-same')")))

    async def main():
        return await source.refresh(await source.get())

    assert asyncio.run(main()) is None
    assert "captcha: command " in caplog.text and "gave the value the upstream turned down again" in caplog.text


def test_a_failing_command_is_no_refresh(tmp_path):
    source = ValueSource(spec(tmp_path, command=script(tmp_path, "import sys; sys.exit(3)")))
    assert asyncio.run(source.refresh("cap-old")) is None


def test_a_file_refresh_waits_for_the_file_to_change(tmp_path):
    path = tmp_path / "cf.txt"
    path.write_text("cf-old-value\n")
    source = ValueSource(spec(tmp_path, name="cf", file=path, wait=30))

    async def browser_script():  # rewrites the file a little later, emptying it first
        await asyncio.sleep(0.3)
        path.write_text("")
        await asyncio.sleep(0.3)
        path.write_text("cf-new-value\n")

    async def main():
        stale = await source.get()
        writer = asyncio.ensure_future(browser_script())
        got = await asyncio.gather(*(source.refresh(stale) for _ in range(5)))
        await writer
        return got

    assert asyncio.run(main()) == ["cf-new-value"] * 5
    assert source.cached() == "cf-new-value"


def test_a_file_that_changed_already_is_read_at_once(tmp_path):
    path = tmp_path / "cf.txt"
    path.write_text("cf-old-value")
    source = ValueSource(spec(tmp_path, name="cf", file=path, wait=30))
    asyncio.run(source.get())
    path.write_text("cf-new-value")
    assert asyncio.run(source.refresh("cf-old-value")) == "cf-new-value"


def test_a_file_that_does_not_change_within_its_wait_is_no_refresh(tmp_path, caplog):
    path = tmp_path / "cf.txt"
    path.write_text("cf-old-value")
    source = ValueSource(spec(tmp_path, name="cf", file=path, wait=0.3))
    assert asyncio.run(source.refresh("cf-old-value")) is None
    assert f"cf: file {path} did not change within 0.3 s (wait); the refusal goes to the client" in caplog.text


def test_an_environment_variable_is_no_refresh(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CF_TEST", "cf-from-env")
    assert asyncio.run(ValueSource(spec(tmp_path, name="cf", env="CF_TEST")).refresh("cf-from-env")) is None
    assert "cf: cannot be refreshed: an environment variable does not change under a running proxy" in caplog.text


def test_a_retry_with_another_token_runs_a_command_again_but_takes_a_file_as_it_is(tmp_path):
    command = ValueSource(spec(tmp_path, command=script(tmp_path, COUNTING)))
    (tmp_path / "cf.txt").write_text("cf-value")
    file = ValueSource(spec(tmp_path, name="cf", file=tmp_path / "cf.txt"))

    async def main():
        stale = await command.get()
        return await command.fresh(stale), await file.fresh(await file.get())

    assert asyncio.run(main()) == ("cap-value-00000002", "cf-value")


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_file_or_the_environment_is_read_without_giving_way_to_other_tasks(tmp_path, monkeypatch, source):
    (tmp_path / "c.txt").write_text("cap-from-file\n")
    monkeypatch.setenv("CAP_TEST", "cap-from-env")
    value = ValueSource(spec(tmp_path, **({"file": tmp_path / "c.txt"} if source == "file" else {"env": "CAP_TEST"})))

    async def main() -> list[str]:
        order: list[str] = []

        async def other() -> None:
            order.append("another task")

        task = asyncio.ensure_future(other())
        await value.fresh(stale=None)  # as a retry asks for it
        order.append("value read")
        await task
        return order

    assert asyncio.run(main()) == ["value read", "another task"]


def test_a_file_value_with_a_ttl_is_reused_within_it_and_read_again_after_it(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one")
    clock = Clock()
    source = ValueSource(spec(tmp_path, ttl=1, file=path), clock)
    assert asyncio.run(source.get()) == "one"
    path.write_text("two")  # and nobody says so (no loader's watcher here): only the ttl can bring it
    clock.now += 0.9
    assert source.cached() == "one" and asyncio.run(source.get()) == "one"  # within the ttl: not read again
    assert source.runs == 1
    clock.now += 0.2  # past the ttl
    assert source.cached() is None
    assert asyncio.run(source.get()) == "two"
    assert source.runs == 2
    clock.now += 0.9
    assert source.cached() == "two"  # kept for a ttl of its own
    clock.now += 0.2
    assert source.cached() is None


# what the status shows of a source: each fetch here counted as it ended, and when


def test_each_fetch_here_is_counted_and_timed_as_it_ended(tmp_path, monkeypatch):
    counters = Counters()
    good = ValueSource(spec(tmp_path, command=script(tmp_path, "print('cap-counted-0001')")), Clock())
    (tmp_path / "fail.py").write_text("import sys; sys.exit(3)")
    bad = ValueSource(spec(tmp_path, name="cf", command=(sys.executable, str(tmp_path / "fail.py"))))
    monkeypatch.setenv("CAP_TEST", "cap-from-env")
    env = ValueSource(spec(tmp_path, name="env", ttl=0, env="CAP_TEST"))
    for source in (good, bad, env):
        source.counters = counters
    assert (good.fetched_at, good.failed_at, good.expires_at) == (0.0, 0.0, None)  # nothing fetched yet

    before = time.time()
    assert asyncio.run(good.get()) == "cap-counted-0001"
    assert good.expires_at == pytest.approx(time.time() + 100, abs=1)  # its ttl (on a clock that stands still)
    assert asyncio.run(bad.get()) is None
    assert asyncio.run(env.get()) == "cap-from-env"
    assert asyncio.run(env.refresh("cap-from-env")) is None  # an environment variable cannot be refreshed
    assert counters.value_refreshes == {("captcha", "ok"): 1, ("cf", "failed"): 1, ("env", "ok"): 1, ("env", "failed"): 1}
    assert good.fetched_at >= before and good.failed_at == 0.0
    assert bad.failed_at >= before and bad.fetched_at == 0.0 and bad.expires_at is None
    assert env.expires_at is None  # (without a ttl: kept as long as the proxy runs)


def test_a_file_value_without_a_ttl_is_fetched_anew_only_when_it_changes(tmp_path):
    (tmp_path / "cf.txt").write_text("cf-value-0001\n")
    source = ValueSource(spec(tmp_path, name="cf", ttl=0, file=tmp_path / "cf.txt"))
    source.counters = Counters()
    assert asyncio.run(source.get()) == "cf-value-0001"
    assert source.expires_at is None and source.fetched_at > 0
    assert source.counters.value_refreshes == {("cf", "ok"): 1}
