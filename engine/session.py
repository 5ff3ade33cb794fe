"""A session: one run of load against one backend, from header to end, with its record.

The session owns the clock (``time.perf_counter_ns()``, relative to its start), the phases,
warm-up, the end conditions and the listeners that receive every event in order (statistics,
recorder, status line, TUI). Commands (:meth:`set_concurrency`, :meth:`mark`, :meth:`stop`)
may arrive at any time from the same event loop.

Telemetry sources are sampled on threads of their own; their events are handed to the loop
(``call_soon_threadsafe``) and emitted there, so listeners only ever run on the loop and see
one ordered stream. Samples that arrive after the session ended are dropped.

With ``--workers N`` the streams are read in worker processes, which the session sees as one
backend (:mod:`soaktop.engine.load.workers`): everything above stays here, in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from soaktop.engine.backends.base import (
    Arrival,
    Backend,
    DirectArrivals,
    GenerationRequest,
    Prompt,
    RequestSent,
    StreamEnd,
)
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import BackendError, ConfigError
from soaktop.engine.events import (
    SCHEMA_VERSION,
    ClientSample,
    EndReason,
    Mark,
    Phase,
    PhaseReason,
    RequestDone,
    SessionEnd,
    SessionStart,
    TokensArrived,
)
from soaktop.engine.load.conversations import Conversation, placeholder
from soaktop.engine.load.loops import ClosedLoop, Load, OpenLoop
from soaktop.engine.load.stop_conditions import RunWatch
from soaktop.engine.load.turnstile import Turnstile
from soaktop.engine.load.workers import worst_health
from soaktop.engine.load.workloads import Workload
from soaktop.engine.metrics.client_health import ClientHealth
from soaktop.engine.records import environment
from soaktop.engine.records.format import RecordWriter
from soaktop.engine.records.outputs import OutputWriter, outputs_path
from soaktop.engine.telemetry import Sampler, Source, build_sources
from soaktop.engine.wakeups import until

Listener = Callable[[Any], None]


@dataclass(slots=True)
class _RequestState:
    """One request while it runs: when it was due and when it went out, what arrived, and how
    it ended."""

    request_id: int
    #: When it should have gone out: its slot freed (closed loop; or the end of a Retry-After
    #: hold), or its planned time (open loop).
    due_ns: int
    #: When it actually went out: the backend's stamp, else when the session asked for it.
    sent_ns: int
    open_loop: bool
    send_noted: bool = False  # its lateness has gone to the client's health
    arrivals: list[int] = field(default_factory=list)  # µs after latency_from_ns
    tokens: list[int] = field(default_factory=list)
    thinking: list[bool] = field(default_factory=list)  # per arrival: reasoning, not answer
    finish: str = "length"
    error_class: str | None = None
    error_message: str | None = None
    server: dict[str, Any] | None = None
    refused: bool = False
    end_ns: int | None = None
    worker_id: int = 0  # the worker process that read it (--workers); 0 in this process
    #: Each arrival's text, kept only with ``--tokenizer`` (to count its tokens at the end
    #: when the server reports no count: soaktop.engine.load.tokenizer) or
    #: ``--save-outputs`` (soaktop.engine.records.outputs); None otherwise, so a run that
    #: wants neither holds no text.
    texts: list[str] | None = None
    #: The whole (answer, reasoning) text, where the backend handed it over at the end
    #: (a worker process) instead of with each arrival.
    output: tuple[str, str] | None = None

    @property
    def latency_from_ns(self) -> int:
        """Where its latencies run from. In an open loop that is the planned time, so a late
        send counts (no coordinated omission); in a closed loop, the send itself."""
        return self.due_ns if self.open_loop else self.sent_ns

    @property
    def queued_us(self) -> int:
        """How long after its planned time it went out (open loop; 0 in a closed loop)."""
        return max(0, self.sent_ns - self.due_ns) // 1000 if self.open_loop else 0

    def fail(self, error_class: str, message: str) -> None:
        self.finish, self.error_class, self.error_message = "error", error_class, message


class Session:
    def __init__(
        self,
        config: RunConfig,
        backend: Backend,
        record_path: Path | None = None,
        listeners: tuple[Listener, ...] = (),
        sources: Sequence[Source] | None = None,
        while_running: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        """``sources``: telemetry sources to sample; by default those ``config.telemetry``
        names (pass them explicitly when a URL needs credentials the config must not keep).

        ``while_running``: a context the session enters once its backend has started, just
        before its clock starts, and leaves when the run has ended. It is where a caller
        holds a process-wide setting for the run alone (the command line freezes the garbage
        collector there); the session itself changes no process-wide state.
        """
        self.config = config
        self.backend = backend
        self.record_path = record_path
        self.recorder: RecordWriter | None = None
        #: ``--save-outputs``: the side file's writer, beside the record, while the run runs.
        self.outputs: OutputWriter | None = None
        self._listeners: list[Listener] = list(listeners)
        #: Each request's prompt and output length (a PromptSet's prompts, unless a prompt
        #: file, a length distribution or a tokenizer is asked for).
        self.prompts = Workload(config)
        self._origin_ns = 0
        self._phase: Phase | None = None
        self._started = 0  # requests launched, warm-up included
        self._loop: Load | None = None
        self._end_reason = EndReason.COMPLETED
        self._stopped = asyncio.Event()
        #: Set once the header is out and the clock runs (after the backend has started).
        self.started = asyncio.Event()
        self.model = config.model
        self._not_before_ns = 0  # a server's Retry-After holds new sends until then
        self._succeeded = False
        #: Before any success: the class of the last failures, how many in a row, whether
        #: each was refused, and whether they are all the run's requests so far.
        self._failing: tuple[str, int, bool, bool] = ("", 0, True, True)
        #: Why the run gave up, in one line, when ``SessionEnd.reason`` is ``EndReason.FAILED``.
        self.failure: str | None = None
        #: Why a ``--stop-when`` term or over-saturation ended the run, in one line (reason
        #: ``stop_condition`` or ``saturated``), and the session_end's detail for it; the
        #: latest over-saturation warning when it only warns (soaktop.engine.load.stop_conditions).
        self.stopped_by: str | None = None
        self._stop_detail: dict[str, Any] = {}
        self.warning: str | None = None
        if sources is None:
            sources = build_sources(config.telemetry, config.watch_pid,
                                    local_engine=config.backend == "local")
        self._sources = list(sources)
        self._samplers: list[Sampler] = []
        self._ended = False
        self._tokens_received = 0  # content tokens so far, for the once-a-second ClientSample
        self._resume_to: int | None = None  # the concurrency to go back to, while paused
        #: Set except while paused: a conversation's later turn waits on it (pause, resume).
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._health = ClientHealth()
        #: Arrivals stamped by the kernel: read lag, not the loop's, says if they were biased.
        self._kernel_stamps = backend.watch_reads(self._health.read)
        self._turnstile = Turnstile()
        self._placeholder_said = False  # conversations: a reply without text was said
        #: Where a fact of the run is said in one line (the command line's stderr); the
        #: factory sets it. A backend's notices (a worker lost) go here and into the record.
        self.say: Callable[[str], None] = lambda text: None
        #: As passed to the constructor; may be set in its place until :meth:`run`.
        self.while_running = while_running

    # -- clock and events ------------------------------------------------------------------
    def now_ns(self) -> int:
        """Nanoseconds since the session started."""
        return time.perf_counter_ns() - self._origin_ns

    @property
    def origin_ns(self) -> int:
        """The ``perf_counter_ns()`` reading that event times are relative to."""
        return self._origin_ns

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: Any) -> None:
        for listener in self._listeners:
            listener(event)

    def _emit_telemetry(self, events: list[Any]) -> None:
        if not self._ended:
            for event in events:
                self._emit(event)

    def _start_telemetry(self) -> None:
        loop = asyncio.get_running_loop()

        def deliver(events: list[Any]) -> None:  # on a sampler's thread
            try:
                loop.call_soon_threadsafe(self._emit_telemetry, events)
            except RuntimeError:  # the loop has closed: the session is over
                pass

        for source in self._sources:
            sampler = Sampler(source, self.config.telemetry_hz, self.now_ns, deliver)
            sampler.start()
            self._samplers.append(sampler)

    def _stop_telemetry(self) -> None:
        for sampler in self._samplers:
            sampler.request_stop()
        for sampler in self._samplers:
            sampler.stop(timeout_s=1.0)
        self._samplers.clear()

    async def _client_samples(self, every_ns: int = 10**9) -> None:
        """A :class:`ClientSample` each second, on the second of the session clock: what the
        client saw (in flight, tokens) and how healthy it was
        (soaktop.engine.metrics.client_health)."""
        last_t, last_tokens = 0, 0
        tick = every_ns
        probe = asyncio.ensure_future(self._health.probe())
        try:
            while True:
                await asyncio.sleep(max(0.0, (tick - self.now_ns()) / 1e9))
                now, tokens = self.now_ns(), self._tokens_received
                workers = self.backend.health()
                health = worst_health(self._health.take(), workers)
                for event in self.backend.events(self._origin_ns):  # a worker's clock
                    self._emit(event)
                self._emit(ClientSample(
                    now, self.in_flight, tokens - last_tokens, now - last_t,
                    loop_lag_p99_us=health.loop_lag_p99_us,
                    cpu_percent=round(health.cpu_percent, 1),
                    send_lateness_p99_us=health.send_lateness_p99_us,
                    loop_cpu_percent=round(health.loop_cpu_percent, 1),
                    kernel_stamps=self._kernel_stamps,
                    read_lag_p99_us=health.read_lag_p99_us,
                    read_gap_p10_us=health.read_gap_p10_us,
                    workers=tuple(w.of_worker() for w in workers)))
                last_t, last_tokens = now, tokens
                tick = (now // every_ns + 1) * every_ns
        finally:
            probe.cancel()

    # -- commands --------------------------------------------------------------------------
    @property
    def _open_loop(self) -> bool:
        """Requests go out at planned times (``--rate``, or a trace's own), not to keep a
        concurrency."""
        return self._first_rate is not None

    @property
    def _first_rate(self) -> float | None:
        """The rate a run starts at: ``--rate``, or a trace's mean over its replay."""
        if self.prompts.trace is not None:
            return self.prompts.trace.mean_rate
        return self.config.rate

    @property
    def in_flight(self) -> int:
        return self._loop.in_flight if self._loop else 0

    @property
    def concurrency(self) -> int:
        return self._phase.concurrency if self._phase else self.config.concurrency

    def set_concurrency(self, n: int, reason: PhaseReason | str = PhaseReason.COMMAND) -> None:
        """Start a new phase at ``n`` requests in flight; takes effect at once when raising."""
        self.change(concurrency=n, reason=reason)

    def switch_model(self, model: str, reason: PhaseReason | str = PhaseReason.COMMAND) -> None:
        """Send new requests to ``model`` from now on, in a new phase; in-flight ones finish."""
        self.change(model=model, reason=reason)

    async def load_and_switch(self, model: str,
                              reason: PhaseReason | str = PhaseReason.COMMAND) -> None:
        """Have the backend ready ``model`` (the local engine builds it, seconds for a big
        preset, while the old one keeps serving), then switch to it."""
        if model != self.model:
            await self.backend.prepare(model)
        self.switch_model(model, reason)

    def change(self, concurrency: int | None = None, model: str | None = None,
               reason: PhaseReason | str = PhaseReason.COMMAND) -> None:
        """Concurrency and/or model changed together: one new phase (none if nothing changes).

        Raising concurrency takes effect at once; lowering it lets requests finish; requests
        already sent to the old model finish there.
        """
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1 (got {concurrency})")
        if model is not None and not model:
            raise ConfigError("a model name is needed")
        if self._phase is None:
            return
        if concurrency is not None and self._open_loop:
            raise ConfigError("this run keeps a rate, not a concurrency: use set_rate")
        if self._resume_to is not None and concurrency is not None:
            self._resume_to = concurrency  # paused: the new level applies on resume
            concurrency = None
        new_concurrency = concurrency is not None and concurrency != self._phase.concurrency
        new_model = model is not None and model != self.model
        if not (new_concurrency or new_model):
            return
        if new_model:
            self.model = model
        self._new_phase(reason, concurrency=concurrency if new_concurrency else None)
        if new_concurrency and self._loop is not None:
            self._loop.set_target(concurrency)

    @property
    def current_phase(self) -> Phase | None:
        return self._phase

    @property
    def ended(self) -> bool:
        """The run is over (its session_end is out)."""
        return self._ended

    @property
    def paused(self) -> bool:
        return self._resume_to is not None

    @property
    def target_rate(self) -> float | None:
        """The open loop's rate, or the one it returns to when paused; None: closed loop."""
        if not self._open_loop:
            return None
        return self._resume_to if self.paused else self.rate

    @property
    def rate(self) -> float | None:
        """Requests a second in an open loop (0 while paused); None in a closed loop."""
        return self._phase.rate if self._phase else self._first_rate

    def set_rate(self, rate: float, reason: PhaseReason | str = PhaseReason.COMMAND) -> None:
        """A new arrival rate (open loop only), in a new phase, from now on."""
        if self.config.trace is not None:
            raise ConfigError("a trace replay keeps the trace's own times (--trace-speed)")
        if self.config.rate is None:
            raise ConfigError("this run keeps a concurrency, not a rate (--rate starts one)")
        if rate <= 0:
            raise ConfigError(f"a rate must be above 0 requests/s (got {rate:g})")
        if self._phase is None or rate == self._phase.rate:
            return
        if self.paused:
            self._resume_to = rate
            return
        self._new_phase(reason, rate=rate)
        if self._loop is not None:
            self._loop.set_target(rate)

    @property
    def target_concurrency(self) -> int:
        """The concurrency the load runs at, or returns to when paused."""
        return self._resume_to if self._resume_to is not None else self.concurrency

    def pause(self, reason: PhaseReason | str = PhaseReason.PAUSED) -> None:
        """Send nothing new (a phase at concurrency 0); requests in flight finish."""
        if self._phase is None or self.paused:
            return
        if self._open_loop:  # open loop: pause the arrivals
            self._resume_to = self._phase.rate
            self._new_phase(reason, rate=0.0)
        else:
            self._resume_to = self._phase.concurrency
            self._new_phase(reason, concurrency=0)
        self._unpaused.clear()
        if self._loop is not None:
            self._loop.set_target(0)

    def resume(self, reason: PhaseReason | str = PhaseReason.RESUMED) -> None:
        """Load again at the concurrency before the pause (or the one set while paused)."""
        if not self.paused:
            return
        level, self._resume_to = self._resume_to, None
        self._unpaused.set()
        if self._open_loop:
            self._new_phase(reason, rate=level)
        else:
            self._new_phase(reason, concurrency=level)
        if self._loop is not None:
            self._loop.set_target(level)

    def mark(self, note: str) -> None:
        self._emit(Mark(t_ns=self.now_ns(), note=note))

    async def _watch_conditions(self) -> None:
        """``--stop-when`` and an open loop's over-saturation, judged every tick while the run
        runs (soaktop.engine.load.stop_conditions): one that stops ends the run with its
        reason and its line (``stopped_by``, the session_end's detail); a warning is said,
        marked in the record and kept in ``warning``, and the run goes on."""
        watch = RunWatch(self.config)
        if not watch.needed:
            return
        self.add_listener(watch.add)
        if self._phase is not None:
            watch.add(self._phase)  # the phase that began before this watch
        warned_in: int | None = None  # the phase of the warning: a new one clears it
        while not self._stopped.is_set():
            await asyncio.sleep(watch.every_s)
            phase_id = self._phase.phase_id if self._phase is not None else None
            if self.warning and phase_id != warned_in:
                self.warning = None
            owed = self.in_flight + getattr(self._loop, "backlog", 0)
            verdict = watch.tick(self.now_ns(), owed, self._tokens_received)
            if verdict is None or self._stopped.is_set():
                continue
            if verdict.stop:
                self.stopped_by, self._stop_detail = verdict.explanation, verdict.detail
                self.stop(verdict.reason)
                return
            self.warning, warned_in = verdict.explanation, phase_id
            self.say(f"warning: {verdict.explanation}")
            self.mark(verdict.explanation)

    def _notice(self, line: str, fatal: bool = False) -> None:
        """A backend's fact of the run (a worker process lost): said, and a mark in the
        record; ``fatal``: the run cannot go on (no worker left), so it ends as failed."""
        self.say(line)
        if not self._ended:
            self.mark(line)
        if fatal:
            self.failure = line
            self.stop(EndReason.FAILED)

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the run: in-flight requests are cancelled and the record is closed."""
        if not self._stopped.is_set():
            self._end_reason = reason
            self._stopped.set()

    # -- the run ---------------------------------------------------------------------------
    def _new_phase(self, reason: PhaseReason | str, concurrency: int | None = None,
                   rate: float | None = None) -> None:
        previous = self._phase
        if rate is None:
            rate = previous.rate if previous is not None else self._first_rate
        self._phase = Phase(
            t_ns=self.now_ns(),
            phase_id=0 if previous is None else previous.phase_id + 1,
            concurrency=concurrency if concurrency is not None else (
                previous.concurrency if previous else 0),
            model=self.model,
            backend=self.config.backend,
            reason=reason,
            warmup=self._started < self.config.warmup,
            rate=rate,
        )
        self._emit(self._phase)

    #: When a run gives up on a failure that is certain (see :meth:`_give_up_on_failures`).
    GIVE_UP_AFTER = 20  # requests failed alike in a row, or twice the concurrency if more
    GIVE_UP_REFUSED = 8  # ... where each was refused, or the concurrency if more
    GIVE_UP_WINDOW_S = 10.0  # ... or, this far into the run, every request so far
    GIVE_UP_FEW = 4  # ... if at least this many

    def _give_up_on_failures(self, done: RequestDone, refused: bool) -> None:
        """Stop a run whose requests all fail, the same way, before any has succeeded.

        A server that answers every request with a login page, a wrong model name, a missing
        API key, a prompt too long for the model: a mistake or a broken set-up, not a soak
        result, and without this the closed loop would repeat it thousands of times a second.
        The run stops when nothing has succeeded yet and the last requests to end all failed
        with one class, as many as:

        - ``GIVE_UP_REFUSED`` (8) or the concurrency, if more, where each was ``refused``
          (the request itself was wrong: an HTTP 4xx other than 408 and 429, a prompt too
          long). The same request cannot succeed when sent again, so one round of the
          closed loop is proof enough;
        - ``GIVE_UP_AFTER`` (20) or twice the concurrency, if more, whatever the class. Two
          rounds, because the first round goes out at once and may fail together from one
          passing cause (a proxy or a server restarting): the second was sent after the
          first had failed. And at least 20 because, at a low concurrency, a server that
          fails half its requests at random fails 20 in a row once in a million runs, while
          20 quick failures cost milliseconds;
        - or, once the run is ``GIVE_UP_WINDOW_S`` (10 s) old, every request that ended so
          far, if at least ``GIVE_UP_FEW`` (4): failures that come slowly (timeouts, an
          open loop's low rate) would take minutes to reach 20.

        A single success disarms this for the run (a server that fails some requests is a
        soak result); another class starts the count again; requests cut off by the end of
        the run do not count. ``--keep-going`` (``config.keep_going``) turns it off.
        """
        if done.ok:
            self._succeeded = True
        if self._succeeded or done.error_class is None or self.config.keep_going:
            return
        cls, count, all_refused, from_start = self._failing
        if done.error_class == cls:
            count, all_refused = count + 1, all_refused and refused
        else:
            count, all_refused, from_start = 1, refused, cls == ""
        self._failing = (done.error_class, count, all_refused, from_start)
        concurrency = self.concurrency
        enough = (max(self.GIVE_UP_REFUSED, concurrency) if all_refused
                  else max(self.GIVE_UP_AFTER, 2 * concurrency))
        late = (from_start and count >= self.GIVE_UP_FEW
                and done.t_ns >= self.GIVE_UP_WINDOW_S * 1e9)
        if (count >= enough or late) and self.failure is None and not self._stopped.is_set():
            how = "was refused" if all_refused else "failed"
            example = " ".join((done.error_message or "").split())
            self.failure = (f"every request {how} as {done.error_class} ({count} so far, "
                            f"none succeeded; --keep-going runs on): {example}")
            self.stop(EndReason.FAILED)

    def _take(self) -> tuple[int, bool] | None:
        """The next request's number and whether it warms up; None when the request budget
        is spent."""
        cfg = self.config
        if cfg.max_requests is not None and self._started >= cfg.warmup + cfg.max_requests:
            return None
        warmup = self._started < cfg.warmup
        if not warmup and self._phase.warmup:
            self._new_phase(PhaseReason.WARMUP_DONE)
        request_id = self._started
        self._started += 1
        return request_id, warmup

    def _launch(self, due_ns: int | None = None):
        """The next request's coroutine, or conversation's (``--turns``); None when the
        request budget is spent. ``due_ns`` is its planned time in an open loop."""
        taken = self._take()
        if taken is None:
            return None
        request_id, warmup = taken
        open_loop = due_ns is not None
        due_ns = due_ns if open_loop else self.now_ns()
        if self.prompts.turns > 1:
            return self._conversation(request_id, warmup, due_ns, open_loop)
        return self._request(request_id, self._phase.phase_id, self.model, warmup,
                             due_ns=due_ns, open_loop=open_loop)

    async def _conversation(self, request_id: int, warmup: bool, due_ns: int,
                            open_loop: bool) -> None:
        """A conversation's turns, one after another, each with the history so far
        (soaktop.engine.load.conversations). Its first turn is due as any request; a later
        one goes out after the think time, due from then. A turn that fails or is cut off
        ends the conversation: there is no reply to carry on with."""
        first = self.prompts.prompt(request_id)
        talk = Conversation(request_id, self.prompts.turns, first)
        for turn in range(talk.turns):
            if turn:
                await asyncio.sleep(self.prompts.think_time.draw(self.prompts.seed,
                                                                 talk.conversation_id, turn))
                while self.paused:  # a pause sends nothing new: later turns wait it out
                    await self._unpaused.wait()
                taken = self._take()
                if taken is None:
                    return
                request_id, warmup = taken
                due_ns, open_loop = self.now_ns(), False
            own = None if talk.script is not None else (
                first if turn == 0 else self.prompts.prompt(request_id))
            prompt = talk.prompt(turn, request_id, own, self.prompts.encode)
            reply = await self._request(request_id, self._phase.phase_id, self.model, warmup,
                                        due_ns, open_loop, prompt=prompt, turn=(talk, turn))
            if reply is None:
                return
            talk.reply(reply)

    async def _request(self, request_id: int, phase_id: int, model: str, warmup: bool,
                       due_ns: int = 0, open_loop: bool = False, prompt: Prompt | None = None,
                       turn: tuple[Conversation, int] | None = None) -> str | None:
        """One request, from its wait to be sent to its ``RequestDone``; ``due_ns`` is when it
        should have gone out (its slot freed, or its planned time in an open loop).

        ``prompt`` and ``turn``: a conversation's turn, its prompt made with the history;
        then it returns the reply's text for the next turn (None where it did not succeed)."""
        due_ns = await self._wait_to_send(due_ns, open_loop)
        if due_ns is None:
            return None  # the run ended before this request was ever sent
        # planned: a backend that holds sends is handed it now, a little early (OpenLoop's
        # PREPARE_NS), and sends it then; for any other, _wait_to_send waited for the moment
        send_at_ns = (due_ns + self._origin_ns
                      if open_loop and self.backend.holds_sends else None)
        if prompt is None:
            prompt = self.prompts.prompt(request_id)
        worker = self.backend.pick_worker()
        want_text = (self.prompts.tokenizer is not None or self.outputs is not None
                     or turn is not None)
        request = GenerationRequest(request_id, prompt, self.prompts.max_tokens(request_id),
                                    model, worker, want_text=want_text, send_at_ns=send_at_ns)
        state = _RequestState(request_id, due_ns, sent_ns=self.now_ns(), open_loop=open_loop,
                              worker_id=worker)
        if want_text:
            state.texts = []
        try:
            async with contextlib.aclosing(self.backend.stream(request)) as stream:
                await self._consume(stream, state)
        except asyncio.CancelledError:
            state.finish = "cancelled"  # the run ended under it; recorded, then the task ends
        except BackendError as exc:
            state.fail(exc.error_class, str(exc))
            state.refused = exc.refused
            if exc.output is not None:  # a worker's text so far, for --save-outputs
                state.output = exc.output
            if exc.retry_after_s:
                self._hold_sends_for(exc.retry_after_s)
        except Exception as exc:  # a backend bug must cost one request, not the soak
            state.fail("unexpected", f"{type(exc).__name__}: {exc}")
        if state.end_ns is None:
            state.end_ns = self.now_ns()
        if self.outputs is not None:
            self._save_output(state)
        done = self._request_done(state, phase_id, model, warmup, len(prompt.token_ids))
        if turn is not None:
            done = dataclasses.replace(done, conversation=turn[0].conversation_id,
                                       turn=turn[1])
        self._emit(done)
        self._give_up_on_failures(done, state.refused)
        return self._reply(state) if turn is not None and done.ok else None

    def _reply(self, state: _RequestState) -> str:
        """A conversation turn's answer, as the next turn carries it: its text (reasoning left
        out), or, where the backend gave none, a placeholder of its length (said once)."""
        if state.output is not None:
            answer = state.output[0]
        else:
            answer = "".join(t for t, r in zip(state.texts or (), state.thinking) if not r)
        if answer or not state.tokens:
            return answer
        if not self._placeholder_said:
            self._placeholder_said = True
            self._notice("conversations: the backend gave no reply text; later turns carry "
                         "a placeholder of one pseudo-word per output token")
        tokens = sum(k for k, r in zip(state.tokens, state.thinking) if not r)
        return placeholder(tokens)

    # -- a request's parts: its wait, its stream, its record ---------------------------------
    async def _wait_to_send(self, due_ns: int, open_loop: bool) -> int | None:
        """Wait out a server's Retry-After, then this request's turn to go out, then, in an
        open loop with a backend that does not hold sends, its planned moment (to the tenth
        of a millisecond: soaktop.engine.wakeups); returns when it is due from, or None when
        the run ended while it waited."""
        try:
            due_ns = await self._back_off(due_ns, open_loop)
            await self._turnstile.turn()  # a wave of sends goes out one per loop iteration
            if open_loop and not self.backend.holds_sends:
                await until(due_ns + self._origin_ns)
        except asyncio.CancelledError:
            return None
        return due_ns

    async def _back_off(self, due_ns: int, open_loop: bool) -> int:
        """Hold a send until the last Retry-After has passed; returns when it is due from.

        The wait is not the server's latency: in a closed loop the request was held on
        purpose, so it is due from the end of the hold. In an open loop it stays due at its
        planned time, and the hold counts as lateness, like any other late send.
        """
        wait_ns = self._not_before_ns - self.now_ns()
        if wait_ns <= 0:
            return due_ns
        await asyncio.sleep(wait_ns / 1e9)
        return due_ns if open_loop else self._not_before_ns

    def _hold_sends_for(self, retry_after_s: float) -> None:
        """A server asked for no new requests for ``retry_after_s``: none go out before then."""
        resume = self.now_ns() + int(retry_after_s * 1e9)
        self._not_before_ns = max(self._not_before_ns, resume)

    async def _consume(self, stream: AsyncIterator[RequestSent | Arrival | StreamEnd],
                       state: _RequestState) -> None:
        """Read the backend's stream into ``state``, emitting tokens as they arrive."""
        async for item in stream:
            if isinstance(item, RequestSent):  # the true send time, before any arrival
                self._note_send(state, item.t_ns - self._origin_ns)
            elif isinstance(item, StreamEnd):
                state.end_ns = (self.now_ns() if item.t_ns is None
                                else item.t_ns - self._origin_ns)
                state.finish, state.server = item.finish_reason, item.server
                if item.output is not None:
                    state.output = item.output
                self._reconcile_tokens(state, item.arrival_tokens or self._counted(state))
                # The stream is over; winding it down (the connection back to the pool) and
                # the bookkeeping after it wait for their turn, as sends do.
                try:
                    await self._turnstile.turn()
                except asyncio.CancelledError:
                    return  # the run ends now, but this request had ended: kept as it was
            elif isinstance(item, DirectArrivals):  # a worker's batches: no task switch
                item.attach(functools.partial(self._arrived_at, state))
            else:
                self._arrived(state, item)

    def _note_send(self, state: _RequestState, sent_ns: int) -> None:
        """The request went out at ``sent_ns``: how late that was goes to the client's health."""
        state.sent_ns = sent_ns
        state.send_noted = True
        self._health.sent(state.due_ns, sent_ns)

    def _arrived(self, state: _RequestState, arrival: Arrival) -> None:
        if state.texts is not None:
            state.texts.append(arrival.text)
        self._arrived_at(state, arrival.t_ns, arrival.tokens, arrival.reasoning)

    def _counted(self, state: _RequestState) -> tuple[int, ...] | None:
        """With ``--tokenizer``, each arrival's tokens as the tokenizer counts its text (at
        least 1), where the server reported no output count; else None."""
        server = state.server or {}
        if (state.texts is None or self.prompts.tokenizer is None
                or len(state.texts) != len(state.tokens)
                or server.get("completion_tokens") or server.get("eval_count")):
            return None
        encode = self.prompts.tokenizer.encode
        return tuple(max(1, len(encode(text))) for text in state.texts)

    def _arrived_at(self, state: _RequestState, stamp_ns: int, tokens: int,
                    reasoning: bool) -> None:
        """``tokens`` arrived at ``stamp_ns`` (``perf_counter_ns``: this process's reading or
        a worker's, one clock on the host), made relative to the session's origin here."""
        t_ns = stamp_ns - self._origin_ns
        if not state.send_noted:  # a backend with no send stamp: it went out when asked
            self._note_send(state, state.sent_ns)
        state.arrivals.append((t_ns - state.latency_from_ns) // 1000)
        state.tokens.append(tokens)
        state.thinking.append(reasoning)
        self._tokens_received += tokens
        self._emit(TokensArrived(t_ns, state.worker_id, state.request_id, tokens,
                                 len(state.arrivals) == 1))

    def _save_output(self, state: _RequestState) -> None:
        """The request's output text to the side file: its arrivals' text, the answer apart
        from the reasoning, or the whole text a worker handed over at the end."""
        if state.output is not None:
            answer, reasoning = state.output
        elif any(state.thinking):
            answer = "".join(t for t, r in zip(state.texts, state.thinking) if not r)
            reasoning = "".join(t for t, r in zip(state.texts, state.thinking) if r)
        else:
            answer, reasoning = "".join(state.texts or ()), ""
        self.outputs.add(state.request_id, state.worker_id, answer, reasoning)

    def _reconcile_tokens(self, state: _RequestState, server_counts: tuple[int, ...] | None
                          ) -> None:
        """Take the server's token count per arrival (its usage, known at the end) over the
        one each arrival was counted as live, when it covers the same arrivals; tokens the
        live count missed are emitted now, so the live total catches up with the server's."""
        if not server_counts or len(server_counts) != len(state.tokens):
            return
        missed = sum(server_counts) - sum(state.tokens)
        state.tokens = list(server_counts)
        if missed > 0:
            self._tokens_received += missed
            self._emit(TokensArrived(self.now_ns(), state.worker_id, state.request_id, missed,
                                     False))

    def _request_done(self, state: _RequestState, phase_id: int, model: str, warmup: bool,
                      prompt_tokens: int) -> RequestDone:
        reasoning = sum(k for k, r in zip(state.tokens, state.thinking) if r)
        first_output = (next((a for a, r in zip(state.arrivals, state.thinking) if not r), None)
                        if reasoning else None)
        latency_from_ns = state.latency_from_ns
        return RequestDone(
            t_ns=state.end_ns,
            worker_id=state.worker_id,
            request_id=state.request_id,
            phase_id=phase_id,
            backend=self.config.backend,
            model=model,
            sent_ns=latency_from_ns,
            prompt_tokens=prompt_tokens,
            arrivals_us=tuple(state.arrivals),
            arrival_tokens=tuple(state.tokens) if any(k != 1 for k in state.tokens) else (),
            end_us=(state.end_ns - latency_from_ns) // 1000,
            finish_reason=state.finish,
            warmup=warmup,
            error_class=state.error_class,
            error_message=state.error_message,
            server_reported=state.server,
            queued_us=state.queued_us,
            reasoning_tokens=reasoning,
            first_output_us=first_output,
        )

    # -- the run, start to end -------------------------------------------------------------
    async def run(self) -> SessionEnd:
        """Start the backend, run until an end condition, and always close the record."""
        self.backend.notice = self._notice
        await self.backend.start()
        try:
            with self.while_running():
                return await self._run_started()
        finally:
            await self.backend.close()

    async def _run_started(self) -> SessionEnd:
        if self.record_path is not None:
            self.recorder = RecordWriter(self.record_path)
            self._listeners.insert(0, self.recorder.write)
            if self.config.save_outputs:
                try:
                    self.outputs = OutputWriter(outputs_path(self.record_path))
                except BaseException:  # no run: the record just made, still empty, goes
                    self.recorder.close()
                    self.record_path.unlink(missing_ok=True)
                    raise
        self._origin_ns = time.perf_counter_ns()
        end: SessionEnd | None = None
        try:
            self._emit(
                SessionStart(
                    t_ns=0,
                    schema_version=SCHEMA_VERSION,
                    wall_start=datetime.now().astimezone().isoformat(),
                    config=self.config.to_dict(),
                    environment=environment.collect(),
                    backend=self.backend.describe(),
                    workload=self._workload(),
                )
            )
            for event in self.backend.events(self._origin_ns):  # the workers' clocks
                self._emit(event)
            open_loop = self._open_loop
            first = (self.config.max_inflight or 0) if open_loop else self.config.concurrency
            self._new_phase(PhaseReason.START, concurrency=first)
            self._start_telemetry()
            self.started.set()
            if open_loop:  # --rate, or a trace's own times
                trace = self.prompts.trace
                self._loop = OpenLoop(self._first_rate, self._launch, self.now_ns,
                                      self.config.arrival, self.config.max_inflight,
                                      seed=self.config.seed,
                                      dues=None if trace is None else trace.due_offsets_ns())
            else:
                self._loop = ClosedLoop(self.config.concurrency, self._launch)
            load = asyncio.ensure_future(self._loop.run())
            stopped = asyncio.ensure_future(self._stopped.wait())
            heartbeat = asyncio.ensure_future(self._client_samples())
            guard = asyncio.ensure_future(self._watch_conditions())
            waiters = {load, stopped}
            if self.config.duration_s is not None:
                waiters.add(asyncio.ensure_future(asyncio.sleep(self.config.duration_s)))
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                heartbeat.cancel()
                guard.cancel()
                await self._loop.stop()
                for waiter in waiters:
                    waiter.cancel()
            if stopped in done and load not in done:
                reason = self._end_reason
            else:
                reason = EndReason.COMPLETED
            detail = {"failure": self.failure} if self.failure else dict(self._stop_detail)
            end = SessionEnd(t_ns=self.now_ns(), reason=reason, detail=detail)
        except BaseException:
            end = SessionEnd(t_ns=self.now_ns(), reason=EndReason.CRASHED)
            raise
        finally:
            self._stop_telemetry()
            self._ended = True
            self._emit(end)
            if self.recorder is not None:
                self.recorder.close()
            if self.outputs is not None:
                self.outputs.close()
        return end

    def _workload(self) -> dict[str, Any]:
        """The header's ``workload``: the prompts, and the side file of saved outputs (its
        name, beside the record) where ``--save-outputs`` asked for one."""
        workload = self.prompts.describe()
        if self.outputs is not None:
            workload = {**workload, "outputs_file": self.outputs.path.name}
        return workload
