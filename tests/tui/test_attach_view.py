"""``attach`` on a long record draws the whole run from its outline first, then fills in the
detail, and ends with exactly the History a plain full read gives; the event loop keeps
drawing meanwhile. A replay's seek keeps the whole run before the stretch it re-feeds."""

import asyncio
import gzip
import json
import math
import time

import numpy as np
import pytest

from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Mark,
    Phase,
    RequestDone,
    SessionEnd,
    SessionStart,
    TelemetryStatus,
)
from soaktop.engine.records.format import RecordReader, encode
from soaktop.engine.records.skim import without_requests
from soaktop.tui.feeds import AttachFeed, ReplayFeed, outline

RUN_S = 2400  # past 2 × 1024 s: the whole-run ring halves twice, in the outline and after


def long_events(run_s: int = RUN_S) -> list:
    """A run of ``run_s`` seconds: 4 requests a second (every 37th failed), 2 GPUs at 4 Hz
    (GPU 1 lost for a while), the host, a client sample a second (one with no interval),
    phases and marks, and five seconds with nothing in them."""
    rng = np.random.default_rng(7)
    config = {"backend": "openai", "model": "m", "concurrency": 2, "duration_s": run_s}
    events: list = [SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config, {}, {})]
    events += [TelemetryStatus(0, "nvml", True, gpu_index=g) for g in (0, 1)]
    events += [Phase(0, 0, 2, "m", "openai", "start", warmup=True),
               Phase(2 * 10**9, 1, 2, "m", "openai", "warm-up done"),
               Phase(1500 * 10**9, 2, 3, "m", "openai", "key"),
               Mark(700 * 10**9 + 5, "look here")]
    quiet = range(40 * 10**9, 45 * 10**9)  # nothing at all in these seconds
    for i, base in enumerate(range(10**8, run_s * 10**9 - 10**9, 250_000_000)):
        sent = base + int(rng.integers(0, 200_000_000))
        if sent in quiet:
            continue
        ttft = int(rng.gamma(9.0, 4000.0)) + (20_000 if 900 < sent / 1e9 < 1000 else 0)
        if i % 37 == 5:
            events.append(RequestDone(sent + 3 * 10**7, i % 2, i, 1, "openai", "m", sent, 64,
                                      (), 30_000, "error", error_class="http_500"))
            continue
        offsets = np.concatenate([[ttft], ttft + np.cumsum(rng.integers(8000, 12000, 7))])
        end_us = int(offsets[-1]) + 100
        events.append(RequestDone(sent + end_us * 1000, i % 2, i, 1, "openai", "m", sent, 64,
                                  tuple(offsets.tolist()), end_us, "length"))
    for t in range(0, run_s * 10**9, 250_000_000):
        for gpu in (1, 0):  # GPU 1 seen first: a snapshot's GPUs are sorted
            if gpu == 1 and 1200 * 10**9 <= t < 1300 * 10**9 or t in quiet:
                continue
            events.append(GpuSample(
                t, gpu, temperature_c=60 + t / 1e11 + float(rng.normal(0, 1)),
                slowdown_temperature_c=90.0, sm_clock_mhz=1900.0 - (t // 10**9) % 50,
                sm_clock_max_mhz=2000.0, power_w=300 + float(rng.normal(0, 5)),
                power_limit_w=600.0, memory_used_bytes=2**30, memory_total_bytes=2**34,
                clock_event_reasons=("sw_power_cap",) if (t // 250_000_000) % 9 == 0 else ()))
    events += [TelemetryStatus(1200 * 10**9 - 1, "nvml", False, "lost", gpu_index=1),
               TelemetryStatus(1300 * 10**9 - 1, "nvml", True, gpu_index=1)]
    events += [HostSample(t, cpu_percent=float(rng.uniform(5, 20)))
               for t in range(0, run_s * 10**9, 10**9) if t not in quiet]
    events += [ClientSample(t, 2, 0 if t == 50 * 10**9 else int(rng.integers(40, 60)),
                            0 if t == 50 * 10**9 else 10**9)
               for t in range(10**9 + 3, run_s * 10**9, 10**9) if t not in quiet]
    events.sort(key=lambda e: e.t_ns)  # stable: the header first
    return [*events, SessionEnd(run_s * 10**9, "completed")]


def write(path, events, member_ns: int = 500_000_000) -> None:
    """As the writer lays a record down: one gzip member per half second."""
    with open(path, "wb") as handle:
        lines, end = [], member_ns
        for event in events:
            if event.t_ns >= end and lines:
                handle.write(gzip.compress("".join(lines).encode(), 6, mtime=0))
                lines, end = [], (event.t_ns // member_ns + 1) * member_ns
            lines.append(json.dumps(encode(event), separators=(",", ":")) + "\n")
        handle.write(gzip.compress("".join(lines).encode(), 6, mtime=0))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    path = tmp_path_factory.mktemp("attach") / "long.jsonl.gz"
    write(path, long_events())
    return path


def state(history) -> dict:
    """Everything a History holds, to compare two of them exactly."""
    out = {"latest_s": history.latest_s, "failed_before": history._failed_before,
           "gpu_rows": dict(history._gpu_rows), "reasons": dict(history._reason_bit),
           "phases": list(history._phases), "marks": list(history._marks),
           "ahead": history.outline_ahead}
    for i, ring in enumerate(history.rings()):
        out[f"ring{i}"] = (ring.width_s, ring.bucket.tolist(), ring.lo.tolist(),
                           ring.hi.tolist(), ring.sum.tolist(), ring.count.tolist(),
                           ring.bits.tolist())
    return out


async def followed(path, outline_first: bool) -> AttachFeed:
    feed = AttachFeed(path, outline=outline_first)
    await asyncio.wait_for(feed.run(), 60)
    return feed


def test_the_outline_reads_every_line_but_the_requests_and_the_gpus_latest(record):
    events = list(RecordReader(record).events())
    skimmed = list(without_requests(record))
    assert not any(isinstance(e, RequestDone) for e in skimmed)
    others = [e for e in events if not isinstance(e, (RequestDone, GpuSample, HostSample))]
    assert [e for e in skimmed if not isinstance(e, (GpuSample, HostSample))] == others
    gpus = [e for e in skimmed if isinstance(e, GpuSample)]
    assert len(gpus) < len([e for e in events if isinstance(e, GpuSample)]) / 3  # thinned
    # at each client sample, each GPU's latest sample is the one a full read has latest
    def latest_at_clients(stream):
        latest, out = {}, []
        for e in stream:
            if isinstance(e, GpuSample):
                latest[e.gpu_index] = e
            elif isinstance(e, TelemetryStatus) and not e.available:
                latest.pop(e.gpu_index, None)
            elif isinstance(e, ClientSample):
                out.append(dict(latest))
        return out
    assert latest_at_clients(skimmed) == latest_at_clients(events)


async def test_after_catching_up_the_history_is_the_one_a_plain_full_read_gives(record):
    plain = await followed(record, outline_first=False)
    both = await followed(record, outline_first=True)
    assert both.outline_s is not None and not both.catching_up
    assert plain.history.whole_bucket_s == 4  # the ring halved twice: sums in the same order
    assert state(both.history) == state(plain.history)
    assert both.summary.result() == plain.summary.result()


async def test_the_outline_alone_draws_the_whole_run_and_the_detail_fills_in_after(record):
    history, live, header, latest_ns = await asyncio.to_thread(outline, record)
    plain = (await followed(record, outline_first=False)).history
    assert header.config["duration_s"] == RUN_S and latest_ns == RUN_S * 10**9
    whole, full = history.whole(100), plain.whole(100)
    assert (whole.start_s, whole.end_s, whole.step_s) == (full.start_s, full.end_s, full.step_s)
    # tokens/s and the GPUs in every column, as the full read has them; no latency yet
    np.testing.assert_array_equal(whole.series["tokens_per_s"], full.series["tokens_per_s"])
    for key in ("0", "1"):
        for name in ("temperature_c", "sm_clock_ratio", "power_w"):
            np.testing.assert_array_equal(whole.gpus[key][name], full.gpus[key][name])
        assert whole.reasons[key] == full.reasons[key]
    assert np.isnan(whole.series["ttft_p50_ms"]).all() and np.isnan(whole.series["errors"]).all()
    assert [(t.column, t.change) for t in whole.phases] == [
        (t.column, t.change) for t in full.phases]
    assert [c for c, _ in whole.marks] == [c for c, _ in full.marks]
    # the detail of the first points: their columns fill in, the rest stays outlined
    for second in range(1, 301):
        history.record(second, full_snapshot(second, ttft=5.0))
    part = history.whole(100)
    filled = ~np.isnan(part.series["ttft_p50_ms"])
    columns = 300 // part.step_s
    assert filled[: columns].all() and not filled[columns + 1:].any()
    np.testing.assert_array_equal(part.series["tokens_per_s"], full.series["tokens_per_s"])


def full_snapshot(second: int, ttft: float):
    from soaktop.engine.metrics.live import LiveSnapshot

    return LiveSnapshot(second * 10**9, 0.0, 0, 0, {}, ttft, ttft, 1.0, 1.0, 1.0, 1.0)


async def test_the_event_loop_keeps_drawing_while_a_long_record_is_read(record):
    feed = AttachFeed(record)
    worst, done = 0.0, False

    async def probe():  # what a frame timer sees: how late each 10 ms wake comes
        nonlocal worst
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - t0 - 0.01)

    probing = asyncio.ensure_future(probe())
    t0 = time.perf_counter()
    await asyncio.wait_for(feed.run(), 60)
    took, done = time.perf_counter() - t0, True
    await probing
    assert feed.summary.end is not None
    assert worst < max(0.25, took / 4), (worst, took)


def drawn_columns(screen, chart: str) -> int:
    """Columns of a chart with a dot drawn."""
    from soaktop.tui.widgets.series import ChartPanel

    rows = ["".join(text for text, _ in runs)
            for runs in screen.query_one(f"#chart-{chart}", ChartPanel).rows]
    return sum(any(row[c] not in " \u2800" for row in rows) for c in range(len(rows[0])))


async def test_the_screen_draws_the_whole_run_at_once_and_the_detail_as_it_comes(
        record, monkeypatch):
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.widgets.header_bar import HeaderBar

    monkeypatch.setattr(AttachFeed, "BATCH", 256)  # a slow full read: its progress is seen
    monkeypatch.setattr(AttachFeed, "BREATHER_S", 0.03)
    app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
    async with app.run_test(size=(120, 40)) as pilot:
        screen, feed = app.screen, app.feed
        screen.action_zoom(1)  # z twice: the whole run
        screen.action_zoom(1)
        for _ in range(400):
            if feed.outline_s is not None:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)  # a frame or two
        assert feed.catching_up and feed.detail_ns < 600 * 10**9
        whole = feed.history.whole(screen.query_one("#chart-tokens").plot_width)
        run_columns = RUN_S // whole.step_s  # the last column is the run's newest second's
        assert drawn_columns(screen, "tokens") >= run_columns  # the whole run, at once
        ttft_before = drawn_columns(screen, "ttft")
        assert ttft_before < run_columns / 3
        header = str(screen.query_one(HeaderBar).render())
        assert "40:00" in header and "READING THE RECORD" in header  # now: the outline's end
        assert feed.concurrency() == 3 and feed.in_flight() == 2  # the run's last phase
        await pilot.pause(1.5)
        assert drawn_columns(screen, "ttft") > ttft_before  # the detail fills in as it comes
        await pilot.press("q")
    assert app.return_value is feed


def test_a_record_that_is_not_one_leaves_the_outline_to_the_full_read(tmp_path):
    from soaktop.engine.errors import RecordError

    path = tmp_path / "x.jsonl"
    path.write_text('{"type":"request_done","t_ns":1}\n')
    with pytest.raises(RecordError):
        list(without_requests(path))


# -- a replay's seek keeps the whole run ------------------------------------------------------
@pytest.fixture(scope="module")
def replay_events():
    return long_events(run_s=300)


def ticked_history(events, to_ns: int):
    """The History a straight play records with a full LiveStats snapshot at each tick of
    the replay (how the replay screen recorded its points before): the reference."""
    from soaktop.engine.metrics.history import History
    from soaktop.engine.metrics.live import LiveStats
    from soaktop.engine.records.replay import Replay, Timeline

    live, history = LiveStats(), History()
    replay = Replay(Timeline(events), [live.add, history.add], ticks_ns=10**9,
                    on_tick=lambda t: history.record(t // 10**9, live.snapshot(t)))
    replay.advance_to(to_ns)
    return history


def test_a_replay_records_the_points_its_ticks_recorded_before(replay_events):
    feed = ReplayFeed(replay_events, speed=1.0)
    feed.replay.advance_to(250 * 10**9)
    assert state(feed.history) == state(ticked_history(replay_events, 250 * 10**9))


@pytest.mark.parametrize("back", [False, True], ids=["forward", "back"])
def test_a_seek_keeps_the_whole_run_before_the_stretch_it_re_feeds(replay_events, back):
    mid = 200 * 10**9 + 123_456_789
    feed = ReplayFeed(replay_events, speed=1.0)
    if back:  # played on first, then back to the middle
        feed.replay.advance_to(290 * 10**9)
    feed.seek(mid)
    plain = ticked_history(replay_events, mid)
    seek_whole, plain_whole = feed.history.whole(60), plain.whole(60)
    assert (seek_whole.step_s, seek_whole.end_s) == (plain_whole.step_s, plain_whole.end_s)
    for name in ("tokens_per_s", "ttft_p50_ms", "itl_p50_ms", "errors"):
        np.testing.assert_array_equal(seek_whole.series[name], plain_whole.series[name],
                                      err_msg=name)
    for key in plain_whole.gpus:
        np.testing.assert_array_equal(seek_whole.gpus[key]["temperature_c"],
                                      plain_whole.gpus[key]["temperature_c"])
    columns = mid // 10**9 // plain_whole.step_s
    assert not np.isnan(seek_whole.series["tokens_per_s"][1:columns]).any()
    assert math.isnan(seek_whole.series["tokens_per_s"][columns + 2])  # after the position
    # and the History entire: every ring, the phases, the errors' count (the points of the
    # stretch re-fed included: tokens/s counted from the record's token times, where the
    # seek re-emitted a first partial second of tokens)
    assert state(feed.history) == state(plain)
