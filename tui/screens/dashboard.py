"""The dashboard: header, charts over time with phase ticks, GPUs, requests, footer.

A screen never does work per token: the app calls :meth:`DashboardScreen.refresh_frame` a
few times a second, which reads the feed's live snapshot and history window once and hands
each widget its part. The time axis zooms (``z``/``Z``) through 1 s, 10 s and 1 min a column
and the whole run, on every screen alike. Subclasses add what differs: the live run's keys
(:class:`LiveScreen`), the replay's timeline and keys (:class:`ReplayScreen`).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from soaktop.engine.events import PhaseReason
from soaktop.tui.feeds import AttachFeed, Feed, LiveFeed, ReplayFeed
from soaktop.tui.text import client_bound_text
from soaktop.tui.widgets.draw import clock, fmt
from soaktop.tui.widgets.gpu_panel import GpuPanel
from soaktop.tui.widgets.header_bar import HeaderBar
from soaktop.tui.widgets.requests_panel import RequestsPanel
from soaktop.tui.widgets.series import AxisRow, ChartPanel
from soaktop.tui.widgets.summary_panel import SummaryPanel
from soaktop.tui.widgets.timeline import Timeline


@dataclass(frozen=True)
class _Parts:
    """The widgets a frame fills."""

    charts: list[ChartPanel]
    axis: AxisRow
    header: HeaderBar
    requests: RequestsPanel
    gpus: GpuPanel


CHARTS = (  # id, title, (name, History series) drawn, unit, digits, from 0, title-only
    ("ttft", "TTFT", [("p95", "ttft_p95_ms"), ("p50", "ttft_p50_ms")], " ms", 1, False, []),
    ("tokens", "tokens/s", [("", "tokens_per_s")], "", 0, True,
     [("per request p50", "speed_p50_tps")]),
    ("itl", "ITL p50", [("", "itl_p50_ms")], " ms", 1, False, []),
    ("errors", "errors/s", [("", "errors")], "", 0, True, []),
)
#: Seconds a column, coarser each step; 0 is the whole run fitted to the width.
ZOOMS = (1, 10, 60, 0)


# Keys that go in pairs share one footer entry ("+ - Conc"), so that the footer's line holds
# every key down to 80 columns, q included, instead of cutting off its end.
ZOOM = Binding.Group("Zoom")
CONCURRENCY = Binding.Group("Conc")
SEEK = Binding.Group("Seek")
SPEED = Binding.Group("Speed")


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("z", "zoom(1)", "Zoom out", group=ZOOM),
        Binding("Z", "zoom(-1)", "Zoom in", key_display="Z", group=ZOOM),
        Binding("v", "toggle_summary", "Summary"),
        # not in the footer (its snapshots stay as they are); in the help and the palette
        Binding("r", "report", "Report", show=False),
    ]

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self.feed = feed
        # 10 s a column: 15 minutes across 100 columns, and the charts scroll once in 10 s
        # (the newest, filling bucket is a column of its own), which keeps SSH cheap
        self.zoom = ZOOMS.index(10)
        self._ended = False  # the feed's run was over at the last frame
        self._zoom_before_end = self.zoom

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        with Vertical(id="curves"):
            for key, title, series, unit, digits, from_zero, extras in CHARTS:
                yield ChartPanel(title, series, unit, digits, from_zero, extras,
                                 id=f"chart-{key}", classes=f"-{key}")
            yield AxisRow()
        yield from self.compose_extra()
        with Horizontal(id="below"):
            yield RequestsPanel()
            yield GpuPanel()
        yield Footer(compact=True, show_command_palette=False)

    def compose_extra(self) -> ComposeResult:
        yield from ()

    _parts: _Parts | None = None
    _values_second = -1
    _values: dict[str, float | None] = {}

    def on_mount(self) -> None:
        # the widgets a frame fills, found once (not a DOM query every frame), and held: a
        # frame that comes while the app tears the screen down finds them all the same
        self._parts = _Parts(list(self.query(ChartPanel)), self.query_one(AxisRow),
                             self.query_one(HeaderBar), self.query_one(RequestsPanel),
                             self.query_one(GpuPanel))
        self.call_after_refresh(self.refresh_frame)  # the first frame now, not a tick later

    def header_state(self) -> str:
        return self.client_state()

    def client_state(self) -> str:
        """Why the client was the bottleneck last second, or its headroom: how far it was
        from biasing the numbers (0% is a limit crossed; soaktop.engine.metrics.client_health)."""
        client = self.feed.live.client
        if client is None:
            return ""
        return client_bound_text(client.client_bound_reasons) or (
            f"client headroom {client.headroom * 100:.0f}%")

    def refresh_frame(self) -> None:
        parts = self._parts
        if parts is None:
            return  # not mounted yet: the first frame follows on_mount
        feed = self.feed
        feed.tick()
        if feed.ended != self._ended:
            self._run_ended(feed.ended)
        snap = feed.snapshot()
        charts = parts.charts
        width = charts[0].plot_width if charts else 60
        step = ZOOMS[self.zoom]
        history = feed.history
        window = history.window(width, step_s=step) if step else history.whole(width)
        second = feed.now_ns() // 10**9
        if second != self._values_second:  # the titles' values now: once a second, not a
            self._values_second = second   # frame (each change re-sends a title line)
            last = history.window(1).series["errors"]  # errors in the newest second
            self._values = {
                "ttft_p50_ms": snap.ttft_p50_ms, "ttft_p95_ms": snap.ttft_p95_ms,
                "tokens_per_s": snap.tokens_per_s, "speed_p50_tps": snap.speed_p50_tps,
                "itl_p50_ms": snap.itl_p50_ms,
                "errors": float(last[0]) if last[0] == last[0] else None}
        for chart in charts:
            chart.show(window, self._values)
        parts.axis.show(window, width, whole=not step)
        header = feed.header
        config = header.config if header else {}
        backend = header.backend if header else {}
        phase = feed.live.phase
        parts.header.show(
            kind=feed.kind, backend=str(config.get("backend", "?")),
            model=phase.model if phase else str(config.get("model", "?")),
            target=str(backend.get("device") or backend.get("url") or "?"),
            concurrency=feed.concurrency(), in_flight=feed.in_flight(),
            rate=phase.rate if phase else None,
            elapsed_s=feed.now_ns() / 1e9, duration_s=None if feed.ended else feed.duration_s,
            record=str(feed.record_path) if feed.record_path else None,
            state=self.header_state())
        parts.requests.show(snap, feed.in_flight(), feed.concurrency(), feed.errors,
                            paused=self.paused_load(),
                            open_loop=phase is not None and phase.rate is not None)
        parts.gpus.show(snap.telemetry, window)

    def paused_load(self) -> bool:
        return False

    def ended_state(self, after: str = "q quits") -> str:
        """``ENDED after 12:00 (completed) · q quits``: the header of a finished run; a stop
        condition's line too (``(stop_condition: error_rate>5%: 12.5% over ...)``)."""
        end = self.feed.summary.end
        reason = ""
        if end is not None:
            why = end.detail.get("explanation")
            reason = f" ({getattr(end.reason, 'value', end.reason)}{f': {why}' if why else ''})"
        return f"ENDED after {clock(self.feed.run_length_s)}{reason} · {after}"

    def _run_ended(self, ended: bool) -> None:
        """The run is over (or, in a replay, a seek went back from its end): the screen stops
        at the run's end and shows what a soak exists to show, the whole run from its first
        second, with its summary table in place of the panels below, until ``q``. Going back
        undoes it, to the zoom of before if the user has not chosen another since."""
        self._ended = ended
        below = self.query_one("#below")
        panels = list(self.query(SummaryPanel))
        if ended:
            self._zoom_before_end = self.zoom
            self.zoom = ZOOMS.index(0)
            if panels:
                panels[0].display = True
            else:
                self.mount(SummaryPanel(self.feed.summary.result), after=below)
            below.display = False
        else:
            if self.zoom == ZOOMS.index(0):
                self.zoom = self._zoom_before_end
            for panel in panels:
                panel.remove()  # a later end has other numbers: computed again then
            below.display = True
        self.refresh_bindings()

    #: Keys that steer a run: off the footer once it has ended (nothing is left to steer),
    #: which leaves room there for ``v``.
    STEERING = frozenset({"concurrency", "step", "switch_model", "toggle_pause", "mark",
                          "stop_run"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``v`` is offered only once the run has ended: before, there is no summary; a
        live or attached run's steering keys only while it runs."""
        if action == "toggle_summary":
            return self._ended
        if action in self.STEERING and self._ended:
            return False
        return True

    def action_toggle_summary(self) -> None:
        """After the end: the summary table, or the requests and GPU panels it replaced."""
        panels = list(self.query(SummaryPanel))
        if not self._ended or not panels:
            return
        below = self.query_one("#below")
        below.display = not below.display
        panels[0].display = not below.display

    def action_report(self) -> None:
        """Write the report page of the session so far (its record as written until now)
        beside the record, and say where. On a worker thread: reading a long record takes
        seconds, and the screen goes on drawing meanwhile."""
        path = self.feed.record_path
        if path is None:
            self.notify("no report: this session keeps no record (--no-record)",
                        severity="warning", markup=False)
            return
        self.notify(f"writing the report of {path.name} ...", timeout=3, markup=False)
        self.run_worker(lambda: self._write_report(path), thread=True, group="report",
                        exclusive=True, exit_on_error=False)

    def _write_report(self, record) -> None:
        from soaktop.engine.errors import SoaktopError
        from soaktop.tui.report.command import default_output, write_report
        from soaktop.tui.report.series import read_series

        try:
            written = write_report([read_series(record)], default_output([record]))
        except (SoaktopError, OSError, ValueError) as exc:  # the run goes on regardless
            self.app.call_from_thread(self.notify, f"report not written: {exc}",
                                      severity="error", timeout=10, markup=False)
            return
        except Exception as exc:  # noqa: BLE001 - a drawing bug must not vanish unsaid
            self.app.call_from_thread(
                self.notify, f"report not written: {type(exc).__name__}: {exc}",
                severity="error", timeout=10, markup=False)
            return
        self.app.call_from_thread(self.notify, f"report written to {written.page}",
                                  timeout=15, markup=False)

    def action_zoom(self, step: int) -> None:
        """Coarser (``z``) or finer (``Z``) time axis: 1 s, 10 s, 1 min a column, whole run."""
        zoom = min(len(ZOOMS) - 1, max(0, self.zoom + step))
        if zoom == self.zoom:
            self.notify("the whole run is shown" if step > 0 else "1 s a column: the finest",
                        timeout=2)
            return
        self.zoom = zoom
        self.refresh_frame()


class LiveScreen(DashboardScreen):
    """A running session: its keys steer the engine."""

    BINDINGS = [
        Binding("plus,equals_sign", "concurrency(1)", "Concurrency +1", key_display="+",
                group=CONCURRENCY),
        Binding("minus", "concurrency(-1)", "Concurrency -1", key_display="-",
                group=CONCURRENCY),
        Binding("m", "switch_model", "Model"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("space", "mark", "Mark"),
    ]
    feed: LiveFeed
    #: The over-saturation warning already notified: each new one is notified once.
    _warned: str | None = None

    def paused_load(self) -> bool:
        session = self.feed.session
        return bool(session and session.paused)

    def running_session(self):
        """The session, if it is running: keys before the model has loaded say so."""
        session = self.feed.session
        if session is None or not session.started.is_set() or session.ended:
            self.notify("the run is not going (yet): wait for the model to load"
                        if session is None or not session.ended else "the run has ended",
                        severity="warning", timeout=3)
            return None
        return session

    def header_state(self) -> str:
        if self.feed.ended:
            return self.ended_state()
        if self.paused_load():
            return "PAUSED"
        session = self.feed.session
        warning = session.warning if session is not None else None
        if warning and warning != self._warned:
            self._warned = warning  # said once, as it comes; the header keeps saying it
            self.notify(warning, severity="warning", timeout=10, markup=False)
        return "SATURATED: the server does not keep up" if warning else self.client_state()

    def action_concurrency(self, step: int) -> None:
        session = self.running_session()
        if session is None:
            return
        if session.config.trace is not None:  # the trace's own times: nothing to step
            self.notify("a trace replay keeps the trace's times (--trace-speed sets them)",
                        severity="warning", markup=False)
            return
        if session.config.rate is not None:  # open loop: the keys step the rate by 25%
            rate = session.target_rate or 1.0
            session.set_rate(round(rate * 1.25 if step > 0 else rate / 1.25, 2),
                             reason=PhaseReason.KEY)
            self.refresh_frame()
            return
        target = session.target_concurrency + step
        if target < 1:
            self.notify("concurrency is at its lowest: 1", severity="warning")
            return
        session.set_concurrency(target, reason=PhaseReason.KEY)
        self.refresh_frame()

    def action_toggle_pause(self) -> None:
        session = self.running_session()
        if session is None:
            return
        if session.paused:
            session.resume(PhaseReason.KEY_RESUMED)
        else:
            session.pause(PhaseReason.KEY_PAUSED)
        self.refresh_frame()

    def action_mark(self) -> None:
        session = self.running_session()
        if session is None:
            return
        self._marks = getattr(self, "_marks", 0) + 1
        session.mark(f"mark {self._marks}")
        self.notify(f"mark {self._marks} at {session.now_ns() / 1e9:.1f} s")

    def action_switch_model(self) -> None:
        self.app.action_pick_model()


class ReplayScreen(DashboardScreen):
    """A record played back: a timeline, a per-phase table, and keys to move in time."""

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause"),
        Binding("left", "seek(-10)", "-10 s", key_display="←", group=SEEK),
        Binding("right", "seek(10)", "+10 s", key_display="→", group=SEEK),
        Binding("n", "next_stop", "Next stop"),
        Binding("p", "previous_stop", "Prev stop"),
        Binding("plus,equals_sign", "speed(10)", "Speed x10", key_display="+", group=SPEED),
        Binding("minus", "speed(0.1)", "Speed /10", key_display="-", group=SPEED),
    ]
    feed: ReplayFeed
    STEERING = frozenset()  # a replay's keys move in the record: they stay at its end

    def compose_extra(self) -> ComposeResult:
        yield Timeline()
        yield DataTable(id="phases", cursor_type="none", zebra_stripes=True)

    def on_mount(self) -> None:
        self._timeline = self.query_one(Timeline)  # held, as the base class holds its parts
        self._phase_table = table = self.query_one("#phases", DataTable)
        super().on_mount()
        table.can_focus = False  # the arrows seek, they do not move a cursor
        table.add_columns("phase", "conc", "model", "ok", "fail", "tok/s", "TTFT p50",
                          "TTFT p95", "ITL p50", "E2E p50")

    def on_resize(self) -> None:
        # under 30 rows the charts need the table's rows more (it is the summary's, later)
        table = getattr(self, "_phase_table", None)
        if table is not None:  # and at the end the summary's table has the phases
            table.display = self.size.height >= 30 and not self._ended

    def _run_ended(self, ended: bool) -> None:
        super()._run_ended(ended)
        self.on_resize()

    def header_state(self) -> str:
        if self.feed.finished:
            return "END OF RECORD"
        return "PAUSED" if self.feed.replay.paused else self.client_state()

    def refresh_frame(self) -> None:
        super().refresh_frame()
        replay, timeline = self.feed.replay, self.feed.timeline
        if self._parts is None:
            return
        self._timeline.show(replay.position_ns / 1e9, timeline.end_ns / 1e9, replay.speed,
                            replay.paused, [t / 1e9 for t in timeline.stops.tolist()])
        self._fill_phases()

    def _fill_phases(self) -> None:
        second = (self.feed.now_ns() // 10**9, self.feed.summary.end is not None)
        if second == getattr(self, "_filled_at", None):
            return  # a summary is recomputed once a second of the record, not every frame
        self._filled_at = second
        table = self._phase_table
        rows = [(f"{p.phase_id}{'w' if p.warmup else ''}", str(p.concurrency),
                 p.model[:16], str(p.requests_ok), str(p.requests_failed),
                 fmt(p.output_tokens_per_s), fmt(p.ttft_ms.p50, 1), fmt(p.ttft_ms.p95, 1),
                 fmt(p.itl_ms.p50, 1), fmt(p.e2e_ms.p50))
                for p in self.feed.summary.phases()]
        if rows == getattr(self, "_rows", None):
            return
        self._rows = rows
        table.clear()
        for row in rows:
            table.add_row(*row)

    def action_toggle_pause(self) -> None:
        self.feed.replay.toggle_pause()
        self.refresh_frame()

    def action_seek(self, seconds: float) -> None:
        self.feed.seek(self.feed.replay.position_ns + int(seconds * 1e9))
        self.refresh_frame()

    def action_next_stop(self) -> None:
        if self.feed.next_stop() is None:
            self.notify("no later phase or mark")
        self.refresh_frame()

    def action_previous_stop(self) -> None:
        self.feed.previous_stop()
        self.refresh_frame()

    def action_speed(self, factor: float) -> None:
        replay = self.feed.replay
        replay.set_speed(min(1000.0, max(1.0, round(replay.speed * factor))))
        self.refresh_frame()


class AttachScreen(DashboardScreen):
    """A run another soaktop is writing. Its keys reach that run over the run's control
    socket (soaktop.engine.control) when one answers on this machine, so a detached soak can
    be steered again: the run makes each change through its session's own methods, a phase
    or mark in the record as from its own dashboard's keys, and says what it did. Without a
    socket (an old record, a run on another machine) a key says so in one notification.
    ``q`` leaves the viewer, never the run; ``s`` stops the run, after asking."""

    BINDINGS = [
        Binding("plus,equals_sign", "step(1)", "Concurrency +1", key_display="+",
                group=CONCURRENCY),
        Binding("minus", "step(-1)", "Concurrency -1", key_display="-", group=CONCURRENCY),
        Binding("p", "toggle_pause", "Pause"),
        Binding("space", "mark", "Mark"),
        Binding("m", "switch_model", "Model"),
        Binding("s", "stop_run", "Stop run"),
    ]
    feed: AttachFeed

    def header_state(self) -> str:
        if self.feed.ended:
            return self.ended_state("q leaves")
        if self.feed.catching_up:  # the whole run is drawn from its outline; say what's left
            return f"READING THE RECORD: requests {clock(self.feed.detail_ns / 1e9)} of " \
                   f"{clock(self.feed.now_ns() / 1e9)}"
        return self.client_state()

    def _steer(self, *requests: dict) -> None:
        """Send ``requests`` in order, off the key handler (a reply is a round trip away)."""
        self.run_worker(self._send(requests), group="control", exclusive=False)

    async def _ask(self, request: dict):
        """The run's reply to ``request``, or None after a notification of why not."""
        from soaktop.engine.control import ControlError

        if self.feed.summary.end is not None:
            self.notify("the run has ended", severity="warning", timeout=3)
            return None
        try:
            reply = await self.feed.command({**request, "source": "key"})
        except ControlError as exc:  # one line: no socket, a stale one, another user's
            self.notify(f"this run cannot be steered from here: {exc}", severity="warning",
                        markup=False)
            return None
        if not reply.ok:
            self.notify(reply.text, severity="warning", markup=False)
            return None
        return reply

    async def _send(self, requests: tuple[dict, ...]) -> None:
        for request in requests:
            reply = await self._ask(request)
            if reply is None:
                return
            if request["cmd"] != "status":
                self.notify(reply.text, markup=False)

    def action_step(self, step: int) -> None:
        """``+``/``-`` as in the run's own dashboard: concurrency by one in a closed loop,
        the rate by 25% in an open one."""
        config = self.feed.header.config if self.feed.header else {}
        if config.get("rate") is not None:
            self._steer({"cmd": "rate", "factor": 1.25 if step > 0 else 1 / 1.25})
        else:
            self._steer({"cmd": "concurrency", "step": step})

    def action_toggle_pause(self) -> None:
        self.run_worker(self._toggle_pause(), group="control", exclusive=False)

    async def _toggle_pause(self) -> None:
        status = await self._ask({"cmd": "status"})  # another viewer may have paused it
        if status is not None:
            await self._send(({"cmd": "resume" if status.state.get("paused") else "pause"},))

    def action_mark(self) -> None:
        self._steer({"cmd": "mark"})  # the run numbers it, so two viewers' marks differ

    def action_switch_model(self) -> None:
        self.run_worker(self._switch_model(), group="control", exclusive=False)

    async def _switch_model(self) -> None:
        """The run's own model list, the picker the run's dashboard shows, then the switch;
        its reply comes once the run has the model ready."""
        from soaktop.tui.screens.modals import ModelPicker

        listed = await self._ask({"cmd": "models"})
        if listed is None:
            return
        current = str(listed.state.get("model") or "")

        def chosen(name: str | None) -> None:
            if name and name != current:
                self.notify(f"loading {name} ...", markup=False)
                self._steer({"cmd": "model", "name": name})

        self.app.push_screen(ModelPicker(list(listed.models), current), chosen)

    def action_stop_run(self) -> None:
        self.run_worker(self._stop_run(), group="control", exclusive=False)

    async def _stop_run(self) -> None:
        from soaktop.tui.screens.modals import ConfirmQuit

        if await self._ask({"cmd": "status"}) is None:
            return  # nothing to stop from here: said why, and no question asked

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify("Ending the run and closing its record ...")
                self._steer({"cmd": "stop"})

        self.app.push_screen(ConfirmQuit(), answered)
