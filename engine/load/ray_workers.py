"""``--ray ADDRESS|auto``: the workers of ``--workers`` as Ray actors on a cluster's nodes.

The split is the one of :mod:`soaktop.engine.load.workers`: the session stays whole in this
process, and each worker sends what it is told and reads its streams with its own event loop,
connection pool and stamps. Only the transport differs. A worker here is an async Ray actor
(:class:`_Worker`) that runs the worker process's own serving loop
(:mod:`soaktop.engine.load.worker_process`: the same commands, items and batches); the pool
(:class:`RayPool`) sends an iteration's commands in one call (``post``) and keeps one
``poll`` outstanding per worker, which returns the batches gathered since the last (waiting
while there are none), so a batch costs a call, never a token.

Clocks. A worker's stamps are ``perf_counter_ns()`` of its own host, whose monotonic clock has
an origin of its own. So each worker's offset (its clock minus the session's) is estimated from
round trips, NTP's way: the session reads its clock (t0), asks the worker's (tw), reads its own
again (t1); tw was read somewhere in [t0, t1], so the offset is ``tw - (t0 + t1) / 2`` within
``(t1 - t0) / 2``. Of :data:`CLOCK_PROBES` round trips the shortest gives the estimate, at the
start and every :data:`CLOCK_EVERY_S` after; each batch's stamps are moved onto the session's
clock (``stamp - offset``) before the session sees them, so every rule of the session (latency
origin, send lateness, the open loop's schedule) holds as with local workers. TTFT and ITL are
differences of one worker's stamps and do not depend on the offset at all; ``sent_ns`` and an
open loop's queueing do, within the uncertainty. Each estimate is kept in the record: the
header's ``backend.ray_workers`` (each worker's id, host, node and first estimate) and a
``worker_clock`` event for every estimate, start included.

Secrets: the backend's options (the API key among them) reach an actor as the argument of its
``start`` call, in memory: never an actor's constructor, a runtime environment, an environment
variable or a command line, and Ray writes no task's arguments to its logs. The worker writes
nothing to a terminal (its log goes to the node's Ray log, not to this process:
``log_to_driver=False``).

Ray is optional (``pip install 'soaktop[cluster]'``) and imported only here, when ``--ray`` is
given. soaktop must be installed on every node (the actors import it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from soaktop.engine.errors import BackendUnavailable, ConfigError
from soaktop.engine.events import WorkerClock
from soaktop.engine.load import worker_process as wp
from soaktop.engine.load.workers import START_TIMEOUT_S, Handle, Pool

#: Round trips per clock estimate; the shortest gives it.
CLOCK_PROBES = 16
#: A new estimate of each worker's clock this often.
CLOCK_EVERY_S = 60.0
#: A ``poll`` with nothing to return waits this long for something (a worker reports its
#: health every second, so an idle one still answers about that often).
POLL_WAIT_S = 1.0
INSTALL = "--ray needs Ray: install soaktop[cluster] (pip install 'soaktop[cluster]')"


def import_ray() -> Any:
    """Ray, or a one-line ConfigError that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


def connect(address: str) -> tuple[Any, bool]:
    """Ray, connected to the cluster at ``address`` (``auto``: the one running here, or
    ``$RAY_ADDRESS``'s); and whether this call connected it (False: it already was, as a
    program or a test that started its own). A cluster that cannot be reached is one line."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    _answers(address)  # Ray itself retries a dead address for minutes, in many lines
    try:
        ray.init(address=address, log_to_driver=False, logging_level="error",
                 configure_logging=False, include_dashboard=False)
    except Exception as exc:  # ConnectionError, or anything Ray says instead
        words = str(exc).strip().splitlines()
        raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster"
                          + (f" ({words[0][:200]})" if words else "")) from None
    return ray, True


def _answers(address: str) -> None:
    """A ConfigError unless the cluster's address (its GCS: ``host:port``; ``auto``: the one
    ``ray start`` left here, or ``$RAY_ADDRESS``) takes a TCP connection within 3 s."""
    target: str | None = address.removeprefix("ray://")
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception as exc:  # no cluster found here: said as Ray says it
            raise ConfigError(f"--ray auto: no running Ray cluster found here "
                              f"({_first_line(exc)})") from None
        if target is None:
            raise ConfigError("--ray auto: no running Ray cluster found here (ray start?)")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3).close()
    except ValueError:
        raise ConfigError(f"--ray {address}: give the cluster's address as host:port, "
                          "or auto") from None
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers at {target} "
                          f"({exc.strerror or exc})") from None


def nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's live nodes that have a CPU for a worker, in a stable order."""
    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0)]
    return sorted(alive, key=lambda n: n["NodeID"])


#: The items that carry a stamp: a send, an arrival, an end.
_STAMPED = frozenset((wp.SENT, wp.ARRIVED, wp.END))


def _moved(item: tuple, delta_ns: int) -> tuple:
    """A stamped item (one of :data:`_STAMPED`) with its stamp moved by ``delta_ns``: the one
    place that knows where each item keeps its stamp."""
    if item[0] == wp.END:
        return (*item[:5], item[5] + delta_ns, *item[6:])  # its output text kept
    return (item[0], item[1], item[2] + delta_ns, *item[3:])


def shifted(items: list[tuple], delta_ns: int) -> list[tuple]:
    """``items`` with every stamp moved by ``delta_ns`` (a send, an arrival, an end)."""
    if not delta_ns:
        return items
    return [_moved(item, delta_ns) if item[0] in _STAMPED else item for item in items]


class _Worker:
    """A worker as an async Ray actor: the serving loop of a worker process (its commands,
    items and batches), its messages carried by calls instead of a pipe.

    ``clock_shift_ns`` adds a known amount to every stamp it gives (its clock's reading and
    its items'): a test's stand-in for a host whose monotonic clock has another origin."""

    def __init__(self, clock_shift_ns: int = 0) -> None:
        self.shift = clock_shift_ns
        self.items: list[tuple] = []
        self.worker: wp._Worker | None = None
        self.serving: asyncio.Future | None = None
        self.waiting: asyncio.Event | None = None
        self.posted: dict[int, list[tuple]] = {}  # commands that came before their turn
        self.next_seq = 0

    async def clock(self) -> int:
        return time.perf_counter_ns() + self.shift

    async def where(self) -> dict[str, Any]:
        import ray

        return {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id()}

    async def start(self, setup: dict[str, Any]) -> tuple[int, Any]:
        """Start the backend ``setup`` names; ``(READY, describe)`` or ``(FAILED, why)``."""
        self.waiting = asyncio.Event()
        try:
            backend, health = await wp.open_backend(setup)
        except BaseException as exc:
            return wp.FAILED, wp._portable(exc)
        self.worker = wp._Worker(self._put, backend, health)
        self.serving = asyncio.ensure_future(wp.serve(self.worker))
        return wp.READY, backend.describe()

    def _put(self, items: list[tuple]) -> None:
        self.items += shifted(items, self.shift)
        self.waiting.set()

    async def post(self, seq: int, messages: list[tuple]) -> None:
        """An iteration's commands from the session, numbered ``seq`` (0, 1, ...): an async
        actor may run calls out of their order, so each list waits for those before it."""
        self.posted[seq] = messages
        while self.next_seq in self.posted:
            for message in self.posted.pop(self.next_seq):
                self.worker.command(message)
            self.next_seq += 1

    async def poll(self, wait_s: float) -> list[tuple]:
        """Every item gathered since the last poll; waits up to ``wait_s`` for one."""
        if not self.items:
            self.waiting.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.waiting.wait(), wait_s)
        items, self.items = self.items, []
        return items

    async def stop(self) -> list[tuple]:
        """End the run here (requests cancelled, backend closed); the last items."""
        if self.worker is not None:
            self.worker.finish()
            with contextlib.suppress(Exception):
                await self.serving
        items, self.items = self.items, []
        return items


class _Actor(Handle):
    """One worker actor as the pool sees it: where it runs, and its clock's offset."""

    def __init__(self, index: int, actor: Any) -> None:
        super().__init__(index)
        self.actor = actor
        self.where: dict[str, Any] = {}
        self.offset_ns = 0  # its clock minus the session's
        self.uncertainty_ns: int | None = None
        self.listening: asyncio.Task | None = None
        self.seq = 0  # of the next list of commands

    def send(self, messages: list[tuple]) -> None:
        self.actor.post.remote(self.seq, messages)  # numbered: applied in order there
        self.seq += 1

    def lost(self) -> str:
        host = self.where.get("host", "?")
        return f"worker {self.index} (Ray actor on {host}) lost"


class RayPool(Pool):
    """The backend ``kind`` with ``options``, its streams read by ``workers`` Ray actors
    spread over the nodes of the cluster Ray is connected to (see :func:`connect`): worker
    ``i`` on node ``i mod nodes``, one CPU each.

    ``clock_shifts_ns``: worker ``i``'s clock reads this much ahead (tests); ``owns_ray``:
    disconnect from the cluster when closed (the pool's own connection)."""

    #: A worker that answers no poll this long (it reports its health every second) is hung.
    SILENT_S = 15.0

    #: An actor may run on another host, whose monotonic clock has another origin: the
    #: session waits for a planned moment and posts the request then.
    holds_sends: ClassVar[bool] = False

    def __init__(self, kind: str, options: dict[str, Any], workers: int, address: str = "auto",
                 clock_shifts_ns: Sequence[int] = (), owns_ray: bool = False) -> None:
        super().__init__(kind, options, workers)
        self.address = address
        self.clock_shifts_ns = tuple(clock_shifts_ns)
        self.owns_ray = owns_ray
        self.clock_every_s = CLOCK_EVERY_S
        #: The clock estimates the session has not yet recorded, in order: ``(perf_counter_ns,
        #: worker_id, host, offset_ns, uncertainty_ns)``; :meth:`events` takes them (and so
        #: empties it: a long run holds none it has recorded).
        self.clock_estimates: list[tuple[int, int, str, int, int]] = []
        self._clock_task: asyncio.Task | None = None
        self._ray: Any = None

    # -- start and stop --------------------------------------------------------------------
    async def start(self) -> None:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            self._ray, self.owns_ray = connect(self.address)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        where = nodes(ray)
        if not where:
            raise BackendUnavailable("the Ray cluster has no live node with a CPU")
        remote = ray.remote(_Worker)
        try:
            for index in range(self.workers):
                node = where[index % len(where)]["NodeID"]
                shift = self.clock_shifts_ns[index] if index < len(self.clock_shifts_ns) else 0
                actor = remote.options(
                    num_cpus=1, max_concurrency=1000, name=f"soaktop-{self.run_id}-{index}",
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
                ).remote(shift)
                self._procs.append(_Actor(index, actor))
            answers = await asyncio.gather(*(self._first(proc) for proc in self._procs))
            failures = [answer for kind, answer in answers if kind != wp.READY]
            if failures:
                raise failures[0]
            self._described = answers[0][1]
            await asyncio.gather(*(self._estimate(proc) for proc in self._procs))
        except BaseException:
            await self.close()
            raise
        loop = asyncio.get_running_loop()
        for proc in self._procs:
            proc.heard_ns = time.perf_counter_ns()
            proc.listening = loop.create_task(self._listen(proc))
        self._clock_task = loop.create_task(self._keep_time())

    async def _first(self, proc: _Actor) -> tuple[int, Any]:
        """Where the actor runs, and its first word: ready, or why not."""
        try:
            proc.where = await asyncio.wait_for(self._await(proc.actor.where.remote()),
                                                START_TIMEOUT_S)
            answer = await asyncio.wait_for(self._await(proc.actor.start.remote(self._setup())),
                                            START_TIMEOUT_S)
        except asyncio.TimeoutError:
            return wp.FAILED, BackendUnavailable(
                f"worker {proc.index} (a Ray actor) did not start within {START_TIMEOUT_S:g} s "
                "(too few CPUs free in the cluster?)")
        except Exception as exc:
            return wp.FAILED, BackendUnavailable(
                f"worker {proc.index} (a Ray actor) failed to start: {_first_line(exc)}")
        return answer

    @staticmethod
    async def _await(ref: Any) -> Any:
        return await ref

    async def close(self) -> None:
        """Stop every worker (its requests end there), then its actor; and Ray, if ours."""
        procs, self._procs = self._procs, []
        if self._clock_task is not None:
            self._clock_task.cancel()
        for proc in procs:
            if proc.listening is not None:
                proc.listening.cancel()
        stopping = []
        for proc in procs:
            if proc.alive:
                proc.flush()
                proc.alive = False
                stopping.append(self._await(proc.actor.stop.remote()))
        if stopping:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*stopping, return_exceptions=True), 5.0)
        for proc in procs:
            with contextlib.suppress(Exception):
                self._ray.kill(proc.actor)
        if self.owns_ray and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
            self.owns_ray = False

    # -- what comes back -------------------------------------------------------------------
    async def _listen(self, proc: _Actor) -> None:
        """One poll out at a time, each answer's stamps moved onto the session's clock and
        handed to the requests they concern."""
        while proc.alive:
            try:
                items = await asyncio.wait_for(self._await(proc.actor.poll.remote(POLL_WAIT_S)),
                                               self.SILENT_S)
            except asyncio.TimeoutError:
                proc.crash = f"it answered nothing for {self.SILENT_S:g} s, and was killed"
                with contextlib.suppress(Exception):
                    self._ray.kill(proc.actor)
                self._lost(proc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor died (RayActorError), or its node did
                proc.crash = proc.crash or _first_line(exc)
                self._lost(proc)
                return
            proc.heard_ns = time.perf_counter_ns()
            if items and proc.alive:
                self._batch(proc, self._on_session_clock(proc, items))

    @staticmethod
    def _on_session_clock(proc: _Actor, items: list[tuple]) -> list[tuple]:
        """``items`` with their stamps moved onto the session's clock: each request's by the
        offset in force when it was sent, so that a new estimate mid-request moves none of
        its latencies (they stay differences of the worker's own stamps)."""
        flights, now = proc.flights, proc.offset_ns
        out = []
        for item in items:
            if item[0] in _STAMPED:
                flight = flights.get(item[1])
                if flight is None:  # cancelled here already: dropped by _batch
                    continue
                if flight.offset_ns is None:
                    flight.offset_ns = now
                item = _moved(item, -flight.offset_ns)
            out.append(item)
        return out

    # -- clocks ----------------------------------------------------------------------------
    async def _estimate(self, proc: _Actor) -> None:
        """``proc``'s clock offset from :data:`CLOCK_PROBES` round trips (the shortest)."""
        best: tuple[int, int, int] | None = None
        for _ in range(CLOCK_PROBES):
            t0 = time.perf_counter_ns()
            tw = await proc.actor.clock.remote()
            t1 = time.perf_counter_ns()
            if best is None or t1 - t0 < best[1] - best[0]:
                best = (t0, t1, tw)
        t0, t1, tw = best
        proc.offset_ns = tw - (t0 + t1) // 2
        proc.uncertainty_ns = (t1 - t0 + 1) // 2
        self.clock_estimates.append((t1, proc.index, proc.where.get("host", ""),
                                     proc.offset_ns, proc.uncertainty_ns))

    async def _keep_time(self) -> None:
        while True:
            await asyncio.sleep(self.clock_every_s)
            for proc in self._procs:
                if proc.alive:
                    with contextlib.suppress(Exception):  # its loss is the listener's to say
                        await self._estimate(proc)

    def events(self, origin_ns: int) -> list[WorkerClock]:
        """A ``worker_clock`` for each estimate not yet recorded (those of the start at 0)."""
        taken, self.clock_estimates = self.clock_estimates, []
        return [WorkerClock(max(0, t - origin_ns), index, host, offset, uncertainty)
                for t, index, host, offset, uncertainty in taken]

    def describe(self) -> dict[str, Any]:
        """The first worker's backend's description, and every worker's place and clock."""
        facts = super().describe()
        facts["ray_workers"] = [
            {"worker_id": p.index, **p.where, "offset_ns": p.offset_ns,
             "uncertainty_ns": p.uncertainty_ns} for p in self._procs]
        return facts


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
