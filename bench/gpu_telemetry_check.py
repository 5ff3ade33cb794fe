"""The NVML path on a real GPU: idle, then the local engine under load, then idle again.

Prints, per window and GPU, what the samples show (SM clock, power, temperature, energy,
utilisation, the clock-event reasons seen and their counters), then the session's own summary
of the loaded part, and exits non-zero if the load left no trace: the SM clock and power must
rise from idle, the energy counter must grow, the temperature must be read, and reasons must be
decoded into names. A check for a machine with an NVIDIA GPU (the lent H100 when a task has one):

    python bench/gpu_telemetry_check.py [--model llama-1b] [--concurrency 32] [--load-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

from soaktop.engine.backends import create
from soaktop.engine.config import RunConfig
from soaktop.engine.events import GpuSample, TelemetryStatus
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session
from soaktop.engine.telemetry.derived import GpuWindow
from soaktop.engine.telemetry.nvml import NvmlSource
from soaktop.engine.telemetry.sampler import Sampler
from soaktop.tui.text import telemetry_lines

ROOT = Path(__file__).resolve().parent.parent


def idle_window(seconds: float, hz: float) -> list:
    events, lock = [], threading.Lock()

    def deliver(batch):
        with lock:
            events.extend(batch)

    sampler = Sampler(NvmlSource(), hz, time.perf_counter_ns, deliver)
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    return events


def describe(label: str, samples: list[GpuSample]) -> dict:
    w = GpuWindow()
    reasons: set[str] = set()
    for s in samples:
        w.add(s)
        reasons.update(s.clock_event_reasons or ())
    r = w.result()
    first, last = samples[0], samples[-1]
    print(f"{label:>6} GPU{first.gpu_index}: {r['samples']} samples;"
          f" SM clock mean {r['sm_clock_mhz']['mean']:.0f} MHz (max {first.sm_clock_max_mhz});"
          f" power mean {r['power_w']['mean']:.1f} W ({r['energy_from']});"
          f" temperature {first.temperature_c}->{last.temperature_c} C"
          f" (slowdown {first.slowdown_temperature_c});"
          f" energy +{(r['energy_j'] or 0):.1f} J;"
          f" util {r['gpu_utilization_percent']['mean']:.0f}%;"
          f" reasons seen {sorted(reasons)};"
          f" fractions {r['clock_event_fraction']} from {r['clock_events_from']};"
          f" counters first {first.clock_event_counters_ns} last {last.clock_event_counters_ns}")
    return r


async def load_window(args: argparse.Namespace) -> tuple[list, SessionSummary]:
    config = RunConfig(model=args.model, device=args.device, concurrency=args.concurrency,
                       duration_s=args.load_s, telemetry=("nvml",), telemetry_hz=args.hz)
    events: list = []
    summary = SessionSummary()
    backend = create("local", model=args.model, device=args.device)
    session = Session(config, backend, listeners=(events.append, summary.add))
    await session.run()
    return events, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-1b")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-s", type=float, default=60.0)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    before = idle_window(args.idle_s, args.hz)
    statuses = [e for e in before if isinstance(e, TelemetryStatus)]
    for s in statuses:
        print(f"status: {s}")
    if not any(isinstance(e, GpuSample) for e in before):
        print("no GPU samples: nothing to check here")
        return 1
    loaded, summary = asyncio.run(load_window(args))
    after = idle_window(args.idle_s, args.hz)

    problems = []
    for index in sorted({e.gpu_index for e in before if isinstance(e, GpuSample)}):
        windows = {}
        for label, events in (("idle", before), ("load", loaded), ("after", after)):
            samples = [e for e in events if isinstance(e, GpuSample) and e.gpu_index == index]
            windows[label] = describe(label, samples) if samples else None
        idle, load = windows["idle"], windows["load"]
        if load is None:
            problems.append(f"GPU{index}: no samples under load")
            continue
        if index != 0:
            continue  # the local engine runs on cuda:0; the others only need to be read
        if not load["sm_clock_mhz"]["mean"] > idle["sm_clock_mhz"]["mean"]:
            problems.append("GPU0: SM clock did not rise under load")
        if not load["power_w"]["mean"] > idle["power_w"]["mean"]:
            problems.append("GPU0: power did not rise under load")
        if not (load["energy_j"] or 0) > 0:
            problems.append("GPU0: the energy counter did not grow")
        if load["temperature_c"]["mean"] is None:
            problems.append("GPU0: no temperature")
    gpu0 = [e for e in before + loaded if isinstance(e, GpuSample) and e.gpu_index == 0]
    if not any(e.clock_event_reasons for e in gpu0):
        problems.append("GPU0: no clock-event reason decoded in any sample (idle should show "
                        "gpu_idle)")
    result = summary.result()
    print("\n".join(telemetry_lines(result)))
    print(f"load: {result.output_tokens_per_s:.0f} tok/s, "
          f"{result.energy_j_per_token} J/token, {result.tokens_per_s_per_w} tok/s/W")
    for p in problems:
        print(f"PROBLEM: {p}")
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
