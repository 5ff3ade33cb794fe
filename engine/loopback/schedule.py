"""What the loopback server is told to do (:class:`Schedule`) and what it did (:class:`Emission`).

The schedule is a plan; the emission is the truth. Timing tests compare a client's numbers with
the truth, never with the plan: a busy machine makes the server late, and what matters is that
the client saw what was actually sent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Schedule:
    """When content chunks leave the server, measured from the moment a request was read.

    The first content chunk is due ``ttft_ms`` after the request body was fully received, each
    next one ``itl_ms`` after the previous; ``jitter_ms`` adds a uniform ±jitter to every gap,
    drawn from a generator seeded by ``seed`` and the request's number, so a run can be repeated
    exactly. A chunk carries ``chunk_tokens`` tokens (words), the last one possibly fewer.
    ``tokens`` is the output length when a request does not name one. ``role_chunk`` makes chat
    streams open with an empty ``{"role": "assistant", "content": ""}`` delta, as vLLM does, sent
    at once so that a client counting it as a token reports a TTFT of nearly zero.
    """

    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    jitter_ms: float = 0.0
    chunk_tokens: int = 1
    tokens: int = 64
    role_chunk: bool = True
    model: str = "loopback"
    seed: int = 0
    #: The first ``reasoning_tokens`` tokens are thinking (``reasoning_content`` deltas, or
    #: Ollama chat's ``thinking``), as reasoning models stream them before the answer.
    reasoning_tokens: int = 0
    #: The "model" stops by itself (EOS, finish reason ``stop``) after this many tokens,
    #: however many were asked for: outputs shorter than the asked length.
    stop_after: int | None = None
    #: The server's own count of a prompt, in the usage it reports (OpenAI ``prompt_tokens``,
    #: Ollama's ``prompt_eval_count``): this many tokens a word, as a tokenizer that splits
    #: words would count (3 for a byte-level vocabulary's pseudo-words).
    prompt_tokens_per_word: int = 1
    #: Prefix-cache hits reported as vLLM and SGLang do (OpenAI
    #: ``usage.prompt_tokens_details.cached_tokens``): this many of each prompt's tokens
    #: (at most all of them); 0: no ``prompt_tokens_details`` at all.
    cached_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.itl_ms < 0 or self.jitter_ms < 0:
            raise ValueError("ttft_ms, itl_ms and jitter_ms must not be negative")
        if self.prompt_tokens_per_word < 1 or self.cached_prefix_tokens < 0:
            raise ValueError("prompt_tokens_per_word must be at least 1 and "
                             "cached_prefix_tokens not negative")
        if self.chunk_tokens < 1 or self.tokens < 0:
            raise ValueError("chunk_tokens must be at least 1 and tokens not negative")

    def plan(self, tokens: int, request: int) -> list[tuple[int, int]]:
        """``(offset_ns, tokens)`` of each content chunk of request number ``request``.

        Offsets are absolute, from the request's arrival: the server sleeps until each one, so
        a late chunk does not push the ones after it.
        """
        rng = random.Random(f"{self.seed}:{request}")
        plan = []
        offset_ms = 0.0
        for start in range(0, tokens, self.chunk_tokens):
            gap = self.ttft_ms if start == 0 else self.itl_ms
            if self.jitter_ms:
                gap += rng.uniform(-self.jitter_ms, self.jitter_ms)
            offset_ms += max(gap, 0.0)
            plan.append((round(offset_ms * 1e6), min(self.chunk_tokens, tokens - start)))
        return plan


@dataclass(frozen=True, slots=True)
class Emission:
    """What the server actually sent for one generation request.

    Times are ``time.perf_counter_ns()`` readings in the server process. On Linux that clock is
    ``CLOCK_MONOTONIC``, shared by every process on the machine, so a client may subtract its
    own readings from these directly. ``received_ns``: the request body was fully read.
    ``first_byte_ns``: the response's first bytes (status line and headers) were handed to the
    socket. ``chunks_ns[i]``: content chunk ``i`` was handed to the socket, carrying
    ``chunk_tokens[i]`` tokens. Role chunks, usage chunks, ``[DONE]`` and injected faults are
    not content and are not listed. ``request`` counts generation requests from 1; ``fault``
    names the fault this request was given, if any; ``request_id`` is the client's
    ``X-Request-Id`` header (lower-cased), which pairs a client's record with this one.
    ``process``: which process of a multi-process server (``--processes``) served it, from 0;
    ``request`` then counts that process's requests.
    """

    request: int
    path: str
    received_ns: int
    first_byte_ns: int | None
    chunks_ns: tuple[int, ...]
    chunk_tokens: tuple[int, ...]
    status: int
    fault: str | None
    request_id: str | None = None
    process: int = 0
    #: What the request asked for: its ``prompt`` (text, or a chat's ``messages`` list) as
    #: the body held it, and its output length (``max_tokens`` or the API's own name for it;
    #: the schedule's ``tokens`` when it named none). None where the body could not be read.
    prompt: Any = None
    max_tokens: int | None = None
    #: When its schedule started, where that was after ``received_ns``: it waited for one
    #: of a ``max_active`` server's places (None: it started at once).
    admitted_ns: int | None = None

    def lateness_ns(self, schedule: Schedule, tokens: int | None = None) -> list[int]:
        """How late each content chunk left against when ``schedule`` made it due (received
        plus the plan's offset; negative: early, which the server never is by design). What
        says whether the server kept its schedule or was itself the bottleneck. ``tokens``:
        the output length asked (default: the tokens sent), since a chunk's size and place
        in the plan follow from it."""
        plan = schedule.plan(sum(self.chunk_tokens) if tokens is None else tokens, self.request)
        start = self.received_ns if self.admitted_ns is None else self.admitted_ns
        return [sent - (start + offset)
                for sent, (offset, _) in zip(self.chunks_ns, plan)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served at ``/_loopback/emissions``."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Emission:
        """Inverse of :meth:`to_dict`, for clients that read the emissions over HTTP."""
        return cls(**{k: tuple(v) if isinstance(v, list) and k != "prompt" else v
                      for k, v in data.items()})
