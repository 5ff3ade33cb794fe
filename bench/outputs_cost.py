"""What ``--save-outputs`` costs the session per token, and what it costs when off (nothing).

A backend in this process streams a constant text token by token (as the HTTP backends hand
each arrival its parsed text), with nothing else to do, so the CPU time per token is the
session's own: reading the stream, the arrivals, the request's end and, when asked, keeping
and saving the text. Each variant runs ``--repeat`` times, interleaved; the median is printed.

    python bench/outputs_cost.py                  # off and on, this checkout
    python bench/outputs_cost.py --tree /tmp/old  # off only, another checkout's engine/ (the
                                                  # commit before, from git archive) for the
                                                  # before/after of the flag's plumbing
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _use_tree(tree: str) -> None:
    """Import soaktop.* from ``tree`` (a folder holding engine/, tui/, themes/) instead of
    the editable install's checkout."""
    # setuptools names the editable install's finder after the version: find it by its shape
    finder = next((module for name, module in sys.modules.items()
                   if name.startswith("__editable___soaktop_") and name.endswith("_finder")),
                  None)
    if finder is None:
        raise SystemExit("--tree needs soaktop installed editable (pip install -e .)")
    for name in ("engine", "tui", "themes"):
        finder.MAPPING[f"soaktop.{name}"] = str(Path(tree) / name)


def _measure(save: bool, requests: int, tokens: int, concurrency: int) -> float:
    """CPU ns per token of one run."""
    from soaktop.engine.backends.base import Arrival, Backend, StreamEnd
    from soaktop.engine.config import RunConfig
    from soaktop.engine.session import Session

    class Constant(Backend):
        kind = "fake"

        async def models(self):
            return ["fake"]

        async def stream(self, request):
            for _ in range(request.max_tokens):
                await asyncio.sleep(0)
                yield Arrival(time.perf_counter_ns(), 1, " token")
            yield StreamEnd("length")

    options = {"save_outputs": True} if save else {}
    config = RunConfig(backend="fake", model="fake", concurrency=concurrency,
                       max_requests=requests, warmup_requests=0, output_tokens=tokens,
                       **options)
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "r.jsonl.gz"
        session = Session(config, Constant(), record_path=record)
        start = time.process_time_ns()
        asyncio.run(session.run())
        spent = time.process_time_ns() - start
    return spent / (requests * tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--tree", default=None, help="measure another checkout (flag off only)")
    args = p.parse_args()
    if args.tree:
        _use_tree(args.tree)
    variants = [False] if args.tree else [False, True]
    runs: dict[bool, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for save in variants:
            runs[save].append(_measure(save, args.requests, args.tokens, args.concurrency))
    for save, values in runs.items():
        print(f"{'on ' if save else 'off'}: {statistics.median(values):6.0f} ns/token "
              f"(runs: {', '.join(f'{v:.0f}' for v in values)})", file=sys.stdout)


if __name__ == "__main__":
    main()
