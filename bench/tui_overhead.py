"""What the dashboard costs over a headless run (the target: with 64 streams at 3,000 tokens/s
the TUI may cost at most 25% of one core more than ``--headless``).

Measured side by side in one run, against one loopback server process:
- The loopback server (its own process, see :mod:`soaktop.engine.loopback`) is paced so that
  ``--concurrency`` closed-loop streams of ``--output-tokens`` tokens come to ``--tokens-per-s``
  in total: each stream's ITL is what makes one request (TTFT, then a token per ITL) last
  ``concurrency * tokens / tokens_per_s`` seconds, with a few ms of jitter so streams drift apart.
- ``soaktop run --backend openai`` is started twice, the same way but for the mode: once with
  ``--headless``, once with the dashboard at ``--fps``. Each gets a real terminal: a
  pseudo-terminal of ``--size`` (120x40 by default) with ``TERM=xterm-256color`` as its stdin,
  stdout and stderr (and controlling terminal), whose master side a thread drains
  continuously, so neither mode ever blocks on a full terminal; the bytes it read are
  counted, as an SSH session would carry them.
  Both record (``.jsonl.gz``) with host telemetry, as a soak would.
- After ``--warmup`` seconds (imports, the app's start, the first wave of requests) the CPU time
  (user + system, the kernel's accounting via psutil, children included) of soaktop, of the
  loopback server and of the whole machine is read, and again ``--seconds`` later; then soaktop
  gets SIGTERM (its record is closed) and the next run starts. Prints, for each run, soaktop's
  CPU as a share of one core over that window, the tokens/s soaktop itself counted in the same
  window (its once-a-second ``client_sample`` events in the record; a dashboard that slowed
  the client down would show here) beside the whole run's figure from ``soaktop summary
  --json``, the server's CPU, every other process's CPU (this bench's terminal drain included;
  a busy machine makes the figures noisy), and the terminal's bytes/s (what an SSH session
  would carry). Then the dashboard's extra CPU in % of one core (the issue's figure) and the
  TUI/headless ratio, medians over ``--repeat`` alternations (headless, tui, headless, ...).

If the dashboard does not come up (soaktop exits at once, prints a usage error, or never
switches the terminal to its full screen within the warm-up), that is said in one line and the
bench exits 1 after printing the headless figures. ``--modes headless`` measures headless only.

``--gpus N`` makes the loopback serve N simulated GPUs as a DCGM exporter at ``/metrics``
(:mod:`soaktop.engine.loopback.dcgm`, warmed by the load it serves, with a thermal time
constant of ``--gpu-tau-s``, short by default so that the hot GPU throttles within the first
run) and soaktop scrapes it (``--telemetry host,prom=URL/metrics``): the GPU panel's cost is
in the figures. ``--size COLSxROWS`` sets the terminal.

``--baseline DIR`` adds the mode ``base``: the same dashboard run from another copy of soaktop,
e.g. ``git archive COMMIT | tar -x -C DIR``, against the same loopback in the same run, so
its CPU and terminal bytes/s sit beside this tree's. Either layout of the tree works: the
namespace one (``engine/``, ``tui/``, ``themes/`` installed as ``soaktop.*``) is run through a
temporary ``soaktop`` package of links to DIR's folders, put first on ``PYTHONPATH`` (ahead
of this tree's editable install), and the older top-level one as ``python -m tui.cli`` with
``PYTHONPATH=DIR``. A baseline whose ``run --help`` does not offer ``prom=`` gets ``host``
telemetry only, and the bench says so. Records from either are summarised by this tree.

    python bench/tui_overhead.py [--concurrency 64] [--tokens-per-s 3000] [--seconds 30]
                                 [--fps 4] [--repeat 1] [--warmup 5] [--modes headless,tui]
                                 [--gpus 8] [--gpu-tau-s 10] [--size 120x40] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from soaktop.engine.events import ClientSample, SessionStart
from soaktop.engine.loopback.dcgm import GpuModel
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.records.format import RecordReader

ROOT = Path(__file__).resolve().parent.parent

TTFT_MS = 20.0
ALT_SCREEN = b"\x1b[?1049h"  # what a full-screen app (Textual included) writes first
ANSI = re.compile(r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")

# soaktop processes this bench started and has not yet seen exit, killed on any way out
_LIVE: list[subprocess.Popen] = []


class BenchFailed(Exception):
    """A run could not be measured; the message is one line."""


class Terminal:
    """A pseudo-terminal of ``columns`` x ``rows`` whose master side a thread drains."""

    def __init__(self, columns: int, rows: int) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.bytes_read = 0
        self.full_screen = False
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._drain, name="pty-drain", daemon=True)

    def start(self) -> None:
        """Drain from now on; call once the child holds the slave side."""
        os.close(self.slave)
        self.slave = -1
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the slave side has closed it
                return
            if not data:
                return
            self.bytes_read += len(data)
            if not self.full_screen and ALT_SCREEN in self._tail[-16:] + data:
                self.full_screen = True
            self._tail += data
            del self._tail[:-8192]

    def last_line(self) -> str:
        """The last line of text the child wrote, escape sequences removed."""
        text = ANSI.sub("", bytes(self._tail).decode(errors="replace"))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:200] if lines else "(nothing)"

    def close(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        os.close(self.master)


def _take_terminal() -> None:
    """In the child, after setsid: make its stdin (the pty slave) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def cpu_s(process: psutil.Process) -> float:
    """User + system seconds of ``process`` and of its children (live and reaped)."""
    try:
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return float("nan")


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass
class Sample:
    wall: float  # time.time(), to place the window on the record's clock
    mono: float
    soaktop_s: float
    server_s: float
    machine_s: float
    terminal_bytes: int

    @classmethod
    def take(cls, soaktop: psutil.Process, server: psutil.Process,
             terminal: Terminal) -> Sample:
        return cls(time.time(), time.perf_counter(), cpu_s(soaktop), cpu_s(server),
                   machine_busy_s(), terminal.bytes_read)


@dataclass
class Measured:
    mode: str
    seconds: float
    soaktop_core: float  # CPU seconds per wall second: 1.0 is one core
    server_core: float
    machine_busy: float  # fraction of all cores
    terminal_bps: float
    window_tokens_per_s: float
    run_tokens_per_s: float
    requests_ok: int
    requests_failed: int
    exit_code: int | None
    stopped_by: str


@dataclass
class Baseline:
    """Another copy of soaktop to run: how to start its ``soaktop`` and what it supports."""

    tree: Path
    module: str  # what ``python -m`` runs
    pythonpath: str  # put first on PYTHONPATH
    prom: bool  # its ``run`` accepts --telemetry prom=URL
    commit: str


def baseline(tree: Path, scratch: Path) -> Baseline:
    """How to run the soaktop in ``tree``, in either layout (see the module's docstring)."""
    tree = tree.resolve()
    cli = tree / "tui" / "cli.py"
    if not cli.is_file():
        raise SystemExit(f"bench: --baseline {tree}: no tui/cli.py there")
    if "soaktop." in cli.read_text():  # the namespace layout: soaktop.tui imports
        package = scratch / "baseline-path" / "soaktop"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")  # a regular package: found before the
        for name in ("engine", "tui", "themes"):  # editable install's finder is asked
            if (tree / name).is_dir():
                (package / name).symlink_to(tree / name)
        module, path = "soaktop.tui.cli", str(package.parent)
    else:
        module, path = "tui.cli", str(tree)
    env = {**child_env(80, 24), "PYTHONPATH": path}
    probe = subprocess.run(
        [sys.executable, "-c", f"import os, {module.rpartition('.')[0]} as m; "
                          "print(os.path.realpath(m.__file__))"],
        capture_output=True, text=True, env=env, cwd=tree, timeout=60)
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(tree)):
        said = (probe.stderr.strip().splitlines() or [probe.stdout.strip()])[-1]
        raise SystemExit(f"bench: --baseline {tree}: {module} does not load from there: {said}")
    helped = subprocess.run([sys.executable, "-m", module, "run", "--help"], capture_output=True,
                            text=True, env=env, cwd=tree, timeout=60)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return Baseline(tree, module, path, "prom=" in helped.stdout, commit or tree.name)


def command(args: argparse.Namespace, mode: str, url: str, record: Path) -> list[str]:
    run_for = args.warmup + args.seconds + 120  # it is stopped by a signal long before
    base = mode.startswith("base")
    telemetry = "host"
    if args.gpus and (not base or args.baseline.prom):
        telemetry += f",prom={url}/metrics"
    module = args.baseline.module if base else "soaktop.tui.cli"
    cmd = [sys.executable, "-m", module, "run", "--backend", "openai", "--url", url,
           "--model", "loopback", "--concurrency", str(args.concurrency),
           "--duration", f"{run_for:g}s", "--output-tokens", str(args.output_tokens),
           "--record", str(record), "--telemetry", telemetry]
    headless = mode in ("headless", "base-headless")
    return cmd + (["--headless"] if headless else ["--fps", f"{args.fps:g}"])


def mode_env(args: argparse.Namespace, mode: str) -> dict[str, str]:
    env = child_env(args.columns, args.rows)
    if mode.startswith("base"):
        env["PYTHONPATH"] = os.pathsep.join(
            [args.baseline.pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    return env


def child_env(columns: int, rows: int) -> dict[str, str]:
    env = dict(os.environ)
    env["TERM"] = "xterm-256color"
    env["COLUMNS"], env["LINES"] = str(columns), str(rows)
    for name in ("NO_COLOR", "TEXTUAL"):  # as a user's shell would have it, no dev tooling
        env.pop(name, None)
    return env


def wait_running(proc: subprocess.Popen, seconds: float, terminal: Terminal, mode: str) -> None:
    """Sleep ``seconds`` while watching that soaktop stays up; BenchFailed if it exits."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)  # let the drain thread read its last words
            what = ("the headless run failed" if mode.endswith("headless")
                    else "the dashboard did not come up")
            raise BenchFailed(f"{mode}: {what}: soaktop exited with code {proc.returncode}: "
                              f"{terminal.last_line()}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, terminal: Terminal, mode: str) -> str:
    """End soaktop the way a user would; returns how it went. Killed if it will not go."""
    steps: list[tuple[str, object]] = [("SIGTERM", signal.SIGTERM)]
    if not mode.endswith("headless"):
        steps.append(("q then y", b"qy"))
    steps.append(("SIGINT", signal.SIGINT))
    for name, how in steps:
        if isinstance(how, bytes):
            for key in how:
                os.write(terminal.master, bytes([key]))
                time.sleep(0.3)
        else:
            proc.send_signal(how)
        try:
            proc.wait(timeout=20)
            return name
        except subprocess.TimeoutExpired:
            continue
    os.killpg(proc.pid, signal.SIGKILL)  # its own session and group: see Popen below
    proc.wait(timeout=10)
    return "SIGKILL (it ignored SIGTERM, q y and SIGINT for 20 s each)"


def summary_json(record: Path) -> dict:
    cmd = [sys.executable, "-m", "soaktop.tui.cli", "summary", str(record), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=child_env(80, 24))
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchFailed(f"soaktop summary {record.name} failed: {said}")
    return json.loads(done.stdout)


def window_rate(record: Path, t0_wall: float, t1_wall: float) -> float:
    """Tokens/s soaktop counted in the window: its client samples that lie wholly inside it."""
    origin, tokens, interval_ns = None, 0, 0
    for event in RecordReader(record).events():
        if isinstance(event, SessionStart):
            origin = datetime.fromisoformat(event.wall_start).timestamp()
        elif isinstance(event, ClientSample) and origin is not None:
            end = origin + event.t_ns / 1e9
            if end - event.interval_ns / 1e9 >= t0_wall and end <= t1_wall:
                tokens += event.tokens
                interval_ns += event.interval_ns
    return tokens / (interval_ns / 1e9) if interval_ns else float("nan")


def measure(args: argparse.Namespace, mode: str, url: str, server: psutil.Process,
            record: Path) -> Measured:
    cmd = command(args, mode, url, record)
    terminal = Terminal(args.columns, args.rows)
    proc = None
    try:
        cwd = args.baseline.tree if mode.startswith("base") else ROOT
        proc = subprocess.Popen(cmd, stdin=terminal.slave, stdout=terminal.slave,
                                stderr=terminal.slave, cwd=cwd, env=mode_env(args, mode),
                                start_new_session=True, preexec_fn=_take_terminal)
        _LIVE.append(proc)
        terminal.start()
        soaktop = psutil.Process(proc.pid)
        wait_running(proc, args.warmup, terminal, mode)
        if not mode.endswith("headless") and not terminal.full_screen:
            raise BenchFailed(
                f"{mode}: the dashboard did not come up: no full-screen output within "
                f"{args.warmup:g} s (it printed: {terminal.last_line()[:100]})")
        first = Sample.take(soaktop, server, terminal)
        wait_running(proc, args.seconds, terminal, mode)
        last = Sample.take(soaktop, server, terminal)
        stopped_by = stop(proc, terminal, mode)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc in _LIVE:
            _LIVE.remove(proc)
        terminal.close()
    wall = last.mono - first.mono
    result = summary_json(record)
    return Measured(
        mode=mode,
        seconds=wall,
        soaktop_core=(last.soaktop_s - first.soaktop_s) / wall,
        server_core=(last.server_s - first.server_s) / wall,
        machine_busy=(last.machine_s - first.machine_s) / wall / psutil.cpu_count(),
        terminal_bps=(last.terminal_bytes - first.terminal_bytes) / wall,
        window_tokens_per_s=window_rate(record, first.wall, last.wall),
        run_tokens_per_s=result.get("output_tokens_per_s") or 0.0,
        requests_ok=result.get("requests_ok", 0),
        requests_failed=result.get("requests_failed", 0),
        exit_code=proc.returncode,
        stopped_by=stopped_by,
    )


def pace(args: argparse.Namespace) -> Schedule:
    """A schedule whose closed loop at ``concurrency`` comes to ``tokens_per_s`` in total."""
    request_s = args.concurrency * args.output_tokens / args.tokens_per_s
    itl_ms = (request_s * 1000 - TTFT_MS) / max(args.output_tokens - 1, 1)
    if itl_ms <= 0:
        raise SystemExit("bench: --tokens-per-s is too high for these streams (ITL under 0)")
    return Schedule(ttft_ms=TTFT_MS, itl_ms=itl_ms, jitter_ms=min(5.0, itl_ms / 2),
                    tokens=args.output_tokens, model="loopback")


def server_process(url: str) -> psutil.Process:
    port = url.rsplit(":", 1)[-1].strip("/")
    for child in psutil.Process().children():
        try:
            if "soaktop.engine.loopback" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise SystemExit(f"bench: cannot find the loopback server process (port {port})")


def others(m: Measured) -> float:
    """Every other process's CPU in the window (this bench's terminal drain included), in cores."""
    return max(m.machine_busy * psutil.cpu_count() - m.soaktop_core - m.server_core, 0.0)


def row(run: int, m: Measured) -> str:
    failed = f", {m.requests_failed} failed" if m.requests_failed else ""
    code = f" (exit {m.exit_code})" if m.exit_code else ""
    return (f"{run:>3}  {m.mode:<13} {m.soaktop_core * 100:>6.1f}%   "
            f"{m.window_tokens_per_s:>7,.0f} / {m.run_tokens_per_s:>7,.0f}   "
            f"{m.server_core * 100:>6.1f}%   {others(m) * 100:>5.1f}%   "
            f"{m.terminal_bps:>9,.0f}   {m.requests_ok:,} ok{failed}; {m.stopped_by}{code}")


def verdict(args: argparse.Namespace, runs: list[Measured]) -> None:
    def median(mode: str, field: str) -> float | None:
        values = [getattr(m, field) for m in runs if m.mode == mode]
        return statistics.median(values) if values else None

    heading = "medians" if args.repeat > 1 else "result"
    for mode in MODES:
        core = median(mode, "soaktop_core")
        if core is None:
            continue
        rate = median(mode, "window_tokens_per_s")
        print(f"{heading}: {mode:<13} soaktop {core * 100:.1f}% of one core at "
              f"{rate:,.0f} tokens/s; server {median(mode, 'server_core') * 100:.1f}%; "
              f"terminal {median(mode, 'terminal_bps'):,.0f} B/s")
        if rate < 0.9 * args.tokens_per_s:
            server = median(mode, "server_core")
            busy = median(mode, "machine_busy")
            if server > 0.9:
                why = "the loopback server, one Python process, is CPU-bound"
            elif busy > 0.9:
                why = f"the machine's {psutil.cpu_count()} cores are saturated"
            else:
                why = "neither the server nor the machine is saturated: the client fell behind"
            print(f"note: {mode}: {rate:,.0f} tokens/s is {rate / args.tokens_per_s:.0%} of "
                  f"the {args.tokens_per_s:,.0f} asked: {why} (server "
                  f"{server * 100:.0f}% of a core, machine {busy * 100:.0f}% busy)")
    busiest = max(others(m) for m in runs)
    if busiest > 0.2:
        print(f"note: other processes took up to {busiest * 100:.0f}% of a core during a "
              f"window: the machine was not quiet, so soaktop's figures carry that noise")
    tui, headless = median("tui", "soaktop_core"), median("headless", "soaktop_core")
    if tui is not None and headless is not None:
        extra = (tui - headless) * 100
        mark = "under" if extra < 25 else "OVER"
        print(f"TUI minus headless: {extra:+.1f}% of one core ({mark} the 25% target); "
              f"TUI / headless: {tui / headless:.2f}x")
    base = median("base", "soaktop_core")
    if base is not None and tui is not None:
        base_bps, tui_bps = median("base", "terminal_bps"), median("tui", "terminal_bps")
        print(f"dashboard, this tree vs baseline {args.baseline.commit}: CPU {tui * 100:.1f}% "
              f"vs {base * 100:.1f}% of one core ({(tui - base) * 100:+.1f}); terminal "
              f"{tui_bps:,.0f} vs {base_bps:,.0f} B/s ({tui_bps / max(base_bps, 1):.2f}x)")


def measure_all(args: argparse.Namespace, modes: list[str], schedule: Schedule,
                runs: list[Measured]) -> str | None:
    """Every run, in turn, against one server; appends to ``runs``; the failure, if any."""
    gpus = None
    if args.gpus:
        gpus = GpuModel(gpus=args.gpus, tau_s=args.gpu_tau_s,
                        busy_tokens_per_s=args.tokens_per_s)
    with spawn(schedule, gpus=gpus) as url, tempfile.TemporaryDirectory() as tmp:
        server = server_process(url)
        for mode in modes:
            shown = command(args, mode, url, Path(tmp) / f"{mode}-N.jsonl.gz")
            where = f" (PYTHONPATH={args.baseline.pythonpath})" if mode.startswith("base") else ""
            print(f"{mode:<13}: {shlex.join(shown)}{where}")
        print("run  mode          soaktop    tokens/s window / run   server    others  "
              "term B/s   requests; stopped by")
        for run in range(1, args.repeat + 1):
            for mode in modes:
                record = Path(tmp) / f"{mode}-{run}.jsonl.gz"
                try:
                    measured = measure(args, mode, url, server, record)
                except BenchFailed as error:
                    return str(error)
                runs.append(measured)
                print(row(run, measured), flush=True)
                time.sleep(1.0)  # the server finishes the streams it was cut off from
    return None


MODES = ("headless", "tui", "base-headless", "base")


def size(text: str) -> tuple[int, int]:
    """``COLSxROWS``, e.g. ``100x30``."""
    columns, _, rows = text.lower().partition("x")
    if not (columns.isdigit() and rows.isdigit() and int(columns) >= 20 and int(rows) >= 10):
        raise argparse.ArgumentTypeError(f"{text!r} is not COLSxROWS, e.g. 100x30")
    return int(columns), int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens-per-s", type=float, default=3000.0)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of each run left out before the window")
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=1, help="alternations of the modes")
    parser.add_argument("--modes", default=None,
                        help="of headless, tui, base-headless, base (default: headless,tui, "
                             "and base with --baseline)")
    parser.add_argument("--gpus", type=int, default=0,
                        help="simulated GPUs the loopback serves at /metrics, scraped with "
                             "--telemetry prom=URL (default 0: host telemetry only)")
    parser.add_argument("--gpu-tau-s", type=float, default=10.0,
                        help="their thermal time constant (default 10 s: the hot GPU "
                             "throttles within the first run)")
    parser.add_argument("--size", type=size, default=(120, 40), metavar="COLSxROWS",
                        help="the terminal (default 120x40)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="another soaktop tree whose dashboard runs as mode 'base'")
    args = parser.parse_args()
    args.columns, args.rows = args.size
    modes = [m.strip() for m in (args.modes or "headless,tui").split(",") if m.strip()]
    if args.modes is None and args.baseline is not None:
        modes.append("base")
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: one or more of {', '.join(MODES)}")
    if any(m.startswith("base") for m in modes) and args.baseline is None:
        parser.error("--modes base and base-headless need --baseline DIR")
    if args.gpus < 0:
        parser.error("--gpus must not be negative")
    scratch = tempfile.TemporaryDirectory()
    if args.baseline is not None:
        args.baseline = baseline(args.baseline, Path(scratch.name))

    schedule = pace(args)
    import textual  # only to say which version drew the dashboard

    print(f"machine: {psutil.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"textual {textual.__version__}")
    print(f"loopback: {args.concurrency} streams x {args.output_tokens} tokens, TTFT "
          f"{schedule.ttft_ms:g} ms, ITL {schedule.itl_ms:.2f} ms +-{schedule.jitter_ms:.1f} ms "
          f"-> paced for {args.tokens_per_s:,.0f} tokens/s; window {args.seconds:g} s after "
          f"{args.warmup:g} s of warm-up; terminal {args.columns}x{args.rows}, "
          f"TERM=xterm-256color")
    if args.gpus:
        print(f"gpus: {args.gpus} simulated at the loopback's /metrics, thermal time constant "
              f"{args.gpu_tau_s:g} s, 100% busy at {args.tokens_per_s:,.0f} tokens/s")
    if args.baseline is not None:
        b = args.baseline
        print(f"baseline: {b.tree} ({b.commit}), python -m {b.module}"
              + ("" if b.prom or not args.gpus else
                 "; it has no --telemetry prom=, so it runs with host telemetry only"))

    def quit_on_sigterm(signum, frame):  # so the finally blocks below run
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, quit_on_sigterm)
    runs: list[Measured] = []
    try:
        failure = measure_all(args, modes, schedule, runs)
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        for proc in _LIVE:  # only if an exception got past measure()'s own clean-up
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        scratch.cleanup()
    if runs:
        verdict(args, runs)
    if failure:
        print(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
