"""How big records are and how fast they are read, measured (the targets: at most 8 bytes
per output token at concurrency 64, and a record of 1 million tokens summarised in under 2 s).

Two records, in one run:
1. A real one: soaktop at ``--concurrency`` (64) against a loopback server in its own process
   (jittered ITL, so the offsets are as varied as a real server's), with host telemetry at
   4 Hz as the CLI records it, written compressed (``.jsonl.gz``, the default). Prints bytes
   per output token, all lines included, compressed and as plain JSON lines (the same events
   written again to a ``.jsonl``), and how much of the plain size is the per-token offsets.
2. A synthetic one of ``--tokens`` (1,000,000) tokens in requests shaped like the real one's,
   written by the same RecordWriter, compressed and plain; prints the time ``soaktop summary``
   takes to read and summarise each (RecordReader + SessionSummary, the command's own code
   path), beside the time to merely ``json.loads`` every line, the floor any JSON-lines reader
   pays, and the time ``soaktop replay --speed max`` takes (every token re-emitted into the
   live statistics, as the dashboard's replay screen will).

    python bench/records.py [--concurrency 64] [--seconds 15] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from soaktop.engine.backends.http import Timeouts
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import Phase, RequestDone, SessionEnd, SessionStart
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.results import RunSummary
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.records.format import RecordReader, RecordWriter
from soaktop.engine.records.replay import Replay, Timeline
from soaktop.engine.session import Session

ROOT = Path(__file__).resolve().parent.parent


def real_record(path: Path, concurrency: int, seconds: float) -> tuple[int, list[RequestDone]]:
    """soaktop against a loopback server; the record at ``path``, and its requests."""
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


def rewrite(source: Path, target: Path) -> None:
    """The same events in another file (plain or compressed, by its name)."""
    writer = RecordWriter(target)
    for event in RecordReader(source).events():
        writer.write(event)
    writer.close()


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


def summarise(path: Path) -> RunSummary:
    summary = SessionSummary()
    for event in RecordReader(path).events():
        summary.add(event)
    return summary.result()


def replay_at_full_speed(path: Path) -> int:
    """What ``soaktop replay --speed max`` does; returns how many tokens were re-emitted."""
    summary, live = SessionSummary(), LiveStats()
    timeline = Timeline(RecordReader(path).events())
    Replay(timeline, [summary.add, live.add]).advance_to(timeline.end_ns)
    return int(timeline.token_count.sum())


def timed(fn, *args, repeat: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def json_floor(path: Path) -> float:
    """Seconds to decompress (if need be) and json.loads every line: any reader's floor."""
    t0 = time.perf_counter()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        for line in handle:
            json.loads(line)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real.jsonl.gz"
        tokens, done = real_record(real, args.concurrency, args.seconds)
        plain = Path(tmp) / "real.jsonl"
        rewrite(real, plain)
        lines = plain.read_text().splitlines()
        offsets = sum(len(json.dumps(json.loads(line).get("arrivals_dus", []),
                                     separators=(",", ":"))) for line in lines)
        print(f"real record, concurrency {args.concurrency}, {args.seconds:g} s, {tokens:,} "
              f"tokens, {len(lines):,} lines:")
        print(f"  compressed (.jsonl.gz, the default): {real.stat().st_size:,} bytes = "
              f"{real.stat().st_size / tokens:.2f} bytes/token (target <= 8)")
        print(f"  plain (.jsonl): {plain.stat().st_size:,} bytes = "
              f"{plain.stat().st_size / tokens:.2f} bytes/token (offsets alone "
              f"{offsets / tokens:.2f}) -> compression saves "
              f"{plain.stat().st_size / real.stat().st_size:.1f}x")

        for name in ("synthetic.jsonl.gz", "synthetic.jsonl"):
            synthetic = Path(tmp) / name
            written = synthetic_record(synthetic, args.tokens, done)
            size = synthetic.stat().st_size
            floor_s = json_floor(synthetic)
            summary_s, result = timed(summarise, synthetic)
            assert result.requests_ok > 0
            replay_s, replayed = timed(replay_at_full_speed, synthetic, repeat=1)
            assert replayed == written
            print(f"synthetic {name}: {written:,} tokens, {size / 2**20:.1f} MiB "
                  f"({size / written:.2f} bytes/token)")
            print(f"  soaktop summary: {summary_s:.2f} s (median of 3; target < 2 s); "
                  f"read + json.loads alone: {floor_s:.2f} s -> "
                  f"{summary_s / floor_s:.1f}x the parsing floor")
            print(f"  soaktop replay --speed max (every token into the live view): "
                  f"{replay_s:.2f} s = {written / replay_s / 1e6:.2f} M tokens/s")

if __name__ == "__main__":
    main()
