"""Replaying a record: the live run's event stream again, on the record's clock, scaled.

Live runs and replays feed one stream (docs/design.md), so every consumer, the statistics, the
status line and the dashboard, works on both with no replay-specific code. A record keeps
tokens inside ``request_done`` (arrival offsets), not one event each; :class:`Replay` derives
the live-only :class:`~soaktop.engine.events.TokensArrived` events back from them and merges them
into the record's events by time, so a replayed token reaches a listener at the moment it
reached the live client (to the microsecond the record keeps), before its ``request_done``.

Token times are held in numpy arrays (20 bytes a token; which request, worker and first token
each is, 13 more, only once a listener takes one event a token), the record's other events in a
list, its ``request_done`` lines as the dicts they were read as where the caller reads them so
(``RecordReader.events(raw_requests=True)``: ``soaktop replay``). The live statistics take each
stretch of tokens between two status ticks in one call (see :meth:`Replay._emit_until`).

Controls, for the dashboard's keys and for scripts: :meth:`Replay.pause`, :meth:`~Replay.resume`,
:meth:`~Replay.set_speed`, :meth:`~Replay.seek` (to a time), :meth:`~Replay.next_stop` and
:meth:`~Replay.previous_stop` (phases and marks). Seeking back calls ``on_reset`` so the
caller can start its consumers afresh, then re-feeds the record from the start at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from soaktop.engine.events import Mark, Phase, RequestDone, TokensArrived
from soaktop.engine.records.format import decode

Listener = Callable[[Any], None]

#: On a seek, tokens older than this before the target are not re-emitted: the live window
#: (two minutes of token counts, see soaktop.engine.metrics.live) has no place for them, and a long
#: record would otherwise cost seconds of per-token work for every seek.
TOKEN_CATCHUP_NS = 120 * 10**9


class Timeline:
    """A record's events in time order, with its tokens unpacked into sorted arrays.

    ``events`` may hold ``request_done`` record lines (``dict``, as ``RecordReader.events``
    yields them with ``raw_requests``) beside events: a replay of a long soak then never makes
    its 200,000 request events (a listener that takes only events gets each one made as it is
    delivered, see :meth:`Replay._emit_until`).
    """

    def __init__(self, events: Iterable[Any]) -> None:
        events = list(events)
        times = [e["t_ns"] if type(e) is dict else getattr(e, "t_ns", 0) for e in events]
        by_time = sorted(range(len(events)), key=times.__getitem__)  # stable: ties keep order
        self.events: list[Any] = [events[i] for i in by_time]
        del events
        # gathered as flat lists and made into arrays once: per-request numpy calls cost
        # more than the work for requests of a few dozen tokens, and a soak has 100,000s.
        # A record line's offsets stay the differences it holds (the list it was read as,
        # not copied) and are summed within each request in one pass at the end.
        segments: list[Any] = []  # each request's offsets: absolute, or differences
        relative: list[bool] = []  # which of them are differences
        lens: list[int] = []
        token_sent: list[int] = []
        requests: list[int] = []
        workers: list[int] = []
        weighted: list[tuple[int, Any]] = []  # (request's index, tokens of each arrival)
        sent, done = [], []
        for event in self.events:
            if type(event) is dict:
                sent.append(event["sent_ns"])
                done.append(event["t_ns"])
                arrivals = event["arrivals_dus"]
                if not arrivals:
                    continue
                relative.append(True)
                tokens = event.get("arrival_tokens")
                token_sent.append(event["sent_ns"])
                requests.append(event["request_id"])
                workers.append(event["worker_id"])
            elif type(event) is RequestDone:
                sent.append(event.sent_ns)
                done.append(event.t_ns)
                arrivals = event.arrivals_us
                if not arrivals:
                    continue
                relative.append(False)
                tokens = event.arrival_tokens
                token_sent.append(event.sent_ns)
                requests.append(event.request_id)
                workers.append(event.worker_id)
            else:
                continue
            if tokens:
                weighted.append((len(lens), tokens))
            segments.append(arrivals)
            lens.append(len(arrivals))
        n = np.asarray(lens, dtype=np.int64)
        flat = np.array(list(chain.from_iterable(segments)), dtype=np.int64)
        del segments
        starts = np.cumsum(n) - n
        if any(relative):
            sums = np.cumsum(flat)
            within = sums - np.repeat(np.concatenate([[0], sums])[starts], n)
            flat = np.where(np.repeat(np.asarray(relative, dtype=bool), n), within, flat)
            del sums, within
        t = flat * 1000 + np.repeat(np.asarray(token_sent, dtype=np.int64), n)
        del flat
        counts = np.ones(t.size, dtype=np.int32)
        for index, tokens in weighted:
            counts[starts[index] : starts[index] + lens[index]] = tokens
        order = np.argsort(t, kind="stable")
        self.token_t = t[order]
        self.token_count = counts[order]
        # which request, worker and first token each is: only a listener that takes one
        # event a token needs them (a screen's history, not the headless replay's
        # statistics), so they are made on first use from these (_token_field)
        self._token_order = order
        self._per_request = (n, np.asarray(requests, dtype=np.int64),
                             np.asarray(workers, dtype=np.int32))
        self._by_token: dict[str, np.ndarray] = {}
        self._sent = np.sort(np.asarray(sent, dtype=np.int64))
        self._done = np.sort(np.asarray(done, dtype=np.int64))
        self.event_t = np.asarray(times, dtype=np.int64)[by_time]
        #: for each event, the tokens at or before it (a token before a record event of the
        #: same time): one search for all, not one per event as they are played
        self.event_tokens = np.searchsorted(self.token_t, self.event_t, side="right")
        last_token = int(self.token_t[-1]) if self.token_t.size else 0
        self.end_ns = max(int(self.event_t[-1]) if self.event_t.size else 0, last_token)
        self.stops = np.asarray(
            sorted({e.t_ns for e in self.events if isinstance(e, (Phase, Mark)) and e.t_ns > 0}),
            dtype=np.int64,
        )

    def _token_field(self, name: str) -> np.ndarray:
        field = self._by_token.get(name)
        if field is None:
            n, requests, workers = self._per_request
            if name == "first":
                first = np.zeros(self._token_order.size, dtype=bool)
                first[np.cumsum(n) - n] = True
                field = first[self._token_order]
            else:
                field = np.repeat(requests if name == "request" else workers, n)[
                    self._token_order]
            self._by_token[name] = field
        return field

    @property
    def token_request(self) -> np.ndarray:
        """Each token's request id, in token order."""
        return self._token_field("request")

    @property
    def token_worker(self) -> np.ndarray:
        """Each token's worker, in token order."""
        return self._token_field("worker")

    @property
    def token_first(self) -> np.ndarray:
        """Whether each token is its request's first, in token order."""
        return self._token_field("first")

    def in_flight(self, t_ns: int) -> int:
        """Requests sent at or before ``t_ns`` and not yet finished: what the client had out."""
        sent = int(np.searchsorted(self._sent, t_ns, side="right"))
        return sent - int(np.searchsorted(self._done, t_ns, side="right"))


class Replay:
    """Plays a :class:`Timeline` to ``listeners`` at ``speed`` times its original pace.

    ``ticks_ns`` (optional) calls ``on_tick(t)`` at every multiple of it on the record's
    clock, after every event up to ``t`` and before any later one: how a headless replay
    prints its status lines at the same record times a live run printed them.
    """

    def __init__(
        self,
        timeline: Timeline,
        listeners: Sequence[Listener],
        speed: float = 1.0,
        on_reset: Callable[[], None] | None = None,
        ticks_ns: int | None = None,
        on_tick: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.timeline = timeline
        self.listeners = list(listeners)
        self.on_reset = on_reset
        self.speed = speed
        self.paused = False
        self._ticks_ns = ticks_ns
        self._on_tick = on_tick
        self._clock = clock
        self._anchor_pos = 0  # the record time at the anchor ...
        self._anchor_wall = clock()  # ... and the wall time it was reached
        self._i_event = 0
        self._i_token = 0
        self._next_tick = ticks_ns or 0
        self._emitted_ns = -1  # everything at or before this has gone out
        self._changed: asyncio.Event | None = None
        self._stop = False

    # -- position and controls ---------------------------------------------------------
    @property
    def position_ns(self) -> int:
        """Where the replay is on the record's clock."""
        if self.paused:
            return self._anchor_pos
        played = (self._clock() - self._anchor_wall) * 1e9 * self.speed
        return min(self.timeline.end_ns, self._anchor_pos + round(played))

    @property
    def finished(self) -> bool:
        return self._emitted_ns >= self.timeline.end_ns

    def _reanchor(self, position_ns: int) -> None:
        self._anchor_pos, self._anchor_wall = position_ns, self._clock()
        if self._changed is not None:
            self._changed.set()

    def pause(self) -> None:
        if not self.paused:
            self._reanchor(self.position_ns)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._reanchor(self._anchor_pos)

    def toggle_pause(self) -> None:
        self.resume() if self.paused else self.pause()

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._reanchor(self.position_ns)
        self.speed = speed

    def seek(self, t_ns: int, ticks_back_ns: int = 0) -> None:
        """Jump to ``t_ns`` on the record's clock; everything before it is delivered at once.

        Ticks in the stretch jumped over are skipped (no status lines for it), except those
        within ``ticks_back_ns`` before the target: a dashboard redraws the seconds its curves
        show (at most :data:`TOKEN_CATCHUP_NS` back, as far as tokens are re-emitted).
        """
        t_ns = max(0, min(int(t_ns), self.timeline.end_ns))
        if t_ns < self._emitted_ns:  # back: consumers start again from the top
            if self.on_reset is not None:
                self.on_reset()
            self._i_event, self._i_token, self._emitted_ns = 0, 0, -1
            self._next_tick = self._ticks_ns or 0
        if self._ticks_ns:
            back = min(max(0, ticks_back_ns), TOKEN_CATCHUP_NS)
            first = (max(0, t_ns - back) // self._ticks_ns + 1) * self._ticks_ns
            self._next_tick = max(self._next_tick, first)
        catch_up = int(np.searchsorted(self.timeline.token_t, t_ns - TOKEN_CATCHUP_NS))
        self._i_token = max(self._i_token, catch_up)
        self._emit_until(t_ns)
        self._reanchor(t_ns)

    def advance_to(self, t_ns: int) -> None:
        """Deliver everything up to ``t_ns`` now, as playing would (ticks included): how a
        script or test replays a record as fast as it can be read."""
        self._emit_until(min(int(t_ns), self.timeline.end_ns))
        self._reanchor(max(self._anchor_pos, min(int(t_ns), self.timeline.end_ns)))

    def next_stop(self, ticks_back_ns: int = 0) -> int | None:
        """Seek to the next phase change or mark after the position; its time, or None."""
        stops = self.timeline.stops
        i = int(np.searchsorted(stops, self.position_ns, side="right"))
        if i >= stops.size:
            return None
        self.seek(int(stops[i]), ticks_back_ns)
        return int(stops[i])

    def previous_stop(self, ticks_back_ns: int = 0) -> int:
        """Seek to the phase change or mark before the position (more than a second back, so
        pressing it again keeps going back); the start if there is none."""
        stops = self.timeline.stops
        i = int(np.searchsorted(stops, self.position_ns - 10**9, side="left")) - 1
        target = int(stops[i]) if i >= 0 else 0
        self.seek(target, ticks_back_ns)
        return target

    def stop(self) -> None:
        self._stop = True
        if self._changed is not None:
            self._changed.set()

    # -- playing -----------------------------------------------------------------------
    def _deliver(self, event: Any) -> None:
        for listener in self.listeners:
            listener(event)

    def _sort_listeners(self) -> tuple[list, list, list, list]:
        """The listeners by what they take: (whole token runs: ``add_tokens`` of those whose
        object has one; one event a token; every record event as it is; record events with
        ``request_done`` lines made into events first). The summary's object says
        ``ignores_tokens`` (a record has no token events: it counts none) and gets no tokens;
        an object saying ``takes_record_lines`` gets a record line as it is."""
        runs, tokens, as_is, as_events = [], [], [], []
        for listener in self.listeners:
            owner = getattr(listener, "__self__", None)
            (as_is if getattr(owner, "takes_record_lines", False) else as_events).append(
                listener)
            if getattr(owner, "ignores_tokens", False):
                continue
            add_tokens = getattr(owner, "add_tokens", None)
            if add_tokens is not None and getattr(listener, "__name__", None) == "add":
                runs.append(add_tokens)
            else:
                tokens.append(listener)
        return runs, tokens, as_is, as_events

    def _emit_until(self, t_ns: int) -> None:
        """Every event and token at or before ``t_ns``, in time order; ticks on the way.

        Tokens go to a listener that takes them one event each in runs, all those up to the
        next record event or tick at once (a token before a record event of the same time; a
        tick after everything at its time). A listener with ``add_tokens`` (the live
        statistics: their token counts depend on nothing else they are fed) gets every token
        up to the next tick (or ``t_ns``) in one call, ahead of the record events among them:
        what it holds when a tick or the caller reads it is the same, and a 30-minute soak's
        200,000 runs are a few hundred calls.
        """
        tl = self.timeline
        events, event_t, token_t, event_tokens = tl.events, tl.event_t, tl.token_t, \
            tl.event_tokens
        never = 2**63 - 1
        runs, per_token, as_is, as_events = self._sort_listeners()
        lines_as_is = not as_events
        i_event, i_token = self._i_event, self._i_token
        i_run = i_token  # how far the add_tokens listeners have been given tokens
        while True:
            tick = self._next_tick if self._ticks_ns else never
            stretch = min(tick, t_ns)
            if runs:  # every token up to the stretch's end, at once
                end = int(np.searchsorted(token_t, stretch, side="right"))
                if end > i_run:
                    for add_tokens in runs:
                        add_tokens(token_t[i_run:end], tl.token_count[i_run:end])
                    i_run = end
            last = int(np.searchsorted(event_t, stretch, side="right"))  # events <= stretch
            while i_event < last:
                if per_token:
                    end = int(event_tokens[i_event])
                    if end > i_token:
                        self._deliver_tokens(per_token, i_token, end)
                        i_token = end
                event = events[i_event]
                i_event += 1
                if lines_as_is or type(event) is not dict:
                    for listener in self.listeners:
                        listener(event)
                else:
                    for listener in as_is:
                        listener(event)
                    made = decode(event)
                    for listener in as_events:
                        listener(made)
            end = int(np.searchsorted(token_t, stretch, side="right"))
            if per_token and end > i_token:
                self._deliver_tokens(per_token, i_token, end)
            i_token = max(i_token, end)
            if tick <= t_ns:
                self._next_tick += self._ticks_ns
                self._i_event, self._i_token = i_event, i_token
                if self._on_tick is not None:
                    self._on_tick(tick)
            else:
                break
        self._i_event, self._i_token = i_event, i_token
        self._emitted_ns = max(self._emitted_ns, t_ns)

    def _deliver_tokens(self, listeners: list, start: int, end: int) -> None:
        """Tokens ``start:end`` of the timeline, one event each, to ``listeners``."""
        tl = self.timeline
        runs = zip(tl.token_t[start:end].tolist(), tl.token_worker[start:end].tolist(),
                   tl.token_request[start:end].tolist(), tl.token_count[start:end].tolist(),
                   tl.token_first[start:end].tolist())
        if len(listeners) == 1:
            listener = listeners[0]
            for t, worker, request, count, first in runs:
                listener(TokensArrived(t, worker, request, count, first))
            return
        for t, worker, request, count, first in runs:
            event = TokensArrived(t, worker, request, count, first)
            for listener in listeners:
                listener(event)

    async def run(self, frame_s: float = 0.02, stay: bool = False) -> None:
        """Play from the position to the end of the record (or :meth:`stop`).

        Wakes at most every ``frame_s`` and delivers whatever fell due since: at x100 that is
        two seconds of record per wake, delivered in order. ``stay``: at the end, wait for a
        seek back instead of returning (a screen that stays open on a finished replay).
        """
        self._changed = asyncio.Event()
        self._reanchor(self._anchor_pos)
        while not self._stop:
            self._changed.clear()
            self._emit_until(self.position_ns)
            if self.finished and not stay:
                break
            if self.paused or self.finished:
                await self._changed.wait()
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=frame_s)
            except asyncio.TimeoutError:
                pass
