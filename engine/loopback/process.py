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
    return parser


def argv(schedule: Schedule, fault: str | None = None, fault_every: int = 1) -> list[str]:
    """The command-line arguments that make a server with this schedule and fault."""
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
        server = LoopbackServer(
            schedule, options.fault, options.fault_every, options.host, options.port
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
) -> Iterator[LoopbackProcess]:
    """Run a loopback server in a child process for the ``with`` block.

    ``port``: the port to listen on; 0 (the default) lets the system pick a free one (then
    read it from the result). Raises :class:`~soaktop.engine.errors.SoaktopError` with the child's
    last words if it does not say it is ready within ``timeout_s`` (a port in use, for one). On
    leaving, the child gets SIGTERM (SIGKILL if it has not gone 5 s later); one that was
    killed inside the block is only reaped.
    """
    command = [sys.executable, "-m", "soaktop.engine.loopback",
               *argv(schedule or Schedule(), fault, fault_every), "--port", str(port)]
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
) -> Iterator[str]:
    """Run a loopback server in a child process for the ``with`` block; yields its URL.

    ``port`` as for :func:`spawn_process` (0: any free port), which this wraps.
    """
    with spawn_process(schedule, fault, fault_every, port=port, timeout_s=timeout_s) as server:
        yield server.url
