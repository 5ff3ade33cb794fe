"""``--workers N``: a run's streams shared among worker processes, the session kept here.

Why: one process reads every stream on one event loop, and that loop tops out near one core
(``soaktop calibrate`` trusts it to some thousands of tokens/s), while a node of big GPUs at a
concurrency of hundreds emits tens of thousands. Reading streams (sockets, httpx, h11, SSE,
JSON) is what costs; deciding what to send, and when, is cheap. So the work is split there:

- This process keeps the session whole: its clock, phases, warm-up, the closed and open loops,
  plans, pauses, model switches, Retry-After holds, the record, the summary and every event
  (:mod:`soaktop.engine.session`). It decides when each request is due and which worker takes
  it (the one with the fewest in flight: :meth:`WorkerPool.pick_worker`), and says "send this
  now" in a message of a few hundred bytes.
- Each worker (:mod:`soaktop.engine.load.worker_process`) sends, reads the stream with its own
  event loop, connection pool and kernel stamps, and hands back what the session needs in
  batches (never a message per token). To the session, :class:`WorkerPool` is a backend like
  any other: its ``stream()`` yields the worker's send stamp, arrivals and end, so every
  session rule (latency origin, send lateness, token reconciliation, errors, cancellation)
  is the one code path it runs with a backend in this process.

Stamps cross processes as they are: ``perf_counter_ns()`` is CLOCK_MONOTONIC on Linux, one
clock for every process of the host, and the session subtracts its origin from a worker's
stamp as from its own. A request carries its worker's id (``RequestDone.worker_id``).

A worker that dies (killed, out of memory) is said in one line and recorded as a ``mark``
(``worker N lost ...``): the requests it had in flight fail with error class ``worker_lost``,
and the run goes on, the closed loop refilling on the workers left. With none left, the run
stops as ``failed``.

The transport is a detail of :class:`WorkerPool` (processes of this host over pipes):
:class:`Pool` holds what every transport shares, and ``--ray`` puts the same workers on a Ray
cluster's nodes as actors, their stamps moved onto the session's clock by each host's
estimated offset (:mod:`soaktop.engine.load.ray_workers`).

Only the HTTP backends (openai, ollama) go to workers: the local engine holds a model on one
device and the fake backend a schedule in memory; both stay in the session's process.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from soaktop.engine import backends
from soaktop.engine.backends.base import (
    Arrival,
    Backend,
    DirectArrivals,
    GenerationRequest,
    RequestSent,
    StreamEnd,
)
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import BackendError, BackendUnavailable, SoaktopError
from soaktop.engine.load import worker_process as wp
from soaktop.engine.metrics.client_health import HealthFigures

#: The backends whose streams can be read in worker processes.
WORKER_KINDS = ("openai", "ollama")
#: ``--workers auto``: one worker per this many streams (the peak of a ramp) ...
STREAMS_PER_WORKER = 64
#: ... or, in an open loop, per this many output tokens a second asked (rate x output tokens).
TOKENS_PER_S_PER_WORKER = 4000.0
START_TIMEOUT_S = 60.0  # a worker's imports, its backend's probe and identity calls


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not merely those the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(config: RunConfig, cores: int | None = None) -> int:
    """How many worker processes ``--workers auto`` gives ``config``; 1: none, the streams
    read in the session's process as always.

    The rule is conservative (it must never make a small run worse): 1 for any backend but
    openai and ollama, and 1 for a load one process reads with room to spare: below
    :data:`STREAMS_PER_WORKER` streams at the peak (the concurrency, or a ramp's highest
    step; an SLO search counts its start, so give ``--workers`` for one expected to climb
    high), or in an open loop below :data:`TOKENS_PER_S_PER_WORKER` tokens/s asked
    (rate x ``--output-tokens``). Above that, one worker per that much load, at most one
    fewer than the usable cores (the session's process needs one): so always 1 on 2 cores.
    """
    if config.backend not in WORKER_KINDS:
        return 1
    cores = cores if cores is not None else usable_cores()
    if config.rate is not None:
        from soaktop.engine.load.workloads import parse_lengths  # a distribution: its mean

        tokens = parse_lengths(config.output_tokens).mean
        need = math.ceil(config.rate * tokens / TOKENS_PER_S_PER_WORKER)
    else:
        need = math.ceil(max((config.concurrency, *config.ramp)) / STREAMS_PER_WORKER)
    return max(1, min(need, cores - 1))


def resolve_workers(config: RunConfig, cores: int | None = None) -> tuple[int, str | None]:
    """The worker count ``config`` runs with (``config.workers``, or :func:`auto_workers` for
    None), and a line to say when an asked count cannot be had (None when it can)."""
    if config.workers is None:
        return auto_workers(config, cores), None
    if config.workers > 1 and config.backend not in WORKER_KINDS:
        return 1, (f"--workers applies to openai and ollama; the {config.backend} backend "
                   "runs in this process")
    return config.workers, None


def worst_health(main: HealthFigures, workers: list[HealthFigures]) -> HealthFigures:
    """One ClientSample's health from the session's process and its workers': the worst
    process decides (any late or saturated loop makes the client the bottleneck). Loop lag
    and loop CPU: the highest; read lag with its own process's short gap: the process that
    read latest; send lateness: the session's own (due here, sent there: the whole way);
    CPU: all processes summed (% of one core: 300 is three cores busy)."""
    if not workers:
        return main
    everyone = [main, *workers]
    lags = [h.loop_lag_p99_us for h in everyone if h.loop_lag_p99_us is not None]
    reads = [h for h in everyone if h.read_lag_p99_us is not None]
    latest = max(reads, key=lambda h: h.read_lag_p99_us) if reads else None
    return replace(
        main,
        loop_lag_p99_us=max(lags) if lags else None,
        cpu_percent=sum(h.cpu_percent for h in everyone),
        loop_cpu_percent=max(h.loop_cpu_percent for h in everyone),
        read_lag_p99_us=latest.read_lag_p99_us if latest else None,
        read_gap_p10_us=latest.read_gap_p10_us if latest else None,
    )


def start_process_helper() -> None:
    """Start multiprocessing's helper process (its resource tracker) now, if it is not running.

    Every worker start needs it, and it is handed the descriptor of ``sys.stderr`` when it
    first starts; a full-screen app (the dashboard) replaces stderr with a capture that has
    none, and a worker started under it would fail. So a program that runs a session with
    workers under such an app calls this before the app takes the screen.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


class _Flight:
    """One request in a worker, as this process sees it: what came back, and its waiter."""

    __slots__ = ("items", "sink", "waiter", "offset_ns")

    def __init__(self) -> None:
        self.items: deque[tuple] = deque()
        self.waiter: asyncio.Future | None = None
        #: Where arrivals go as a batch is read (the session's, through DirectArrivals)
        self.sink: Callable[[int, int, bool], None] | None = None
        #: A worker on another host (--ray): its clock's offset when this request was sent,
        #: which every stamp of the request is moved by (soaktop.engine.load.ray_workers)
        self.offset_ns: int | None = None

    def attach(self, sink: Callable[[int, int, bool], None]) -> None:
        self.sink = sink


class Handle:
    """One worker, as the pool sees it whatever carries its messages: the requests it has in
    flight, its latest health, and the commands to send it, an iteration's together. A
    transport (a process's pipe here, a Ray actor in soaktop.engine.load.ray_workers) says
    how a list of commands goes (:meth:`send`) and what its loss is said as."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.alive = True
        self.flights: dict[int, _Flight] = {}
        self.health: HealthFigures | None = None
        self.crash: str | None = None  # what killed it, when it could still say (or we)
        self.heard_ns = 0  # when it last said anything
        self._outbox: list[tuple] = []

    def post(self, message: tuple) -> None:
        """Queue a command; the iteration's commands go in one message, at its end."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self._outbox.append(message)

    def flush(self) -> None:
        messages, self._outbox = self._outbox, []
        if messages and self.alive:
            self.send(messages)

    def send(self, messages: list[tuple]) -> None:
        raise NotImplementedError

    def lost(self) -> str:
        """It is gone: stop listening to it; the line that says so."""
        return f"worker {self.index} lost"


class _Proc(Handle):
    """One worker process and its pipe."""

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        super().__init__(index)
        self.process = process
        self.conn = conn

    def send(self, messages: list[tuple]) -> None:
        try:
            self.conn.send(messages)
        except OSError:  # it died: its pipe's end says so to the reader
            pass

    def lost(self) -> str:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        self.process.join(0.5)
        return (f"worker {self.index} (pid {self.process.pid}) lost, exit code "
                f"{self.process.exitcode}")


class Pool(Backend):
    """The backend ``kind`` with ``options``, its streams read by ``workers`` workers: what
    every transport shares (a worker's requests, batches, loss, health). Subclasses start
    and stop the workers (:attr:`_procs`, :class:`Handle` each) and hand each batch that
    comes back to :meth:`_batch`.

    ``options`` are the backend's own (URL, model, API, timeouts, API key); they reach each
    worker in its setup message, never a command line. A copy of the backend in this
    process, never started, answers what needs no stream (:meth:`models`, ``url``, ``api``).
    """

    #: A planned send crosses with its moment and the worker's HTTP backend holds it: one
    #: host, one ``perf_counter_ns`` clock.
    holds_sends: ClassVar[bool] = True

    def __init__(self, kind: str, options: dict[str, Any], workers: int) -> None:
        if kind not in WORKER_KINDS:
            raise SoaktopError(f"the {kind} backend cannot run in worker processes")
        if workers < 1:
            raise SoaktopError(f"workers must be at least 1 (got {workers})")
        self.kind = kind
        self.workers = workers
        self._options = dict(options)
        self._here = backends.create(kind, **options)
        self.run_id = uuid.uuid4().hex[:8]  # X-Request-Id prefix: one for every worker
        self._procs: list[Handle] = []
        self._described: dict[str, Any] | None = None
        #: Told a fact of the run in one line (a worker lost); ``fatal``: the run cannot go on.
        self.notice: Callable[[str, bool], None] | None = None

    def _setup(self) -> dict[str, Any]:
        """A worker's first message: its backend and the run's X-Request-Id prefix."""
        return {"kind": self.kind, "options": self._options, "run_id": self.run_id}

    # -- what a copy in this process can answer -------------------------------------------
    @property
    def url(self) -> str:
        return self._here.url

    @property
    def api(self) -> str | None:
        return getattr(self._here, "api", None)

    @property
    def model(self) -> str | None:
        return self._options.get("model")

    @model.setter
    def model(self, model: str | None) -> None:  # before start: the workers get it too
        self._options["model"] = self._here.model = model

    def watch_reads(self, on_read: Callable[[int, int], None]) -> bool:
        """Whether the workers' stamps come from the kernel; each worker watches its own
        reads and reports them in its health, so ``on_read`` here hears of none."""
        return self._here.watch_reads(lambda lag_ns, gap_ns: None)

    async def models(self) -> list[str]:
        return await self._here.models()

    def describe(self) -> dict[str, Any]:
        """What the first worker's backend said once started (the copy's before)."""
        return dict(self._described) if self._described is not None else self._here.describe()

    # -- what comes back -------------------------------------------------------------------
    def _batch(self, proc: Handle, items: list[tuple]) -> None:
        flights = proc.flights
        for item in items:
            if item[0] == wp.HEALTH:
                proc.health = replace(HealthFigures(**item[1]), worker=proc.index)
                continue
            if item[0] == wp.CRASHED:
                proc.crash = item[1]
                continue
            flight = flights.get(item[1])
            if flight is None:  # cancelled here already: what the worker still said is moot
                continue
            if item[0] == wp.ARRIVED and flight.sink is not None and not flight.items:
                flight.sink(item[2], item[3], item[4])  # in order: nothing waits before it
                continue
            flight.items.append(item)
            waiter = flight.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _lost(self, proc: Handle) -> None:
        """``proc`` died: its requests fail as ``worker_lost`` and the run is told."""
        if not proc.alive:
            return
        proc.alive = False
        message = proc.lost() + (f" ({proc.crash})" if proc.crash else "")
        for flight in proc.flights.values():
            flight.items.append((wp.ERROR, None, "worker_lost", message, False, None, None))
            if flight.waiter is not None and not flight.waiter.done():
                flight.waiter.set_result(None)
        left = sum(p.alive for p in self._procs)
        line = (f"{message}: its {len(proc.flights)} requests in flight failed as "
                f"worker_lost; " + (f"the run goes on on {left} workers" if left else
                                    "no worker is left"))
        if self.notice is not None:
            self.notice(line, left == 0)

    # -- requests --------------------------------------------------------------------------
    def pick_worker(self) -> int:
        """The live worker with the fewest requests in flight (the first of those tied)."""
        best: Handle | None = None
        for proc in self._procs:
            if proc.alive and (best is None or len(proc.flights) < len(best.flights)):
                best = proc
        return best.index if best is not None else 0

    def health(self) -> list[HealthFigures]:
        """Each live worker's latest health (its second's figures), each given once."""
        readings = []
        for proc in self._procs:
            if proc.alive and proc.health is not None:
                readings.append(proc.health)
                proc.health = None
        return readings

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        procs = self._procs
        proc = procs[request.worker_id] if request.worker_id < len(procs) else None
        if proc is None or not proc.alive:
            raise BackendError(f"worker {request.worker_id} is gone", "worker_lost")
        rid = request.request_id
        flight = _Flight()
        proc.flights[rid] = flight
        prompt = request.prompt  # a prompt file's chat messages cross as they are
        proc.post((wp.GO, rid, request.model, request.max_tokens,
                   (prompt.text, prompt.messages) if prompt.messages else prompt.text,
                   request.want_text, request.send_at_ns))
        ended = False
        loop = asyncio.get_running_loop()
        try:
            yield DirectArrivals(flight.attach)
            while True:
                items = flight.items
                while items:
                    item = items.popleft()
                    kind = item[0]
                    if kind == wp.ARRIVED:
                        yield Arrival(item[2], item[3], "", item[4])
                    elif kind == wp.SENT:
                        yield RequestSent(item[2])
                    elif kind == wp.END:
                        ended = True
                        # finish, arrival tokens, server figures, stamp, output text
                        yield StreamEnd(*item[2:7])
                        return
                    else:  # wp.ERROR
                        ended = True
                        error = BackendError(item[3], item[2], retry_after_s=item[5],
                                             refused=item[4])
                        error.output = item[6]  # the text so far, where it was wanted
                        raise error
                flight.waiter = loop.create_future()
                await flight.waiter
                flight.waiter = None
        finally:
            proc.flights.pop(rid, None)
            if not ended and proc.alive:
                proc.post((wp.CANCEL, rid))


class WorkerPool(Pool):
    """The backend ``kind`` with ``options``, its streams read in ``workers`` processes of
    this host, each over a pipe."""

    #: A worker silent this long (it reports its health every second) is hung: killed, lost.
    SILENT_S = 15.0

    def __init__(self, kind: str, options: dict[str, Any], workers: int) -> None:
        super().__init__(kind, options, workers)
        self._watch: asyncio.Task | None = None

    def pids(self) -> list[int]:
        """The worker processes' ids, by worker id (for a drill that kills one)."""
        return [proc.process.pid for proc in self._procs]

    # -- the processes ---------------------------------------------------------------------
    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # the session's process may have threads
        setup = self._setup()
        try:
            for index in range(self.workers):
                mine, theirs = ctx.Pipe()
                process = ctx.Process(target=wp.main, args=(theirs,), daemon=True,
                                      name=f"soaktop-worker-{index}")
                try:
                    process.start()
                except ValueError as exc:  # "bad value(s) in fds_to_keep": see the helper
                    raise SoaktopError(
                        "worker processes cannot start here: stderr has no file (a full-screen "
                        "app?); call start_process_helper() before it takes the screen"
                    ) from exc
                theirs.close()  # so that its death reads as the end of the pipe here
                self._procs.append(_Proc(index, process, mine))
                mine.send(setup)
            answers = await asyncio.gather(*(self._first(proc) for proc in self._procs))
        except BaseException:
            await self.close()
            raise
        failures = [answer for kind, answer in answers if kind != wp.READY]
        if failures:
            await self.close()
            raise failures[0]
        self._described = answers[0][1]
        loop = asyncio.get_running_loop()
        for proc in self._procs:
            proc.heard_ns = time.perf_counter_ns()
            loop.add_reader(proc.conn.fileno(), self._readable, proc)
        self._watch = loop.create_task(self._watch_silence())

    async def _watch_silence(self) -> None:
        """A worker that says nothing for :attr:`SILENT_S` (it reports its health every
        second) is hung, not slow: stopped, or stuck in a call that never returns. Its
        requests would wait forever, since their timeouts run in it; so it is killed, and
        lost as a dead one is."""
        while True:
            await asyncio.sleep(min(1.0, self.SILENT_S / 4))
            now = time.perf_counter_ns()
            for proc in self._procs:
                silent = now - proc.heard_ns > self.SILENT_S * 1e9
                if proc.alive and silent and not proc.conn.poll():  # nothing waits unread
                    proc.crash = f"it said nothing for {self.SILENT_S:g} s, and was killed"
                    proc.process.kill()

    async def _first(self, proc: _Proc) -> tuple[int, Any]:
        """A worker's first word: ready (with its backend's description), or why not."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = proc.conn.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, START_TIMEOUT_S)
        except asyncio.TimeoutError:
            return wp.FAILED, BackendUnavailable(
                f"worker {proc.index} did not start within {START_TIMEOUT_S:g} s")
        finally:
            loop.remove_reader(fd)
        try:
            return proc.conn.recv()
        except (EOFError, OSError):
            proc.process.join(1.0)
            return wp.FAILED, BackendUnavailable(
                f"worker {proc.index} exited while starting (exit code {proc.process.exitcode})")

    async def close(self) -> None:
        """Stop every worker (its requests end there), wait for it, then close the pipes."""
        procs, self._procs = self._procs, []
        loop = asyncio.get_running_loop()
        if self._watch is not None:
            self._watch.cancel()
        for proc in procs:
            if proc.alive:
                proc.flush()
                proc.alive = False
                try:
                    proc.conn.send([(wp.STOP,)])
                except OSError:
                    pass
                loop.remove_reader(proc.conn.fileno())
        for proc in procs:
            await loop.run_in_executor(None, proc.process.join, 5.0)
            if proc.process.is_alive():
                proc.process.kill()
                await loop.run_in_executor(None, proc.process.join, 1.0)
            proc.conn.close()

    def _readable(self, proc: _Proc) -> None:
        """A batch from ``proc``'s pipe, handed to the requests it concerns. One a call: the
        loop calls again while more wait (asking the pipe first costs a ``poll`` each time,
        36 µs measured, more than a batch's work)."""
        proc.heard_ns = time.perf_counter_ns()
        try:
            self._batch(proc, proc.conn.recv())
        except (EOFError, OSError):
            self._lost(proc)
