"""What the dashboard costs over SSH: the bytes it writes to the terminal a second.

A soak is watched for 30 minutes or more, often over SSH from a laptop on a slow link, beside
other monitors; every byte a frame sends is paid for every second of that. The bound is 6 KB/s
at 100x30 and the default frame rate: btop, with all its graphs, writes 5.7 KB/s here, so
soaktop's screen may cost what the monitor people already accept, and no more (the one-row
sparklines it replaced wrote 12.3 KB/s with no GPU).

Textual's headless driver draws nothing (the app skips rendering when headless), so the test
driver below says it is not headless: the app renders every update exactly as for a terminal,
and the driver counts the bytes instead of writing them. Bytes are added up per second of the
session's clock, in steady state (after start-up's full paints) over 10 s, which hold one
completed 10 s bucket (where the charts scroll), as every 10 s of a run does. A slow machine
draws fewer frames a second, never more, so it can only lower the count: the test measures
bytes, not time.

GPUs come from a stand-in NVML source (``tests/tui/dashboard_apps.py``) polled by the session's
own sampler thread at the default 4 Hz, so the panel sees what 8 real GPUs would give it.

The terminal is ``TERM=xterm-256color`` without ``COLORTERM``: what a remote shell sees, as ssh
forwards no ``COLORTERM`` by default, and how the figures above were measured (``script``).
"""

import asyncio
from collections import Counter

import pytest
from textual.drivers.headless_driver import HeadlessDriver

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.session import Session
from soaktop.engine.telemetry import build_sources
from soaktop.tui.app import SoaktopApp
from soaktop.tui.feeds import LiveFeed
from soaktop.tui.widgets.gpu_panel import GpuPanel
from tests.tui.dashboard_apps import FakeGpus

SIZE = (100, 30)
BOUND = 6000  # bytes a second
STEADY = range(3, 13)  # seconds of the session's clock


class CountingDriver(HeadlessDriver):
    """Renders as a terminal driver would (not headless) and counts what would be written,
    per second of the session's clock (into the app's ``written``)."""

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        second = self._app.feed.now_ns() // 10**9
        self._app.written[second] += len(data.encode())


def counting_app(monkeypatch, duration_s: float, telemetry: tuple[str, ...],
                 gpus: int = 0) -> SoaktopApp:
    """A live run on the fake backend at the defaults (frame rate, theme, telemetry at 4 Hz),
    with ``gpus`` deterministic GPUs (:class:`~tests.tui.dashboard_apps.FakeGpus`)."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLORTERM", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    config = RunConfig(backend="fake", model="fake", concurrency=2, duration_s=duration_s,
                       output_tokens=16, warmup_requests=0, telemetry=telemetry)
    sources = build_sources(telemetry) + ([FakeGpus(gpus)] if gpus else [])
    session = Session(config, FakeBackend(ttft_s=0.01, itl_s=0.01),  # ~12 requests a second
                      sources=sources)

    async def start() -> Session:
        return session

    app = SoaktopApp(LiveFeed(start))
    app.driver_class = CountingDriver
    app.written = Counter()
    return app


async def until_second(app, pilot, second: float) -> None:
    """Until the session's clock reaches ``second`` (bounded: a run that never starts fails)."""
    for _ in range(int((second + 60) / 0.25)):
        session = app.feed.session
        if session is not None and session.started.is_set() and app.feed.now_ns() >= second * 1e9:
            return
        await pilot.pause(0.25)
    raise AssertionError(f"the session's clock never reached {second} s")


@pytest.mark.parametrize(("telemetry", "gpus"), [
    pytest.param((), 0, id="no-telemetry"),
    # the host line under the requests panel: before that panel repainted only the lines that
    # changed, its done count alone sent the whole panel each frame (6.2 KB/s measured)
    pytest.param(("host",), 0, id="host-line"),
    # the GPU table at 100x30 (every GPU's figures, mini-charts and throttle cells) beside
    # the host line, each GPU sampled 4 times a second as NVML is by default, its power
    # changing with each sample: 7.3 KB/s measured when the panel sent itself whole at every
    # change, 5.1 KB/s with only the changed cells at every sample, 2.5 KB/s once a second
    pytest.param(("host",), 8, id="8-gpus-and-host"),
])
async def test_a_live_run_writes_at_most_6_kb_a_second_at_100x30(monkeypatch, telemetry, gpus):
    app = counting_app(monkeypatch, duration_s=60, telemetry=telemetry, gpus=gpus)
    async with app.run_test(headless=False, size=SIZE) as pilot:
        assert app.is_headless is False  # else nothing is rendered, and nothing counted
        await until_second(app, pilot, STEADY.stop + 0.5)
        shown = ["".join(t for t, _ in row) for row in app.screen.query_one(GpuPanel).rows]
        app.exit()
    if gpus:  # every GPU's row and the host line were on the screen measured
        assert [r.split()[0] for r in shown if r.startswith("GPU")] == [
            f"GPU{i}" for i in range(gpus)], shown
        assert shown[-1].startswith("host CPU"), shown
    per_second = [app.written[s] for s in STEADY]
    # a screen that stalled would meet any bound: most seconds must have drawn something
    assert sum(1 for n in per_second if n) >= len(per_second) // 2, per_second
    mean = sum(per_second) / len(per_second)
    print(f"{telemetry or 'no telemetry'}, {gpus} GPUs: {mean:.0f} bytes/s")
    assert mean <= BOUND, f"{mean:.0f} bytes/s; per second: {per_second}"


async def test_a_run_that_has_ended_writes_nothing_more(monkeypatch):
    """At its end the screen stops: once the whole run and the summary are drawn, the frames
    that go on (the timer keeps running until q) find nothing changed and send nothing."""
    app = counting_app(monkeypatch, duration_s=2.5, telemetry=("host",))
    async with app.run_test(headless=False, size=SIZE) as pilot:
        for _ in range(240):
            if app.feed.ended:
                break
            await pilot.pause(0.25)
        assert app.feed.ended
        await pilot.pause(1.0)  # the end's own repaint: whole run, summary, footer
        before = sum(app.written.values())
        await asyncio.sleep(1.5)  # six frames at the default 4 a second
        await pilot.pause(0.1)
        assert sum(app.written.values()) == before
        app.exit()
