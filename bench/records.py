"""How big records are and how fast they are read, measured (issue 5's targets: at most 8 bytes
per output token at concurrency 64, and a record of 1 million tokens summarised in under 2 s).

Two records, in one run:
1. A real one: soaktop at ``--concurrency`` (64) against a loopback server in its own process
   (jittered ITL, so the offsets are as varied as a real server's), with host telemetry at
   4 Hz as the CLI records it. Prints bytes per output token, all lines included, and how much
   of it is the per-token offsets.
2. A synthetic one of ``--tokens`` (1,000,000) tokens in requests shaped like the real one's,
   written by the same RecordWriter; prints its size and the time ``soaktop summary`` takes to
   read and summarise it (RecordReader + SessionSummary, the command's own code path), beside
   the time to merely ``json.loads`` every line, the floor any JSON-lines reader pays.

    python bench/records.py [--concurrency 64] [--seconds 15] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backends.http import Timeouts  # noqa: E402
from engine.backends.openai import OpenAIBackend  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.events import Phase, RequestDone, SessionEnd, SessionStart  # noqa: E402
from engine.loopback.process import spawn  # noqa: E402
from engine.loopback.schedule import Schedule  # noqa: E402
from engine.record import RecordReader, RecordWriter  # noqa: E402
from engine.session import Session  # noqa: E402
from engine.summary import SessionSummary  # noqa: E402


def real_record(path: Path, concurrency: int, seconds: float) -> tuple[int, list[RequestDone]]:
    schedule = Schedule(ttft_ms=30, itl_ms=25, jitter_ms=8, tokens=128, model="loopback")
    done: list[RequestDone] = []

    async def run(url: str) -> None:
        config = RunConfig(backend="openai", model="loopback", concurrency=concurrency,
                           duration_s=seconds, output_tokens=128, input_tokens=32, url=url,
                           telemetry=("host",))
        backend = OpenAIBackend(url, model="loopback", timeouts=Timeouts(first_token_s=30))
        keep = [lambda e: done.append(e) if isinstance(e, RequestDone) else None]
        await Session(config, backend, record_path=path, listeners=tuple(keep)).run()

    with spawn(schedule) as url:
        asyncio.run(run(url))
    return sum(d.output_tokens for d in done), done


def synthetic_record(path: Path, tokens: int, shapes: list[RequestDone]) -> int:
    """Requests cycled from the real run's shapes until ``tokens`` tokens are written."""
    writer = RecordWriter(path)
    writer.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {}, {}, {}))
    writer.write(Phase(0, 0, 64, "loopback", "openai", "start"))
    written, request_id, t_ns = 0, 0, 0
    ok = [d for d in shapes if d.ok and d.arrivals_us]
    while written < tokens:
        shape = ok[request_id % len(ok)]
        t_ns += 5_000_000
        writer.write(RequestDone(
            t_ns=t_ns + shape.end_us * 1000, worker_id=0, request_id=request_id, phase_id=0,
            backend="openai", model="loopback", sent_ns=t_ns, prompt_tokens=32,
            arrivals_us=shape.arrivals_us, end_us=shape.end_us, finish_reason="length"))
        written += shape.output_tokens
        request_id += 1
    writer.write(SessionEnd(t_ns + 10**9, "completed"))
    writer.close()
    return written


def summarise(path: Path) -> dict:
    summary = SessionSummary()
    for event in RecordReader(path).events():
        summary.add(event)
    return summary.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real.jsonl"
        tokens, done = real_record(real, args.concurrency, args.seconds)
        size = real.stat().st_size
        lines = real.read_text().splitlines()
        offsets = sum(len(json.dumps(json.loads(line).get("arrivals_dus", []),
                                     separators=(",", ":"))) for line in lines)
        print(f"real record, concurrency {args.concurrency}, {args.seconds:g} s: {tokens:,} "
              f"tokens, {size:,} bytes = {size / tokens:.2f} bytes/token "
              f"(offsets alone {offsets / tokens:.2f}; target <= 8)")

        synthetic = Path(tmp) / "synthetic.jsonl"
        written = synthetic_record(synthetic, args.tokens, done)
        size = synthetic.stat().st_size
        t0 = time.perf_counter()
        with open(synthetic) as handle:
            for line in handle:
                json.loads(line)
        floor_s = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            result = summarise(synthetic)
            times.append(time.perf_counter() - t0)
        assert result["requests_ok"] > 0
        print(f"synthetic record: {written:,} tokens, {size / 2**20:.1f} MiB "
              f"({size / written:.2f} bytes/token)")
        print(f"soaktop summary of it: {np.median(times):.2f} s (median of 3; target < 2 s); "
              f"json.loads of every line alone: {floor_s:.2f} s "
              f"-> summary costs {np.median(times) / floor_s:.1f}x the parsing floor")


if __name__ == "__main__":
    main()
