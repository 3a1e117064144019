"""When a test runs far longer than any test should, print where everything is waiting.

pytest-timeout (configured in pyproject.toml) fails such a test; before it does, this
prints every thread's stack and, more to the point for async tests, every asyncio task's
stack, so a hang seen only in CI leaves enough behind to be understood.
"""

from __future__ import annotations

import asyncio
import faulthandler
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

REPORT_AFTER_S = 300.0
_current: dict[str, object] = {}
_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def _watch() -> None:
    reported: object = None
    while True:
        time.sleep(5)
        nodeid, started = _current.get("nodeid"), _current.get("started")
        if nodeid is None or nodeid is reported or not isinstance(started, float):
            continue
        if time.monotonic() - started < REPORT_AFTER_S:
            continue
        reported = nodeid
        print(f"\n+++ {nodeid} still running after {REPORT_AFTER_S:g}s", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for loop in list(_loops):
            if loop.is_running():
                # Run in the loop's own thread: a loop waiting in select() wakes up for it;
                # one blocked in a synchronous call is already shown by the thread dump.
                loop.call_soon_threadsafe(_dump_tasks, loop)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _current.update(nodeid=item.nodeid, started=time.monotonic())
    yield
    _current.update(nodeid=None)


def pytest_configure(config: pytest.Config) -> None:
    run_forever = asyncio.BaseEventLoop.run_forever

    def run_forever_noted(self: asyncio.BaseEventLoop) -> None:
        _loops.add(self)  # every loop the tests run, to find its tasks later
        run_forever(self)

    asyncio.BaseEventLoop.run_forever = run_forever_noted  # type: ignore[method-assign]
    threading.Thread(target=_watch, name="hang-report", daemon=True).start()
