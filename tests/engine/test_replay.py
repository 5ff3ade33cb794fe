"""Replay: the live stream again from a record, its timing, controls and status ticks."""

import asyncio
import time

import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.events import Mark, Phase, RequestDone, SessionEnd, SessionStart, TokensArrived
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.replay import Replay, Timeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _request(request_id, sent_ms, arrivals_ms, phase_id=0):
    arrivals = tuple(int(a * 1000) for a in arrivals_ms)
    end_us = arrivals[-1] if arrivals else 1000
    return RequestDone(
        t_ns=sent_ms * 10**6 + end_us * 1000, worker_id=0, request_id=request_id,
        phase_id=phase_id, backend="fake", model="m", sent_ns=sent_ms * 10**6, prompt_tokens=4,
        arrivals_us=arrivals, end_us=end_us, finish_reason="length")


HEADER = SessionStart(0, 1, "2026-11-23T10:00:00+00:00", {}, {}, {})
TIMELINE_EVENTS = [
    HEADER,
    Phase(0, 0, 2, "m", "fake", "start"),
    _request(0, 0, [100, 200, 300]),  # done at 300 ms
    _request(1, 50, [500, 600]),  # sent at 50 ms, done at 650 ms
    Mark(700_000_000, "fan"),
    Phase(800_000_000, 1, 3, "m", "fake", "key"),
    _request(2, 900, [50, 1000], phase_id=1),  # done at 1.9 s
    SessionEnd(2_000_000_000, "completed"),
]


def _collect(replay_events=TIMELINE_EVENTS, **options):
    seen = []
    replay = Replay(Timeline(replay_events), [seen.append], **options)
    return replay, seen


async def test_replay_carries_the_live_stream_record_events_and_tokens(make_session):
    session, live = make_session(FakeBackend(ttft_s=0.01, itl_s=0.003), record=True,
                                 concurrency=3, output_tokens=12, duration_s=1.0)
    await session.run()
    reader = RecordReader(session.record_path)
    replay, seen = _collect(list(reader.events()))
    replay.seek(replay.timeline.end_ns)  # everything, at once

    def split(events):
        tokens = [e for e in events if isinstance(e, TokensArrived)]
        return tokens, [e for e in events if not isinstance(e, TokensArrived)]

    live_tokens, live_rest = split(live)
    replay_tokens, replay_rest = split(seen)
    assert replay_rest == sorted(live_rest, key=lambda e: e.t_ns)
    assert len(replay_tokens) == len(live_tokens) > 100
    by_key = {(t.request_id, t.first, t.tokens): [] for t in live_tokens}
    for t in live_tokens:
        by_key[(t.request_id, t.first, t.tokens)].append(t.t_ns)
    for t in replay_tokens:  # the record keeps microseconds: each token within 1 us of live
        times = by_key[(t.request_id, t.first, t.tokens)]
        assert min(abs(t.t_ns - x) for x in times) < 1000
    # in time order, each token before its request's request_done
    times = [e.t_ns for e in seen]
    assert times == sorted(times)
    done_at = {e.request_id: i for i, e in enumerate(seen) if isinstance(e, RequestDone)}
    for i, e in enumerate(seen):
        if isinstance(e, TokensArrived):
            assert i < done_at[e.request_id]


def test_position_follows_the_clock_scaled_and_stops_when_paused():
    clock = FakeClock()
    replay, _ = _collect(speed=10, clock=clock)
    clock.now += 0.05
    assert replay.position_ns == 500_000_000
    replay.pause()
    clock.now += 1.0
    assert replay.position_ns == 500_000_000
    replay.resume()
    replay.set_speed(100)
    clock.now += 0.01
    assert replay.position_ns == 1_500_000_000
    clock.now += 10
    assert replay.position_ns == replay.timeline.end_ns  # never past the end


def test_a_speed_change_mid_playback_keeps_the_position_and_scales_what_follows():
    # not right after a resume (the anchor just set, so any order of re-anchoring passes):
    # half a second into the record, playing, the speed changes from x10 to x100 and back
    clock = FakeClock()
    replay, _ = _collect(speed=10, clock=clock)
    clock.now += 0.05
    assert replay.position_ns == 500_000_000
    replay.set_speed(100)
    assert replay.position_ns == 500_000_000  # where it was: the past is not rescaled
    clock.now += 0.01
    assert replay.position_ns == 1_500_000_000  # 10 ms at x100
    replay.set_speed(1)
    assert replay.position_ns == 1_500_000_000
    clock.now += 0.2
    assert replay.position_ns == 1_700_000_000  # 200 ms at x1
    replay.pause()
    replay.set_speed(4)  # paused: the position holds, and the new speed plays on from there
    clock.now += 1.0
    assert replay.position_ns == 1_700_000_000
    replay.resume()
    clock.now += 0.05
    assert replay.position_ns == 1_900_000_000


async def test_run_delivers_in_order_at_the_scaled_pace():
    replay, seen = _collect(speed=20)  # a 2 s record at x20: about 0.1 s
    t0 = time.perf_counter()
    await asyncio.wait_for(replay.run(frame_s=0.005), timeout=5)
    took = time.perf_counter() - t0
    assert 0.09 <= took < 1.0
    assert replay.finished and isinstance(seen[-1], SessionEnd)
    assert sum(isinstance(e, TokensArrived) for e in seen) == 7


async def test_a_paused_run_delivers_nothing_until_resumed():
    replay, seen = _collect(speed=1)
    replay.pause()
    task = asyncio.ensure_future(replay.run(frame_s=0.005))
    await asyncio.sleep(0.1)
    assert seen == [HEADER, TIMELINE_EVENTS[1]]  # only what is at t = 0
    replay.set_speed(50)
    replay.resume()
    await asyncio.wait_for(task, timeout=5)
    assert isinstance(seen[-1], SessionEnd)


def test_seek_back_resets_and_refeeds_so_a_summary_comes_out_the_same():
    summaries = [SessionSummary()]
    resets = []

    def reset():
        resets.append(1)
        summaries.append(SessionSummary())

    replay = Replay(Timeline(TIMELINE_EVENTS), [lambda e: summaries[-1].add(e)], on_reset=reset)
    replay.seek(1_000_000_000)
    assert summaries[-1].result().requests_ok == 2
    replay.seek(400_000_000)
    assert resets == [1] and summaries[-1].result().requests_ok == 1
    replay.seek(replay.timeline.end_ns)
    whole = SessionSummary()
    for event in TIMELINE_EVENTS:
        whole.add(event)
    assert summaries[-1].result() == whole.result()


def test_next_and_previous_stop_go_through_phases_and_marks():
    clock = FakeClock()
    replay, _ = _collect(clock=clock)
    replay.pause()
    assert replay.next_stop() == 700_000_000  # the mark
    assert replay.next_stop() == 800_000_000  # the phase
    assert replay.next_stop() is None
    clock.now += 1.0  # paused: a second of wall clock moves nothing
    assert replay.position_ns == 800_000_000
    replay.seek(1_900_000_000)
    assert replay.previous_stop() == 800_000_000
    assert replay.previous_stop() == 0  # less than a second past 700 ms: back to the start


def test_ticks_see_every_event_up_to_their_time_and_none_after():
    live = LiveStats()
    seen_at_tick = {}

    def tick(t_ns):
        seen_at_tick[t_ns] = (live.ok, replay.timeline.in_flight(t_ns))

    replay = Replay(Timeline(TIMELINE_EVENTS), [live.add], ticks_ns=500_000_000, on_tick=tick)
    replay.advance_to(replay.timeline.end_ns)
    # requests done at 300 ms, 650 ms and 1.9 s; request 2 sent at 900 ms
    assert seen_at_tick == {500_000_000: (1, 1), 1_000_000_000: (2, 1),
                            1_500_000_000: (2, 1), 2_000_000_000: (3, 0)}


def test_a_forward_seek_skips_ticks_and_old_tokens():
    ticks = []
    replay = Replay(Timeline(TIMELINE_EVENTS), [], ticks_ns=500_000_000, on_tick=ticks.append)
    replay.seek(1_200_000_000)
    assert ticks == []  # nothing printed for the stretch jumped over
    replay.advance_to(replay.timeline.end_ns)
    assert ticks == [1_500_000_000, 2_000_000_000]


def test_speed_must_be_positive():
    with pytest.raises(ValueError):
        Replay(Timeline(TIMELINE_EVENTS), [], speed=0)


def _many_requests(n=3000, seed=4):
    """Requests over 300 s (longer than the live view's two minutes of token counts), some
    in chunks of several tokens, sent in no particular order of arrival."""
    import random

    rng = random.Random(seed)
    events = [HEADER, Phase(0, 0, 8, "m", "fake", "start")]
    for rid in range(n):
        sent = rng.randrange(0, 300_000_000_000)
        arrivals = sorted(rng.randrange(0, 5_000_000) for _ in range(rng.choice([0, 1, 5, 30])))
        end_us = (arrivals[-1] if arrivals else 0) + 100
        chunks = tuple(rng.randint(1, 3) for _ in arrivals) if rng.random() < 0.3 else ()
        events.append(RequestDone(
            t_ns=sent + end_us * 1000, worker_id=rid % 8, request_id=rid, phase_id=0,
            backend="fake", model="m", sent_ns=sent, prompt_tokens=4,
            arrivals_us=tuple(arrivals), end_us=end_us, finish_reason="length",
            arrival_tokens=chunks))
    events.append(SessionEnd(306_000_000_000, "completed"))
    return events


def test_the_timeline_holds_every_token_in_time_order():
    import numpy as np

    events = _many_requests()
    tl = Timeline(events)
    expected = sorted(
        (e.sent_ns + a * 1000, i, e.request_id, e.worker_id,
         (e.arrival_tokens[k] if e.arrival_tokens else 1), k == 0)
        for i, e in enumerate(x for x in events if isinstance(x, RequestDone))
        for k, a in enumerate(e.arrivals_us))  # ties stay in the records' order
    assert tl.token_t.tolist() == [x[0] for x in expected]
    assert tl.token_request.tolist() == [x[2] for x in expected]
    assert tl.token_worker.tolist() == [x[3] for x in expected]
    assert tl.token_count.tolist() == [x[4] for x in expected]
    assert tl.token_first.tolist() == [x[5] for x in expected]
    assert tl.token_t.dtype == np.int64 and tl.token_first.dtype == bool


def test_live_statistics_fed_token_runs_at_once_count_what_one_at_a_time_does():
    # a replay hands LiveStats.add_tokens whole runs of tokens (a soak re-emits millions);
    # the token counts, and every status tick's tokens/s, are those of one event a token
    events = _many_requests()
    tl = Timeline(events)
    runs, single = LiveStats(), LiveStats()
    seen: dict[str, list] = {"runs": [], "single": []}

    def tick(t_ns):
        seen["runs"].append((runs.tokens_per_s(t_ns), runs.tokens_per_s(t_ns, 60.0)))
        seen["single"].append((single.tokens_per_s(t_ns), single.tokens_per_s(t_ns, 60.0)))

    tokens: list = []
    replay = Replay(tl, [runs.add, lambda e: single.add(e), SessionSummary().add,
                         lambda e: tokens.append(e) if isinstance(e, TokensArrived) else None],
                    ticks_ns=5 * 10**9, on_tick=tick)
    replay.advance_to(tl.end_ns)
    assert runs.token_buckets.tolist() == single.token_buckets.tolist()
    assert seen["runs"] == seen["single"] and len(seen["runs"]) == 61
    assert any(rate for rate, _ in seen["runs"])
    assert len(tokens) == tl.token_t.size  # the others still get one event a token
    assert runs.snapshot(tl.end_ns) == single.snapshot(tl.end_ns)


def test_a_run_of_tokens_longer_than_the_live_history_keeps_only_its_newest():
    # one request streaming for 300 s with no other event: its tokens reach LiveStats as one
    # run, and those more than two minutes older than its last are gone, as one at a time
    arrivals = tuple(range(0, 300_000_000, 1_500_000))
    long = RequestDone(t_ns=301 * 10**9, worker_id=0, request_id=0, phase_id=0,
                       backend="fake", model="m", sent_ns=0, prompt_tokens=4,
                       arrivals_us=arrivals, end_us=301_000_000, finish_reason="length")
    tl = Timeline([HEADER, Phase(0, 0, 1, "m", "fake", "start"), long])
    runs, single = LiveStats(), LiveStats()
    Replay(tl, [runs.add, lambda e: single.add(e)]).advance_to(tl.end_ns)
    assert runs.token_buckets.tolist() == single.token_buckets.tolist()
    assert 0 < runs.token_buckets.sum() < len(arrivals)


def _as_lines(events):
    """Each request_done as the record line a replay reads (``raw_requests``)."""
    import json

    from soaktop.engine.records.format import encode

    return [json.loads(json.dumps(encode(e))) if isinstance(e, RequestDone) else e
            for e in events]


def _varied_requests():
    """_many_requests with failed, cancelled and warm-up ones, reasoning, and a second phase
    beginning while requests are in flight."""
    import dataclasses
    import random

    rng = random.Random(7)
    events = []
    for e in _many_requests():
        if isinstance(e, RequestDone):
            kind = rng.random()
            e = dataclasses.replace(
                e, phase_id=int(e.sent_ns > 150 * 10**9), warmup=kind > 0.95,
                finish_reason="cancelled" if kind < 0.03 else e.finish_reason,
                error_class="http_500" if 0.03 <= kind < 0.06 else None,
                reasoning_tokens=1 if e.arrivals_us and 0.5 < kind < 0.55 else 0)
        events.append(e)
    events.insert(2, Phase(150 * 10**9, 1, 9, "m", "fake", "key"))
    return events


def test_a_timeline_of_record_lines_holds_what_one_of_events_does():
    import numpy as np

    events = _varied_requests()
    by_event, by_line = Timeline(events), Timeline(_as_lines(events))
    for name in ("token_t", "token_count", "token_request", "token_worker", "token_first",
                 "event_t", "event_tokens", "stops", "_sent", "_done"):
        assert np.array_equal(getattr(by_event, name), getattr(by_line, name)), name
    assert by_event.end_ns == by_line.end_ns
    assert [type(e) for e in by_line.events] == \
        [dict if isinstance(e, RequestDone) else type(e) for e in by_event.events]


def test_a_replay_of_record_lines_feeds_what_one_of_events_does():
    """``soaktop replay`` reads request_done lines as dicts: the summary and the live
    statistics take them as they are, any other listener gets each one made into its event
    (and the tokens one event each, in the same order); every tick sees the same numbers."""
    events = _varied_requests()
    outcomes = []
    # the third: live statistics given one event a token (not whole runs up to each tick)
    for feed, runs in ((events, True), (_as_lines(events), True), (events, False)):
        summary, live, seen, ticks = SessionSummary(), LiveStats(), [], []

        def tick(t_ns, live=live, summary=summary, ticks=ticks):
            ticks.append((live.snapshot(t_ns), summary.phases(), live.token_buckets.tolist()))

        replay = Replay(Timeline(feed), [summary.add, live.add if runs else
                                         lambda e, live=live: live.add(e), seen.append],
                        ticks_ns=5 * 10**9, on_tick=tick)
        replay.seek(40 * 10**9)
        replay.advance_to(replay.timeline.end_ns)
        outcomes.append((summary.result(), live.snapshot(replay.timeline.end_ns), seen, ticks))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    result, _, seen, ticks = outcomes[0]
    assert result.requests_ok > 1000 and result.requests_failed and result.reasoning_tokens
    assert len(ticks) == 53 and any(isinstance(e, TokensArrived) for e in seen)


def test_live_statistics_take_a_record_line_as_its_event():
    import numpy as np

    events = _varied_requests()
    by_event, by_line = LiveStats(), LiveStats()
    for event, line in zip(events, _as_lines(events), strict=True):
        by_event.add(event)
        by_line.add(line)
    for ring in ("ttft_ms", "e2e_ms", "speed_tps", "itl_ms"):
        a, b = getattr(by_event, ring), getattr(by_line, ring)
        assert np.array_equal(a.times, b.times) and np.array_equal(a.values, b.values), ring
    assert (by_event.ok, by_event.failed, by_event.errors) == \
        (by_line.ok, by_line.failed, by_line.errors)
