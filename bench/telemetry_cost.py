"""What telemetry costs: one full NVML sample per GPU, and each sampler's share of a core.

Measured side by side in one run, on this machine:
- NVML: the wall time of one full sample of each GPU (every field soaktop reads, including the
  field-value counters and the process list), median and p99 over many samples; then the
  sampler thread's CPU time at ``--hz`` (default 10) as a share of one core, read from the
  kernel's per-thread accounting (psutil), not estimated. For comparison, the same fields
  from one ``nvidia-smi --query-gpu`` call, the way shell scripts usually poll them.
- host: the same for the psutil sampler.
- prom: the CPU cost of parsing one scrape of the committed DCGM exporter and vLLM /metrics
  texts (the HTTP round trip is the remote's time, not ours), and the share of a core at the
  1 Hz a Prometheus source is polled at.

    python bench/telemetry_cost.py [--hz 10] [--seconds 10] [--samples 200]

On a machine without an NVIDIA GPU the NVML part says so and the rest still runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from soaktop.engine.telemetry.host import HostSource
from soaktop.engine.telemetry.nvml import NvmlSource
from soaktop.engine.telemetry.prometheus import parse_metrics
from soaktop.engine.telemetry.sampler import Sampler

ROOT = Path(__file__).resolve().parent.parent


def clock() -> int:
    return time.perf_counter_ns()


def timed(fn, n: int) -> np.ndarray:
    """Wall time of ``n`` calls of ``fn``, in microseconds."""
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - t0) / 1e3
    return out


def thread_cpu_s(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return 0.0


def sampler_share(source, hz: float, seconds: float) -> tuple[float, int]:
    """CPU seconds per wall second of a real Sampler thread polling ``source`` at ``hz``."""
    delivered = []
    sampler = Sampler(source, hz, clock, delivered.extend)
    sampler.start()
    time.sleep(0.3)  # past open(), which is a one-off
    native_id = sampler._thread.native_id
    cpu0, wall0, n0 = thread_cpu_s(native_id), time.perf_counter(), len(delivered)
    time.sleep(seconds)
    cpu1, wall1, n1 = thread_cpu_s(native_id), time.perf_counter(), len(delivered)
    sampler.stop()
    return (cpu1 - cpu0) / (wall1 - wall0), n1 - n0


def fmt(us: np.ndarray) -> str:
    return f"median {np.median(us):8.1f} us   p99 {np.percentile(us, 99):8.1f} us"


def bench_nvml(args: argparse.Namespace) -> None:
    source = NvmlSource(watch_pids={os.getpid()})
    events = source.open(clock)
    gpus = source._gpus
    if not gpus:
        reason = next((e.reason for e in events if getattr(e, "reason", None)), "no GPU")
        print(f"nvml : skipped: {reason}")
        return
    for gpu in gpus:
        name = next((e.info.get("name") for e in events
                     if getattr(e, "gpu_index", None) == gpu.index and e.info), "?")
        us = timed(lambda g=gpu: source._read(g, clock), args.samples)
        print(f"nvml : one full sample of GPU {gpu.index} ({name}): {fmt(us)}")
    all_us = timed(lambda: source.sample(clock), args.samples)
    print(f"nvml : one sample of all {len(gpus)} GPU(s):        {fmt(all_us)}")
    source.close()
    share, n = sampler_share(NvmlSource(watch_pids={os.getpid()}), args.hz, args.seconds)
    print(f"nvml : sampler at {args.hz:g} Hz: {n} samples in {args.seconds:g} s, "
          f"{share * 100:.2f}% of one core")
    smi = shutil.which("nvidia-smi")
    if smi:
        query = ("temperature.gpu,clocks.sm,clocks.max.sm,clocks.mem,power.draw,"
                 "enforced.power.limit,utilization.gpu,utilization.memory,memory.used,"
                 "memory.total,pstate,clocks_event_reasons.active")
        cmd = [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"]
        smi_us = timed(lambda: subprocess.run(cmd, capture_output=True, check=False), 20)
        ratio = np.median(smi_us) / np.median(all_us)
        print(f"peer : nvidia-smi --query-gpu (fewer fields), one call: {fmt(smi_us)}"
              f"  -> soaktop's sample is {ratio:.0f}x cheaper")


def bench_host(args: argparse.Namespace) -> None:
    source = HostSource(watch_pid=os.getppid())
    source.open(clock)
    us = timed(lambda: source.sample(clock), args.samples)
    print(f"host : one sample (CPU per core, memory, soaktop and a watched PID): {fmt(us)}")
    share, n = sampler_share(HostSource(watch_pid=os.getppid()), args.hz, args.seconds)
    print(f"host : sampler at {args.hz:g} Hz: {n} samples in {args.seconds:g} s, "
          f"{share * 100:.2f}% of one core")


def bench_prom(args: argparse.Namespace) -> None:
    data = ROOT / "tests" / "engine" / "data"
    for name in ("dcgm_exporter.txt", "vllm_metrics.txt"):
        text = (data / name).read_text()
        us = timed(lambda t=text: parse_metrics(t, 0, "http://x/metrics", "x"), 50)
        print(f"prom : parse {name} ({len(text) / 1024:.0f} KiB): {fmt(us)}"
              f"  = {np.median(us) / 1e4:.2f}% of a core at 1 Hz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {psutil.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"{threading.active_count()} threads")
    bench_nvml(args)
    bench_host(args)
    bench_prom(args)


if __name__ == "__main__":
    main()
