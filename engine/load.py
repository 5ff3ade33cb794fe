"""Closed-loop load: keep N requests in flight, replacing each finished one at once.

This is the Artificial Analysis system-load-test discipline. Raising N starts the extra
requests immediately; lowering it takes effect as requests complete (they are not replaced
until fewer than N are in flight), never by cancelling work or draining first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class ClosedLoop:
    """Schedules coroutines from ``launch`` so that ``target`` of them run at once.

    ``launch()`` returns the next request's coroutine, or ``None`` when no more may start
    (a request budget is spent); :meth:`run` returns once that happened and all have ended,
    or once :meth:`stop` was called and the in-flight ones were cancelled.
    """

    def __init__(self, target: int, launch: Callable[[], Coroutine[Any, Any, None] | None]):
        self.target = target
        self._launch = launch
        self._tasks: set[asyncio.Task] = set()
        self._exhausted = False
        self._stopping = False
        self._finished: asyncio.Future | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def set_target(self, target: int) -> None:
        self.target = target
        self._fill()

    def _fill(self) -> None:
        while not (self._stopping or self._exhausted) and len(self._tasks) < self.target:
            coro = self._launch()
            if coro is None:
                self._exhausted = True
                break
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._on_done)
        self._check_finished()

    def _on_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._fill()  # the replacement starts in the same callback: no drain, no extra hop

    def _check_finished(self) -> None:
        done = (self._exhausted or self._stopping) and not self._tasks
        if done and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    async def run(self) -> None:
        self._finished = asyncio.get_running_loop().create_future()
        self._fill()
        await self._finished

    async def stop(self) -> None:
        """Start nothing more, cancel what is in flight and wait until it has wound down."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._check_finished()
