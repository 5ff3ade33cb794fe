"""Load: closed loop (keep N requests in flight, replacing each finished one at once) or open
loop (requests at planned times, ``rate`` a second: :class:`OpenLoop`); a session drives
either through :class:`Load`.

This is the Artificial Analysis system-load-test discipline. Raising N starts the extra
requests immediately; lowering it takes effect as requests complete (they are not replaced
until fewer than N are in flight), never by cancelling work or draining first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import numpy as np


class Load(Protocol):
    """What a session asks of its load, closed loop or open."""

    @property
    def in_flight(self) -> int:
        """Requests started and not yet ended."""
        ...

    def set_target(self, target: float) -> None:
        """The level to hold from now on: requests in flight (closed loop, a whole number) or
        requests a second (open loop); 0 sends nothing new."""
        ...

    async def run(self) -> None:
        """Start requests until the ``launch`` function says no more, then return once they
        have ended; or return once :meth:`stop` was called."""
        ...

    async def stop(self) -> None:
        """Start nothing more, cancel what is in flight and wait until it has wound down."""
        ...


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


#: How long before its planned time an open loop starts a request: a backend that holds
#: sends (the HTTP ones) takes a connection and writes the headers meanwhile and sends the
#: body at the time itself; for any other, the session waits out the rest (to the tenth of a
#: millisecond, soaktop.engine.wakeups). Getting that far took about 1.3 ms at p50 on a busy
#: 2-core machine at 250 requests/s, and over 2 ms for more than 1 in 100; 5 ms left every
#: one of 1,000 ready in time. A request that takes longer goes as soon as it is ready, late.
PREPARE_NS = 5_000_000


class OpenLoop:
    """Open-loop load: requests go out at planned times, ``rate`` a second, whether or not the
    earlier ones have finished, as users arrive at a service.

    ``arrival`` ``"constant"`` spaces them evenly, ``"poisson"`` draws exponential gaps
    (seeded). ``launch(due_ns)`` returns the request's coroutine, told when it was due, so its
    latency runs from the planned time: a send that comes late (a busy client, or a wait for
    one of ``max_inflight`` slots) is counted, never hidden (no coordinated omission). It is
    called :data:`PREPARE_NS` ahead of that time, and the request waits for it.

    ``dues``: planned times given instead of a rate (a trace's: ns after :meth:`run` began,
    in order); the loop then ends when they do. A pause (target 0) holds them, and the ones
    left are due that much later on resume; any other target only resumes.
    """

    def __init__(self, rate: float, launch: Callable[[int], Coroutine[Any, Any, None] | None],
                 now_ns: Callable[[], int], arrival: str = "constant",
                 max_inflight: int | None = None, seed: int = 0,
                 dues: Iterable[int] | None = None) -> None:
        self.target = rate
        self._dues = iter(dues) if dues is not None else None
        self._origin_ns = 0  # when run() began: the dues count from it
        self._launch = launch
        self._now_ns = now_ns
        self._arrival = arrival
        self._max_inflight = max_inflight
        self._rng = np.random.default_rng(seed)
        self._tasks: set[asyncio.Task] = set()
        self._slot_freed = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopping = False
        self._due_ns: int | None = None  # the next request's planned time (see backlog)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def backlog(self) -> int:
        """Requests due and not sent yet: the next one, once its time has passed (it waits
        for one of ``max_inflight`` slots), and those planned since, at the rate's mean gap.
        With the in-flight ones, what the load owes the server: over-saturation detection
        (soaktop.engine.load.saturation) watches it grow."""
        if self._due_ns is None or self.target <= 0:
            return 0
        late_ns = self._now_ns() - self._due_ns
        return 0 if late_ns < 0 else 1 + int(late_ns * self.target / 1e9)

    def set_target(self, rate: float) -> None:
        """A new rate from now on (the next arrival is re-planned from this moment)."""
        self.target = rate
        self._changed.set()

    def _gap_ns(self) -> int:
        mean = 1e9 / self.target
        if self._arrival == "poisson":
            return max(1, int(self._rng.exponential(mean)))
        return max(1, int(mean))

    def _next_due(self, due: int | None) -> int | None:
        """The planned time after ``due`` (None: the first); None when the dues are spent."""
        if self._dues is None:
            return self._origin_ns if due is None else due + self._gap_ns()
        offset = next(self._dues, None)
        return None if offset is None else self._origin_ns + offset

    def _on_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def run(self) -> None:
        # the first planned time too leaves room to prepare its request
        self._origin_ns = self._now_ns() + PREPARE_NS
        due = self._next_due(None)
        while due is not None and not self._stopping:
            self._due_ns = due
            if self.target <= 0:  # paused: wait for a rate
                self._changed.clear()
                paused_ns = self._now_ns()
                await self._changed.wait()
                if self._dues is None:
                    due = self._now_ns()
                else:  # given times: the rest of them later by the pause
                    held = max(0, self._now_ns() - paused_ns)
                    self._origin_ns += held
                    due += held
                continue
            self._changed.clear()
            wait_s = (due - PREPARE_NS - self._now_ns()) / 1e9
            if wait_s > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=wait_s)
                    # the rate changed: re-plan (a pause, rate 0, is waited out above); given
                    # times stay as they were
                    if self._dues is None:
                        due = self._now_ns() + (self._gap_ns() if self.target > 0 else 0)
                    continue
                except asyncio.TimeoutError:
                    # its time came, but a stop or a pause may have come in the same
                    # iteration: a request launched after a stop would outlive the load (and
                    # its backend); after a pause, none is due (and rate 0 has no gap)
                    if self._stopping:
                        break
                    if self.target <= 0:
                        continue
            while self._max_inflight is not None and len(self._tasks) >= self._max_inflight:
                self._slot_freed.clear()  # due already: the wait for a slot will count
                await self._slot_freed.wait()
                if self._stopping:
                    return
            coro = self._launch(due)
            if coro is None:
                break
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._on_done)
            due = self._next_due(due)
        self._due_ns = None  # nothing more is planned
        while self._tasks and not self._stopping:  # a request budget is spent: let them end
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def stop(self) -> None:
        self._stopping = True
        self._slot_freed.set()
        self._changed.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
