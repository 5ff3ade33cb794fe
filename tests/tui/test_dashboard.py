"""The dashboard driven as a user drives it (Textual's Pilot): each key's effect on the engine
and on the screen."""

import asyncio

import pytest

from soaktop.engine.events import Mark, Phase, RequestDone, SessionEnd
from soaktop.engine.records.format import RecordReader
from soaktop.tui.screens.modals import ConfirmQuit, HelpScreen, ModelPicker
from soaktop.tui.widgets.header_bar import HeaderBar
from soaktop.tui.widgets.requests_panel import RequestsPanel
from soaktop.tui.widgets.series import AxisRow, ChartBody, ChartPanel, LiveColumn
from tests.tui.dashboard_apps import live_app, replay_app


def text_of(widget) -> str:
    return str(widget.render())


async def until(pilot, condition, seconds: float = 5.0) -> bool:
    """Let the app run until ``condition()`` holds (a busy machine draws later), at most
    ``seconds``; whether it held."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await pilot.pause(0.05)
    return condition()


async def started(app, pilot):
    for _ in range(200):
        session = app.feed.session
        if session is not None and session.started.is_set() and session.in_flight:
            break
        await pilot.pause(0.02)
    await pilot.pause(0.15)  # a frame or two
    return app.feed.session


async def test_plus_and_minus_change_concurrency_in_a_new_phase(tmp_path):
    app = live_app(record=tmp_path / "r.jsonl")
    async with app.run_test(size=(100, 30)) as pilot:
        session = await started(app, pilot)
        await pilot.press("+")
        assert session.concurrency == 3
        await pilot.pause(0.3)
        assert session.in_flight == 3
        assert "concurrency 3, 3 in flight" in text_of(app.screen.query_one(HeaderBar))
        await pilot.press("minus")
        assert session.concurrency == 2
        await pilot.press("q", "y")
        await pilot.pause(0.5)
    phases = [e for e in RecordReader(tmp_path / "r.jsonl").events() if isinstance(e, Phase)]
    assert [(p.concurrency, p.reason) for p in phases][-2:] == [(3, "key"), (2, "key")]


async def test_p_pauses_and_resumes_the_load_and_space_drops_a_mark():
    app = live_app()
    async with app.run_test(size=(100, 30)) as pilot:
        session = await started(app, pilot)
        await pilot.press("p")
        assert session.paused and session.concurrency == 0
        await pilot.pause(0.3)
        assert "PAUSED" in text_of(app.screen.query_one(HeaderBar))
        assert "paused: no new requests" in text_of(app.screen.query_one(RequestsPanel))
        assert session.in_flight == 0  # what was in flight finished, nothing new went out
        await pilot.press("p")
        assert not session.paused and session.concurrency == 2
        marks = []
        session.add_listener(lambda e: marks.append(e) if isinstance(e, Mark) else None)
        await pilot.press("space")
        assert [m.note for m in marks] == ["mark 1"]
        app.exit()


async def test_m_lists_the_models_and_switches_to_the_one_picked():
    app = live_app()
    async with app.run_test(size=(100, 30)) as pilot:
        session = await started(app, pilot)
        await pilot.press("m")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ModelPicker)
        assert app.screen.models == ["fake", "fake-large"]
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        assert session.model == "fake-large"
        await pilot.pause(0.3)
        assert "fake-large on" in text_of(app.screen.query_one(HeaderBar))
        app.exit()


async def test_q_asks_first_and_n_keeps_the_run_going(tmp_path):
    app = live_app(record=tmp_path / "r.jsonl.gz")
    async with app.run_test(size=(100, 30)) as pilot:
        session = await started(app, pilot)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmQuit) and not session.ended
        await pilot.press("q", "y")
        for _ in range(100):
            if app.return_value is not None:
                break
            await pilot.pause(0.05)
        assert session.ended
    events = list(RecordReader(tmp_path / "r.jsonl.gz").events())
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "interrupted"
    assert app.return_value is app.feed  # the CLI prints its summary after the app exits


async def test_t_cycles_the_themes_and_question_mark_shows_help():
    app = replay_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "soaktop-dark"
        await pilot.press("t")
        assert app.theme == "soaktop-light"
        await pilot.press("t", "t", "t")
        assert app.theme == "soaktop-dark"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_every_key_is_in_the_command_palette():
    app = live_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for title in ("Concurrency +1", "Concurrency -1", "Model", "Pause", "Mark",
                      "Theme", "Help"):
            assert title in titles
        command = next(c for c in app.get_system_commands(app.screen)
                       if c.title == "Concurrency +1")
        command.callback()
        await pilot.pause(0.1)
        assert app.feed.session.concurrency == 3
        app.exit()


async def test_replay_keys_pause_seek_jump_and_change_speed():
    app = replay_app(at_s=2.0)
    async with app.run_test(size=(100, 30)) as pilot:
        replay = app.feed.replay
        end, first_stop = replay.timeline.end_ns, int(replay.timeline.stops[0])
        assert replay.paused and replay.position_ns == 2 * 10**9 and end < 10 * 10**9
        await pilot.press("right")  # 10 s on, past the 8 s record: its end
        assert replay.position_ns == end
        await pilot.press("left")  # 10 s back: the start
        assert replay.position_ns == 0
        await pilot.press("n")  # the next phase change: warm-up done
        assert replay.position_ns == first_stop
        await pilot.press("p")  # nothing before it but the start
        assert replay.position_ns == 0
        await pilot.press("plus")
        assert replay.speed == 10
        await pilot.press("space")
        assert not replay.paused
        await pilot.pause(0.3)
        assert replay.position_ns >= 2 * 10**9  # x10 for 0.3 s
        await pilot.press("q")
    assert app.return_value is app.feed


async def test_a_seek_back_and_forth_redraws_the_same_curves():
    import numpy as np

    app = replay_app(at_s=7.0)
    async with app.run_test(size=(100, 30)) as pilot:
        before = app.feed.history.window(5, end_s=6).series["tokens_per_s"].copy()
        await pilot.press("left")  # to 0 s: history starts again
        assert np.isnan(app.feed.history.window(5, end_s=6).series["tokens_per_s"]).all()
        await pilot.press("right")  # to the end: the seconds it shows are drawn again
        after = app.feed.history.window(5, end_s=6).series["tokens_per_s"]
    assert np.isfinite(before).all() and np.array_equal(before, after)


async def test_error_messages_are_shown_as_text_never_as_markup():
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        hostile = "[b]boom[/b] [@click=app.quit]x[/]"
        done = RequestDone(10**9, 0, 99, 1, "openai", "m", 0, 4, (), 100, "error",
                           error_class="http_500", error_message=hostile)
        app.feed.errors.append(done)
        app.feed.live.add(done)
        await pilot.pause(0.4)
        shown = text_of(app.screen.query_one(RequestsPanel))
        assert hostile in shown


async def test_the_run_ending_keeps_the_screen_and_says_so():
    app = live_app(duration_s=0.8)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await asyncio.sleep(1.2)
        await pilot.pause(0.3)
        assert app.feed.session.ended
        assert "ENDED" in text_of(app.screen.query_one(HeaderBar))
        await pilot.press("q")  # no question once the run is over
        await pilot.pause(0.2)
    assert app.return_value is app.feed


async def test_attach_follows_a_record_being_written_on_the_same_screen(tmp_path):
    from soaktop.engine.metrics.summary import SessionSummary
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed
    from tests.tui.dashboard_apps import SAMPLE, sample_events

    record = tmp_path / "growing.jsonl"
    lines = SAMPLE.read_text().splitlines(keepends=True)
    record.write_text("".join(lines[: len(lines) // 2]))  # a run half way through
    app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.6)
        header = text_of(app.screen.query_one(HeaderBar))
        assert "soaktop attach" in header and "tiny on cpu" in header
        half = app.feed.live.ok
        assert 0 < half and app.feed.summary.end is None
        with record.open("a") as handle:  # the writer goes on
            handle.write("".join(lines[len(lines) // 2:]))
        for _ in range(40):
            if app.feed.summary.end is not None:
                break
            await pilot.pause(0.1)
        assert app.feed.live.ok > half
        whole = SessionSummary()
        for event in sample_events():
            whole.add(event)
        assert app.feed.summary.result() == whole.result()
        await pilot.press("q")
    assert app.return_value is app.feed


def test_no_color_picks_the_monochrome_theme():
    from soaktop.themes import THEMES, default_theme, next_theme

    assert default_theme({"NO_COLOR": "1"}) == "monochrome"
    assert default_theme({}) == "dark"
    assert [next_theme(n) for n in THEMES] == ["light", "high-contrast", "monochrome", "dark"]
    mono = THEMES["monochrome"]
    assert {mono.primary, mono.warning, mono.error, mono.success} == {"#FFFFFF"}


async def test_in_an_open_loop_plus_and_minus_step_the_rate():
    from soaktop.engine.backends.fake import FakeBackend
    from soaktop.engine.config import RunConfig
    from soaktop.engine.session import Session
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import LiveFeed

    session = Session(RunConfig(backend="fake", model="fake", rate=8.0, duration_s=30,
                                output_tokens=8, warmup_requests=0),
                      FakeBackend(ttft_s=0.01, itl_s=0.005))

    async def start():
        return session

    app = SoaktopApp(LiveFeed(start), fps=10, theme="dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("+")
        assert session.rate == 10.0 and session.concurrency == 0
        await pilot.pause(0.2)
        assert "rate 10 req/s" in text_of(app.screen.query_one(HeaderBar))
        # an open loop keeps no concurrency: in flight alone, never "in flight 3/0"
        requests = text_of(app.screen.query_one(RequestsPanel))
        assert " in flight " in requests and "/0" not in requests
        await pilot.press("+", "+")
        assert session.rate == pytest.approx(15.62)  # as the key steps it
        await pilot.pause(0.2)
        assert "rate 15.6 req/s" in text_of(app.screen.query_one(HeaderBar))  # not 15.62
        await pilot.press("minus", "minus", "minus")
        assert session.rate == 8.0
        app.exit()


async def test_z_steps_the_time_axis_out_to_the_whole_run_and_shift_z_back():
    app = replay_app(at_s=8.0)
    async with app.run_test(size=(100, 30)) as pilot:
        axis = app.screen.query_one(AxisRow)
        assert await until(pilot, lambda: axis.scale)  # the first frame drawn
        assert axis.scale == "15m · 10s/col"  # the default: 100 columns less the y labels' 8
        await pilot.press("Z")
        assert axis.scale == "92s · 1s/col"
        assert "┃warmed" in axis.text  # where warm-up ended
        await pilot.press("Z")
        assert axis.scale == "92s · 1s/col"  # the finest already: it stays
        scales = []
        for _ in range(4):  # the fourth press: already the whole run, it stays
            await pilot.press("z")
            scales.append(axis.scale)
        assert scales == ["15m · 10s/col", "92m · 1m/col", "run 9s · 1s/col",
                          "run 9s · 1s/col"]
        assert "┃warmed" in axis.text  # the ticks stay in every view
        tokens = app.screen.query_one("#chart-tokens", ChartPanel)
        rows = ["".join(text for text, _ in runs) for runs in tokens.rows]
        # the record's first point (at 1 s: ticks come at the end of a second) is in column 1
        assert any(row[1] != " " for row in rows)
        assert all(row[9:].strip() == "" for row in rows)  # 9 s of record: nothing after them
        await pilot.press("Z")
        assert axis.scale == "92m · 1m/col"
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Zoom out", "Zoom in"} <= titles


async def test_charts_label_their_range_and_rates_start_at_zero():
    app = replay_app(at_s=8.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        tokens = app.screen.query_one("#chart-tokens", ChartPanel)
        ttft = app.screen.query_one("#chart-ttft", ChartPanel)
        assert tokens.lo_text == "0" and float(tokens.hi_text) >= 270
        assert "".join(t for t, _ in tokens.head).startswith(" tokens/s  270 · per request p50")
        assert [kind for _, kind in ttft.head] == ["title", "line0", "line1"]  # the legend
        assert float(ttft.lo_text) > 0  # a latency's range is the data's, with a floor
        body = tokens.query_one(ChartBody)
        lines = [body.render_line(y).text for y in range(body.size.height)]
        assert lines[0].startswith(" tokens/s")
        assert lines[1].startswith(f"{tokens.hi_text:>7}┤")
        assert lines[-1].startswith("      0┤")
        live = tokens.query_one(LiveColumn)  # the newest 10 s, still filling: a column apart
        assert live.size.width == 1 and "".join(c for row in live.cells for c, _ in row).strip()
        assert all(line[8:].strip() == "" for line in lines[1:])  # nothing older than that


async def test_a_model_switch_is_ticked_with_the_new_model_s_name():
    app = live_app()
    async with app.run_test(size=(100, 30)) as pilot:
        session = await started(app, pilot)
        await pilot.press("m")
        await pilot.pause(0.2)
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        assert session.model == "fake-large"
        await pilot.pause(0.4)
        text = app.screen.query_one(AxisRow).text
        assert "fake-large┃" in text  # the newest tick, at the right: its label on its left
        assert "c2" not in text  # a model switch is not a concurrency change
        app.exit()


async def test_a_filling_bucket_repaints_the_newest_column_only():
    """Over SSH a repaint costs the lines repainted: while the newest 10 s bucket fills, the
    rest of the chart must stay put, and move only when a bucket completes."""
    from soaktop.engine.metrics.history import History
    from tests.engine.test_history import snap

    app = replay_app(at_s=8.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        chart = app.screen.query_one("#chart-tokens", ChartPanel)
        body, live = chart.query_one(ChartBody), chart.query_one(LiveColumn)
        repaints = {"body": 0, "live": 0}
        body.refresh = lambda *a, **k: repaints.__setitem__("body", repaints["body"] + 1)
        live.refresh = lambda *a, **k: repaints.__setitem__("live", repaints["live"] + 1)
        history = History()
        now = {"tokens_per_s": 100.0}

        def second(s, tokens):
            history.record(s, snap(s, tokens=tokens))
            chart.show(history.window(chart.plot_width, step_s=10), now)

        for s in range(45):
            second(s, 300.0 if s == 5 else 100.0)  # a spike: the range is set to 0-400
        repaints.update(body=0, live=0)
        for s in range(45, 50):  # the bucket of 40-49 s fills, its band widens
            second(s, 50.0 + 60 * (s - 45))
        assert repaints["body"] == 0 and repaints["live"] >= 3
        second(50, 120.0)  # a new bucket: the finished one joins the body, which scrolls
        assert repaints["body"] == 1


@pytest.mark.parametrize("kind", ["live", "replay", "attach"])
async def test_the_footer_holds_every_key_down_to_80_columns_quit_included(kind, tmp_path):
    """Textual's footer cuts what does not fit; paired keys share an entry (``z Z Zoom``),
    so the line ends with ``q Quit`` at 80 columns on every screen."""
    from textual.widgets import Footer
    from textual.widgets._footer import FooterKey

    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed
    from tests.tui.dashboard_apps import SAMPLE, replay_app

    if kind == "attach":
        record = tmp_path / "run.jsonl"
        record.write_text(SAMPLE.read_text())
        app = SoaktopApp(AttachFeed(record), fps=4, theme="dark")
    else:
        app = live_app() if kind == "live" else replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        footer = app.screen.query_one(Footer)
        assert await until(pilot, lambda: any(k.region.width for k in footer.query(FooterKey)))
        await pilot.pause(0.1)  # every key laid out, not only the first
        keys = list(footer.query(FooterKey))
        assert keys and "q" in {k.key_display for k in keys}
        assert all(k.region.right <= 80 and k.region.width > 0 for k in keys), [
            (k.key_display, k.region) for k in keys]
        app.exit()
