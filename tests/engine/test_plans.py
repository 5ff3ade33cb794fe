"""Load plans: a ramp that reports where throughput stops scaling, and an SLO search that
finds the concurrency a server can take, against a fake server whose limit the test sets."""

import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import PhaseReason
from soaktop.engine.load.plans import (
    Ramp,
    SloSearch,
    parse_ramp,
    parse_slo,
    plan_for,
    ramp_table,
    run_with_plan,
    slo_report,
)
from soaktop.engine.metrics.results import (
    Distribution,
    PhaseSummary,
    RunSummary,
    SpeedDistribution,
)
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session


def test_slo_terms_are_read_in_the_summary_units():
    ttft, speed, errors = parse_slo("ttft_p95<=2s, speed_p25>=30,error_rate<=1%")
    assert (ttft.metric, ttft.op, ttft.value) == ("ttft_p95", "<=", 2000.0)
    assert (speed.metric, speed.value) == ("speed_p25", 30.0)
    assert errors.value == pytest.approx(0.01)
    assert parse_slo("e2e_p99<800")[0].value == 800.0  # bare latency: ms


@pytest.mark.parametrize("text, message", [
    ("", "at least one term"), ("ttft_p95=2s", "cannot read"), ("ttft_p42<=2s", "unknown"),
    ("speed_p25>=30ms", "tokens/s"), ("ttft_p95<=5%", "latency"), ("error_rate<=2", "fraction"),
])
def test_bad_slos_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_slo(text)


def test_ramps_are_positive_concurrencies():
    assert parse_ramp("1,2, 4,8") == (1, 2, 4, 8)
    for bad in ("", "1,0", "1,two"):
        with pytest.raises(ConfigError):
            parse_ramp(bad)


def test_search_doubles_then_bisects_to_one_request():
    def walk(start, limit_ok, cap=1024):
        search = SloSearch((), 1.0, list, start=start, limit=cap)
        level, lower, upper, tried = start, None, None, []
        while level is not None:
            tried.append(level)
            level, lower, upper = search.next_level(level, level <= limit_ok, lower, upper)
        return tried, lower

    assert walk(1, 3) == ([1, 2, 4, 3], 3)
    assert walk(1, 5) == ([1, 2, 4, 8, 6, 5], 5)
    assert walk(4, 2) == ([4, 2, 3], 2)  # failed at the start: halves, then bisects
    assert walk(1, 0) == ([1], None)  # nothing meets it
    assert walk(1, 10**6, cap=8) == ([1, 2, 4, 8], 8)  # stops at the cap


async def _run(config: RunConfig, backend) -> tuple[RunSummary, object]:
    summary = SessionSummary()
    session = Session(config, backend, listeners=(summary.add,))
    plan = plan_for(config, summary.phase)
    await run_with_plan(session, plan)
    return summary.result(), plan


async def test_a_ramp_scales_then_flags_the_plateau_where_the_server_stops():
    """The fake server runs 2 requests at once (the rest queue): 1 -> 2 doubles tokens/s,
    2 -> 4 adds nothing. Each step is a 1.5 s phase."""
    config = RunConfig(backend="fake", model="fake", concurrency=1, warmup_requests=1,
                       output_tokens=20, ramp=(1, 2, 4), phase_s=1.5)
    result, plan = await _run(config, FakeBackend(ttft_s=0.01, itl_s=0.005, max_concurrent=2))
    assert isinstance(plan, Ramp)
    rows = result.ramp
    assert [r.concurrency for r in rows] == [1, 2, 4]
    assert rows[1].tokens_per_s / rows[0].tokens_per_s == pytest.approx(2.0, rel=0.2)
    assert [r.plateau for r in rows] == [False, False, True]
    assert abs(rows[2].gain) < 0.05
    assert rows[2].ttft_p95_ms > 3 * rows[1].ttft_p95_ms  # the queue shows in TTFT
    assert [p.reason for p in result.phases][-2:] == [PhaseReason.RAMP, PhaseReason.RAMP]
    assert result.ended == "completed"


async def test_the_slo_search_finds_the_concurrency_the_server_can_take():
    """A server with 3 slots: beyond 3 requests wait ~100 ms for a slot, so TTFT p95 <= 50 ms
    holds up to concurrency 3 exactly."""
    config = RunConfig(backend="fake", model="fake", concurrency=1, warmup_requests=1,
                       output_tokens=20, slo="ttft_p95<=50ms", phase_s=1.2)
    result, plan = await _run(config, FakeBackend(ttft_s=0.01, itl_s=0.005, max_concurrent=3))
    assert plan.decisions == [(1, True), (2, True), (4, False), (3, True)]
    slo = result.slo
    assert slo.answer == 3
    steps = {s.concurrency: s for s in slo.steps}
    assert steps[4].met is False and steps[4].values["ttft_p95"] > 50
    assert (steps[3].phase_id, steps[4].phase_id) == slo.deciding_phases


def _phase(i: int, concurrency: int, ttft_p95: float, reason=PhaseReason.SLO_SEARCH,
           **figures) -> PhaseSummary:
    return PhaseSummary(phase_id=i, concurrency=concurrency, reason=reason,
                        ttft_ms=Distribution(p95=ttft_p95),
                        output_speed_tps=SpeedDistribution(p25=40.0),
                        output_tokens_per_s=100.0, **figures)


def test_the_report_comes_from_the_phases_alone():
    phases = [_phase(i, c, t) for i, (c, t) in enumerate([(1, 10.0), (2, 20.0), (4, 90.0),
                                                          (3, 40.0)])]
    phases[0] = _phase(0, 1, 10.0, reason=PhaseReason.WARMUP_DONE)
    report = slo_report(parse_slo("ttft_p95<=50"), phases)
    assert report.answer == 3 and report.deciding_phases == (3, 2)
    # a step with nothing to judge does not meet the SLO; nor does one past the error budget
    assert slo_report(parse_slo("ttft_p95<=50"), [_phase(0, 1, None)]).answer is None
    erring = _phase(0, 1, 10.0, error_rate=0.02)
    assert slo_report(parse_slo("ttft_p95<=50,error_rate<=1%"), [erring]).answer is None
    assert slo_report(parse_slo("speed_p25>=30,tokens_per_s>=99"), [erring]).answer == 1


def test_the_ramp_table_reads_the_ramp_steps_after_warm_up():
    phases = [_phase(0, 1, 10.0, reason=PhaseReason.START, warmup=True),
              _phase(1, 1, 10.0, reason=PhaseReason.WARMUP_DONE),
              _phase(2, 2, 12.0, reason=PhaseReason.RAMP),
              _phase(3, 3, 12.0, reason=PhaseReason.KEY),  # a key press is no ramp step
              _phase(4, 4, 30.0, reason=PhaseReason.RAMP)]
    rows = ramp_table(phases)
    assert [(r.phase_id, r.concurrency) for r in rows] == [(1, 1), (2, 2), (4, 4)]
    assert [r.gain for r in rows] == [None, 0.0, 0.0] and rows[2].plateau
    assert [r.ttft_p95_ms for r in rows] == [10.0, 12.0, 30.0]
