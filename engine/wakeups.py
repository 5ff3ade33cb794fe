"""Waking at a planned moment to the tenth of a millisecond, for the sends an open loop or a
trace plans (``await until(t_ns)``).

asyncio's own timers wait in ``epoll_wait``, whose timeout is whole milliseconds rounded up:
a send planned at *t* wakes anywhere in [*t*, *t* + 1 ms), before any other delay, and that
spread alone spends the 1 ms a trace's sends are allowed at p99 (measured at 25 requests/s:
wake-ups 0.65 ms late at p50 and 1.35 ms at p99 with asyncio's timer). On Linux a
``timerfd`` armed at the moment itself (``CLOCK_MONOTONIC``, the clock of ``perf_counter_ns``;
nanoseconds, plus the kernel's 50 us timer slack) is one more descriptor in the loop's epoll
set: it turns readable at its time and wakes the loop then, with no thread and no GIL hand-off
(a waker thread did as well for timing and cost about 100 us of CPU a send more, measured
side by side). Elsewhere, or where the timerfd cannot be made, asyncio's timer does it.

Each event loop has one timerfd, armed for the earliest moment planned on it; a waiter
cancelled before its time leaves its entry until then (a few milliseconds: sends are planned
that far ahead), and is found done.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import os
import sys
import time
import weakref

#: Closer than this to its time, a wait returns at once: the wake-up costs more.
AT_ONCE_NS = 30_000

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    """libc's timerfd calls, where this is Linux and ``perf_counter_ns`` reads
    ``CLOCK_MONOTONIC`` (the timerfd's clock); None otherwise."""
    if not sys.platform.startswith("linux"):
        return None
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class _Timer:
    """One loop's timerfd and its plan: a heap of (time, sequence, future)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._fd = fd
        self._plan: list[tuple[int, int, asyncio.Future]] = []
        self._sequence = 0
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._fired)

    def add(self, t_ns: int, future: asyncio.Future) -> None:
        self._sequence += 1
        heapq.heappush(self._plan, (t_ns, self._sequence, future))
        if self._plan[0][1] == self._sequence:  # the new head: the timerfd is armed for it
            self._arm(t_ns)

    def _arm(self, t_ns: int) -> None:
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(t_ns, 10**9)
        _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the count of expirations; reading it re-arms readability
        except BlockingIOError:  # re-armed for later since it turned readable
            return
        plan, now = self._plan, time.perf_counter_ns()
        while plan and plan[0][0] <= now:
            future = heapq.heappop(plan)[2]
            if not future.done():  # done: cancelled while it waited
                future.set_result(None)
        if plan:
            self._arm(plan[0][0])


_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timer | None] = (
    weakref.WeakKeyDictionary())


def _timer(loop: asyncio.AbstractEventLoop) -> _Timer | None:
    """The loop's timer, made on first use; None where none can be (then asyncio's)."""
    try:
        return _timers[loop]
    except KeyError:
        pass
    timer = None
    fd = -1 if _LIBC is None else _LIBC.timerfd_create(_CLOCK_MONOTONIC,
                                                       _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd >= 0:
        try:
            timer = _Timer(loop, fd)
        except (NotImplementedError, OSError):  # a loop that watches no descriptors
            os.close(fd)
        else:
            weakref.finalize(loop, os.close, fd)
    _timers[loop] = timer
    return timer


async def until(t_ns: int) -> None:
    """Return at ``t_ns`` (a ``time.perf_counter_ns()`` reading); at once where it has passed
    or is under :data:`AT_ONCE_NS` away (the write a send then makes takes longer than that,
    so the send does not leave before its time)."""
    wait_ns = t_ns - time.perf_counter_ns()
    if wait_ns < AT_ONCE_NS:
        return
    loop = asyncio.get_running_loop()
    timer = _timer(loop)
    if timer is None:
        await asyncio.sleep(wait_ns / 1e9)
        while time.perf_counter_ns() < t_ns:  # a timer may wake a hair early
            await asyncio.sleep(0)
        return
    future = loop.create_future()
    timer.add(t_ns, future)
    await future
