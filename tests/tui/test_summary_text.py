"""The summary as text: the table fits the terminal, the words the engine leaves to tui (how a
run ended, the soak verdict's sentence), and a CSV that is data, not screen text."""

import csv
import io
import json
from dataclasses import replace

import pytest

from soaktop.engine.events import (
    GpuSample,
    HostSample,
    Phase,
    RequestDone,
    ServerSample,
    SessionEnd,
    SessionStart,
    TelemetryStatus,
)
from soaktop.engine.metrics.results import (
    Direction,
    DriftMeasure,
    GpuDrift,
    RunSummary,
    SoakVerdict,
    Verdict,
)
from soaktop.engine.metrics.summary import summarise
from soaktop.tui.text import (
    ended_text,
    soak_explanation,
    summary_csv,
    summary_document,
    summary_table,
)

S = 10**9
EVIL = "llama\x1b[2J\x1b]0;owned\x07"  # a model name that would clear and retitle a terminal


def _events(end: bool = True, levels=(1, 2, 4), seconds: int = 40) -> list:
    """A ramp with GPU, host and server telemetry, an unavailable source and a failure."""
    events = [
        SessionStart(0, 1, "2026-11-23T00:00:00+00:00",
                     {"output_tokens": 4, "ramp": list(levels)}, {}, {"kind": "fake"}),
        Phase(0, 0, levels[0], EVIL, "fake", "start", True),
        TelemetryStatus(1, "prom:http://a-rather-long-host-name.example:9400/metrics", False,
                        reason="connection refused by the exporter at the other end"),
    ]
    rid = 0
    for pid, level in enumerate(levels, start=1):
        start = S + (pid - 1) * seconds * S
        events.append(Phase(start, pid, level, "m", "fake", "warm-up done" if pid == 1
                            else "ramp"))
        for k in range(seconds * 2):
            t = start + k * S // 2
            events += [
                GpuSample(t, 0, temperature_c=70.0 + pid, slowdown_temperature_c=90.0,
                          sm_clock_mhz=1900.0, sm_clock_max_mhz=1980.0, power_w=300.0,
                          power_limit_w=700.0, clock_event_reasons=("sw_power_cap",)),
                HostSample(t, cpu_percent=40.0, soaktop_cpu_percent=30.0,
                           soaktop_rss_bytes=10**8),
                ServerSample(t, "http://a-rather-long-host-name.example:8000/metrics", "vllm",
                             "m", requests_running=level, requests_waiting=0,
                             kv_cache_usage=0.5, generation_tokens_total=float(k * 100)),
            ]
        for k in range(seconds * level):
            sent = start + k * S // level
            arrivals = (20_000 * pid, 30_000 * pid, 40_000 * pid, 50_000 * pid)
            failed = k == 3
            events.append(RequestDone(
                sent + arrivals[-1] * 1000, 0, rid, pid, "fake", "m", sent, 8,
                () if failed else arrivals, arrivals[-1], "error" if failed else "length",
                error_class="http_500" if failed else None))
            rid += 1
    events.sort(key=lambda e: e.t_ns)
    if end:
        events.append(SessionEnd(events[-1].t_ns + 1, "completed"))
    return events


@pytest.mark.parametrize("width", [80, 120])
def test_no_line_of_the_table_is_wider_than_the_terminal(width):
    result = summarise(_events()).result()
    table = summary_table(result, width=width)
    assert result.soak is not None and result.ramp  # the long lines are all there
    assert max(len(line) for line in table.splitlines()) <= width
    header = table.splitlines()[0].split()
    assert header[:4] == ["phase", "conc", "model", "ok"]
    assert "ramp:  conc     tok/s  speed p25  speed p50  TTFT p95  errors  gain" in table


def test_a_wider_terminal_gets_more_columns_and_the_default_is_the_terminals(monkeypatch):
    result = summarise(_events()).result()
    narrow, wide = (summary_table(result, width=w).splitlines()[0] for w in (80, 120))
    assert "TPOT p50" not in narrow and "TPOT p50" in wide
    assert set(narrow.split()) < set(wide.split())
    monkeypatch.setenv("COLUMNS", "120")  # what shutil.get_terminal_size reads first
    assert summary_table(result).splitlines()[0] == wide


def test_the_table_escapes_what_would_steer_a_terminal_and_the_csv_keeps_it():
    result = summarise(_events()).result()
    table = summary_table(result, width=120)
    assert "\x1b" not in table and "\x07" not in table
    assert "llama\\x1b[2J" in table  # shown, as an escape
    rows = list(csv.DictReader(io.StringIO(summary_csv(result))))
    assert rows[1]["model"] == EVIL  # the file holds the name as it is
    assert rows[1]["reason"] == "start" and rows[2]["reason"] == "warm-up done"


def test_a_cut_record_ends_with_a_code_and_the_table_says_it_in_words():
    result = summarise(_events(end=False, levels=(1,), seconds=5)).result()  # last: 5.5 s
    assert result.ended == "cut_short"
    words = ("cut short at 5.5 s: no session_end (the writer was killed, or recording "
             "stopped)")
    assert ended_text(result) == words
    assert f"ended: {words}" in summary_table(result, width=200)
    assert summary_document(result)["ended"] == "cut_short"  # the JSON keeps the code


def _measure(early, late, change, low, high, p, direction, test="requests"):
    return DriftMeasure(early, late, change, low, high, p, Direction(direction), test, 3000,
                        3000)


def _verdict(gpu: GpuDrift | None, verdict=Verdict.THROTTLED, settled=True) -> SoakVerdict:
    return SoakVerdict(
        verdict=verdict, measured_s=1800.4, steady_state_s=45.0, settled=settled,
        window_s=300.0, early_from_s=45.0, late_from_s=1500.0,
        measures={
            "tokens_per_s": _measure(2980.0, 2410.0, -0.191, -0.2, -0.18, 1e-5, "worse",
                                     "blocks"),
            "ttft_ms": _measure(61.0, 70.2, 0.151, 0.14, 0.16, 2e-40, "worse"),
            "itl_ms": _measure(20.0, 19.9, -0.004, -0.01, 0.002, 0.2, "better"),
        },
        gpus={} if gpu is None else {gpu.key: gpu}, worst_gpu=None if gpu is None else gpu.key,
        deciding=("tokens_per_s", "ttft_ms"))


THROTTLED_GPU = GpuDrift(
    key="3", name="NVIDIA H100 80GB HBM3",
    sm_clock_mhz=_measure(1980.0, 1500.0, -0.2424, -0.25, -0.24, 1.8e-4, "worse", "blocks"),
    temperature_c=_measure(70.0, 88.0, 18.0, 17.5, 18.5, 1.8e-4, "worse", "blocks"),
    throttle_reasons={"sw_thermal": 0.64}, reasons_reported=True, held_back=True)


def test_the_soak_verdict_in_words():
    assert soak_explanation(_verdict(THROTTLED_GPU)) == (
        "throttled: steady from 45 s after warm-up (MSER-5); the last 300 s against 300 s "
        "from 45 s: tokens/s 2,980 -> 2,410 (-19.1% [-20.0, -18.0], p<0.001, worse), "
        "TTFT median 61.0 -> 70.2 ms (+15.1% [+14.0, +16.0], p<0.001, worse), "
        "ITL median 20.00 -> 19.90 ms (-0.4% [-1.0, +0.2], p=0.2, within noise); "
        "throttled GPU 3 (NVIDIA H100 80GB HBM3): SM clock 1,980 -> 1,500 MHz "
        "(-24.2% [-25.0, -24.0], p<0.001, worse), temperature 70 -> 88 C "
        "(+18.0 C [+17.5, +18.5], p<0.001, worse); throttling then: sw_thermal 64% of samples")
    assert soak_explanation(_verdict(None, Verdict.DEGRADING, settled=False)) == (
        "degrading: no steady state within the first 45 s (still settling); the last 300 s "
        "against 300 s from 45 s: tokens/s 2,980 -> 2,410 (-19.1% [-20.0, -18.0], p<0.001, "
        "worse), TTFT median 61.0 -> 70.2 ms (+15.1% [+14.0, +16.0], p<0.001, worse), "
        "ITL median 20.00 -> 19.90 ms (-0.4% [-1.0, +0.2], p=0.2, within noise); "
        "no GPU telemetry to tell throttling from other causes")
    unreported = replace(THROTTLED_GPU, key="node7/0", name=None, throttle_reasons={},
                         reasons_reported=False)
    assert soak_explanation(_verdict(unreported)).endswith(
        "; throttled GPU node7/0: SM clock 1,980 -> 1,500 MHz (-24.2% [-25.0, -24.0], "
        "p<0.001, worse), temperature 70 -> 88 C (+18.0 C [+17.5, +18.5], p<0.001, worse); "
        "its clock-event reasons are not reported")
    # a GPU held back while tokens/s and latency held: the verdict is stable, and the
    # sentence must not read as if the run were throttled
    held = soak_explanation(_verdict(THROTTLED_GPU, Verdict.STABLE))
    assert held.startswith("stable: ") and "; GPU 3 (NVIDIA H100 80GB HBM3) held back " \
        "(no loss beyond the thresholds): SM clock 1,980" in held and "throttled" not in held


def test_a_run_too_short_says_so_and_what_a_verdict_needs():
    short = SoakVerdict(Verdict.TOO_SHORT, measured_s=53.2, steady_state_s=5.0, settled=True)
    assert soak_explanation(short) == (
        "too short to judge: 53 s measured after warm-up, steady from 5 s after warm-up "
        "(MSER-5); a verdict needs 300 s of steady running")
    document = summary_document(RunSummary(soak=short))["soak"]
    assert document["verdict"] == "too short to judge" and document["measures"] == {}
    # an 8-second run is too short even to look for steady state: said so, not "no steady
    # state within the first 0 s"
    eight = SoakVerdict(Verdict.TOO_SHORT, measured_s=8.0, steady_state_s=0.0, settled=False)
    assert soak_explanation(eight) == (
        "too short to judge: 8 s measured after warm-up, too short to look for a steady "
        "state; a verdict needs 300 s of steady running")


def test_the_table_says_what_it_left_out_only_when_something_was():
    lines = summary_table(RunSummary(requests_warmup=4, requests_cancelled=2),
                          width=400).splitlines()
    assert "4 warm-up requests not counted (phases marked w); 2 cut off at the end" in lines
    lines = summary_table(RunSummary(requests_cancelled=3), width=400).splitlines()
    assert "3 cut off at the end" in lines
    assert not any("warm-up" in line or "cut off" in line
                   for line in summary_table(RunSummary(), width=400).splitlines())


def test_the_json_carries_the_verdict_in_words_beside_its_figures():
    result = summarise(_events()).result()
    document = json.loads(json.dumps(summary_document(result)))
    soak = document["soak"]
    assert list(soak)[-1] == "explanation"
    assert soak["explanation"] == soak_explanation(result.soak)
    assert soak["verdict"] == str(result.soak.verdict)
    assert "explanation" not in result.to_dict()["soak"]  # the engine's form is data only


def test_a_difference_reads_as_one_line_with_both_values():
    from soaktop.engine.metrics.compare import Difference
    from soaktop.tui.text import difference_lines

    assert difference_lines([Difference("model", "m", "other"), Difference("rate", None, 5.0)]) \
        == ["model: 'm' vs 'other'", "rate: None vs 5.0"]


def test_a_status_line_says_why_the_client_was_the_bottleneck():
    from soaktop.engine.metrics.live import LiveStats
    from soaktop.tui.text import client_bound_text, status_line

    snap = LiveStats().snapshot(10**9)
    assert "CLIENT-BOUND" not in status_line(snap, 2, 4)
    line = status_line(snap, 2, 4, ("reads late", "sends late"))
    assert line.endswith("| CLIENT-BOUND (reads late, sends late): latencies are upper bounds")
    assert client_bound_text(()) == ""


def test_the_table_lists_the_first_five_marks_escaped_and_counts_the_rest():
    marks = tuple((i * 1.25, f"note {i}") for i in range(6)) + ((99.0, EVIL),)
    lines = summary_table(RunSummary(marks=marks), width=400).splitlines()
    (line,) = [line for line in lines if line.startswith("marks: ")]
    assert line == ("marks: 0.0 s note 0; 1.2 s note 1; 2.5 s note 2; 3.8 s note 3; "
                    "5.0 s note 4; and 2 more (--json lists them)")
    five = summary_table(RunSummary(marks=marks[:4] + marks[-1:]), width=400)
    (line,) = [line for line in five.splitlines() if line.startswith("marks: ")]
    assert line.startswith("marks: 0.0 s note 0; ") and "more" not in line
    assert "\x1b" not in line and "\\x1b[2J" in line  # the note is shown, not obeyed
    assert not any(line.startswith("marks") for line in
                   summary_table(RunSummary(), width=400).splitlines())


def test_the_turn_split_in_words():
    from soaktop.engine.metrics.results import Distribution, TurnSplit
    from soaktop.tui.text import turn_lines

    first = Distribution(p50=120.04, p90=140.0, p95=150.26, p99=160.0, mean=125.0)
    later = Distribution(p50=30.0, p90=35.0, p95=38.96, p99=40.0, mean=31.0)
    assert turn_lines(RunSummary(turns=TurnSplit(first, later, 1234, 2468))) == [
        "conversations: TTFT first turns p50 120.0 ms, p95 150.3 ms (1,234 requests); "
        "later turns p50 30.0 ms, p95 39.0 ms (2,468 requests)"]
    assert turn_lines(RunSummary(turns=TurnSplit(first, Distribution(), 10, 0))) == [
        "conversations: TTFT first turns p50 120.0 ms, p95 150.3 ms (10 requests); "
        "no later turns"]
    assert turn_lines(RunSummary()) == []


def test_bidirectional_controls_are_shown_as_escapes_not_obeyed():
    """A right-to-left override in a model's output would make the terminal show the rest of
    the line reversed; it is written as an escape, as a control character is."""
    from soaktop.tui.text import terminal_safe

    assert terminal_safe("ok\u202ecod.exe\u2066x\u2069\x1b[31m\ttab\nline é") == (
        "ok\\u202ecod.exe\\u2066x\\u2069\\x1b[31m\ttab\nline é")


def test_a_rate_reads_as_a_person_writes_it():
    from soaktop.tui.text import rate_text

    assert [rate_text(r) for r in (0.5, 8.17237, 12.5, 99.4, 250.0, 1234.6)] == [
        "0.5", "8.17", "12.5", "99.4", "250", "1,235"]

