"""soaktop's TTFT and ITL error against the wire, at rising token rates, in one run.

A loopback server in its own process emits tokens on a schedule and records when each chunk
left; soaktop drives it at ``--concurrency`` and records when each arrived (see
:mod:`soaktop.engine.metrics.fidelity`). For each total rate this prints soaktop's error at
p50/p90/p99 (its quantile minus the wire's, in ms), then the highest rate at which the p99 error
stayed under 1 ms. The closed loop's first two waves are warm-up and not compared (see
engine/fidelity.py). The loopback gets a process per 4,000 tokens/s asked, at most the cores
less one (``--server-processes`` to choose), so that it keeps its schedule; the header says
how many. Run it on a quiet machine: anything else on the cores is measured too.

    python bench/http_fidelity.py                       # 64 streams, 1,000 .. 8,000 tokens/s
    python bench/http_fidelity.py --rates 3000,6000 --duration 15
"""

from __future__ import annotations

import argparse

from soaktop.engine.loopback import processes_for
from soaktop.engine.metrics.fidelity import measure, trusted_rate
from soaktop.tui.calibrate_text import calibration_table, processes_note
from soaktop.tui.cli import collector_frozen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rates", default="1000,2000,3000,4000,6000,8000",
                   help="total tokens/s the server is paced for")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--server-processes", type=int, default=None,
                   help="loopback processes (default: one per 4,000 tokens/s asked)")
    args = p.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    processes = {r: args.server_processes or processes_for(r) for r in rates}
    print(f"{args.concurrency} streams, {processes_note(processes)}, {args.duration:g} s per "
          "rate; error = soaktop - wire, ms")
    with collector_frozen():  # as `soaktop calibrate` measures: its session runs in here
        results = [measure(args.concurrency, rate, duration_s=args.duration,
                           server_processes=processes[rate]) for rate in rates]
    print("\n".join(calibration_table(results)))
    best = trusted_rate(results)
    print("p99 error stayed under 1 ms at none of these rates" if best is None
          else f"highest rate with p99 error under 1 ms: {best:,.0f} tokens/s")


if __name__ == "__main__":
    main()
