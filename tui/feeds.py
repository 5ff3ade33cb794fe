"""Where a dashboard's numbers come from: a live session, a record replayed, or a record
another soaktop is writing. Each feed runs the same listeners, LiveStats, History and
SessionSummary, so every screen works on all three (docs/design.md, "One event stream").

A screen reads a feed once a frame: ``now_ns()``, ``in_flight()``, ``concurrency()``, the live
snapshot and the history window. The feed records one History point a second of its own
clock: the live one from its frame timer (:meth:`Feed.tick`), a replay for every second its
events pass (a seek included), an attach at each of the record's client samples (their
outline first, on a long record).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from soaktop.engine.errors import SoaktopError
from soaktop.engine.events import (
    ClientSample,
    Mark,
    Phase,
    RequestDone,
    SessionStart,
    TokensArrived,
)
from soaktop.engine.load.plans import plan_for, run_with_plan
from soaktop.engine.metrics.history import History
from soaktop.engine.metrics.live import BUCKET_NS, HISTORY_BUCKETS, LiveSnapshot, LiveStats
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.replay import Replay, Timeline
from soaktop.engine.records.skim import without_requests
from soaktop.engine.session import Session
from soaktop.engine.telemetry.live import GpuNow, LiveTelemetry, TelemetrySnapshot

CATCH_UP_S = 5  # a screen that stalled longer leaves the older seconds empty, not invented


class Feed:
    kind = "feed"

    def __init__(self) -> None:
        self.record_path: Path | None = None
        self.header: SessionStart | None = None
        self.errors: deque[RequestDone] = deque(maxlen=8)  # the last failed requests
        self._fresh()

    def _fresh(self) -> None:
        self.live, self.history, self.summary = LiveStats(), History(), SessionSummary()

    def listeners(self) -> list[Callable[[Any], None]]:
        return [self.live.add, self.history.add, self.summary.add, self._note]

    def _note(self, event: Any) -> None:
        if type(event) is TokensArrived:  # most of the stream: one check, then out
            return
        if isinstance(event, RequestDone) and event.error_class is not None:
            self.errors.append(event)
        elif isinstance(event, SessionStart):
            self.header = event

    # what a frame reads
    def now_ns(self) -> int:
        return 0

    def in_flight(self) -> int:
        return 0

    def concurrency(self) -> int:
        return self.live.phase.concurrency if self.live.phase else 0

    @property
    def duration_s(self) -> float | None:
        return self.header.config.get("duration_s") if self.header else None

    def snapshot(self) -> LiveSnapshot:
        return self.live.snapshot(self.now_ns())

    @property
    def ended(self) -> bool:
        """The run is over: its ``session_end`` came. A screen then stops at the run's end and
        shows the whole run and its summary."""
        return self.summary.end is not None

    @property
    def run_length_s(self) -> float | None:
        """How long the run lasted, once it has ended (the header says it)."""
        return self.summary.end.t_ns / 1e9 if self.summary.end is not None else None

    def tick(self) -> None:
        """Called every frame."""

    async def run(self) -> None:
        """Produce events until the feed ends."""


class LiveFeed(Feed):
    """A session running in the app's own event loop. ``start`` builds it (it may ask a
    server which models it serves, so it is awaited there, not before the screen is up)."""

    kind = "live"

    def __init__(self, start: Callable[[], Awaitable[Session]], plan_limit: int = 1024) -> None:
        super().__init__()
        self._start = start
        self._plan_limit = plan_limit
        self.session: Session | None = None
        self._recorded_s = 0

    def now_ns(self) -> int:
        """The session's clock, stopped at its end: a screen left open on a finished run must
        not record (and draw) seconds after it as if the run were idle."""
        if self.summary.end is not None:
            return self.summary.end.t_ns
        return self.session.now_ns() if self.session and self.session.started.is_set() else 0

    def in_flight(self) -> int:
        return self.session.in_flight if self.session else 0

    def concurrency(self) -> int:
        return self.session.concurrency if self.session else 0

    def tick(self) -> None:
        now_s = self.now_ns() // 10**9
        first = max(self._recorded_s + 1, now_s - CATCH_UP_S + 1)
        for second in range(first, now_s + 1):
            self.history.record(second, self.live.snapshot(second * 10**9))
        self._recorded_s = max(self._recorded_s, now_s)

    async def run(self) -> None:
        self.session = await self._start()
        for listener in self.listeners():
            self.session.add_listener(listener)
        self.record_path = self.session.record_path
        plan = plan_for(self.session.config, self.summary.phase, limit=self._plan_limit)
        await run_with_plan(self.session, plan)


class ReplayFeed(Feed):
    """A record played at a speed, with pause and seek (the replay screen's keys).

    Every second of the record gets its History point, whether the replay ticks it or a
    seek jumps over it: a seek re-feeds the record's events up to the target (back: from the
    start, on fresh listeners) but ticks only the stretch before it that the curves show, so
    a listener first in line (:class:`_Seconds`) takes the point of each second the events
    pass. A point is what the tick would have recorded, built cheaply: the request figures as
    LiveStats has them then (the events before the next one are all in), each GPU's latest
    sample, and tokens/s counted from the record's token times (a seek re-emits no token
    older than two minutes, so LiveStats has none to count there; where it has them, the
    count is the same). So the whole-run view after a seek is the run from its start, as
    playing straight there draws it, and a fast replay skips the GPUs' window figures
    (milliseconds a tick with 8 GPUs).
    """

    kind = "replay"

    def __init__(self, events: list[Any], speed: float = 1.0, path: Path | None = None) -> None:
        super().__init__()
        self.record_path = path
        self.timeline = Timeline(events)
        self._recorded_s = 0  # the newest second with a point (the replay ticks from 1 s)
        buckets = self.timeline.token_t // BUCKET_NS
        counts = np.bincount(buckets, weights=self.timeline.token_count).astype(np.int64)
        self._tokens_before = np.concatenate([[0], np.cumsum(counts)])  # per 100 ms bucket
        self.replay = Replay(self.timeline, self.listeners(), speed=speed, on_reset=self._reset,
                             ticks_ns=10**9, on_tick=self._second)

    def listeners(self) -> list[Callable[[Any], None]]:
        return [_Seconds(self).add, *super().listeners()]

    def _reset(self) -> None:
        self._fresh()
        self.errors.clear()
        self._recorded_s = 0
        self.replay.listeners = self.listeners()

    def _second(self, t_ns: int) -> None:
        self._points_until(t_ns // 10**9)

    def _points_until(self, second: int) -> None:
        """The points of the seconds after the newest one up to ``second``, as of now."""
        live = self.live
        for s in range(self._recorded_s + 1, second + 1):
            t_ns = s * 10**9
            gpus = {key: GpuNow(ring[-1], {}) for key, ring in sorted(live.telemetry.gpus.items())}
            snap = replace(_requests_only(live, t_ns), tokens_per_s=self._tokens_per_s(t_ns),
                           telemetry=TelemetrySnapshot(gpus=gpus))
            self.history.record(s, snap)
            self._recorded_s = s

    def _tokens_per_s(self, t_ns: int) -> float:
        """LiveStats.tokens_per_s at ``t_ns``, from the record's token times: the tokens of the
        last ``rate`` complete 100 ms buckets before it."""
        n = min(self.live.rate_buckets, HISTORY_BUCKETS - 1)
        end = t_ns // BUCKET_NS  # the bucket being filled: not complete
        last = self._tokens_before.size - 1
        total = (self._tokens_before[min(max(end, 0), last)]
                 - self._tokens_before[min(max(end - n, 0), last)])
        return float(total) / (n * BUCKET_NS / 1e9)

    def now_ns(self) -> int:
        return self.replay.position_ns

    def in_flight(self) -> int:
        return self.timeline.in_flight(self.now_ns())

    @property
    def duration_s(self) -> float | None:
        return self.timeline.end_ns / 1e9  # the record's length, not the length asked for

    @property
    def finished(self) -> bool:
        return self.replay.finished

    @property
    def ended(self) -> bool:
        """At the end of the record, with or without a ``session_end`` (a killed writer's
        record has none); a seek back starts it again."""
        return self.replay.finished

    @property
    def run_length_s(self) -> float | None:
        return self.timeline.end_ns / 1e9 if self.finished else None

    def seek(self, t_ns: int) -> None:
        """Jump, and redraw the seconds the curves show (their History points)."""
        self.replay.seek(t_ns, ticks_back_ns=self._back_ns)

    def next_stop(self) -> int | None:
        return self.replay.next_stop(self._back_ns)

    def previous_stop(self) -> int:
        return self.replay.previous_stop(self._back_ns)

    @property
    def _back_ns(self) -> int:
        return self.history.capacity * 10**9

    async def run(self) -> None:
        await self.replay.run(stay=True)  # the screen stays on the record; q leaves


class AttachFeed(Feed):
    """A record another soaktop is still writing: tokens/s and in-flight requests come from
    its once-a-second ClientSample (a request's tokens reach a record only when it ends).
    :meth:`command` steers that run over its control socket, where one answers here.

    A long record is read twice, both off the event loop, so frames keep drawing. First its
    outline (soaktop.engine.records.skim: every line but the requests), on a thread: the
    History's tokens/s and GPU rows of every second, so the whole run draws in a second or two
    (bench/attach_view.py; a 30-minute soak's record takes many seconds to read whole). Then
    every event, decoded by :meth:`RecordReader.follow` on a thread of its own and handed over
    in batches: the listeners take them on the loop a batch at a time, the TTFT, ITL and
    error rows fill in as they come (:meth:`History.outline`: the result is what one full
    read gives), and it goes on following the run live. Until that read has caught up with
    the outline, "now" (the header, the panels) is the outline's end.
    """

    kind = "attach"
    BATCH = 1024  # events a batch: a frame waits for at most one batch's listeners (~20 ms)
    BREATHER_S = 0.002

    def __init__(self, path: Path, outline: bool = True) -> None:
        super().__init__()
        self.record_path = path
        self.reader = RecordReader(path)
        self._latest_ns = 0
        self._outline = outline
        self._outline_live: LiveStats | None = None  # "now" while the full read catches up
        self._outline_ns = 0
        self.outline_s: float | None = None  # seconds the outline took, once it is in

    @property
    def catching_up(self) -> bool:
        """The outline is drawn and the full read has not reached its end yet."""
        return self.history.outline_ahead > 0

    @property
    def detail_ns(self) -> int:
        """How far the full read has come (the record's clock)."""
        return self._latest_ns

    def _now_live(self) -> LiveStats:
        return self._outline_live if self.catching_up and self._outline_live else self.live

    def now_ns(self) -> int:
        return max(self._latest_ns, self._outline_ns) if self.catching_up else self._latest_ns

    def in_flight(self) -> int:
        client = self._now_live().client
        return client.in_flight if client else 0

    def concurrency(self) -> int:
        phase = self._now_live().phase
        return phase.concurrency if phase else 0

    def snapshot(self) -> LiveSnapshot:
        return self._now_live().client_snapshot(self.now_ns())

    async def command(self, request: dict[str, Any]):
        """Send ``request`` to the run writing the record (soaktop.engine.control) and return
        its :class:`~soaktop.engine.control.Reply`; a run that cannot be reached from here
        raises :class:`~soaktop.engine.control.ControlError`, one line."""
        from soaktop.engine import control  # only a viewer that steers needs it

        return await control.send(self.record_path, request)

    async def run(self) -> None:
        if self._outline:
            await self._read_outline()
        listeners = self.listeners()
        async for batch in self._batches():
            for event in batch:
                for listener in listeners:
                    listener(event)
                self._latest_ns = max(self._latest_ns, getattr(event, "t_ns", 0))
                if isinstance(event, ClientSample):
                    snap = (_requests_only(self.live, self._latest_ns) if self.catching_up
                            else self.live.client_snapshot(self._latest_ns))
                    self.history.record(event.t_ns // 10**9, snap)
            # room for a frame between two batches: a frame is a chain of messages, one
            # turn of the loop each, so a bare sleep(0) would let one link through a batch
            await asyncio.sleep(self.BREATHER_S)
        self._outline_live = None

    async def _read_outline(self) -> None:
        """The outline, built on a thread into a History of its own and put in place whole
        (a frame never reads one half built). A record the outline cannot read is left to
        the full read, which says why."""
        stop = threading.Event()
        started = time.perf_counter()
        try:
            built = await asyncio.to_thread(outline, self.record_path, stop.is_set)
        except (SoaktopError, OSError):
            return
        finally:
            stop.set()  # a viewer that quit meanwhile: the thread stops at its next slice
        self.history, self._outline_live, self.header, self._outline_ns = built
        self.outline_s = time.perf_counter() - started

    async def _batches(self) -> AsyncIterator[list[Any]]:
        """The record's events, in order, in batches of up to :attr:`BATCH`: read and decoded
        by :meth:`RecordReader.follow` on a thread with a loop of its own (its first read
        takes the whole file, half a second of inflating for 30 MB), a batch handed over as
        soon as it is full or the follow waits for the writer. At most four batches wait:
        the thread waits for the listeners, memory holds no more."""
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(4)
        stop = threading.Event()

        def hand(item: Any) -> None:
            while not room.acquire(timeout=0.1):
                if stop.is_set():
                    raise _Stopped
            try:
                loop.call_soon_threadsafe(batches.put_nowait, item)
            except RuntimeError:  # the app's loop is closed
                raise _Stopped from None

        async def pump() -> None:
            batch: list[Any] = []

            async def read() -> None:
                nonlocal batch
                async for event in self.reader.follow():
                    batch.append(event)
                    if len(batch) >= self.BATCH:
                        full, batch = batch, []
                        hand(full)

            reading = asyncio.ensure_future(read())
            while not reading.done():  # the follow waits for the writer: hand what there is
                await asyncio.wait({reading}, timeout=0.05)
                if stop.is_set():
                    reading.cancel()
                    raise _Stopped
                if batch:
                    part, batch = batch, []
                    hand(part)
            reading.result()  # a RecordError goes to the loop
            if batch:
                hand(batch)

        def thread() -> None:
            try:
                asyncio.run(pump())
                hand(_END)
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - raised again on the app's loop
                try:
                    hand(exc)
                except _Stopped:
                    pass

        threading.Thread(target=thread, name="soaktop-attach", daemon=True).start()
        try:
            while True:
                item = await batches.get()
                room.release()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


_NO_TELEMETRY = LiveTelemetry()


def _requests_only(live: LiveStats, now_ns: int) -> LiveSnapshot:
    """``live.client_snapshot(now_ns)`` without its telemetry: the rest of an outlined point
    takes only the request figures, and the GPUs' window figures cost milliseconds a
    snapshot with 8 GPUs (seconds over a 30-minute record's catch-up)."""
    telemetry, live.telemetry = live.telemetry, _NO_TELEMETRY
    try:
        return live.client_snapshot(now_ns)
    finally:
        live.telemetry = telemetry


class _Seconds:
    """First in a replay's listeners: before an event, the point of each second it is past
    (:meth:`ReplayFeed._points_until`). Tokens never reach it (``ignores_tokens``): a token
    changes no point's figures but tokens/s, which is counted apart."""

    ignores_tokens = True

    def __init__(self, feed: ReplayFeed) -> None:
        self.feed = feed

    def add(self, event: Any) -> None:
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > (self.feed._recorded_s + 1) * 10**9:
            self.feed._points_until((t_ns - 1) // 10**9)


class _Stopped(Exception):
    """The viewer went away: the reading thread ends."""


_END = object()


def outline(path: Path, stop: Callable[[], bool] = lambda: False
            ) -> tuple[History, LiveStats, SessionStart | None, int]:
    """A record's outline (blocking: a thread's work): a History with the tokens/s and GPU
    rows of each of its seconds (:meth:`History.outline`), the LiveStats of its
    events but requests (the run's "now": telemetry, phase, last client sample), its header,
    and its newest time."""
    history, live = History(), LiveStats()
    header, latest_ns = None, 0
    for event in without_requests(path, stop):
        live.add(event)
        latest_ns = max(latest_ns, getattr(event, "t_ns", 0))
        if isinstance(event, ClientSample):
            # as LiveStats.client_snapshot says it; a record holds no tokens to count instead
            tokens = (event.tokens / (event.interval_ns / 1e9) if event.interval_ns > 0
                      else 0.0)
            gpus = {key: ring[-1] for key, ring in live.telemetry.gpus.items()}
            history.outline(event.t_ns // 10**9, tokens, gpus)
        elif isinstance(event, (Phase, Mark)):
            history.outline_tick(event)
        elif isinstance(event, SessionStart):
            header = event
    return history, live, header, latest_ns
