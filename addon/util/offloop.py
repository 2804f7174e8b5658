"""Blocking work (reading and parsing files, writing the state file) off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a thread of its own, a daemon: a file that blocks for ever cannot hold up the exit
    (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not done.cancelled():
            done.set_result(value) if ok else done.set_exception(value)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:
            loop.call_soon_threadsafe(deliver, False, e)
        else:
            loop.call_soon_threadsafe(deliver, True, result)

    threading.Thread(target=run, name=f"mitm-rules {getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await done
