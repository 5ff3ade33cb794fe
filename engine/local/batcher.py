"""Continuous batching of generation requests on one dedicated thread.

Why a thread of its own: a forward pass blocks for milliseconds to seconds, and the asyncio
loop that drives load, telemetry and the UI must not stall while it runs. Torch releases the GIL
in its heavy operations and while it waits for the device, so the loop runs beside the model.

Each iteration of the thread:

1. admits *every* request submitted since the last iteration: their prompts are prefilled
   together as one right-padded batch, and each one's first token comes from that prefill;
2. runs one decode step for *every* active sequence, old and just admitted alike.

So a new request waits at most one step to start, never for the running ones to finish; that is
continuous batching. Sampling is greedy and never stops at an end-of-sequence token: a request
gets exactly ``max_tokens`` tokens, unless prompt plus output would not fit the cache
(``max_len`` positions), in which case it gets ``max_len - prompt_len + 1`` tokens (the last
token is produced but never fed back, so it needs no position) and
:attr:`RequestHandle.output_tokens` says so.

Timestamps: after each forward the sampled ids are copied to the host with ``.tolist()``, which
waits for the device to finish, and only then is ``time.perf_counter_ns()`` read. A token's time
is when the device had produced it, not when its kernel was queued. Each forward's outputs reach
the asyncio loop in one ``call_soon_threadsafe`` call (per loop), not one per token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from soaktop.engine.errors import BackendError, EngineCrashed, OutOfMemory
from soaktop.engine.local.model import Transformer

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one forward gave one request: a token, or the error that ended it."""

    token_id: int | None
    t_ns: int
    finished: bool
    error: BackendError | None = None


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """How requests were batched, for tests and the curious; a snapshot, safe to keep."""

    failed_requests: int
    decode_batch_sizes: dict[int, int]  # batch size -> number of decode steps of that size
    prefill_batch_sizes: dict[int, int]  # prompts prefilled together -> number of prefills
    active: int
    pending: int
    slots_capacity: int
    slots_in_use: int

    @property
    def decode_steps(self) -> int:
        return sum(self.decode_batch_sizes.values())

    @property
    def prefill_steps(self) -> int:
        return sum(self.prefill_batch_sizes.values())


class RequestHandle:
    """The submitter's side of one request: how many tokens it will get, and ``cancel()``."""

    __slots__ = ("output_tokens", "_cancelled", "_on_output", "_loop")

    def __init__(self, output_tokens: int, on_output: Callable[[StepOutput], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.output_tokens = output_tokens
        self._cancelled = False
        self._on_output = on_output
        self._loop = loop

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the batcher's next iteration. Idempotent."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled


@dataclass(eq=False, slots=True)
class _Sequence:
    handle: RequestHandle
    prompt: list[int]
    slot: int = -1
    produced: int = 0
    last_token: int = 0
    position: int = 0  # where last_token goes when fed back
    ended: bool = False  # its last output (finished or error) has been published


@dataclass(slots=True)
class _Counters:
    failed_requests: int = 0
    decode_batch_sizes: Counter[int] = field(default_factory=Counter)
    prefill_batch_sizes: Counter[int] = field(default_factory=Counter)


class ContinuousBatcher:
    """Serves :meth:`submit` requests from ``model`` on a daemon thread started at once."""

    def __init__(self, model: Transformer, *, name: str = "soaktop-local-engine") -> None:
        self._model = model
        self._device = model.embed.weight.device
        self._max_len = model.cache.max_len
        self._vocab = model.config.vocab_size
        self._cond = threading.Condition()
        self._pending: list[_Sequence] = []
        self._active: list[_Sequence] = []
        self._counters = _Counters()
        self._closing = False
        self._crash: EngineCrashed | None = None  # set if the batch loop itself died
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], max_tokens: int,
               on_output: Callable[[StepOutput], None],
               loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queue a prompt; ``on_output`` is then called on ``loop`` once per produced token.

        ``loop`` defaults to the running loop, so call this from a coroutine. The last output
        has ``finished`` set, or carries the error that failed the request. Raises
        ``BackendError`` (``prompt_too_long``) if the prompt does not fit the cache, or
        (``engine_closed``) after :meth:`close`, and ``EngineCrashed`` if the batch loop died.
        """
        prompt = list(prompt_ids)
        if max_tokens < 1 or not prompt:
            raise ValueError("need a non-empty prompt and max_tokens >= 1")
        if min(prompt) < 0 or max(prompt) >= self._vocab:
            raise ValueError(f"token ids must be in [0, {self._vocab})")
        if len(prompt) > self._max_len:
            raise BackendError(f"prompt of {len(prompt)} tokens does not fit the "
                               f"{self._max_len}-token cache", error_class="prompt_too_long",
                               refused=True)
        output_tokens = min(max_tokens, self._max_len - len(prompt) + 1)
        handle = RequestHandle(output_tokens, on_output, loop or asyncio.get_running_loop())
        with self._cond:
            if self._crash is not None:
                raise EngineCrashed(str(self._crash))
            if self._closing:
                raise BackendError("local engine is closed", error_class="engine_closed")
            self._pending.append(_Sequence(handle, prompt))
            self._cond.notify()
        return handle

    def stats(self) -> BatcherStats:
        """A consistent snapshot of the counters; callable from any thread."""
        c = self._counters
        with self._cond:
            return BatcherStats(
                failed_requests=c.failed_requests,
                decode_batch_sizes=dict(c.decode_batch_sizes),
                prefill_batch_sizes=dict(c.prefill_batch_sizes),
                active=len(self._active), pending=len(self._pending),
                slots_capacity=self._model.cache.capacity,
                slots_in_use=self._model.cache.in_use)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop after the current step and join the thread; unfinished requests fail with
        ``BackendError`` of class ``engine_closed``. Safe to call twice."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        crash, admitted = None, []
        try:
            with torch.inference_mode():
                while (admitted := self._next_admissions()) is not None:
                    self._retire_cancelled()
                    if admitted:
                        self._guarded(self._prefill, admitted)
                    if self._active:
                        self._guarded(self._decode, list(self._active))
        except Exception as exc:  # a bug in the loop itself, not in a forward pass
            _log.exception("local engine batch loop crashed")
            crash = EngineCrashed(f"local engine batch loop crashed: {_one_line(exc)}")
        with self._cond:
            self._closing, self._crash = True, crash
            every = dict.fromkeys([*(admitted or []), *self._active, *self._pending])
            leftovers = [s for s in every if not s.ended]
            self._pending, self._active = [], []
        if crash:
            self._fail(leftovers, EngineCrashed, str(crash))
        else:
            self._fail(leftovers, BackendError, "local engine closed", "engine_closed")

    def _next_admissions(self) -> list[_Sequence] | None:
        """Sleep until there is work; take every pending request. ``None`` means stop."""
        with self._cond:
            while not (self._pending or self._active or self._closing):
                self._cond.wait()
            if self._closing:
                return None
            admitted, self._pending = self._pending, []
        return admitted

    def _retire_cancelled(self) -> None:
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._active.remove(seq)
            self._release(seq)

    def _guarded(self, step: Callable[[list[_Sequence]], None], seqs: list[_Sequence]) -> None:
        """Run one forward; if the model raises, fail only these sequences and carry on."""
        try:
            step(seqs)
        except Exception as exc:
            oom = is_out_of_memory(exc)
            if oom and self._device.type == "cuda":
                torch.cuda.empty_cache()
            self._active = [s for s in self._active if s not in seqs]
            self._fail(seqs, OutOfMemory if oom else EngineCrashed,
                       f"local engine {'out of memory' if oom else 'failed'}: {_one_line(exc)}")

    def _prefill(self, seqs: list[_Sequence]) -> None:
        seqs = [s for s in seqs if not s.handle.cancelled]
        if not seqs:
            return
        cache = self._model.cache
        for seq in seqs:
            seq.slot = cache.acquire()  # may grow the cache, and so run out of memory
        width = max(len(s.prompt) for s in seqs)
        padded = [s.prompt + [0] * (width - len(s.prompt)) for s in seqs]
        tokens = torch.tensor(padded, device=self._device)
        lengths, slots = torch.tensor(
            [[len(s.prompt) for s in seqs], [s.slot for s in seqs]], device=self._device)
        ids = self._model.prefill(tokens, lengths, slots).argmax(-1).tolist()
        t_ns = time.perf_counter_ns()
        for seq in seqs:
            seq.position = len(seq.prompt)
            self._active.append(seq)
        with self._cond:
            self._counters.prefill_batch_sizes[len(seqs)] += 1
        self._advance(seqs, ids, t_ns)

    def _decode(self, seqs: list[_Sequence]) -> None:
        tokens, positions, slots = torch.tensor(
            [[s.last_token for s in seqs], [s.position for s in seqs], [s.slot for s in seqs]],
            device=self._device)
        ids = self._model.decode(tokens, positions, slots).argmax(-1).tolist()
        t_ns = time.perf_counter_ns()
        for seq in seqs:
            seq.position += 1
        with self._cond:
            self._counters.decode_batch_sizes[len(seqs)] += 1
        self._advance(seqs, ids, t_ns)

    def _advance(self, seqs: list[_Sequence], ids: list[int], t_ns: int) -> None:
        """Record one new token per sequence, retire the finished, and publish."""
        outputs = []
        for seq, token in zip(seqs, ids, strict=True):
            seq.produced += 1
            seq.last_token = token
            finished = seq.produced >= seq.handle.output_tokens
            if finished:
                self._active.remove(seq)
                self._release(seq)
                seq.ended = True
            outputs.append((seq.handle, StepOutput(token, t_ns, finished)))
        _publish(outputs)

    def _fail(self, seqs: list[_Sequence], error_type: type[BackendError], message: str,
              error_class: str | None = None) -> None:
        """End ``seqs`` with one error each (separate instances: each is raised on its own)."""
        t_ns = time.perf_counter_ns()
        for seq in seqs:
            self._release(seq)
            seq.ended = True
        self._counters.failed_requests += sum(not s.handle.cancelled for s in seqs)
        _publish([(s.handle, StepOutput(None, t_ns, True, error_type(message, error_class)))
                  for s in seqs])

    def _release(self, seq: _Sequence) -> None:
        if seq.slot >= 0:
            self._model.cache.release(seq.slot)
            seq.slot = -1


def _publish(outputs: list[tuple[RequestHandle, StepOutput]]) -> None:
    """Hand outputs to their loops: one ``call_soon_threadsafe`` per loop per forward."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, StepOutput]]] = {}
    for handle, output in outputs:
        by_loop.setdefault(handle._loop, []).append((handle, output))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # that loop is closed: nobody is listening any more
            for handle, _ in items:
                handle.cancel()


def _deliver(items: list[tuple[RequestHandle, StepOutput]]) -> None:
    for handle, output in items:
        if not handle.cancelled:
            handle._on_output(output)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (CUDA) or host (CPU allocator) running out of memory."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")
