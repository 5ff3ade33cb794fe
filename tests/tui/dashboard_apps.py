"""The dashboard apps the TUI tests drive, from one factory each (pilot and snapshot tests
share them): a live run on the fake backend, and the committed sample record replayed, with
or without deterministic GPU samples mixed in (the sample was recorded on a GPU-less machine)."""

from __future__ import annotations

from pathlib import Path

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import GpuSample, TelemetryStatus
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


def gpu_sample(t_ns: int, i: int) -> GpuSample:
    """GPU ``i`` at ``t_ns``, as a function of time and index only: warming by 2.5 C a second
    from 55 C (2 C more per index); GPU 3 comes near its slowdown threshold and throttles
    thermally from 4 s on, its clock falling; every other odd GPU is held at its power cap
    now and then."""
    k = t_ns * 4 // 10**9  # the quarter-second it falls in
    second = t_ns / 1e9
    hot = i == 3 and second >= 4
    reasons = ("sw_thermal",) if hot else ("sw_power_cap",) if i % 2 and k % 5 == 0 else ()
    return GpuSample(
        t_ns, i, temperature_c=55.0 + 2 * i + 2.5 * second + (6 if hot else 0),
        slowdown_temperature_c=87.0, sm_clock_mhz=1980.0 - (380.0 if hot else 15 * i),
        sm_clock_max_mhz=1980.0, power_w=300.0 + 40 * i + 10 * (k % 3),
        power_limit_w=700.0, memory_used_bytes=(40 + i) * 2**30,
        memory_total_bytes=80 * 2**30, clock_event_reasons=reasons)


def gpu_samples(count: int, seconds: int = 8, hz: int = 4) -> list[GpuSample]:
    """``count`` GPUs (:func:`gpu_sample`) sampled ``hz`` times a second over ``seconds``."""
    return [gpu_sample(10_000_000 + k * 10**9 // hz, i)
            for k in range(seconds * hz) for i in range(count)]


class FakeGpus:
    """A telemetry source of ``count`` GPUs for a live session (:func:`gpu_sample` at the
    session's clock), so a live run shows GPUs on a machine without one. A real session's
    sampler thread polls it, as it would NVML."""

    name = "nvml"
    max_hz = 100.0

    def __init__(self, count: int) -> None:
        self.count = count

    def open(self, clock) -> list:
        return []

    def sample(self, clock) -> list:
        t_ns = clock()
        return [gpu_sample(t_ns, i) for i in range(self.count)]

    def close(self) -> None:
        pass


def replay_app(at_s: float | None = 6.0, kind: str = "replay", gpus: int = 0) -> SoaktopApp:
    """The sample record, paused at ``at_s``: nothing moves, so a snapshot is the same every
    time. ``kind="live"`` shows it on the live screen's layout (no session behind it). With
    ``gpus``, that many GPUs' samples (:func:`gpu_samples`) are mixed in, and the record's
    "no NVIDIA GPU" status left out."""
    events = sample_events()
    if gpus:
        events = [e for e in events if not (isinstance(e, TelemetryStatus) and e.source == "nvml")]
        events = sorted(events[1:] + gpu_samples(gpus), key=lambda e: e.t_ns)  # stable sort
        events.insert(0, sample_events()[0])  # the header first
    feed = ReplayFeed(events, speed=1.0, path=Path("sessions/sample.jsonl"))
    if kind == "live":
        feed.kind = "live"
        feed.session = None
    feed.replay.pause()
    if at_s is not None:
        feed.seek(int(at_s * 1e9))
    return SoaktopApp(feed, fps=4, theme="dark")
