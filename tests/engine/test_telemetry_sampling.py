"""The sampler thread, the host source, and telemetry inside a session and its record."""

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from soaktop.engine.events import GpuSample, HostSample, SessionEnd, TelemetryStatus
from soaktop.engine.metrics.summary import summarise
from soaktop.engine.records.format import RecordReader
from soaktop.engine.telemetry.host import HostSource
from soaktop.engine.telemetry.sampler import Sampler


def now_ns():
    return time.perf_counter_ns()


class CountingSource:
    name = "counting"
    max_hz = 100.0

    def __init__(self, sample_s=0.0, fail_between=None):
        self.sample_s = sample_s
        self.fail_between = fail_between  # (first, last) call numbers that raise
        self.calls = 0
        self.closed = False

    def open(self, clock):
        return []

    def sample(self, clock):
        self.calls += 1
        if self.fail_between and self.fail_between[0] <= self.calls <= self.fail_between[1]:
            raise OSError("sensor went away")
        time.sleep(self.sample_s)
        return [HostSample(clock(), cpu_percent=float(self.calls))]

    def close(self):
        self.closed = True


def run_sampler(source, hz, seconds):
    got, lock = [], threading.Lock()

    def deliver(events):
        with lock:
            got.extend(events)

    sampler = Sampler(source, hz, now_ns, deliver)
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    return got


def test_samples_at_the_set_rate():
    got = run_sampler(CountingSource(), hz=20, seconds=1.0)
    times = np.array([e.t_ns for e in got])
    assert 17 <= len(got) <= 21
    # the schedule is fixed, not "sleep after each sample": intervals stay at 50 ms
    assert np.median(np.diff(times)) / 1e6 == pytest.approx(50, abs=5)


def test_a_slow_source_skips_ticks_instead_of_bunching_them():
    got = run_sampler(CountingSource(sample_s=0.25), hz=20, seconds=1.1)
    assert 3 <= len(got) <= 5  # about one per 250 ms call, not 20 catching up


def test_the_rate_is_capped_by_the_source():
    source = CountingSource()
    source.max_hz = 5.0
    assert 4 <= len(run_sampler(source, hz=100, seconds=1.0)) <= 6


def test_a_failing_source_is_said_once_and_recovers():
    source = CountingSource(fail_between=(3, 8))
    got = run_sampler(source, hz=50, seconds=0.5)
    statuses = [e for e in got if isinstance(e, TelemetryStatus)]
    assert [s.available for s in statuses] == [False, True]
    assert statuses[0].reason == "OSError: sensor went away"
    assert len([e for e in got if isinstance(e, HostSample)]) >= 10
    assert source.closed


def test_host_source_reads_this_machine():
    source = HostSource()
    (status,) = source.open(now_ns)
    assert status.available and status.info["cpu_count"] == psutil.cpu_count()
    time.sleep(0.2)
    (sample,) = source.sample(now_ns)
    assert sample.memory_total_bytes == psutil.virtual_memory().total
    assert len(sample.cpu_per_core_percent) == psutil.cpu_count()
    rss = psutil.Process().memory_info().rss
    assert sample.soaktop_rss_bytes == pytest.approx(rss, rel=0.2)
    if sample.cpu_temperature_c is None:  # absent, and said why
        assert "cpu_temperature_c" in status.unavailable_fields


def test_host_source_sees_soaktop_busy():
    """CPU shares are true averages between samples: a spinning thread shows as ~a core."""
    source = HostSource()
    source.open(now_ns)
    source.sample(now_ns)
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        pass
    (busy,) = source.sample(now_ns)
    time.sleep(0.5)
    (idle,) = source.sample(now_ns)
    assert busy.soaktop_cpu_percent > 70
    assert idle.soaktop_cpu_percent < 30


def test_a_watched_process_until_it_exits():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 << 20); "
                              "time.sleep(30)"])
    try:
        source = HostSource(watch_pid=child.pid)
        time.sleep(0.5)
        (status,) = source.open(now_ns)
        assert "watched_rss_bytes" not in status.unavailable_fields
        (sample,) = source.sample(now_ns)
        assert sample.watched_pid == child.pid
        assert sample.watched_rss_bytes > 50 << 20
        child.kill()
        child.wait()
        gone, sample = source.sample(now_ns)
        # the new status replaces the last: it still says what was missing before
        assert gone.unavailable_fields == {
            **status.unavailable_fields,
            "watched_rss_bytes": f"watched process {child.pid} has exited"}
        assert sample.watched_rss_bytes is None
        assert [type(e) for e in source.sample(now_ns)] == [HostSample]  # said once
    finally:
        child.kill()


def test_a_watched_pid_that_does_not_exist():
    (status,) = HostSource(watch_pid=2**22 + 12345).open(now_ns)
    assert "does not exist" in status.unavailable_fields["watched_rss_bytes"]


class ScriptedGpu:
    """A GPU source whose temperature rises 1 C per sample, for session-level tests."""

    name = "scripted"
    max_hz = 100.0

    def __init__(self):
        self.n = 0

    def open(self, clock):
        return [TelemetryStatus(clock(), self.name, True, gpu_index=0, info={"name": "fake"})]

    def sample(self, clock):
        self.n += 1
        return [GpuSample(clock(), 0, source="nvml", temperature_c=40.0 + self.n,
                          energy_mj=self.n * 50_000, clock_event_reasons=("sw_power_cap",))]

    def close(self):
        pass


async def test_session_records_telemetry_in_order_and_nothing_after_the_end(make_session,
                                                                            tmp_path):
    session, events = make_session(record=True, concurrency=2, duration_s=1.5,
                                   telemetry_hz=20)
    session._sources = [ScriptedGpu(), HostSource()]
    await session.run()
    samples = events.of(GpuSample)
    assert 20 <= len(samples) <= 31  # 20 Hz for ~1.5 s
    assert len(events.of(HostSample)) >= 20
    assert isinstance(events[-1], SessionEnd)
    times = [e.t_ns for e in events if isinstance(e, GpuSample)]
    assert times == sorted(times)
    # the record holds the same telemetry, and the summary of it equals the live one
    reader = RecordReader(tmp_path / "run.jsonl")
    recorded = list(reader.events())
    assert [e for e in recorded if isinstance(e, GpuSample)] == samples
    run = summarise(events).result()
    assert run == summarise(recorded).result()
    assert run.gpus["0"]["clock_event_fraction"] == {"sw_power_cap": 1.0}
    assert run.gpus["0"]["power_w"]["mean"] == pytest.approx(50 * 20, rel=0.15)


async def test_telemetry_threads_end_with_the_session(make_session):
    session, _ = make_session(concurrency=1, duration_s=0.3)
    session._sources = [HostSource()]
    await session.run()
    await asyncio.sleep(0)
    names = [t.name for t in threading.enumerate()]
    assert not any(n.startswith("soaktop-telemetry") for n in names)
