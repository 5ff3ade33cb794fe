"""Seeded synthetic prompts: the same seed gives the same workload on any machine.

A prompt is drawn from a fixed vocabulary of pseudo-words, so it can be sent as token ids to the
local engine (one word = one id) or as text to an HTTP server, where one pseudo-word is close
to one token for common BPE tokenizers. Input length is therefore exact for the local engine
and approximate over HTTP, where the server's usage figures are the truth.
"""

from __future__ import annotations

import numpy as np

from engine.backends.base import Prompt

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
