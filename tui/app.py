"""The Textual app: wires a feed (live session, replay, or a followed record) to a screen.

It holds no engine logic: keys become engine commands on the screens, a timer redraws at
``fps`` frames a second (never per token: over SSH every frame costs), and the feed runs as
an async worker on the app's own loop. Quitting a live run asks first, then stops the session
and waits until its record is closed before the app exits.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from soaktop.engine.errors import SoaktopError
from soaktop.engine.events import EndReason, PhaseReason
from soaktop.themes import STYLESHEET, THEMES, default_theme, next_theme
from soaktop.tui.feeds import Feed, LiveFeed, ReplayFeed
from soaktop.tui.screens.dashboard import AttachScreen, DashboardScreen, LiveScreen, ReplayScreen
from soaktop.tui.screens.modals import ConfirmQuit, HelpScreen, ModelPicker

HELP = """soaktop: top for LLM inference soak tests

Live run:  + / -   concurrency up / down (a new phase, marked on the time axis)
           m       switch model          p   pause or resume the load
           space   drop a mark           t   next theme
           q       quit (asks first; the record is closed properly)
Replay:    space   pause / play          left / right   10 s back / on
           n / p   next / previous phase or mark       + / -   speed x10 / /10
Attach:    + / -, m, p, space as in a live run, over the run's control socket
           s       stop the run (asks first) q   leave the viewer; the run goes on
Everywhere: z / Z   zoom the time axis out / in: 1 s, 10 s, 1 min a column, the whole run
           v       at the run's end (whole run and summary shown): summary or panels
           r       write the report page of the record so far, beside it (soaktop report)
           ? this help, ctrl+p the command palette (every action is there too)

Charts: newest on the right (the whole run: from its start); a blank is a column with no
data; in a coarse view a column's dim band is its min-max, the bright dots its mean.
Throttle strip: T thermal, B power brake, S HW slowdown, P power cap, . none."""


class SoaktopApp(App):
    CSS_PATH = str(STYLESHEET)
    TITLE = "soaktop"
    BINDINGS = [
        Binding("t", "next_theme", "Theme", show=False),  # in help and the palette
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),  # asks, as q does
    ]

    def __init__(self, feed: Feed, fps: float = 4.0, theme: str | None = None,
                 models: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        super().__init__()
        self.feed = feed
        self.fps = fps
        self.models = models
        self.error: str | None = None  # a one-line reason the feed failed, for the CLI
        self._theme_name = theme or default_theme()
        self._quitting = False
        self._worker: Worker | None = None
        for theme_def in THEMES.values():
            self.register_theme(theme_def)

    # -- set-up ------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        screens = {"live": LiveScreen, "replay": ReplayScreen, "attach": AttachScreen}
        return screens.get(self.feed.kind, DashboardScreen)(self.feed)

    def on_mount(self) -> None:
        self.theme = THEMES[self._theme_name].name
        self._worker = self.run_worker(self._run_feed(), name="feed", exclusive=True)
        self.set_interval(1 / self.fps, self._frame)
        # on every screen, a terminal that goes away (SIGHUP) or a SIGTERM ends it cleanly
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(signum, self._stop_run)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass

    async def _run_feed(self) -> None:
        try:
            await self.feed.run()
        except SoaktopError as exc:
            self.error = str(exc)
            self.exit(self.feed)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._worker or event.state != WorkerState.SUCCESS:
            return
        if self._quitting or self.error:
            self.exit(self.feed)
            return
        self._frame()  # the screen stops at the run's end: the whole run and its summary
        self.notify("The run has ended: the whole run and its summary (v: the panels); "
                    "q quits." if self.feed.kind != "replay"
                    else "End of the record: the whole run and its summary; q quits.",
                    timeout=10)

    def _frame(self) -> None:
        if isinstance(self.screen, DashboardScreen):
            self.screen.refresh_frame()

    # -- actions -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.state == WorkerState.RUNNING

    def _stop_run(self) -> None:
        """End the run (its record closed), then the app; at once when nothing runs any more
        (a SIGHUP after the run ended must not leave an app with no terminal behind)."""
        self._quitting = True
        session = getattr(self.feed, "session", None)
        if session is not None and self.running:
            session.stop(EndReason.INTERRUPTED)
        else:
            self.exit(self.feed)

    async def action_quit(self) -> None:
        if not (isinstance(self.feed, LiveFeed) and self.running):
            if isinstance(self.feed, ReplayFeed):
                self.feed.replay.stop()
            self.exit(self.feed)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify("Ending the run and closing the record ...")
                self._stop_run()

        self.push_screen(ConfirmQuit(), answered)

    def action_next_theme(self) -> None:
        self._theme_name = next_theme(self._theme_name)
        self.theme = THEMES[self._theme_name].name
        self.notify(f"theme: {self._theme_name}", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(HELP))

    def action_pick_model(self) -> None:
        session = getattr(self.feed, "session", None)
        if session is None or self.models is None:
            return
        self.run_worker(self._pick_model(session), exclusive=False)

    async def _pick_model(self, session) -> None:
        try:
            names = await self.models()
        except SoaktopError as exc:
            self.notify(f"cannot list models: {exc}", severity="error", markup=False)
            return

        def chosen(name: str | None) -> None:
            if name and name != session.model:
                self.notify(f"loading {name} ...", markup=False)
                self.run_worker(self._switch(session, name), exclusive=False)

        self.push_screen(ModelPicker(names, session.model), chosen)

    async def _switch(self, session, name: str) -> None:
        try:
            await session.load_and_switch(name, reason=PhaseReason.KEY)
        except SoaktopError as exc:  # an unknown preset, not enough memory: the run goes on
            self.notify(f"cannot switch to {name}: {exc}", severity="error", markup=False)
            return
        self.notify(f"model: {name}", markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        inherited = [b for cls in type(screen).__mro__ if cls.__module__.startswith("soaktop")
                     for b in vars(cls).get("BINDINGS", [])]
        for binding in inherited:  # the screen's own keys, then those of soaktop's base screen
            if isinstance(binding, Binding) and binding.description:
                key = binding.key_display or binding.key
                yield SystemCommand(binding.description, f"key {key}",
                                    lambda a=binding.action, s=screen:
                                    self.call_later(s.run_action, a))
        yield SystemCommand("Theme", "next theme (t)", self.action_next_theme)
        yield SystemCommand("Help", "keys and what the screen shows (?)", self.action_help)
