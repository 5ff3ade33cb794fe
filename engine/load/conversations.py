"""Conversations (``--turns N``): each conversation sends its next turn with the history so far.

Why: a chat's later turns resend everything before them, so a server with a prefix cache
prefills only the new turn, and their TTFT is not the first turn's. A soak of one-shot
prompts never shows that; the summary splits first turns from later ones.

A conversation's turn ``k`` is its earlier turns, each user message followed by the reply the
server actually gave (its answer's text, reasoning left out), then the new user message: the
workload's prompt for that request (synthetic words, or the prompt file's next prompt). With
a JSON Lines prompt file whose entry's chat ``messages`` hold several user messages, those are
the turns, as many as it has (at most N), after any system prompt; its own assistant messages
give way to the server's replies. (A ShareGPT entry is read to its first human turn only.)
Where a backend gives no reply text (a worker process of an older soaktop, a server that
streamed none), the reply is a placeholder: one pseudo-word per output token received, which
the session says once, and marks in the record.

Between turns, a think time (``--think-time``): ``S`` seconds, ``MEAN:SD`` (normal, clipped
at 0) or ``MIN-MAX`` (uniform), drawn per request from the seed. It is the user's pause, not
the server's latency: a later turn's latencies run from when it was sent.

In a closed loop, the concurrency counts conversations in flight (each one's turns go one
after another); in an open loop, each arrival starts a conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from soaktop.engine.backends.base import Prompt
from soaktop.engine.errors import ConfigError
from soaktop.engine.load.prompts import word

_THINK_STREAM = 9  # a stream of the seed's generator (see .workloads)
_NUMBER = r"\d+(?:\.\d+)?"


@dataclass(frozen=True)
class ThinkTime:
    """Seconds between a conversation's turns: ``kind`` fixed, normal or uniform."""

    kind: str
    values: tuple[float, ...]

    def text(self) -> float | str:
        """The normalised form the config keeps (a fixed time stays a number)."""
        if self.kind == "fixed":
            return float(self.values[0])
        sep = ":" if self.kind == "normal" else "-"
        return f"{self.values[0]:g}{sep}{self.values[1]:g}"

    def draw(self, seed: int, conversation: int, turn: int) -> float:
        """The think time before a conversation's turn: the same for a seed whatever the
        order asked."""
        v = self.values
        if self.kind == "fixed":
            return v[0]
        rng = np.random.default_rng([seed, _THINK_STREAM, conversation, turn])
        if self.kind == "normal":
            return max(0.0, float(rng.normal(v[0], v[1])))
        return float(rng.uniform(v[0], v[1]))


def parse_think_time(value: Any) -> ThinkTime:
    """``S`` seconds, ``MEAN:SD`` (normal, clipped at 0) or ``MIN-MAX`` (uniform)."""
    if isinstance(value, bool):
        raise ConfigError(f"--think-time: {value!r} is not a time")
    if isinstance(value, (int, float)):
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"--think-time must be 0 or more seconds (got {value!r})")
        return ThinkTime("fixed", (float(value),))
    text = str(value).replace(" ", "").removesuffix("s")
    if re.fullmatch(_NUMBER, text):
        return ThinkTime("fixed", (float(text),))
    if m := re.fullmatch(rf"({_NUMBER}):({_NUMBER})", text):
        mean, sd = float(m.group(1)), float(m.group(2))
        return ThinkTime("normal", (mean, sd)) if sd > 0 else ThinkTime("fixed", (mean,))
    if m := re.fullmatch(rf"({_NUMBER})-({_NUMBER})", text):
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi:
            raise ConfigError(f"--think-time MIN-MAX needs MIN <= MAX (got {value!r})")
        return ThinkTime("uniform", (lo, hi)) if lo < hi else ThinkTime("fixed", (lo,))
    raise ConfigError(f"--think-time: cannot read {value!r}: use seconds (2), MEAN:SD (2:0.5) "
                      f"or MIN-MAX (1-5)")


def placeholder(tokens: int) -> str:
    """A reply's stand-in where the backend gave no text: a pseudo-word per token received."""
    return " ".join(word(i) for i in range(tokens))


class Conversation:
    """One conversation's history: the messages so far, and its user turns where its first
    prompt (a prompt file's entry) gave several (None: each turn's user message is the
    workload's prompt for that turn's request)."""

    __slots__ = ("conversation_id", "messages", "script", "turns")

    def __init__(self, conversation_id: int, turns: int, first: Prompt) -> None:
        self.conversation_id = conversation_id
        self.messages: list[dict[str, str]] = []
        self.script: list[str] | None = None
        self.turns = turns
        given = first.messages or ()
        users = [i for i, m in enumerate(given) if m["role"] == "user"]
        if len(users) > 1:  # a multi-turn entry: its own user turns, after its system prompt
            self.messages = [dict(m) for m in given[:users[0]]]
            self.script = [given[i]["content"] for i in users]
            self.turns = min(turns, len(users))

    def prompt(self, turn: int, request_id: int, own: Prompt | None, encode: Any) -> Prompt:
        """Turn ``turn``'s prompt (from 0): the history, then this turn's user message (the
        script's, else ``own``'s: the workload's prompt for this request, None for a scripted
        conversation). ``encode`` makes a text's token ids (the tokenizer's, or a word's)."""
        if self.script is not None:
            user = self.script[turn]
        elif own.messages:  # a chat prompt: its last message is the user's
            if turn == 0:
                self.messages = [dict(m) for m in own.messages[:-1]]
            user = own.messages[-1]["content"]
        else:
            user = own.text
        self.messages.append({"role": "user", "content": user})
        messages = tuple(dict(m) for m in self.messages)
        ids: list[int] = []
        for m in messages:
            ids += encode(m["content"])
        return Prompt(index=request_id, token_ids=tuple(ids),
                      text="\n".join(m["content"] for m in messages), messages=messages)

    def reply(self, text: str) -> None:
        """The server's answer to the last turn, carried into the next."""
        self.messages.append({"role": "assistant", "content": text})
