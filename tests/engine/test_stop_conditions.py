"""Runs that stop when they should: ``--stop-when`` over a sliding window and an open loop's
over-saturation, against a loopback server that degrades on cue (errors after N requests; a
fixed service rate below the offered rate), and on synthetic requests and samples whose
every figure the test sets."""

import numpy as np
import pytest

from soaktop.engine.backends.http import Timeouts
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import EndReason, Mark, RequestDone
from soaktop.engine.load.saturation import SaturationWatch, mann_kendall_z, theil_sen_slope
from soaktop.engine.load.stop_conditions import StopWhen, parse_stop_when
from soaktop.engine.loopback import LoopbackServer, Schedule
from tests.engine.conftest import Collector

FAST = Schedule(ttft_ms=5, itl_ms=2, tokens=8, model="m")
SHORT = Timeouts(connect_s=2, first_token_s=2, between_tokens_s=2)
S = 10**9


def done(t_s: float, failed: bool = False, ttft_ms: float = 10.0, request_id: int = 0):
    """A finished request at ``t_s``: 4 tokens 1 ms apart after ``ttft_ms``, or a failure."""
    first = int(ttft_ms * 1000)
    arrivals = () if failed else (first, first + 1000, first + 2000, first + 3000)
    return RequestDone(
        t_ns=int(t_s * S), worker_id=0, request_id=request_id, phase_id=1, backend="openai",
        model="m", sent_ns=int(t_s * S) - 10**7, prompt_tokens=8, arrivals_us=arrivals,
        end_us=first + 3000, finish_reason="error" if failed else "length",
        error_class="http_500" if failed else None)


# -- the window: synthetic requests --------------------------------------------------------

def test_a_term_fires_just_past_its_threshold_and_not_at_it():
    """``error_rate>5%``: 1 failure in 20 is exactly 5% and does not fire; 2 in 20 do."""
    watch = StopWhen(parse_stop_when("error_rate>5%"), window_s=30)
    for i in range(19):
        watch.add(done(1 + i * 0.1))
    watch.add(done(3.0, failed=True))
    assert watch.check(4 * S, 0) is None  # 5.0%: not above 5%
    watch.add(done(3.1, failed=True))  # 2 of 21: 9.5%
    verdict = watch.check(4 * S, 0)
    assert verdict is not None and verdict.reason == EndReason.STOP_CONDITION and verdict.stop
    assert verdict.detail["value"] == pytest.approx(2 / 21)
    assert verdict.explanation == "error_rate>5%: 9.5% over the last 30 s (21 requests)"


def test_no_term_is_judged_before_the_window_holds_enough_requests():
    watch = StopWhen(parse_stop_when("error_rate>5%"), window_s=30)
    for i in range(19):
        watch.add(done(i * 0.1, failed=True))
    assert watch.check(2 * S, 0) is None  # 19 failures: 100%, but too few to judge
    watch.add(done(2.0, failed=True))
    assert watch.check(2 * S, 0) is not None


def test_the_window_forgets_what_is_older_than_its_length():
    """40 successes, then 20 failures 10 s later: over a 5 s window the rate is 100%, over
    the whole run 33%; ``error_rate>50%`` fires only when the window really is 5 s."""
    watch = StopWhen(parse_stop_when("error_rate>50%"), window_s=5)
    for i in range(40):
        watch.add(done(i * 0.025))
    for i in range(20):
        watch.add(done(10 + i * 0.05, failed=True))
    verdict = watch.check(11 * S, 0)
    assert verdict is not None and verdict.detail["requests"] == 20
    assert verdict.detail["value"] == 1.0
    longer = StopWhen(parse_stop_when("error_rate>50%"), window_s=12)
    for event in [done(i * 0.025) for i in range(40)] + [
            done(10 + i * 0.05, failed=True) for i in range(20)]:
        longer.add(event)
    assert longer.check(11 * S, 0) is None  # 20 of 60 over 12 s


def test_a_latency_term_reads_the_window_percentile_in_its_unit():
    """``ttft_p95>30s``: TTFTs of 31 s in the window fire it, with the value in ms."""
    watch = StopWhen(parse_stop_when("ttft_p95>30s"), window_s=30)
    for i in range(20):
        watch.add(done(1 + i * 0.1, ttft_ms=1000.0))
    assert watch.check(4 * S, 0) is None
    for i in range(20):
        watch.add(done(4 + i * 0.1, ttft_ms=31_000.0))
    verdict = watch.check(7 * S, 0)
    assert verdict is not None and verdict.detail["condition"] == "ttft_p95>30s"
    assert verdict.detail["value"] == pytest.approx(31_000.0)
    assert "ttft_p95>30s: 31,000.0 ms over the last 30 s (40 requests)" == verdict.explanation


def test_tokens_per_s_comes_from_the_token_counter_over_the_window():
    """``tokens_per_s<100`` over 2 s: the counter's rise over the window, read each tick."""
    watch = StopWhen(parse_stop_when("tokens_per_s<100"), window_s=2)
    for i in range(20):
        watch.add(done(3 + i * 0.05))  # 20 requests in the window at 4 s and at 5 s
    assert watch.check(1 * S, 0) is None  # no time has passed since the first count
    assert watch.check(2 * S, 500) is None  # 500 tokens/s
    assert watch.check(3 * S, 600) is None  # 600 over 1..3 s: 300/s
    assert watch.check(4 * S, 700) is None  # the window 2..4 s: 200 tokens in 2 s
    verdict = watch.check(5 * S, 750)  # 3..5 s: 150 in 2 s, 75/s
    assert verdict is not None and verdict.detail["value"] == pytest.approx(75.0)


@pytest.mark.parametrize("text, says", [
    ("error_rate>>5%", "cannot read --stop-when term 'error_rate>>5%'"),
    ("ttft_p95>30s,latency>3", "unknown --stop-when metric 'latency' in 'latency>3'"),
    ("ttft_p95>5%", "ttft_p95 is a latency"),
    ("", "--stop-when needs at least one term"),
])
def test_a_malformed_stop_when_names_the_bad_term(text, says):
    with pytest.raises(ConfigError, match=None) as caught:
        RunConfig(stop_when=text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_on_saturation_needs_an_open_loop_and_a_known_action():
    with pytest.raises(ConfigError, match="give --rate too"):
        RunConfig(on_saturation="stop")
    with pytest.raises(ConfigError, match="a --trace replay is not watched"):
        RunConfig(trace="t.jsonl", on_saturation="warn")
    with pytest.raises(ConfigError, match="stop or warn"):
        RunConfig(rate=5, on_saturation="halt")
    with pytest.raises(ConfigError, match="--stop-window must be above 0"):
        RunConfig(stop_window_s=0)


# -- the trend test: synthetic samples ---------------------------------------------------------

def test_mann_kendall_and_theil_sen_on_known_series():
    rising = np.arange(30.0)
    assert mann_kendall_z(rising) > 6 and mann_kendall_z(rising[::-1]) < -6
    assert mann_kendall_z(np.full(30, 4.0)) == 0.0
    t = np.arange(30.0)
    outlier = 2.0 * t + 1
    outlier[5] = 500  # one odd sample: the median of pairwise slopes does not follow it
    assert theil_sen_slope(t, outlier) == pytest.approx(2.0)


def feed(watch, owed, completed, every_s=0.1):
    for i, (o, c) in enumerate(zip(owed, completed)):
        watch.sample(int(i * every_s * S), int(o), int(c))


def test_owed_rising_with_flat_completions_is_saturation():
    """Rate 40/s, 25 served a second: 15 more owed each second, completions flat."""
    watch = SaturationWatch(window_s=2.0, every_s=0.1)
    watch.reset(0)
    n = 21
    feed(watch, [10 + 1.5 * i for i in range(n)], [1 + 2.5 * i for i in range(n)])
    found = watch.judge(40.0)
    assert found is not None and found.slope_per_s == pytest.approx(15.0, rel=0.05)
    assert found.owed_first == 10 and found.owed_last == 40
    assert found.explanation.startswith("requests owed (in flight + due unsent) rose 10 -> 40")


def test_a_slope_under_a_tenth_of_the_rate_is_not_saturation():
    """Owed rises steadily, but by 3/s at 40/s asked (7.5%): under the share that counts."""
    watch = SaturationWatch(window_s=2.0, every_s=0.1)
    watch.reset(0)
    feed(watch, [10 + 0.3 * i for i in range(21)], [1 + 3.7 * i for i in range(21)])
    assert watch.judge(40.0) is None
    assert watch.judge(25.0) is not None  # the same 3/s is 12% of 25/s


def test_owed_swinging_without_a_consistent_rise_is_not_saturation():
    """Owed drifts up by 15/s under noise of 12 (sd): its median slope is a tenth of the rate
    and more, but the rank trend is not significant (z 1.9): a server whose queue swings."""
    t = np.arange(21) * 0.1
    owed = np.round(20 + 15 * t + np.random.default_rng(13).normal(0, 12, 21)).clip(0)
    assert mann_kendall_z(owed) < 2.5 and theil_sen_slope(t, owed) > 4
    watch = SaturationWatch(window_s=2.0, every_s=0.1)
    watch.reset(0)
    feed(watch, owed, [1 + 2.5 * i for i in range(21)])
    assert watch.judge(40.0) is None


def test_a_healthy_open_loop_with_noise_is_not_saturation():
    rng = np.random.default_rng(7)
    for _ in range(50):
        watch = SaturationWatch(window_s=3.0, every_s=0.1)
        watch.reset(0)
        owed = 20 + rng.poisson(20, 31) - 20
        completed = np.cumsum(rng.poisson(4, 31)) + 1
        feed(watch, owed, completed)
        assert watch.judge(40.0) is None


def test_a_pipeline_still_filling_is_not_saturation():
    """Completions climbing to the rate (latencies spread over seconds) while owed rises:
    the throughput is not flat."""
    watch = SaturationWatch(window_s=2.0, every_s=0.1)
    watch.reset(0)
    completions = np.cumsum([min(4, 0.2 * i) for i in range(21)]) + 1
    owed = np.cumsum([4 - min(4, 0.2 * i) for i in range(21)]) + 5
    feed(watch, owed, completions)
    assert watch.judge(40.0) is None


def test_nothing_is_judged_before_the_phase_first_completes_or_the_window_fills():
    watch = SaturationWatch(window_s=2.0, every_s=0.1)
    watch.reset(5)
    feed(watch, [10 + 1.5 * i for i in range(21)], [5] * 21)  # nothing came back
    assert watch.judge(40.0) is None
    watch.reset(0)
    feed(watch, [10 + 1.5 * i for i in range(15)], [1 + 2.5 * i for i in range(15)])
    assert watch.judge(40.0) is None  # 1.4 s of a 2 s window


# -- against the loopback: it degrades on cue ---------------------------------------------------

async def run_against(server_options, **config):
    async with LoopbackServer(FAST, **server_options) as server:
        events = Collector()
        config = RunConfig(**{"backend": "openai", "model": "m", "warmup_requests": 0,
                              "output_tokens": 8, "url": server.url, **config})
        from soaktop.engine.session import Session

        session = Session(config, OpenAIBackend(server.url, timeouts=SHORT),
                          listeners=(events,))
        said = []
        session.say = said.append
        end = await session.run()
    return session, end, events, said


async def test_errors_after_n_requests_stop_the_run_naming_the_term():
    """The server answers 500 from its 60th request on: the run stops on ``error_rate>20%``
    within its 1 s window, long before its 20 s, and says the term and its value."""
    session, end, events, _ = await run_against(
        {"fault": "http_500", "fault_after": 60}, concurrency=4, duration_s=20,
        stop_when="error_rate>20%", stop_window_s=1.0)
    assert end.reason == EndReason.STOP_CONDITION
    done_ = events.of(RequestDone)
    first_failure = min(e.t_ns for e in done_ if e.error_class)
    assert sum(e.ok for e in done_) >= 56  # the first 60 succeeded (some still in flight)
    assert end.t_ns - first_failure < 1.5 * S
    assert end.detail["condition"] == "error_rate>20%" and end.detail["value"] > 0.2
    assert session.stopped_by == end.detail["explanation"]
    assert session.stopped_by.startswith("error_rate>20%: ") and "over the last 1 s" in \
        session.stopped_by


async def test_an_error_rate_under_the_threshold_does_not_stop_the_run():
    """Every 4th request fails from the start (25%): ``error_rate>30%`` never fires over 3 s,
    and the same run with ``error_rate>20%`` stops."""
    _, end, events, _ = await run_against(
        {"fault": "http_500", "fault_every": 4}, concurrency=4, duration_s=3,
        stop_when="error_rate>30%", stop_window_s=1.0)
    assert end.reason == EndReason.COMPLETED
    assert len(events.of(RequestDone)) > 100  # judged many times over
    _, end, _, _ = await run_against(
        {"fault": "http_500", "fault_every": 4}, concurrency=4, duration_s=3,
        stop_when="error_rate>20%", stop_window_s=1.0)
    assert end.reason == EndReason.STOP_CONDITION


# 8 tokens: 5 ms + 7 x 2 ms = 19 ms a request; one at a time serves about 50 a second
SLOW = {"max_active": 1}


@pytest.mark.parametrize("max_inflight", [None, 8])
async def test_an_open_loop_above_the_service_rate_stops_as_saturated(max_inflight):
    """100 requests a second at a server that serves about 50: what the load owes grows by
    about 50 a second (in flight, or with --max-inflight due and unsent), completions stay
    flat; the run stops as saturated within a few windows of 1.5 s, not its 20 s."""
    session, end, events, _ = await run_against(
        SLOW, rate=100, duration_s=20, on_saturation="stop", stop_window_s=1.5,
        max_inflight=max_inflight)
    assert end.reason == EndReason.SATURATED
    assert end.t_ns < 6 * S
    assert end.detail["slope_per_s"] > 10 and end.detail["z_owed"] >= 3.09
    assert end.detail["completions_per_s"] < 80
    assert session.stopped_by == f"saturated: {end.detail['explanation']}"
    assert session.stopped_by.startswith("saturated: requests owed")


async def test_a_server_that_keeps_up_is_not_saturated():
    """A rate with room on the server (16 at once for about 1.2 needed): no stop and no
    warning over two windows and more."""
    session, end, events, said = await run_against(
        {"max_active": 16}, rate=60, duration_s=4, on_saturation="stop", stop_window_s=1.5)
    assert end.reason == EndReason.COMPLETED, end.detail
    assert session.warning is None and not events.of(Mark) and not said, said
    assert len(events.of(RequestDone)) > 200


async def test_saturation_only_warns_by_default():
    """``warn`` (the default): one mark and one line, the run goes its whole length."""
    session, end, events, said = await run_against(SLOW, rate=100, duration_s=4,
                                                   stop_window_s=1.0)
    assert end.reason == EndReason.COMPLETED and end.t_ns >= 4 * S
    marks = events.of(Mark)
    assert len(marks) == 1 and marks[0].note.startswith("saturated: ")
    assert said == [f"warning: {marks[0].note}"] and session.warning == marks[0].note


# -- with --workers: the streams read in worker processes, judged in the session ----------------

@pytest.mark.parametrize("server, config, reason", [
    ({"fault": "http_500", "fault_after": 60},
     {"concurrency": 4, "stop_when": "error_rate>20%"}, EndReason.STOP_CONDITION),
    ({"max_active": 1}, {"rate": 100, "on_saturation": "stop"}, EndReason.SATURATED),
])
def test_stop_conditions_hold_with_worker_processes(server, config, reason):
    """``--workers 2``: the requests come back from two processes and are judged as one
    run's, by the same code: both conditions end it, with their reason, well before 20 s."""
    import asyncio

    from soaktop.engine.factory import build_session
    from soaktop.engine.loopback import spawn

    async def run(url):
        session = await build_session(RunConfig(
            backend="openai", model="m", url=url, warmup_requests=0, output_tokens=8,
            duration_s=20, stop_window_s=1.5, workers=2, telemetry=(), **config))
        return session, await session.run()

    with spawn(FAST, **server) as url:
        session, end = asyncio.run(run(url))
    assert session.config.workers == 2
    assert end.reason == reason and end.t_ns < 10 * S
    assert session.stopped_by.endswith(end.detail["explanation"])


def test_the_summary_says_which_condition_ended_the_run_and_lists_the_marks():
    """What a record's ``session_end`` and marks hold reaches the summary's JSON and text."""
    from soaktop.engine.events import SessionEnd
    from soaktop.engine.metrics.summary import SessionSummary
    from soaktop.tui.text import summary_table

    summary = SessionSummary()
    line = "error_rate>5%: 9.5% over the last 30 s (21 requests)"
    for event in (Mark(1_500_000_000, "saturated: requests owed rose 3 -> 40"),
                  SessionEnd(4 * S, EndReason.STOP_CONDITION, {"explanation": line,
                                                                "condition": "error_rate>5%"})):
        summary.add(event)
    result = summary.result()
    document = result.to_dict()
    assert document["ended"] == "stop_condition" and document["ended_explanation"] == line
    assert document["marks"] == [{"t_s": 1.5, "note": "saturated: requests owed rose 3 -> 40"}]
    text = summary_table(result, width=200)
    assert f"ended: stop_condition: {line}" in text
    assert "marks: 1.5 s saturated: requests owed rose 3 -> 40" in text


def test_a_long_window_keeps_a_bounded_number_of_samples():
    """An hour's window ticked each second keeps at most 122 samples, and still judges."""
    watch = SaturationWatch(window_s=3600.0, every_s=1.0)
    watch.reset(0)
    feed(watch, [10 + 0.5 * i for i in range(7200)], [1 + 20 * i for i in range(7200)],
         every_s=1.0)
    assert len(watch._samples) <= 122
    found = watch.judge(5.0)
    assert found is not None and found.slope_per_s == pytest.approx(0.5, rel=0.05)
