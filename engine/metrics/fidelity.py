"""How far soaktop's own timing can be trusted: its numbers against what went over the wire.

A loopback server (:mod:`soaktop.engine.loopback`, in a process of its own) emits tokens on a
schedule and records when it handed each content chunk to the socket. soaktop drives it like any
server and records when each chunk arrived. Both read ``CLOCK_MONOTONIC`` (``perf_counter_ns`` on
Linux), so the two views are directly comparable:

- wire TTFT: the client's request left its socket -> the server sent the first content chunk
  (requests are paired by their ``X-Request-Id``);
- wire ITL: gaps between the content chunks the server sent;
- soaktop's TTFT and ITL: as defined in :mod:`soaktop.engine.metrics.stats`, from its arrival times;
- the send hop: the client's send stamp -> the server had read the request whole. TTFT on both
  sides runs from the client's send stamp, so a wrong stamp cancels out there; the server's own
  receive time checks the stamp itself. On loopback the hop is about ±0.2 ms: the server, woken
  by the send, can read the request before the client's thread, preempted, takes its stamp.

The error at a quantile is soaktop's quantile minus the wire's. It includes everything the
client adds: sending the request, the kernel's loopback hop, event-loop delays and parsing.

Warm-up requests are left out on both sides, as soaktop's summary leaves them out, and the
warm-up here is the first two waves of the closed loop: each starts every stream at once, and
on a small machine soaktop is then CPU-bound for tens of milliseconds, long enough for several
chunks of a stream to wait in the socket and be read together, stamped with the arrival of
the last. That is a client-bound window (to be flagged by the client's self-check), not the
steady state the error is about.
Used by the fidelity test, ``bench/http_fidelity.py`` and ``soaktop calibrate`` (whose table
is :mod:`soaktop.tui.calibrate_text`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import numpy as np

from soaktop.engine.backends.base import Backend
from soaktop.engine.backends.http import Timeouts, request_uuid
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import RequestDone
from soaktop.engine.load.workers import WorkerPool
from soaktop.engine.loopback import Emission, Schedule, processes_for, spawn
from soaktop.engine.metrics.stats import itl_gaps
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session

QUANTILES = (50, 90, 99)
#: The send hop's: its low end is the hop itself; a server busy with other streams reads some
#: requests late, which only its upper quantiles show.
HOP_QUANTILES = (10, 25, 50, 90, 99)


@dataclass(frozen=True)
class Fidelity:
    concurrency: int
    requests: int
    tokens_per_s: float  # content tokens the client received per second of the run
    ttft_ms: dict[int, tuple[float, float]]  # quantile -> (soaktop, wire)
    itl_ms: dict[int, tuple[float, float]]
    client_bound_s: float = 0.0  # seconds soaktop flagged itself client-bound (after warm-up)
    #: CPU of the session's process (its threads; not its workers') per content token
    #: received, over the whole run: what the one process that sees every event pays.
    session_cpu_us_per_token: float | None = None
    server_processes: int = 1  # loopback processes that served the run (--processes)
    workers: int = 1  # the processes that read the streams (1: the session's own)
    #: Complete requests soaktop saw that the server's emissions did not hold: 0 unless the
    #: truth was lost (emissions of a server process not gathered), so it is checked, not shown.
    unpaired: int = 0
    #: The send hop at each of :data:`HOP_QUANTILES` (ms): the server's receive time minus the
    #: client's send stamp, both ``CLOCK_MONOTONIC``.
    send_hop_ms: dict[int, float] = field(default_factory=dict)

    def error_ms(self, metric: str, q: int) -> float:
        client, wire = getattr(self, metric)[q]
        return client - wire


def compare(done: list[RequestDone], emissions: list[Emission], origin_ns: int, run_id: str,
            tokens: int, concurrency: int, duration_s: float) -> Fidelity:
    """Quantiles over the complete requests seen by both sides, paired by request id."""
    wire = {e.request_id: e for e in emissions if e.status == 200 and e.fault is None}
    pairs = []
    unpaired = 0
    for d in done:
        e = wire.get(request_uuid(run_id, d.request_id))
        complete = d.ok and d.output_tokens == tokens and not d.warmup
        if complete and e is not None and len(e.chunks_ns) == tokens:
            pairs.append((d, e))
        elif complete and e is None:
            unpaired += 1
    if not pairs:
        raise RuntimeError(f"nothing to compare: no complete request among {len(done)} seen "
                           f"by soaktop and {len(emissions)} by the server")
    client_ttft = np.array([d.arrivals_us[0] / 1e3 for d, _ in pairs])
    wire_ttft = np.array([(e.chunks_ns[0] - origin_ns - d.sent_ns) / 1e6 for d, e in pairs])
    client_itl = np.concatenate([itl_gaps(d.arrivals_us) for d, _ in pairs]) / 1e3
    wire_itl = np.concatenate([np.diff(e.chunks_ns) for _, e in pairs]) / 1e6
    send_hop = np.array([(e.received_ns - origin_ns - d.sent_ns) / 1e6 for d, e in pairs])

    def quantiles(client: np.ndarray, truth: np.ndarray) -> dict[int, tuple[float, float]]:
        c, t = np.percentile(client, QUANTILES), np.percentile(truth, QUANTILES)
        return {q: (float(a), float(b)) for q, a, b in zip(QUANTILES, c, t)}

    received = sum(d.output_tokens for d in done)
    return Fidelity(concurrency, len(pairs), received / duration_s,
                    quantiles(client_ttft, wire_ttft), quantiles(client_itl, wire_itl),
                    unpaired=unpaired, send_hop_ms=dict(zip(HOP_QUANTILES, map(
                        float, np.percentile(send_hop, HOP_QUANTILES)))))


async def _drive(url: str, concurrency: int, duration_s: float, tokens: int, workers: int = 1,
                 pool: Callable[[dict[str, Any]], Backend] | None = None,
                 keep_all: Callable[[Any], None] | None = None,
                 ) -> tuple[list[RequestDone], int, str, float, float]:
    done: list[RequestDone] = []
    summary = SessionSummary()  # counts the client-bound seconds after warm-up, as run does

    def keep(event) -> None:
        if isinstance(event, RequestDone):
            done.append(event)
        summary.add(event)
        if keep_all is not None:
            keep_all(event)

    config = RunConfig(backend="openai", model="loopback", concurrency=concurrency,
                       duration_s=duration_s, warmup_requests=2 * concurrency,
                       output_tokens=tokens,
                       input_tokens=32, url=url, workers=workers)
    options = {"url": url, "model": "loopback", "timeouts": Timeouts(first_token_s=30)}
    backend = (pool(options) if pool is not None
               else WorkerPool("openai", options, workers) if workers > 1
               else OpenAIBackend(**options))
    session = Session(config, backend, listeners=(keep,))
    cpu_s = time.process_time()
    await session.run()
    cpu_s = time.process_time() - cpu_s
    return done, session.origin_ns, backend.run_id, summary.result().client_bound_s, cpu_s


async def _emissions(url: str) -> list[Emission]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/_loopback/emissions")
        return [Emission.from_dict(e) for e in response.json()]


def measure(concurrency: int, tokens_per_s: float, duration_s: float = 10.0,
            tokens: int = 64, ttft_ms: float = 30.0, jitter_ms: float = 5.0,
            workers: int = 1, server_processes: int | None = None,
            pool: Callable[[dict[str, Any]], Backend] | None = None,
            keep_all: Callable[[Any], None] | None = None) -> Fidelity:
    """Run soaktop against a loopback server paced for ``tokens_per_s`` in total, its
    streams read in ``workers`` processes (1: in this one; see soaktop.engine.load.workers).
    ``pool`` makes the backend from the openai backend's options instead (a
    :class:`~soaktop.engine.load.ray_workers.RayPool`); ``keep_all`` is given every event.

    The server runs in ``server_processes`` processes on one port (None: as many as the rate
    needs, :func:`~soaktop.engine.loopback.processes_for`), so that it keeps its schedule and
    what is measured is the client; their emissions are merged before pairing.

    Each stream emits a token every ``concurrency / tokens_per_s`` seconds (±``jitter_ms``, so
    the distributions have a spread for the quantiles to resolve).
    """
    itl_ms = 1000.0 * concurrency / tokens_per_s
    schedule = Schedule(ttft_ms=ttft_ms, itl_ms=itl_ms, jitter_ms=min(jitter_ms, itl_ms / 2),
                        tokens=tokens, model="loopback")

    async def run(url: str) -> Fidelity:
        done, origin_ns, run_id, bound_s, cpu_s = await _drive(url, concurrency, duration_s,
                                                               tokens, workers, pool, keep_all)
        result = compare(done, await _emissions(url), origin_ns, run_id, tokens, concurrency,
                         duration_s)
        received = sum(d.output_tokens for d in done)
        return replace(result, client_bound_s=bound_s,
                       session_cpu_us_per_token=1e6 * cpu_s / received if received else None,
                       server_processes=processes, workers=workers)

    processes = processes_for(tokens_per_s) if server_processes is None else server_processes
    with spawn(schedule, processes=processes) as url:
        return asyncio.run(run(url))


def trusted_rate(results: list[Fidelity], limit_ms: float = 1.0) -> float | None:
    """The highest tokens/s among ``results`` whose TTFT and ITL p99 errors both stayed under
    ``limit_ms``: how fast this machine can drive a server before its own error matters."""
    good = [f.tokens_per_s for f in results
            if max(abs(f.error_ms(m, 99)) for m in ("ttft_ms", "itl_ms")) < limit_ms]
    return max(good) if good else None
