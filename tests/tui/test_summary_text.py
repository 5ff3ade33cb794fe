"""The summary as text: the table fits the terminal, the words the engine leaves to tui (how a
run ended, the soak verdict's sentence), and a CSV that is data, not screen text."""

import csv
import io
import json

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
from soaktop.engine.metrics.results import DriftFigures, SoakVerdict, Verdict
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


def _verdict(first_clock, last_clock, reasons) -> SoakVerdict:
    return SoakVerdict(
        window_s=300.0,
        first=DriftFigures(2980.0, 61.0, first_clock, 71.0 if first_clock else None),
        last=DriftFigures(2410.0, 88.2, last_clock, 87.0 if last_clock else None),
        change=DriftFigures(2410 / 2980 - 1, 88.2 / 61 - 1,
                           last_clock / first_clock - 1 if first_clock else None,
                           16.0 if first_clock else None),
        verdict=Verdict.THROTTLED if reasons else Verdict.DEGRADING,
        throttle_reasons=reasons)


def test_the_soak_verdict_in_words():
    assert soak_explanation(_verdict(1980.0, 1605.0, {"sw_thermal": 0.64})) == (
        "throttled: the last 300 s against the first: tokens/s 2,980 -> 2,410 (-19.1%), "
        "TTFT p95 61.0 -> 88.2 ms (+44.6%), SM clock 1,980 -> 1,605 MHz (-18.9%), "
        "GPU 71 -> 87 C; throttling then: sw_thermal 64% of samples")
    assert soak_explanation(_verdict(None, None, {})) == (
        "degrading: the last 300 s against the first: tokens/s 2,980 -> 2,410 (-19.1%), "
        "TTFT p95 61.0 -> 88.2 ms (+44.6%); no GPU telemetry to tell throttling from other "
        "causes")


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
