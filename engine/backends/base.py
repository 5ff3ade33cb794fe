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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Prompt:
    """One synthetic prompt: token ids for engines that take them, text for HTTP servers."""

    index: int
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: int
    prompt: Prompt
    max_tokens: int
    model: str


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


class Backend(abc.ABC):
    """A source of generated tokens. Created by kind through
    :func:`soaktop.engine.backends.create`."""

    kind: ClassVar[str]

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
