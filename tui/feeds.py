"""Where a dashboard's numbers come from: a live session, a record replayed, or a record
another soaktop is writing. Each feed runs the same listeners, LiveStats, History and
SessionSummary, so every screen works on all three (docs/design.md, "One event stream").

A screen reads a feed once a frame: ``now_ns()``, ``in_flight()``, ``concurrency()``, the live
snapshot and the history window. The feed records one History point a second of its own
clock: the live one from its frame timer (:meth:`Feed.tick`), a replay from its ticks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from soaktop.engine.events import ClientSample, RequestDone, SessionStart, TokensArrived
from soaktop.engine.load.plans import plan_for, run_with_plan
from soaktop.engine.metrics.history import History
from soaktop.engine.metrics.live import LiveSnapshot, LiveStats
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.replay import Replay, Timeline
from soaktop.engine.session import Session

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
    """A record played at a speed, with pause and seek (the replay screen's keys)."""

    kind = "replay"

    def __init__(self, events: list[Any], speed: float = 1.0, path: Path | None = None) -> None:
        super().__init__()
        self.record_path = path
        self.timeline = Timeline(events)
        self.replay = Replay(self.timeline, self.listeners(), speed=speed, on_reset=self._reset,
                             ticks_ns=10**9, on_tick=self._second)

    def _reset(self) -> None:
        self._fresh()
        self.errors.clear()
        self.replay.listeners = self.listeners()

    def _second(self, t_ns: int) -> None:
        self.history.record(t_ns // 10**9, self.live.snapshot(t_ns))

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
    :meth:`command` steers that run over its control socket, where one answers here."""

    kind = "attach"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.record_path = path
        self.reader = RecordReader(path)
        self._latest_ns = 0

    def now_ns(self) -> int:
        return self._latest_ns

    def in_flight(self) -> int:
        return self.live.client.in_flight if self.live.client else 0

    def snapshot(self) -> LiveSnapshot:
        return self.live.client_snapshot(self._latest_ns)

    async def command(self, request: dict[str, Any]):
        """Send ``request`` to the run writing the record (soaktop.engine.control) and return
        its :class:`~soaktop.engine.control.Reply`; a run that cannot be reached from here
        raises :class:`~soaktop.engine.control.ControlError`, one line."""
        from soaktop.engine import control  # only a viewer that steers needs it

        return await control.send(self.record_path, request)

    async def run(self) -> None:
        listeners = self.listeners()
        async for event in self.reader.follow():
            for listener in listeners:
                listener(event)
            self._latest_ns = max(self._latest_ns, getattr(event, "t_ns", 0))
            if isinstance(event, ClientSample):
                self.history.record(event.t_ns // 10**9, self.snapshot())
