"""Seeded synthetic prompts: the same seed gives the same workload on any machine.

No accidental cache hits: a server with prefix caching (vLLM, SGLang) would serve a repeated
prompt's prefill from cache and report a TTFT no real user sees. So every request's prompt
starts with its own unique prefix (:data:`UNIQUE_PREFIX_TOKENS` words from a hash of a per-run
salt and the request number, so two runs never share one either), unless a shared prefix is
asked for (``--shared-prefix N``: the first N words common to every request, as a system
prompt would be, then the unique part). The body comes from a seeded pool. The record keeps
the seed, the salt and a hash of the pool, so a workload can be told apart and rebuilt.

A prompt is drawn from a fixed vocabulary of pseudo-words, so it can be sent as token ids to the
local engine (one word = one id) or as text to an HTTP server, where one pseudo-word is close
to one token for common BPE tokenizers. Input length is therefore exact for the local engine
and approximate over HTTP, where the server's usage figures are the truth.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np

from soaktop.engine.backends.base import Prompt

VOCABULARY_SIZE = 4096
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fe", "gu", "hi",
              "jo", "bu")


def word(token_id: int) -> str:
    """The pseudo-word for ``token_id``: three syllables from its base-16 digits."""
    n = token_id % VOCABULARY_SIZE
    return "".join(_SYLLABLES[(n >> shift) & 0xF] for shift in (8, 4, 0))


def make_prompts(seed: int, count: int, input_tokens: int) -> list[Prompt]:
    """``count`` prompts of ``input_tokens`` words each, fully determined by ``seed``."""
    if input_tokens < 1:
        raise ValueError("input_tokens must be at least 1")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCABULARY_SIZE, size=(count, input_tokens))
    prompts = []
    for i, row in enumerate(ids.tolist()):
        prompts.append(Prompt(index=i, token_ids=tuple(row), text=" ".join(map(word, row))))
    return prompts


UNIQUE_PREFIX_TOKENS = 4


class PromptSet:
    """The prompt of each request: shared prefix (if any), unique prefix, then a pool body;
    exactly ``input_tokens`` words in all."""

    def __init__(self, seed: int, pool: int, input_tokens: int, shared_prefix: int = 0,
                 salt: str | None = None, unique_prefix: bool = True) -> None:
        if shared_prefix < 0:
            raise ValueError("shared_prefix cannot be negative")
        self.seed, self.input_tokens, self.shared_prefix = seed, input_tokens, shared_prefix
        # ``unique_prefix`` False (``--no-unique-prefix``): none, so a prefix cache may serve
        self.unique = (min(UNIQUE_PREFIX_TOKENS, max(0, input_tokens - shared_prefix))
                       if unique_prefix else 0)
        self.salt = salt if salt is not None else secrets.token_hex(8)
        self._pool = make_prompts(seed, pool, input_tokens)
        rng = np.random.default_rng([seed, 1])  # a stream of its own: the pool stays the same
        self._shared = tuple(rng.integers(0, VOCABULARY_SIZE, size=shared_prefix).tolist())

    def unique_ids(self, request_id: int) -> tuple[int, ...]:
        """Request ``request_id``'s unique prefix (none when ``unique`` is 0)."""
        digest = hashlib.blake2b(f"{self.salt}:{request_id}".encode(), digest_size=8).digest()
        n = int.from_bytes(digest, "big")
        return tuple((n >> (12 * i)) % VOCABULARY_SIZE for i in range(self.unique))

    def prompt(self, request_id: int) -> Prompt:
        body = self._pool[request_id % len(self._pool)].token_ids
        head = (self._shared + self.unique_ids(request_id))[: self.input_tokens]
        ids = head + body[len(head):]
        return Prompt(index=request_id, token_ids=ids, text=" ".join(map(word, ids)))

    def describe(self) -> dict[str, Any]:
        """For the record header: enough to tell two workloads apart and to rebuild one."""
        pool = hashlib.sha256()
        for p in self._pool:
            pool.update(np.asarray(p.token_ids, dtype=np.uint16).tobytes())
        pool.update(np.asarray(self._shared, dtype=np.uint16).tobytes())
        return {"prompt_seed": self.seed, "prompt_pool": len(self._pool),
                "input_tokens": self.input_tokens, "shared_prefix_tokens": self.shared_prefix,
                "unique_prefix_tokens": self.unique, "prefix_salt": self.salt,
                "prompts_sha256": pool.hexdigest()}
