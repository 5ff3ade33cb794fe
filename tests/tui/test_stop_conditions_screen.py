"""The dashboard of an open loop whose server stops keeping up: a warning says so in the header
and in one notification as it comes; a run stopped for it says why in its ENDED line."""

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.session import Session
from soaktop.tui.app import SoaktopApp
from soaktop.tui.feeds import LiveFeed
from soaktop.tui.widgets.header_bar import HeaderBar


def saturating_app(**config) -> SoaktopApp:
    """60 requests a second at a fake server that serves one at a time, 16 tokens in about
    40 ms: about 25 a second, so what the load owes grows by about 35 a second."""
    config = RunConfig(backend="fake", model="fake", rate=60, duration_s=20, output_tokens=16,
                       warmup_requests=0, stop_window_s=1.0, **config)
    session = Session(config, FakeBackend(ttft_s=0.01, itl_s=0.002, max_concurrent=1))

    async def start() -> Session:
        return session

    return SoaktopApp(LiveFeed(start), fps=10, theme="dark")


async def until(pilot, condition, seconds: float = 15.0) -> bool:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return True
        await pilot.pause(0.1)
    return condition()


async def test_a_saturation_warning_shows_in_the_header_and_one_notification():
    app = saturating_app()
    async with app.run_test(size=(160, 30)) as pilot:
        header = app.screen.query_one(HeaderBar)
        assert await until(pilot, lambda: "SATURATED" in str(header.render()))
        notes = [str(n.message) for n in app._notifications]
        assert sum(note.startswith("saturated: requests owed") for note in notes) == 1
        assert not app.feed.ended  # it only warned
        app.feed.session.stop()
        await until(pilot, lambda: app.feed.ended)


async def test_a_run_stopped_as_saturated_says_why_in_its_ended_line():
    app = saturating_app(on_saturation="stop")
    async with app.run_test(size=(250, 30)) as pilot:
        header = app.screen.query_one(HeaderBar)
        assert await until(pilot, lambda: app.feed.ended)
        await pilot.pause(0.3)
        assert "(saturated: requests owed (in flight + due unsent) rose" in str(header.render())
        app.exit()
