"""The one interface every backend implements, and the types that cross it.

A backend turns a :class:`GenerationRequest` into a stream of :class:`Arrival` s: the moments
content reached the client, each stamped with ``time.perf_counter_ns()`` where the backend
observed it (after device synchronisation for the local engine, when bytes were parsed for
HTTP). A backend knows nothing of load, statistics, records or the UI; failures are raised as
:class:`soaktop.engine.errors.BackendError` with an ``error_class`` and the load controller counts
them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Prompt:
    """One synthetic prompt: token ids for engines that take them, text for HTTP servers."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    #: A prompt file's chat messages (``role``, ``content``), sent as they are by a chat API;
    #: ``text`` is their contents joined, for a completions API. None: one user turn of text.
    messages: tuple[dict[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: int
    prompt: Prompt
    max_tokens: int
    model: str
    #: The worker process that reads it (``--workers``; :meth:`Backend.pick_worker`); 0 for
    #: a backend that reads every stream in the session's own process.
    worker_id: int = 0
    #: The output's text is wanted (``--save-outputs``, ``--tokenizer``): a backend that
    #: makes text only for it (the local engine's words, the fake's) makes it then, and a
    #: worker process sends it back (:attr:`StreamEnd.output`); otherwise none crosses.
    want_text: bool = False
    #: When the request is planned to leave (``perf_counter_ns``; an open loop's or a trace's
    #: time), where the backend :attr:`~Backend.holds_sends`: it is handed over a little
    #: early and the backend does what it can beforehand, then sends it then. None: at once.
    send_at_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """Content that reached the client: ``tokens`` tokens of ``text`` observed at ``t_ns``.

    ``t_ns`` is an absolute ``time.perf_counter_ns()`` reading; the session makes it relative.
    """

    t_ns: int
    tokens: int = 1
    text: str = ""
    reasoning: bool = False  # thinking (reasoning_content), not the answer


@dataclass(frozen=True, slots=True)
class RequestSent:
    """The request's last byte was handed to the socket at ``t_ns`` (``perf_counter_ns``).

    Yielded before any arrival by backends that can tell (the HTTP ones, from httpcore's
    trace events): TTFT then starts when the request really left, not before the client
    library spent its time building and writing it.
    """

    t_ns: int


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Optional last item of a stream: why generation stopped, and what the server reported.

    ``arrival_tokens`` corrects the token count of each arrival once the server's own count is
    known (OpenAI ``usage`` comes last): arrivals are yielded live as one token each, so the
    display never waits, and the record keeps the corrected counts. ``server`` holds the
    server's figures for this request (usage, Ollama's timings), kept beside the client's.
    """

    finish_reason: str = "length"
    arrival_tokens: tuple[int, ...] | None = None
    server: dict[str, Any] | None = None
    #: When the stream ended (``perf_counter_ns``), where the backend stamped it apart from
    #: handing this over (a worker process: the session learns of it a pipe's hop later).
    t_ns: int | None = None
    #: The whole output's text, (answer, reasoning), where a backend hands it over at the end
    #: rather than with each arrival: a worker process, for a request that wanted text.
    output: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DirectArrivals:
    """Yielded first by a backend that hands arrivals over in batches (worker processes):
    the consumer gives ``attach`` its function of ``(t_ns, tokens, reasoning)``, and from then
    on arrivals come through that function, called as each batch is read, instead of one
    stream item each, which would cost a task switch per token. A consumer that does not
    attach one keeps getting them as :class:`Arrival` items."""

    attach: Callable[[Callable[[int, int, bool], None]], None]


class Backend(abc.ABC):
    """A source of generated tokens. Created by kind through
    :func:`soaktop.engine.backends.create`."""

    kind: ClassVar[str]
    #: Where a backend tells the run a fact about itself mid-run, in one line (a worker
    #: process lost); ``fatal``: the run cannot go on. The session sets it and records each
    #: as a ``mark``.
    notice: Callable[[str, bool], None] | None = None
    #: It honours :attr:`GenerationRequest.send_at_ns` (the HTTP backends hold the body);
    #: otherwise the session waits for the planned moment and then calls :meth:`stream`.
    holds_sends: ClassVar[bool] = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model or open connections; raise ``SoaktopError`` with a one-line reason."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything; must be safe to call twice and after a failed ``start``."""

    @abc.abstractmethod
    def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        """Yield arrivals as they happen; cancelling the iteration cancels the request."""

    async def prepare(self, model: str) -> None:  # noqa: B027 - optional hook
        """Get ready to serve ``model`` before requests for it are sent (the local engine
        loads it); servers need nothing, so by default nothing happens."""

    @abc.abstractmethod
    async def models(self) -> list[str]:
        """Names this backend can serve (presets for the local engine, a server's list)."""

    def describe(self) -> dict[str, Any]:
        """Facts for the record header: device, dtype, versions. No secrets."""
        return {"kind": self.kind}

    def pick_worker(self) -> int:
        """Which worker process the next request goes to, asked just before it is sent
        (``GenerationRequest.worker_id``); 0 for a backend without workers."""
        return 0

    def health(self) -> list[tuple[int | None, float, float]]:
        """The latest health of each process of its own (loop lag p99 µs, CPU %, loop CPU
        %), each reading given once; none for a backend without worker processes."""
        return []

    def events(self, origin_ns: int) -> list[Any]:
        """Events of its own for the record since last asked (a Ray worker's clock
        estimates), on the session clock whose origin is ``origin_ns``; none by default."""
        return []

    def watch_reads(self, on_read: Callable[[int, int], None]) -> bool:
        """Where arrivals are stamped by the kernel, call ``on_read(lag_ns, gap_ns)`` for each
        read of a stream's bytes: how long they sat in the socket before the client read them,
        and since the stream's previous bytes arrived; call before :meth:`start`. Returns
        whether this backend's stamps come from the kernel (then a late event loop does not
        move them, and the read lag is what says whether it biased them). By default stamps
        are taken in user space, where the loop's own lag is what decides."""
        return False
