"""The dashboard apps the TUI tests drive, from one factory each (pilot and snapshot tests
share them): a live run on the fake backend, and the committed sample record replayed."""

from __future__ import annotations

from pathlib import Path

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.records.format import RecordReader
from soaktop.engine.session import Session
from soaktop.tui.app import SoaktopApp
from soaktop.tui.feeds import LiveFeed, ReplayFeed

SAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "sample.jsonl"


def live_app(record: Path | None = None, duration_s: float = 60.0, **backend) -> SoaktopApp:
    config = RunConfig(backend="fake", model="fake", concurrency=2, duration_s=duration_s,
                       output_tokens=16, warmup_requests=0)
    session = Session(config, FakeBackend(**{"ttft_s": 0.01, "itl_s": 0.01, **backend}),
                      record_path=record)

    async def start() -> Session:
        return session

    async def models() -> list[str]:
        return ["fake", "fake-large"]

    return SoaktopApp(LiveFeed(start), fps=10, theme="dark", models=models)


def sample_events() -> list:
    return list(RecordReader(SAMPLE).events())


def replay_app(at_s: float | None = 6.0, kind: str = "replay") -> SoaktopApp:
    """The sample record, paused at ``at_s``: nothing moves, so a snapshot is the same every
    time. ``kind="live"`` shows it on the live screen's layout (no session behind it)."""
    feed = ReplayFeed(sample_events(), speed=1.0, path=Path("sessions/sample.jsonl"))
    if kind == "live":
        feed.kind = "live"
        feed.session = None
    feed.replay.pause()
    if at_s is not None:
        feed.seek(int(at_s * 1e9))
    return SoaktopApp(feed, fps=4, theme="dark")
