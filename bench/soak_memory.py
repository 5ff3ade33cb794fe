"""Whether a long run holds flat memory (the target: at a high token rate, soaktop's RSS grows
less than 20 MB after warm-up over 10 minutes; nothing may grow per token without bound).

How, in one run:
- A loopback server in its own process (see :mod:`soaktop.engine.loopback`) is paced so that
  ``--concurrency`` (64) closed-loop streams of ``--output-tokens`` (128) come to
  ``--tokens-per-s`` (3,000) in total: each stream's ITL makes one request (TTFT, then a token
  per ITL) last ``concurrency * tokens / tokens_per_s`` seconds, with a few ms of jitter so the
  streams drift apart.
- ``soaktop run --headless --backend openai`` runs against it as a real process, as a soak
  would: recording to a ``.jsonl.gz`` in a temporary folder, with ``--telemetry host``, its
  status lines (every ``--status-every`` s) read from its stdout by a thread.
- Every ``--every-s`` (10) seconds from its start this bench reads soaktop's RSS (the process's
  own resident set, psutil; it has no children) and its USS (the pages only it holds, from
  ``/proc/PID/smaps``, where readable) and prints a row: time, RSS, RSS growth since the end
  of warm-up, USS, and the tokens received so far (``ok N`` of the latest status line times
  the output length: the loopback server sends exactly that many to every request).
- After ``--warmup-s`` (60: imports, connection pools, the first waves, the live windows
  filling) plus ``--minutes`` (10), soaktop gets SIGTERM (its record is closed and its summary
  printed) and the record is read once: the tokens soaktop itself counted after warm-up (its
  once-a-second ``client_sample`` events) and the failed requests.

Prints at the end: RSS at the end of warm-up and at the end, the growth in between (and the
peak's), growth per million tokens, the least-squares slope of RSS over the post-warm-up
samples in MiB/hour and over their second half (whether the growth levels off), the token
rate after warm-up, and a verdict against the 20 MB (decimal, 19.1 MiB) target, taken on the
peak: RSS must never stand 20 MB above its warm-up level. Headless only: the dashboard's
memory (Textual's) is not measured here.

``soak()`` does all of it and returns the samples and figures; the slow test
(``tests/tui/test_soak_memory.py``) calls it, so the test and this bench cannot drift apart.

    python bench/soak_memory.py [--concurrency 64] [--tokens-per-s 3000] [--minutes 10]
                                [--every-s 10] [--warmup-s 60] [--output-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from soaktop.engine.events import ClientSample, RequestDone, SessionStart
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.records.format import RecordReader

ROOT = Path(__file__).resolve().parent.parent

TARGET_BYTES = 20e6  # the target: RSS less than 20 MB above its warm-up level
MIB = 2**20
TTFT_MS = 20.0
OK = re.compile(r"\| ok (\d+) \| errors (\d+)")


class SoakFailed(Exception):
    """The run could not be measured; the message is one line."""


@dataclass
class MemorySample:
    t_s: float  # since soaktop was started
    rss: int  # bytes
    uss: int | None  # bytes; None where /proc/PID/smaps cannot be read
    tokens: int | None  # received so far, from the latest status line; None before the first


@dataclass
class SoakResult:
    concurrency: int
    tokens_per_s_asked: float
    warmup_s: float
    samples: list[MemorySample]
    warm: MemorySample  # the sample at the end of warm-up
    tokens_after_warmup: int  # soaktop's own count (client samples) after warm-up
    seconds_after_warmup: float  # what those client samples span
    requests_ok: int
    requests_failed: int
    stopped_by: str
    exit_code: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def after(self) -> list[MemorySample]:
        """The samples from the end of warm-up on (that one included)."""
        return [s for s in self.samples if s.t_s >= self.warm.t_s]

    @property
    def end(self) -> MemorySample:
        return self.samples[-1]

    @property
    def growth(self) -> int:
        """RSS bytes at the end minus at the end of warm-up."""
        return self.end.rss - self.warm.rss

    @property
    def peak_growth(self) -> int:
        """The highest RSS after warm-up minus RSS at the end of warm-up."""
        return max(s.rss for s in self.after) - self.warm.rss

    @property
    def uss_growth(self) -> int | None:
        if self.end.uss is None or self.warm.uss is None:
            return None
        return self.end.uss - self.warm.uss

    @property
    def tokens_per_s(self) -> float:
        """Tokens/s soaktop received after warm-up."""
        if not self.seconds_after_warmup:
            return 0.0
        return self.tokens_after_warmup / self.seconds_after_warmup

    @property
    def mib_per_million_tokens(self) -> float:
        if not self.tokens_after_warmup:
            return float("nan")
        return self.growth / MIB / (self.tokens_after_warmup / 1e6)

    @property
    def slope_mib_per_h(self) -> float:
        """Least-squares slope of RSS over the post-warm-up samples."""
        return _slope(self.after)

    @property
    def late_slope_mib_per_h(self) -> float:
        """The same over the second half of them: whether the growth levels off."""
        after = self.after
        return _slope(after[len(after) // 2:])

    @property
    def flat(self) -> bool:
        return self.peak_growth < TARGET_BYTES


def _slope(samples: list[MemorySample]) -> float:
    """Least-squares slope of RSS against time, MiB/hour."""
    if len(samples) < 2:
        return float("nan")
    fit = statistics.linear_regression([s.t_s / 3600 for s in samples],
                                       [s.rss / MIB for s in samples])
    return fit.slope


def pace(concurrency: int, tokens_per_s: float, output_tokens: int) -> Schedule:
    """A schedule whose closed loop at ``concurrency`` comes to ``tokens_per_s`` in total."""
    request_s = concurrency * output_tokens / tokens_per_s
    itl_ms = (request_s * 1000 - TTFT_MS) / max(output_tokens - 1, 1)
    if itl_ms <= 0:
        raise ValueError("--tokens-per-s is too high for these streams (ITL under 0)")
    return Schedule(ttft_ms=TTFT_MS, itl_ms=itl_ms, jitter_ms=min(5.0, itl_ms / 2),
                    tokens=output_tokens, model="loopback")


def command(url: str, concurrency: int, output_tokens: int, run_for_s: float, record: Path,
            status_every_s: float) -> list[str]:
    return [sys.executable, "-m", "soaktop.tui.cli", "run", "--headless", "--backend", "openai",
            "--url", url, "--model", "loopback", "--concurrency", str(concurrency),
            "--duration", f"{run_for_s:g}s", "--output-tokens", str(output_tokens),
            "--record", str(record), "--telemetry", "host",
            "--status-every", f"{status_every_s:g}"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class StatusReader:
    """Drains soaktop's stdout in a thread; keeps the latest ``ok N`` and ``errors N``."""

    def __init__(self, stream) -> None:
        self.ok: int | None = None
        self.errors: int | None = None
        self.lines = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._drain, name="soaktop-stdout", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for line in self._stream:
            self.lines += 1
            found = OK.search(line)
            if found:
                self.ok, self.errors = int(found.group(1)), int(found.group(2))

    def join(self) -> None:
        self._thread.join(timeout=10)


def rss_of(process: psutil.Process) -> tuple[int, int | None]:
    try:
        full = process.memory_full_info()
        return full.rss, getattr(full, "uss", None)
    except psutil.AccessDenied:
        return process.memory_info().rss, None


def stop(proc: subprocess.Popen) -> str:
    """End soaktop as a user would (SIGTERM, then SIGINT); killed if it will not go."""
    for name, signum in (("SIGTERM", signal.SIGTERM), ("SIGINT", signal.SIGINT)):
        proc.send_signal(signum)
        try:
            proc.wait(timeout=60)  # it summarises the whole run before it exits
            return name
        except subprocess.TimeoutExpired:
            continue
    os.killpg(proc.pid, signal.SIGKILL)  # its own session and group: see Popen below
    proc.wait(timeout=10)
    return "SIGKILL (it ignored SIGTERM and SIGINT for 60 s each)"


def read_record(record: Path, warm_wall: float, end_wall: float
                ) -> tuple[int, float, int, int, list[str]]:
    """Tokens and seconds of the client samples wholly inside [warm_wall, end_wall], the
    requests that succeeded and failed (those cut off by the end not counted), and the
    reader's warnings."""
    reader = RecordReader(record)
    origin, tokens, interval_ns, ok, failed = None, 0, 0, 0, 0
    for event in reader.events():
        if isinstance(event, SessionStart):
            origin = datetime.fromisoformat(event.wall_start).timestamp()
        elif isinstance(event, ClientSample) and origin is not None:
            end = origin + event.t_ns / 1e9
            if end - event.interval_ns / 1e9 >= warm_wall and end <= end_wall:
                tokens += event.tokens
                interval_ns += event.interval_ns
        elif isinstance(event, RequestDone):
            if event.ok:
                ok += 1
            elif event.finish_reason != "cancelled":  # not those cut off by the SIGTERM
                failed += 1
    return tokens, interval_ns / 1e9, ok, failed, reader.warnings


def sample_times(warmup_s: float, total_s: float, every_s: float) -> list[float]:
    """Every ``every_s`` from 0, plus the end of warm-up and the end."""
    times = {warmup_s, total_s}
    k = 0
    while k * every_s < total_s:
        times.add(k * every_s)
        k += 1
    return sorted(times)


def _row(s: MemorySample, warm_rss: int | None) -> str:
    growth = "" if warm_rss is None else f"{(s.rss - warm_rss) / MIB:+8.2f}"
    uss = "n/a" if s.uss is None else f"{s.uss / MIB:.2f}"
    tokens = "n/a" if s.tokens is None else f"{s.tokens:,}"
    return f"{s.t_s:>7.0f}  {s.rss / MIB:>8.2f}  {growth:>8}  {uss:>8}  {tokens:>12}"


HEADER = "   t (s)   RSS MiB    growth   USS MiB        tokens"


def soak(concurrency: int = 64, tokens_per_s: float = 3000.0, minutes: float = 10.0,
         every_s: float = 10.0, warmup_s: float = 60.0, output_tokens: int = 128,
         status_every_s: float = 5.0, report: Callable[[str], None] | None = print
         ) -> SoakResult:
    """The whole measurement (see the module docstring); ``report`` gets each line as it
    comes (the command, the table's header and rows). Raises SoakFailed if soaktop exits
    before the end or never prints a status line."""
    say = report or (lambda line: None)
    schedule = pace(concurrency, tokens_per_s, output_tokens)
    total_s = warmup_s + minutes * 60
    times = sample_times(warmup_s, total_s, every_s)
    samples: list[MemorySample] = []
    warm: MemorySample | None = None
    with spawn(schedule) as url, tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "soak.jsonl.gz"
        # it is stopped by a signal at total_s; the margin only keeps it from ending first
        cmd = command(url, concurrency, output_tokens, total_s + 300, record, status_every_s)
        say(f"loopback: {concurrency} streams x {output_tokens} tokens, TTFT "
            f"{schedule.ttft_ms:g} ms, ITL {schedule.itl_ms:.2f} ms +-{schedule.jitter_ms:.1f} "
            f"ms -> paced for {tokens_per_s:,.0f} tokens/s")
        say(f"soaktop: {shlex.join(cmd)}")
        say(f"warm-up {warmup_s:g} s, then {minutes:g} min; a sample every {every_s:g} s")
        say(HEADER)
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                    cwd=ROOT, env=child_env(), start_new_session=True)
            started, started_wall = time.perf_counter(), time.time()
            warm_wall = end_wall = started_wall
            status = StatusReader(proc.stdout)
            stopped_by = "it exited by itself"
            try:
                soaktop = psutil.Process(proc.pid)
                for t in times:
                    while (now := time.perf_counter() - started) < t:
                        if proc.poll() is not None:
                            stderr.seek(0)
                            said = stderr.read().decode(errors="replace").strip().splitlines()
                            raise SoakFailed(
                                f"soaktop exited with code {proc.returncode} after {now:.0f} "
                                f"s: {said[-1] if said else 'it said nothing'}")
                        time.sleep(min(0.2, t - now))
                    rss, uss = rss_of(soaktop)
                    tokens = None if status.ok is None else status.ok * output_tokens
                    sample = MemorySample(t_s=now, rss=rss, uss=uss, tokens=tokens)
                    samples.append(sample)
                    if t == warmup_s:
                        warm, warm_wall = sample, time.time()
                    say(_row(sample, warm.rss if warm else None))
                end_wall = time.time()
                if status.ok is None:
                    raise SoakFailed(f"soaktop printed no status line in {total_s:g} s "
                                     f"({status.lines} lines on stdout)")
                stopped_by = stop(proc)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                status.join()
                proc.stdout.close()
        tokens, seconds, ok, failed, warnings = read_record(record, warm_wall, end_wall)
    assert warm is not None  # the warm-up's end is one of the sample times
    return SoakResult(
        concurrency=concurrency, tokens_per_s_asked=tokens_per_s, warmup_s=warmup_s,
        samples=samples, warm=warm, tokens_after_warmup=tokens, seconds_after_warmup=seconds,
        requests_ok=ok, requests_failed=failed, stopped_by=stopped_by,
        exit_code=proc.returncode, warnings=warnings)


def verdict(result: SoakResult) -> list[str]:
    r = result
    minutes = (r.end.t_s - r.warm.t_s) / 60
    uss = "" if r.uss_growth is None else (
        f"; USS {r.warm.uss / MIB:.2f} -> {r.end.uss / MIB:.2f} MiB "
        f"({r.uss_growth / MIB:+.2f} MiB)")
    lines = [
        f"RSS at the end of warm-up ({r.warm.t_s:.0f} s): {r.warm.rss / MIB:.2f} MiB; at the "
        f"end ({r.end.t_s:.0f} s): {r.end.rss / MIB:.2f} MiB; growth {r.growth / MIB:+.2f} "
        f"MiB over {minutes:.1f} min (peak {r.peak_growth / MIB:+.2f} MiB){uss}",
        f"after warm-up: {r.tokens_after_warmup:,} tokens at {r.tokens_per_s:,.0f} tokens/s "
        f"(asked {r.tokens_per_s_asked:,.0f}); {r.mib_per_million_tokens:+.2f} MiB per "
        f"million tokens; slope {r.slope_mib_per_h:+.2f} MiB/hour (least squares, "
        f"{len(r.after)} samples; over their second half {r.late_slope_mib_per_h:+.2f})",
        f"requests: {r.requests_ok:,} ok, {r.requests_failed:,} failed; soaktop stopped by "
        f"{r.stopped_by} (exit {r.exit_code})",
    ]
    if r.warnings:
        lines.append(f"record warnings: {len(r.warnings)}, the first: {r.warnings[0]}")
    if r.tokens_per_s < 0.9 * r.tokens_per_s_asked:
        lines.append(f"note: {r.tokens_per_s:,.0f} tokens/s is "
                     f"{r.tokens_per_s / r.tokens_per_s_asked:.0%} of the rate asked: the "
                     f"per-token path was exercised less than intended")
    mark = "FLAT" if r.flat else "GROWS"
    lines.append(f"{mark}: peak RSS growth after warm-up {r.peak_growth / 1e6:.1f} MB "
                 f"(target < {TARGET_BYTES / 1e6:.0f} MB over {minutes:.1f} min; end - "
                 f"warm-up {r.growth / 1e6:+.1f} MB)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens-per-s", type=float, default=3000.0)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="measured after warm-up (default 10)")
    parser.add_argument("--every-s", type=float, default=10.0, help="sampling interval")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds from soaktop's start left out (default 60)")
    parser.add_argument("--status-every", type=float, default=5.0,
                        help="soaktop's --status-every, seconds")
    args = parser.parse_args()
    if args.every_s <= 0 or args.minutes <= 0 or args.warmup_s < 0:
        parser.error("--every-s and --minutes must be positive, --warmup-s not negative")

    print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} "
          f"GiB; python {sys.version.split()[0]}")

    def quit_on_sigterm(signum, frame):  # so the finally blocks in soak() run
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, quit_on_sigterm)
    try:
        result = soak(args.concurrency, args.tokens_per_s, args.minutes, args.every_s,
                      args.warmup_s, args.output_tokens, args.status_every, print)
    except (SoakFailed, ValueError) as error:
        print(f"FAILED: {error}")
        return 1
    except KeyboardInterrupt:
        print("FAILED: interrupted")
        return 1
    for line in verdict(result):
        print(line)
    return 0 if result.flat else 1


if __name__ == "__main__":
    sys.exit(main())
