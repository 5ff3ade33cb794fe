"""soaktop's TTFT and ITL error against the wire, at rising token rates, in one run.

A loopback server in its own process emits tokens on a schedule and records when each chunk
left; soaktop drives it at ``--concurrency`` and records when each arrived (see
:mod:`engine.fidelity`). For each total rate this prints soaktop's error at p50/p90/p99 (its
quantile minus the wire's, in ms), then the highest rate at which the p99 error stayed under
1 ms. The closed loop's first two waves are warm-up and not compared (see engine/fidelity.py).
Run it on a quiet machine: anything else on the cores is measured too.

    python bench/http_fidelity.py                       # 64 streams, 1,000 .. 8,000 tokens/s
    python bench/http_fidelity.py --rates 3000,6000 --duration 15
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine.fidelity import QUANTILES, measure  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rates", default="1000,2000,3000,4000,6000,8000",
                   help="total tokens/s the server is paced for")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    args = p.parse_args()
    head = " ".join(f"{m} p{q:<2}" for m in ("TTFT", "ITL") for q in QUANTILES)
    print(f"{args.concurrency} streams, {args.duration:g} s per rate; error = soaktop - wire, ms")
    print(f"{'target':>7} {'got tok/s':>9} {'reqs':>5}  {head}")
    best = None
    for rate in (float(r) for r in args.rates.split(",")):
        f = measure(args.concurrency, rate, duration_s=args.duration)
        errors = [f.error_ms(m, q) for m in ("ttft_ms", "itl_ms") for q in QUANTILES]
        print(f"{rate:>7.0f} {f.tokens_per_s:>9.0f} {f.requests:>5}  "
              + " ".join(f"{e:>+8.3f}" for e in errors))
        if max(abs(f.error_ms(m, 99)) for m in ("ttft_ms", "itl_ms")) < 1.0:
            best = max(best or 0.0, f.tokens_per_s)
    if best is None:
        print("p99 error stayed under 1 ms at none of these rates")
    else:
        print(f"highest rate with p99 error under 1 ms: {best:,.0f} tokens/s")


if __name__ == "__main__":
    main()
