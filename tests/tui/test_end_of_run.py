"""The screen at the end of a run: it stops at the run's end (no empty seconds scroll in), shows
the whole run and the summary table, and keeps its keys until ``q``; a replay does the same at
the end of its record, and undoes it when a seek goes back."""

import asyncio

import pytest

from soaktop.engine.records.format import RecordReader
from soaktop.tui.app import SoaktopApp
from soaktop.tui.feeds import AttachFeed
from soaktop.tui.record_commands import summarise
from soaktop.tui.screens.dashboard import ZOOMS
from soaktop.tui.text import summary_table
from soaktop.tui.widgets.header_bar import HeaderBar
from soaktop.tui.widgets.series import AxisRow, ChartPanel
from soaktop.tui.widgets.summary_panel import SummaryPanel
from tests.tui.dashboard_apps import SAMPLE, live_app, replay_app

WHOLE = ZOOMS.index(0)


def text_of(widget) -> str:
    return str(widget.render())


def chart_rows(screen) -> list[str]:
    tokens = screen.query_one("#chart-tokens", ChartPanel)
    return ["".join(text for text, _ in runs) for runs in tokens.rows]


async def ended(app, pilot, within_s: float = 30.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if app.feed.ended:
            break
        await pilot.pause(0.05)
    assert app.feed.ended
    # the frame that notices, and the summary panel's layout (its table is laid out for the
    # width it gets): waited for, not a fixed pause, which a busy CI machine outran
    for _ in range(int(within_s / 0.05)):
        await pilot.pause(0.05)
        if any(panel.text for panel in app.screen.query(SummaryPanel)):
            break
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(100, 30), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_a_live_run_that_ends_stops_there_with_the_whole_run_and_its_summary(size):
    app = live_app(duration_s=2.5)
    async with app.run_test(size=size) as pilot:
        await ended(app, pilot)
        screen, feed = app.screen, app.feed
        end_ns = feed.summary.end.t_ns
        latest, rows = feed.history.latest_s, chart_rows(screen)
        await asyncio.sleep(1.5)  # frames go on: more than a second of the clock that was
        await pilot.pause(0.2)
        # the clock stopped at the end: no second after it recorded, no column drawn
        assert feed.now_ns() == end_ns
        assert feed.history.latest_s == latest == end_ns // 10**9
        assert chart_rows(screen) == rows
        header = text_of(screen.query_one(HeaderBar))
        assert "ENDED after 00:02 (completed)" in header and "left)" not in header
        axis = screen.query_one(AxisRow)
        assert screen.zoom == WHOLE and axis.scale == "run 3s · 1s/col"  # from its first second
        assert any(row[1] != " " for row in rows)  # second 1 is the whole view's column 1
        # the summary table in place of the panels below, laid out for its width
        panel = screen.query_one(SummaryPanel)
        assert panel.display and not screen.query_one("#below").display
        assert panel.text == summary_table(feed.summary.result(), panel.size.width - 2)
        assert "ended: completed" in panel.text and panel.text.startswith("phase conc")
        assert all(len(line) <= panel.size.width - 2 for line in panel.text.splitlines())
        assert panel.region.height <= size[1] * 0.4  # the charts keep most of the screen
        assert panel.region.bottom <= size[1] - 1  # above the footer, nothing cut off
        # the zoom keys still work, and v switches to the panels and back
        await pilot.press("Z")
        assert axis.scale.endswith("1m/col") and feed.history.latest_s == latest
        await pilot.press("z")
        assert axis.scale == "run 3s · 1s/col"
        await pilot.press("v")
        assert not panel.display and screen.query_one("#below").display
        await pilot.press("v")
        assert panel.display and not screen.query_one("#below").display
        await pilot.press("q")  # no question once the run is over
        await pilot.pause(0.2)
    assert app.return_value is app.feed


async def test_v_is_offered_only_once_the_run_has_ended():
    app = live_app(duration_s=1.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        assert not app.feed.ended and app.screen.check_action("toggle_summary", ()) is False
        await pilot.press("v")  # nothing to show yet: the panels stay
        assert app.screen.query_one("#below").display and not app.screen.query(SummaryPanel)
        await ended(app, pilot)
        assert app.screen.check_action("toggle_summary", ()) is True
        app.exit()


async def test_a_replay_at_the_end_of_its_record_shows_the_whole_run_until_a_seek_back():
    app = replay_app(at_s=2.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        screen = app.screen
        axis = screen.query_one(AxisRow)
        assert axis.scale == "15m · 10s/col" and not screen.query(SummaryPanel)
        await pilot.press("right")  # 10 s on: past the 8 s record, its end
        await pilot.pause(0.3)
        assert "END OF RECORD" in text_of(screen.query_one(HeaderBar))
        assert axis.scale == "run 9s · 1s/col"
        panel = screen.query_one(SummaryPanel)
        # the numbers `soaktop summary` prints for the record, at the panel's width
        expected = summarise(RecordReader(SAMPLE).events()).result()
        assert panel.text == summary_table(expected, panel.size.width - 2)
        assert not screen.query_one("#phases").display  # the summary has the phases
        await pilot.press("Z")
        assert axis.scale.endswith("1m/col")  # zoom keys work at the end too
        await pilot.press("z")
        await pilot.press("left")  # a seek back: the record plays on from there
        await pilot.pause(0.3)
        assert not app.feed.ended and not screen.query(SummaryPanel)
        assert screen.query_one("#below").display and screen.query_one("#phases").display
        assert axis.scale == "15m · 10s/col"  # the zoom of before the end
        await pilot.press("q")
    assert app.return_value is app.feed


async def test_attach_to_a_run_that_has_ended_shows_its_whole_run_and_summary(tmp_path):
    record = tmp_path / "done.jsonl"
    record.write_text(SAMPLE.read_text())
    app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await ended(app, pilot)
        header = text_of(app.screen.query_one(HeaderBar))
        assert "ENDED after 00:08 (completed) · q leaves" in header
        assert app.screen.query_one(AxisRow).scale.startswith("run ")
        assert "ended: completed" in app.screen.query_one(SummaryPanel).text
        await pilot.press("q")
    assert app.return_value is app.feed
