"""Records with known contents for the report's tests: every value put in is chosen here, so
what the charts hold can be checked against it exactly."""

from __future__ import annotations

from pathlib import Path

from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Mark,
    Phase,
    RequestDone,
    SessionEnd,
    SessionStart,
)
from soaktop.engine.records.format import RecordWriter

S = 10**9
#: The known schedule of :func:`known_record`: a request sent every 100 ms from 0.5 s on,
#: first token at 40 ms, then 9 more 10 ms apart (10 tokens); 10 requests a second.
TTFT_MS, ITL_MS, TOKENS, EVERY_MS = 40, 10, 10, 100
SECONDS = 12
ERROR_SECONDS = (5, 6)  # one request a second fails in these, class "timeout"
THROTTLED_SECONDS = (8, 9)  # GPU 1 reports hw_slowdown in these
MARK_S = 4.5


def known_record(path: Path, *, model: str = "m1", server: str = "vllm", url: str =
                 "http://a:8000", note: str = "fan swapped", error_class: str = "timeout",
                 ramp: bool = False, seconds: int = SECONDS, gpus: int = 2,
                 every_ms: int = EVERY_MS) -> Path:
    """A 12-second record: warm-up 0-1 s, then one phase (or a ramp of three, 4 s each).
    ``seconds``, ``gpus`` and ``every_ms`` make a longer or sparser one of the same shape."""
    w = RecordWriter(path)
    config = {"backend": "openai", "model": model, "concurrency": 4, "url": url,
              "output_tokens": TOKENS}
    if ramp:
        config["ramp"] = [1, 2, 4]
    w.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config,
                         {"hostname": "box", "soaktop_version": "0.1.0"},
                         {"kind": "openai", "url": url,
                          "server": {"header": server, "version": "0.6.0"}},
                         {"seed": 1}))
    w.write(Phase(0, 0, 4, model, "openai", "start", warmup=True))
    phase_starts = [1, 5, 9] if ramp else [1]
    for k, start in enumerate(phase_starts):
        w.write(Phase(start * S, k + 1, 2 ** k if ramp else 4, model, "openai",
                      "warmup_done" if k == 0 else "ramp"))
    request = 0
    gaps = tuple([TTFT_MS * 1000] + [ITL_MS * 1000] * (TOKENS - 1))
    offsets = tuple(sum(gaps[: i + 1]) for i in range(TOKENS))
    for t_ms in range(500, (seconds - 1) * 1000, every_ms):
        second = t_ms // 1000
        sent = t_ms * 10**6
        phase = 0 if second < 1 else max(k + 1 for k, s in enumerate(phase_starts)
                                         if second >= s)
        fails = second in ERROR_SECONDS and t_ms % 1000 == 0
        ramp_scale = 2 ** (phase - 1) if ramp and phase else 1
        ok_offsets = tuple(o * ramp_scale for o in offsets)
        end_us = ok_offsets[-1] + 100
        w.write(RequestDone(
            sent + end_us * 1000, 0, request, phase, "openai", model, sent, 8,
            () if fails else ok_offsets, end_us,
            "error" if fails else "length", warmup=phase == 0,
            error_class=error_class if fails else None,
            error_message="boom" if fails else None))
        request += 1
    for second in range(seconds):
        t = second * S
        for gpu in range(gpus):
            w.write(GpuSample(
                t, gpu, temperature_c=60.0 + second, slowdown_temperature_c=87.0,
                sm_clock_mhz=1500.0 if gpu == 1 and second in THROTTLED_SECONDS else 1980.0,
                sm_clock_max_mhz=1980.0, power_w=500.0, power_limit_w=700.0,
                memory_used_bytes=40 * 2**30, memory_total_bytes=80 * 2**30,
                clock_event_reasons=("hw_slowdown",) if gpu == 1 and second in
                THROTTLED_SECONDS else ()))
        w.write(HostSample(t, cpu_percent=25.0, soaktop_cpu_percent=12.0))
        w.write(ClientSample(t + S, in_flight=4, tokens=100, interval_ns=S,
                             loop_lag_p99_us=300, cpu_percent=12.0))
        if second == 4:
            w.write(Mark(int(MARK_S * S), note))
    w.write(SessionEnd(seconds * S, "completed"))
    w.close()
    return path
