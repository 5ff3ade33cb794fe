"""The loopback server as a process of its own: its command line, and :func:`spawn`.

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
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from soaktop.engine.errors import SoaktopError
from soaktop.engine.loopback.dcgm import GpuModel
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.loopback.server import FAULTS, LoopbackServer

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
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--fault-every", type=int, default=1,
                        help="every N-th generation request gets the fault (default: all)")
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
    return parser


def argv(schedule: Schedule, fault: str | None = None, fault_every: int = 1,
         gpus: GpuModel | None = None) -> list[str]:
    """The command-line arguments that make a server with this schedule, fault and GPUs (only
    the GPU fields that have flags are passed on)."""
    args = [
        "--ttft-ms", repr(schedule.ttft_ms), "--itl-ms", repr(schedule.itl_ms),
        "--jitter-ms", repr(schedule.jitter_ms), "--chunk-tokens", str(schedule.chunk_tokens),
        "--tokens", str(schedule.tokens), "--model", schedule.model, "--seed", str(schedule.seed),
        "--fault-every", str(fault_every), "--reasoning-tokens", str(schedule.reasoning_tokens),
    ]
    if schedule.stop_after is not None:
        args += ["--stop-after", str(schedule.stop_after)]
    if not schedule.role_chunk:
        args.append("--no-role-chunk")
    if fault is not None:
        args += ["--fault", fault]
    if gpus is not None:
        args += ["--gpus", str(gpus.gpus), "--gpu-tau-s", repr(gpus.tau_s),
                 "--gpu-busy-tokens-per-s", repr(gpus.busy_tokens_per_s),
                 "--hot-gpu", str(gpus.hot_gpu)]
    return args


async def _serve(server: LoopbackServer) -> None:
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print(READY + server.url, flush=True)
    await stopped.wait()
    await server.stop()


def main(args: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(args)
    try:
        schedule = Schedule(
            ttft_ms=options.ttft_ms, itl_ms=options.itl_ms, jitter_ms=options.jitter_ms,
            chunk_tokens=options.chunk_tokens, tokens=options.tokens,
            role_chunk=not options.no_role_chunk, model=options.model, seed=options.seed,
            reasoning_tokens=options.reasoning_tokens, stop_after=options.stop_after,
        )
        gpus = None
        if options.gpus:
            gpus = GpuModel(gpus=options.gpus, tau_s=options.gpu_tau_s,
                            busy_tokens_per_s=options.gpu_busy_tokens_per_s,
                            hot_gpu=options.hot_gpu)
        server = LoopbackServer(
            schedule, options.fault, options.fault_every, options.host, options.port, gpus
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        asyncio.run(_serve(server))
    except (OSError, OverflowError) as error:  # port taken or out of range, host not ours
        print(f"soaktop-loopback: {error}", file=sys.stderr)
        return 2
    return 0


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
) -> Iterator[LoopbackProcess]:
    """Run a loopback server in a child process for the ``with`` block.

    ``port``: the port to listen on; 0 (the default) lets the system pick a free one (then
    read it from the result). Raises :class:`~soaktop.engine.errors.SoaktopError` with the child's
    last words if it does not say it is ready within ``timeout_s`` (a port in use, for one). On
    leaving, the child gets SIGTERM (SIGKILL if it has not gone 5 s later); one that was
    killed inside the block is only reaped. ``gpus``: simulated GPUs at ``/metrics``.
    """
    command = [sys.executable, "-m", "soaktop.engine.loopback",
               *argv(schedule or Schedule(), fault, fault_every, gpus), "--port", str(port)]
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
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()


@contextmanager
def spawn(
    schedule: Schedule | None = None,
    fault: str | None = None,
    fault_every: int = 1,
    *,
    port: int = 0,
    timeout_s: float = 10.0,
    gpus: GpuModel | None = None,
) -> Iterator[str]:
    """Run a loopback server in a child process for the ``with`` block; yields its URL.

    ``port`` and ``gpus`` as for :func:`spawn_process` (0: any free port), which this wraps.
    """
    with spawn_process(schedule, fault, fault_every, port=port, timeout_s=timeout_s,
                       gpus=gpus) as server:
        yield server.url
