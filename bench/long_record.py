"""How long a long soak's record takes to read back: ``soaktop summary`` and ``soaktop replay
--speed max`` on a synthetic record shaped like a real 30-minute soak.

Why synthetic: a real soak takes 30 minutes and a GPU box; the cost of reading its record
follows its shape (how many requests, how many telemetry samples), which this reproduces.
The default is the soak that showed the problem: concurrency 64 at 3,545 tokens/s for 30
minutes, requests of 32 tokens (about 199,000 of them), 8 GPUs and the host sampled at 4 Hz,
the client's own sample once a second; about 30 MB compressed. The record is written as the
session writes it (one gzip member per half second of the run, the same ``encode``).

``soaktop attach`` on the finished record is timed too: it catches up on the whole record
(then stops at its ``session_end``), which is what a viewer attaching late to a long soak waits.

Each command runs as its own process (``soaktop.tui.cli.main`` under this Python), timed
from start to exit, with its peak RSS from the kernel (``wait4``); beside them the bare floor
any JSON-lines reader pays: decompress and ``json.loads`` every line. ``--baseline DIR`` runs
the same commands a second time on another copy of soaktop (a folder holding a ``soaktop``
package, e.g. ``git archive HEAD engine tui themes`` unpacked under ``DIR/soaktop``), so a
change is measured against the code before it on the same machine in the same run.

    python bench/long_record.py [--minutes 30] [--tokens-per-s 3545] [--tokens 32]
        [--concurrency 64] [--gpus 8] [--hz 4] [--repeat 1] [--keep PATH] [--baseline DIR]
        [--skip-replay] [--skip-attach]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Phase,
    RequestDone,
    SessionEnd,
    SessionStart,
    TelemetryStatus,
)
from soaktop.engine.records.format import GZIP_LEVEL, encode

WARMUP_NS = 2 * 10**9  # requests sent before this are the warm-up's
MEMBER_NS = 500_000_000  # the writer's half-second gzip members


def _requests(args: argparse.Namespace, rng: np.random.Generator) -> list[RequestDone]:
    """A closed loop of ``concurrency`` workers, each sending its next request as the last
    ends, with jittered TTFT and ITL sized so the system makes ``tokens_per_s``."""
    duration_ns = int(args.minutes * 60e9)
    per_request_s = args.concurrency * args.tokens / args.tokens_per_s
    itl_us = (per_request_s - 0.035) / (args.tokens - 1) * 1e6
    out: list[RequestDone] = []
    request_id = 0
    for worker in range(args.concurrency):
        t_ns = int(rng.integers(0, 10**7))
        while t_ns < duration_ns:
            ttft = int(rng.gamma(9.0, 35_000 / 9.0))
            gaps = np.maximum(rng.normal(itl_us, itl_us * 0.15, args.tokens - 1), 100)
            offsets = np.concatenate([[ttft], ttft + np.cumsum(gaps.astype(np.int64))])
            end_us = int(offsets[-1]) + 200
            out.append(RequestDone(
                t_ns=t_ns + end_us * 1000, worker_id=worker, request_id=request_id,
                phase_id=0 if t_ns < WARMUP_NS else 1, backend="openai", model="soak-model",
                sent_ns=t_ns, prompt_tokens=128, arrivals_us=tuple(offsets.tolist()),
                end_us=end_us, finish_reason="length", warmup=t_ns < WARMUP_NS,
                server_reported={"prompt_tokens": 128, "completion_tokens": args.tokens}))
            request_id += 1
            t_ns += end_us * 1000 + int(rng.integers(50_000, 300_000))
    return out


def _gpu_samples(args: argparse.Namespace, rng: np.random.Generator) -> list[GpuSample]:
    duration_ns, step = int(args.minutes * 60e9), int(1e9 / args.hz)
    out = []
    energy = [0] * args.gpus
    counters = [{"gpu_idle": 0, "sw_power_cap": 0, "hw_thermal_slowdown": 0}
                for _ in range(args.gpus)]
    for i, t_ns in enumerate(range(0, duration_ns, step)):
        warm = min(1.0, t_ns / duration_ns * 3)
        for gpu in range(args.gpus):
            power = 550 + 100 * warm + float(rng.normal(0, 15))
            energy[gpu] += int(power * step / 1e6)
            capped = i % 17 == 0
            if capped:
                counters[gpu]["sw_power_cap"] += step
            out.append(GpuSample(
                t_ns=t_ns, gpu_index=gpu, temperature_c=55 + 25 * warm + float(rng.normal(0, 1)),
                memory_temperature_c=60 + 20 * warm, slowdown_temperature_c=90.0,
                shutdown_temperature_c=95.0, sm_clock_mhz=1980 - 150 * warm,
                sm_clock_max_mhz=1980.0, memory_clock_mhz=2619.0, memory_clock_max_mhz=2619.0,
                power_w=power, power_limit_w=700.0, energy_mj=energy[gpu],
                gpu_utilization_percent=97.0, memory_utilization_percent=61.0,
                memory_used_bytes=70 * 2**30, memory_total_bytes=141 * 2**30,
                performance_state=0,
                clock_event_reasons=("sw_power_cap",) if capped else (),
                clock_event_counters_ns=dict(counters[gpu]),
                process_memory_bytes=68 * 2**30))
    return out


def _host_samples(args: argparse.Namespace, rng: np.random.Generator) -> list[HostSample]:
    duration_ns, step = int(args.minutes * 60e9), int(1e9 / args.hz)
    return [HostSample(
        t_ns=t_ns, cpu_percent=float(rng.uniform(10, 30)),
        cpu_per_core_percent=tuple(np.round(rng.uniform(0, 60, 32), 1).tolist()), load_1m=4.2,
        memory_used_bytes=200 * 2**30, memory_total_bytes=2048 * 2**30,
        soaktop_rss_bytes=90 * 2**20, soaktop_cpu_percent=40.0, cpu_temperature_c=52.0,
        cpu_frequency_mhz=2400.0) for t_ns in range(0, duration_ns, step)]


def _client_samples(args: argparse.Namespace, rng: np.random.Generator) -> list[ClientSample]:
    duration_ns = int(args.minutes * 60e9)
    return [ClientSample(
        t_ns=t_ns, in_flight=args.concurrency, tokens=int(args.tokens_per_s), interval_ns=10**9,
        loop_lag_p99_us=float(rng.uniform(100, 600)), send_lateness_p99_us=50.0,
        cpu_percent=40.0, loop_cpu_percent=30.0) for t_ns in range(10**9, duration_ns, 10**9)]


def write_record(path: Path, args: argparse.Namespace) -> dict[str, int]:
    """The synthetic record at ``path``; how many events of each kind it holds."""
    rng = np.random.default_rng(args.seed)
    duration_ns = int(args.minutes * 60e9)
    config = {"backend": "openai", "model": "soak-model", "concurrency": args.concurrency,
              "output_tokens": args.tokens, "input_tokens": 128, "telemetry": ["prom=URL"],
              "telemetry_hz": args.hz, "ramp": [], "slo": None}
    head: list = [SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config, {}, {"kind": "openai"})]
    head += [TelemetryStatus(0, "prom:URL", True, gpu_index=g, host="gpu-box")
             for g in range(args.gpus)]
    head += [Phase(0, 0, args.concurrency, "soak-model", "openai", "start", warmup=True),
             Phase(WARMUP_NS, 1, args.concurrency, "soak-model", "openai", "warm-up done")]
    requests = _requests(args, rng)
    body = (requests + _gpu_samples(args, rng) + _host_samples(args, rng)
            + _client_samples(args, rng))
    body.sort(key=lambda e: e.t_ns)
    end_ns = max(duration_ns, body[-1].t_ns)
    events = head + body + [SessionEnd(end_ns, "completed")]
    with open(path, "wb") as handle:
        member: list[str] = []
        member_end = MEMBER_NS
        for event in events:
            if event.t_ns >= member_end and member:
                handle.write(gzip.compress("".join(member).encode(), GZIP_LEVEL, mtime=0))
                member = []
                member_end = (event.t_ns // MEMBER_NS + 1) * MEMBER_NS
            member.append(json.dumps(encode(event), separators=(",", ":")) + "\n")
        handle.write(gzip.compress("".join(member).encode(), GZIP_LEVEL, mtime=0))
    return {"requests": len(requests), "tokens": sum(len(r.arrivals_us) for r in requests),
            "events": len(events)}


def decode_floor(path: Path) -> float:
    """Seconds to decompress and ``json.loads`` every line: any JSON-lines reader's floor."""
    t0 = time.perf_counter()
    with gzip.open(path, "rb") as handle:
        for line in handle:
            json.loads(line)
    return time.perf_counter() - t0


def run_command(argv: list[str], pythonpath: str | None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``soaktop ARGV`` run as a process of its own."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = "import sys; from soaktop.tui.cli import main; sys.exit(main())"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"soaktop {' '.join(argv)} failed ({proc.returncode}): {err[-500:]}")
    return wall, usage.ru_maxrss / 1024 * 1.048576  # KiB -> MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--tokens-per-s", type=float, default=3545.0)
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hz", type=float, default=4.0, help="GPU and host samples a second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command (median)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the record here and keep it (reused if it exists)")
    parser.add_argument("--baseline", default=None,
                        help="a folder holding another soaktop package: its figures beside")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-attach", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "soak.jsonl.gz"
        if not path.exists():
            t0 = time.perf_counter()
            shape = write_record(path, args)
            print(f"wrote {path}: {shape['requests']:,} requests, {shape['tokens']:,} tokens, "
                  f"{shape['events']:,} events, {path.stat().st_size / 1e6:.1f} MB "
                  f"({time.perf_counter() - t0:.0f} s)")
        floor = float(np.median([decode_floor(path) for _ in range(args.repeat)]))
        print(f"decode floor (decompress + json.loads of every line): {floor:.2f} s")
        commands = [("summary", ["summary", str(path)])]
        if not args.skip_replay:
            commands.append(("replay --speed max",
                             ["replay", str(path), "--speed", "max", "--headless"]))
        if not args.skip_attach:  # a finished record: attach catches up, then ends with it
            commands.append(("attach (catch-up)", ["attach", str(path), "--json"]))
        trees = [("this tree", None)]
        if args.baseline:
            trees.insert(0, ("baseline", args.baseline))
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, argv in commands:
            for _ in range(args.repeat):  # alternate the trees: noise hits both alike
                for tree, pythonpath in trees:
                    results.setdefault((name, tree), []).append(run_command(argv, pythonpath))
        for name, _ in commands:
            line = [f"{name:>20}:"]
            for tree, _ in trees:
                runs = results[(name, tree)]
                wall = float(np.median([w for w, _ in runs]))
                rss = max(r for _, r in runs)
                line.append(f"{tree} {wall:6.2f} s, {rss:5.0f} MB peak RSS "
                            f"({wall / floor:4.1f}x the floor)")
            if args.baseline:
                base = float(np.median([w for w, _ in results[(name, "baseline")]]))
                new = float(np.median([w for w, _ in results[(name, "this tree")]]))
                line.append(f"-> {base / new:.1f}x faster")
            print(" | ".join(line))


if __name__ == "__main__":
    main()
