"""Output tokens/s of the embedded local engine at several concurrency levels, in one run.

One session steps through the levels as phases (1 -> 4 -> 16 by default), so every level is
measured on the same model instance, minutes apart at most, and the ratio between them is
not at the mercy of what else the machine did in another run. Numbers come from the same
summary code as ``soaktop summary``: tokens that arrived within each phase's window.

    python bench/local_engine.py                      # tiny on the best device: 1, 4, 16
    python bench/local_engine.py --model llama-1b --device cuda --levels 1,32 --phase-s 20
"""

from __future__ import annotations

import argparse
import asyncio

from soaktop.engine.backends import create
from soaktop.engine.config import RunConfig
from soaktop.engine.events import EndReason, Phase, PhaseReason
from soaktop.engine.metrics.results import RunSummary
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session
from soaktop.tui.cli import collector_frozen


async def measure(args: argparse.Namespace) -> tuple[dict, RunSummary]:
    levels = [int(x) for x in args.levels.split(",")]
    config = RunConfig(
        backend="local", model=args.model, device=args.device, concurrency=levels[0],
        warmup_requests=args.warmup, input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
    )
    backend = create("local", model=args.model, device=args.device)
    summary = SessionSummary()
    warmed_up = asyncio.Event()

    def on_event(event) -> None:
        summary.add(event)
        if isinstance(event, Phase) and not event.warmup:
            warmed_up.set()

    # as `soaktop run` does, so the collector walks neither torch nor the model mid-run
    session = Session(config, backend, listeners=(on_event,), while_running=collector_frozen)

    async def steer() -> None:
        await warmed_up.wait()  # the first level's phase starts when warm-up is done
        for level in levels[1:]:
            await asyncio.sleep(args.phase_s)
            session.set_concurrency(level, reason=PhaseReason.COMMAND)
        await asyncio.sleep(args.phase_s)
        session.stop(EndReason.COMPLETED)

    steering = asyncio.ensure_future(steer())
    await session.run()
    await steering
    return backend.describe(), summary.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--phase-s", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=2, help="warm-up requests (not measured)")
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=128)
    args = p.parse_args()
    b, result = asyncio.run(measure(args))
    print(f"{b.get('model')} ({b.get('parameters', 0) / 1e6:.1f}M params) on {b.get('device')}"
          f" {b.get('dtype')}, torch {b.get('torch')}; prompt {args.input_tokens}, output"
          f" {args.output_tokens} tokens, {args.phase_s:.0f} s per level")
    print(f"{'concurrency':>11} {'tokens/s':>10} {'per stream p50':>15} {'TTFT p50 ms':>12}"
          f" {'requests':>9}")
    rows = {}
    for phase in result.phases:
        if phase.warmup:
            continue
        rows[phase.concurrency] = phase
        speed = phase.output_speed_tps.p50
        ttft = phase.ttft_ms.p50
        print(f"{phase.concurrency:>11} {phase.output_tokens_per_s:>10.1f}"
              f" {speed if speed is not None else float('nan'):>15.1f}"
              f" {ttft if ttft is not None else float('nan'):>12.1f} {phase.requests_ok:>9}")
    levels = [int(x) for x in args.levels.split(",")]
    low, high = rows.get(levels[0]), rows.get(levels[-1])
    if low and high and low.output_tokens_per_s:
        ratio = high.output_tokens_per_s / low.output_tokens_per_s
        print(f"ratio {levels[-1]} vs {levels[0]}: {ratio:.2f}x total tokens/s")


if __name__ == "__main__":
    main()
