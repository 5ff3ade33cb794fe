"""The loopback server as a process of its own: its command line, and :func:`spawn`.

With ``--processes P`` (P > 1, Linux), this process only supervises: it reserves the port
with ``SO_REUSEPORT``, starts P server processes that each listen on it with the same option
(the kernel spreads new connections over them) and pace their own streams on the same
schedule, shares a temporary folder with them for their emissions and simulated-GPU tokens
(:mod:`soaktop.engine.loopback.shared`), says it is ready once all are, and ends them all when
it ends. Each child watches its stdin, a pipe from the parent, and leaves when that closes, so
a parent killed outright (a crash drill) does not leave servers behind on the port.

Timing tests run the server in another process because a client and a server in one
interpreter share one GIL and one event loop: each would delay the other, and the test would
measure that instead of the client. The server announces itself with one line on stdout,
``soaktop-loopback listening on http://127.0.0.1:PORT``, once it accepts connections, and
exits cleanly on SIGTERM or SIGINT. :func:`spawn` yields the URL; :func:`spawn_process` the
process too, for tests that kill the server mid-run and start it again on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from soaktop.engine.errors import SoaktopError
from soaktop.engine.loopback.dcgm import GpuModel
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.loopback.server import FAULTS, LoopbackServer
from soaktop.engine.loopback.shared import Shared

READY = "soaktop-loopback listening on "
# The directory that holds the ``engine`` package, so the child can import it from a checkout.


def _parser() -> argparse.ArgumentParser:
    default = Schedule()
    parser = argparse.ArgumentParser(
        prog="python -m soaktop.engine.loopback",
        description="An OpenAI-compatible and Ollama server that emits tokens on a schedule.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--ttft-ms", type=float, default=default.ttft_ms)
    parser.add_argument("--itl-ms", type=float, default=default.itl_ms)
    parser.add_argument("--jitter-ms", type=float, default=default.jitter_ms)
    parser.add_argument("--chunk-tokens", type=int, default=default.chunk_tokens)
    parser.add_argument("--tokens", type=int, default=default.tokens,
                        help="output length when a request names none")
    parser.add_argument("--no-role-chunk", action="store_true",
                        help="do not open chat streams with an empty role delta")
    parser.add_argument("--model", default=default.model)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--reasoning-tokens", type=int, default=0,
                        help="the first N tokens are thinking (reasoning_content deltas)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop by itself (EOS) after N tokens, whatever was asked")
    parser.add_argument("--prompt-tokens-per-word", type=int,
                        default=default.prompt_tokens_per_word,
                        help="prompt tokens its usage reports for each word (a tokenizer that "
                        "splits words reports more)")
    parser.add_argument("--cached-prefix-tokens", type=int,
                        default=default.cached_prefix_tokens,
                        help="prompt tokens its usage reports as served from a prefix cache")
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--fault-every", type=int, default=1,
                        help="every N-th generation request gets the fault (default: all)")
    parser.add_argument("--fault-after", type=int, default=0,
                        help="only requests after the first N get the fault (default 0)")
    parser.add_argument("--max-active", type=int, default=None,
                        help="answer at most N generation requests at once; the others queue "
                        "(a fixed service rate; per process with --processes)")
    gpu = GpuModel()
    parser.add_argument("--gpus", type=int, default=0,
                        help="serve N simulated GPUs at GET /metrics, as a DCGM exporter "
                             "(default 0: no /metrics)")
    parser.add_argument("--gpu-tau-s", type=float, default=gpu.tau_s,
                        help="the GPUs' thermal time constant in seconds "
                             f"(default {gpu.tau_s:g})")
    parser.add_argument("--gpu-busy-tokens-per-s", type=float, default=gpu.busy_tokens_per_s,
                        help="served tokens/s that keep every GPU 100%% busy "
                             f"(default {gpu.busy_tokens_per_s:g})")
    parser.add_argument("--hot-gpu", type=int, default=gpu.hot_gpu,
                        help="the GPU with poor cooling that throttles, as a Python index "
                             "(default -1: the last)")
    parser.add_argument("--processes", type=int, default=1,
                        help="server processes accepting on the one port (SO_REUSEPORT, Linux), "
                             "each pacing its own streams (default 1)")
    # set by a parent of --processes for its children: the shared folder, its clock origin
    # and the child's index
    parser.add_argument("--shared", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--origin-ns", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def argv(schedule: Schedule, fault: str | None = None, fault_every: int = 1,
         gpus: GpuModel | None = None, processes: int = 1, fault_after: int = 0,
         max_active: int | None = None) -> list[str]:
    """The command-line arguments that make a server with this schedule, fault, GPUs and
    processes (only the GPU fields that have flags are passed on)."""
    args = [
        "--ttft-ms", repr(schedule.ttft_ms), "--itl-ms", repr(schedule.itl_ms),
        "--jitter-ms", repr(schedule.jitter_ms), "--chunk-tokens", str(schedule.chunk_tokens),
        "--tokens", str(schedule.tokens), "--model", schedule.model, "--seed", str(schedule.seed),
        "--fault-every", str(fault_every), "--reasoning-tokens", str(schedule.reasoning_tokens),
        "--prompt-tokens-per-word", str(schedule.prompt_tokens_per_word),
        "--cached-prefix-tokens", str(schedule.cached_prefix_tokens),
    ]
    if schedule.stop_after is not None:
        args += ["--stop-after", str(schedule.stop_after)]
    if not schedule.role_chunk:
        args.append("--no-role-chunk")
    if fault is not None:
        args += ["--fault", fault]
    if fault_after:
        args += ["--fault-after", str(fault_after)]
    if max_active is not None:
        args += ["--max-active", str(max_active)]
    if gpus is not None:
        args += ["--gpus", str(gpus.gpus), "--gpu-tau-s", repr(gpus.tau_s),
                 "--gpu-busy-tokens-per-s", repr(gpus.busy_tokens_per_s),
                 "--hot-gpu", str(gpus.hot_gpu)]
    if processes != 1:
        args += ["--processes", str(processes)]
    return args


async def _serve(server: LoopbackServer, child: bool = False) -> None:
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    orphaned = False
    if child:  # the parent holds our stdin: its end closing (it died) ends us too
        def parent_gone() -> None:
            nonlocal orphaned
            if not os.read(0, 4096):
                loop.remove_reader(0)
                orphaned = True
                stopped.set()

        loop.add_reader(0, parent_gone)
    print(READY + server.url, flush=True)
    await stopped.wait()
    await server.stop()
    if orphaned and server.shared is not None:  # no parent left to remove the shared folder
        shutil.rmtree(server.shared.folder, ignore_errors=True)


def _supervise(args: list[str], options: argparse.Namespace) -> int:
    """The parent of ``--processes``: the port held, the children started and watched.

    The port is reserved by a bound socket with ``SO_REUSEPORT`` that never listens (only
    listening sockets are given connections), so ``--port 0`` has one port to give every
    child. The parent exits when told to or when a child dies; either way all children go.
    """
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    folder = Path(tempfile.mkdtemp(prefix="soaktop-loopback-"))
    children: list[subprocess.Popen] = []
    holder = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((options.host, options.port))
        port = holder.getsockname()[1]
        origin_ns = time.perf_counter_ns()
        for index in range(options.processes):
            children.append(subprocess.Popen(
                [sys.executable, "-m", "soaktop.engine.loopback", *args, "--port", str(port),
                 "--shared", str(folder), "--origin-ns", str(origin_ns),
                 "--index", str(index)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for child in children:
            ready, _, _ = select.select([child.stdout], [], [], 10.0)
            if not ready or not child.stdout.readline().startswith(READY):
                print("soaktop-loopback: a server process did not start", file=sys.stderr)
                return 2
        host = f"[{options.host}]" if ":" in options.host else options.host
        print(f"{READY}http://{host}:{port}", flush=True)
        while not stopped and all(child.poll() is None for child in children):
            time.sleep(0.1)
        died = [child.returncode for child in children if child.poll() is not None]
        if died and not stopped:
            print(f"soaktop-loopback: a server process exited ({died[0]}); stopping",
                  file=sys.stderr)
            return 1
        return 0
    except (OSError, OverflowError) as error:  # port taken or out of range, host not ours
        print(f"soaktop-loopback: {error}", file=sys.stderr)
        return 2
    finally:
        holder.close()
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            _reap(child)
            child.stdin.close()
            child.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(args: list[str] | None = None) -> int:
    parser = _parser()
    args = sys.argv[1:] if args is None else args
    options = parser.parse_args(args)
    if options.processes < 1:
        parser.error("--processes must be at least 1")
    supervise = options.processes > 1 and options.shared is None
    if supervise and not hasattr(socket, "SO_REUSEPORT"):
        parser.error("--processes needs SO_REUSEPORT (Linux)")
    shared = None
    if options.shared is not None:
        shared = Shared(options.shared, options.index, options.processes, options.origin_ns)
    try:
        schedule = Schedule(
            ttft_ms=options.ttft_ms, itl_ms=options.itl_ms, jitter_ms=options.jitter_ms,
            chunk_tokens=options.chunk_tokens, tokens=options.tokens,
            role_chunk=not options.no_role_chunk, model=options.model, seed=options.seed,
            reasoning_tokens=options.reasoning_tokens, stop_after=options.stop_after,
            prompt_tokens_per_word=options.prompt_tokens_per_word,
            cached_prefix_tokens=options.cached_prefix_tokens,
        )
        gpus = None
        if options.gpus:
            gpus = GpuModel(gpus=options.gpus, tau_s=options.gpu_tau_s,
                            busy_tokens_per_s=options.gpu_busy_tokens_per_s,
                            hot_gpu=options.hot_gpu)
        server = LoopbackServer(
            schedule, options.fault, options.fault_every, options.host, options.port, gpus,
            shared, fault_after=options.fault_after, max_active=options.max_active,
        )
    except ValueError as error:
        parser.error(str(error))
    if supervise:  # checked here, once, rather than by each child
        return _supervise(_without_port(args), options)
    try:
        asyncio.run(_serve(server, child=shared is not None))
    except (OSError, OverflowError) as error:  # port taken or out of range, host not ours
        print(f"soaktop-loopback: {error}", file=sys.stderr)
        return 2
    return 0


def _without_port(args: list[str]) -> list[str]:
    """``args`` less any ``--port`` (the parent gives its children the port it holds)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--port":
            skip = True
        elif not arg.startswith("--port="):
            kept.append(arg)
    return kept


@dataclass(frozen=True)
class LoopbackProcess:
    """A loopback server running in a child process: its URL, its port and the process (a
    fault drill kills it with ``process.kill()`` to see a server crash mid-run)."""

    url: str
    port: int
    process: subprocess.Popen


@contextmanager
def spawn_process(
    schedule: Schedule | None = None,
    fault: str | None = None,
    fault_every: int = 1,
    *,
    port: int = 0,
    timeout_s: float = 10.0,
    gpus: GpuModel | None = None,
    processes: int = 1,
    fault_after: int = 0,
    max_active: int | None = None,
) -> Iterator[LoopbackProcess]:
    """Run a loopback server in a child process for the ``with`` block.

    ``port``: the port to listen on; 0 (the default) lets the system pick a free one (then
    read it from the result). Raises :class:`~soaktop.engine.errors.SoaktopError` with the child's
    last words if it does not say it is ready within ``timeout_s`` (a port in use, for one). On
    leaving, the child gets SIGTERM (SIGKILL if it has not gone 5 s later); one that was
    killed inside the block is only reaped. ``gpus``: simulated GPUs at ``/metrics``.
    ``processes``: server processes on the port (the process is then their parent; see
    :func:`processes_for` for how many a rate needs). ``fault_after``, ``max_active``: a
    server that degrades on cue (see :class:`~soaktop.engine.loopback.LoopbackServer`).
    """
    command = [sys.executable, "-m", "soaktop.engine.loopback",
               *argv(schedule or Schedule(), fault, fault_every, gpus, processes,
                     fault_after, max_active),
               "--port", str(port)]
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            ready, _, _ = select.select([child.stdout], [], [], timeout_s)
            line = child.stdout.readline() if ready else ""
            if not line.startswith(READY):
                child.kill()
                child.wait()
                stderr.seek(0)
                said = stderr.read().decode(errors="replace").strip().splitlines()
                reason = said[-1] if said else f"no ready line within {timeout_s:g} s"
                raise SoaktopError(f"the loopback server did not start: {reason}")
            url = line[len(READY):].strip()
            yield LoopbackProcess(url, int(url.rsplit(":", 1)[1]), child)
        finally:
            child.terminate()
            _reap(child)
            child.stdout.close()


def _reap(child: subprocess.Popen) -> None:
    """Wait for a server process told to stop; kill one that has not within 5 s."""
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@contextmanager
def spawn(
    schedule: Schedule | None = None,
    fault: str | None = None,
    fault_every: int = 1,
    *,
    port: int = 0,
    timeout_s: float = 10.0,
    gpus: GpuModel | None = None,
    processes: int = 1,
    fault_after: int = 0,
    max_active: int | None = None,
) -> Iterator[str]:
    """Run a loopback server in a child process for the ``with`` block; yields its URL.

    ``port``, ``gpus``, ``processes``, ``fault_after`` and ``max_active`` as for
    :func:`spawn_process` (0: any free port), which this wraps.
    """
    with spawn_process(schedule, fault, fault_every, port=port, timeout_s=timeout_s,
                       gpus=gpus, processes=processes, fault_after=fault_after,
                       max_active=max_active) as server:
        yield server.url


#: Tokens a second one loopback process is given to pace before another is added: below what
#: one process sends on time on a small machine (see the README's benchmarks), so the server
#: keeps its schedule and the error measured is the client's.
TOKENS_PER_PROCESS = 4000.0


def processes_for(tokens_per_s: float, cores: int | None = None) -> int:
    """Loopback processes for a total rate: one per :data:`TOKENS_PER_PROCESS` asked, at most
    the usable cores less one (the client needs one), at least 1."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    wanted = -(-tokens_per_s // TOKENS_PER_PROCESS)
    return max(1, min(int(wanted), cores - 1))
