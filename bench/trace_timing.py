"""How close to a trace's timestamps soaktop's sends land (``--trace``), with and without the
open loop's precise tail, side by side in one run.

A dense synthetic trace (``--requests`` over ``--span`` seconds of trace time, uniform
arrivals, replayed at ``--speed``) goes to a loopback server in a process of its own. For each
variant the table prints how late each request's last byte reached the kernel after its planned
time (``queued_us`` in the record: p50, p90, p99, max, in ms) and the event loop's own lag (p99
of its once-a-second samples, the worst second). ``tail 0`` waits on the event loop's timers
alone (epoll: whole milliseconds); ``tail 2 ms`` sleeps the last 2 ms on a thread
(soaktop.engine.load.loops.PRECISE_TAIL_S). The ratio row is the second over the first.

What it tells: the lateness a trace replay adds on this machine, before any server delay. Every
latency runs from the planned time, so the lateness is counted either way; this measures how
small it is. Run it on a quiet machine: anything else on the cores is measured too.

    python bench/trace_timing.py                      # 1,000 requests, 8 s at 2x
    python bench/trace_timing.py --requests 4000 --span 16 --speed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np

from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import ClientSample, RequestDone
from soaktop.engine.load import loops
from soaktop.engine.loopback import Schedule
from soaktop.engine.loopback.process import spawn
from soaktop.engine.session import Session


async def _replay(url: str, trace: str, speed: float) -> tuple[np.ndarray, float]:
    events: list = []
    config = RunConfig(backend="openai", url=url, model="loopback", trace=trace,
                       trace_speed=speed, telemetry=())
    session = Session(config, OpenAIBackend(url, model="loopback"), listeners=(events.append,))
    await session.run()
    late = np.array([e.queued_us for e in events if isinstance(e, RequestDone)], dtype=float)
    lag = [e.loop_lag_p99_us for e in events
           if isinstance(e, ClientSample) and e.loop_lag_p99_us is not None]
    return late / 1e3, (max(lag) / 1e3 if lag else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--span", type=float, default=8.0, help="trace seconds")
    parser.add_argument("--speed", type=float, default=2.0)
    args = parser.parse_args()
    times = np.sort(np.random.default_rng(1).uniform(0, args.span * 1e3, args.requests))
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.jsonl"
        trace.write_text("".join(json.dumps({"timestamp": round(float(t), 3),
                                             "input_length": 8, "output_length": 2}) + "\n"
                                 for t in times))
        rate = args.requests / (args.span / args.speed)
        print(f"trace replay: {args.requests} requests, {args.span:g} s at {args.speed:g}x "
              f"({rate:,.0f} requests/s); lateness of each send after its planned time, ms")
        print(f"{'variant':<12} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'loop lag':>9}")
        rows = []
        with spawn(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as url:
            for name, tail in (("tail 0", 0.0), ("tail 2 ms", 0.002)):
                loops.PRECISE_TAIL_S = tail
                late, lag = asyncio.run(_replay(url, str(trace), args.speed))
                row = [float(np.percentile(late, q)) for q in (50, 90, 99)] + [late.max(), lag]
                rows.append(row)
                print(f"{name:<12} " + " ".join(f"{v:>7.3f}" for v in row[:3])
                      + f" {row[3]:>8.3f} {row[4]:>9.3f}")
        ratio = [b / a if a else float("nan") for a, b in zip(rows[0], rows[1])]
        print(f"{'ratio':<12} " + " ".join(f"{v:>7.2f}" for v in ratio[:3])
              + f" {ratio[3]:>8.2f} {ratio[4]:>9.2f}")


if __name__ == "__main__":
    main()
