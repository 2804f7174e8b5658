import asyncio
import logging
import sys
from pathlib import Path

import pytest

from addon.captcha import CaptchaSource
from addon.config import CaptchaSpec


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


def spec(tmp_path, **kw):
    return CaptchaSpec(ttl=kw.pop("ttl", 100), timeout=kw.pop("timeout", 10), cwd=tmp_path, **kw)


def test_command_runs_once_for_concurrent_requests_and_is_reused_for_ttl(tmp_path):
    clock = Clock()
    source = CaptchaSource(spec(tmp_path, command=script(tmp_path, COUNTING)), clock)

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
    source = CaptchaSource(spec(tmp_path, ttl=0, command=script(tmp_path, COUNTING)))

    async def main():
        return [await source.get() for _ in range(3)]

    assert asyncio.run(main()) == ["cap-value-00000001", "cap-value-00000002", "cap-value-00000003"]


def test_file_and_env_sources(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("\ufeffcap-from-file\n")
    monkeypatch.setenv("CAP_TEST", " cap-from-env ")
    assert asyncio.run(CaptchaSource(spec(tmp_path, file=tmp_path / "c.txt")).get()) == "cap-from-file"
    assert asyncio.run(CaptchaSource(spec(tmp_path, env="CAP_TEST")).get()) == "cap-from-env"


def test_invalidate_reads_the_file_again(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one")
    source = CaptchaSource(spec(tmp_path, file=path))
    assert asyncio.run(source.get()) == "one"
    path.write_text("two")
    assert asyncio.run(source.get()) == "one"
    source.invalidate()
    assert asyncio.run(source.get()) == "two"


@pytest.mark.parametrize(
    "body, timeout, message",
    [
        ("import time; time.sleep(5)", 0.3, "failed: timed out after 0.3 s"),
        ("import sys; print('x-secret-out'); sys.exit('bad things')", 10, "failed: exit status 1 (bad things)"),
        ("pass", 10, "gave an empty value"),
        ("print('a'); print('b')", 10, "gave a value with a line break"),
    ],
)
def test_failures_are_logged_and_give_none(tmp_path, caplog, body, timeout, message):
    source = CaptchaSource(spec(tmp_path, timeout=timeout, command=script(tmp_path, body)))
    with caplog.at_level(logging.INFO):
        assert asyncio.run(source.get()) is None
    assert message in caplog.text
    assert "requests go on without" in caplog.text
    assert "x-secret-out" not in caplog.text


def test_missing_file_at_fetch_time(tmp_path, caplog):
    source = CaptchaSource(spec(tmp_path, file=tmp_path / "gone.txt"))
    assert asyncio.run(source.get()) is None
    assert f"captcha: file {tmp_path}/gone.txt failed: cannot read it" in caplog.text


def test_log_shows_only_the_last_four_characters(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CAP_TEST", "cap-0123456789abcdef")
    with caplog.at_level(logging.INFO):
        asyncio.run(CaptchaSource(spec(tmp_path, env="CAP_TEST")).get())
    assert "…cdef" in caplog.text and "0123456789" not in caplog.text


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_file_or_the_environment_is_read_without_giving_way_to_other_tasks(tmp_path, monkeypatch, source):
    (tmp_path / "c.txt").write_text("cap-from-file\n")
    monkeypatch.setenv("CAP_TEST", "cap-from-env")
    captcha = CaptchaSource(spec(tmp_path, **({"file": tmp_path / "c.txt"} if source == "file" else {"env": "CAP_TEST"})))

    async def main() -> list[str]:
        order: list[str] = []

        async def other() -> None:
            order.append("another task")

        task = asyncio.ensure_future(other())
        await captcha.fresh(stale=None)  # as a retry asks for it
        order.append("value read")
        await task
        return order

    assert asyncio.run(main()) == ["value read", "another task"]
