"""One process against worker processes (``--workers``): how fast each can be trusted, side by
side in one run.

For each total rate, a loopback server in its own process is paced for it and soaktop drives it
at ``--concurrency`` streams, first reading every stream in the session's process, then in
``--workers`` worker processes (see :mod:`soaktop.engine.load.workers`); the error of TTFT and
ITL against the wire at p99 (ms, soaktop minus wire; :mod:`soaktop.engine.metrics.fidelity`) and
the CPU the session's process paid per token received are printed beside each other, then the
highest rate each kept both p99 errors under 1 ms.

The loopback server is on the same cores, with a process per 4,000 tokens/s asked (at most the
cores less one; ``--server-processes`` to choose; the header says how many), so that it keeps
its schedule: where ``got`` still falls short of the rate paced, the machine did not keep up,
and the trusted rate is a floor of what the client can do. On 2 cores one loopback process, the
session and two workers share them. Run it on a quiet machine: anything else on the cores is
measured too.

    python bench/workers.py                                   # 64 streams, 2 workers
    python bench/workers.py --rates 4000,8000,16000 --concurrency 256 --workers 4
"""

from __future__ import annotations

import argparse

from soaktop.engine.load.workers import usable_cores
from soaktop.engine.loopback import processes_for
from soaktop.engine.metrics.fidelity import Fidelity, measure, trusted_rate
from soaktop.tui.calibrate_text import processes_note
from soaktop.tui.cli import collector_frozen


def _cells(f: Fidelity) -> str:
    cpu = f.session_cpu_us_per_token
    return (f"{f.tokens_per_s:>7,.0f} {f.error_ms('ttft_ms', 99):>+8.3f} "
            f"{f.error_ms('itl_ms', 99):>+8.3f} {cpu if cpu is not None else float('nan'):>7.1f} "
            f"{f.client_bound_s:>5.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rates", default="2000,4000,6000,8000,12000",
                   help="total tokens/s the server is paced for")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per rate and setup")
    p.add_argument("--server-processes", type=int, default=None,
                   help="loopback processes (default: one per 4,000 tokens/s asked)")
    args = p.parse_args()
    setups = (1, args.workers)
    rates = [float(r) for r in args.rates.split(",")]
    processes = {r: args.server_processes or processes_for(r) for r in rates}
    print(f"{args.concurrency} streams, {processes_note(processes)}, {args.duration:g} s per "
          f"rate, {usable_cores()} usable cores; error = soaktop - wire at p99 (ms); CPU = the "
          "session's process, us per token")
    names = [f"{n} worker{'s' if n > 1 else ''}" if n > 1 else "1 process" for n in setups]
    cell = "    got TTFTp99  ITLp99  CPU/tok bound"
    print(f"{'paced':>7} | " + " | ".join(f"{name:<{len(cell)}}" for name in names))
    print(f"{'tok/s':>7} | " + " | ".join(cell for _ in setups))
    results: dict[int, list[Fidelity]] = {n: [] for n in setups}
    short = []
    for rate in rates:
        lifetime_s = args.concurrency * 64 / rate  # as calibrate: room for the warm-up waves
        duration = max(args.duration, 4.5 * lifetime_s)
        row = []
        for n in setups:
            with collector_frozen():  # as a live run: its session runs in this process
                f = measure(args.concurrency, rate, duration_s=duration, workers=n,
                            server_processes=processes[rate])
            results[n].append(f)
            row.append(_cells(f))
            if f.tokens_per_s < 0.85 * rate:
                short.append((rate, n))
        print(f"{rate:>7,.0f} | " + " | ".join(row), flush=True)
    for n, name in zip(setups, names):
        best = trusted_rate(results[n])
        print(f"{name}: " + ("p99 error under 1 ms at none of these rates" if best is None
                             else f"highest rate with p99 errors under 1 ms: {best:,.0f} tok/s"))
    label = dict(zip(setups, names))
    if short:
        paced = ", ".join(f"{rate:,.0f} ({label[n]})" for rate, n in short)
        print(f"short of the pace at {paced}: the loopback server and soaktop share "
              f"{usable_cores()} cores, so there the machine was the bottleneck; a trusted rate "
              "is then a floor, and a machine with more cores measures more")
    if usable_cores() < args.workers + 2:
        print(f"{usable_cores()} cores for the server, the session and {args.workers} workers: "
              "the workers have no core of their own here, so both trusted rates are bounded "
              "by the machine as much as by the reading; the session's CPU per token is what "
              "the workers cut")


if __name__ == "__main__":
    main()
