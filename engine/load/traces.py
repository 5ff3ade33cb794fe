"""Trace replay (``--trace FILE``): requests at a recorded trace's own times, open loop.

A trace is JSON Lines, one request a line, in time order:

- ``timestamp``: when it arrived, in milliseconds (the first line's time is the run's start);
- ``input_length`` and ``output_length``: its prompt and output length in tokens
  (``output_length`` may be left out: ``--output-tokens`` then); or a ``prompt`` (text) or
  chat ``messages`` sent as they are, in place of a synthetic prompt of ``input_length``;
- ``hash_ids`` (the Mooncake trace format, read as is): the prompt's blocks of
  :data:`BLOCK_TOKENS` tokens, each named by a number. Two requests that share ``hash_ids``
  share those blocks, so a prefix cache serves what they have in common, as it did for the
  traffic the trace was taken from. Each id stands for one seeded block of pseudo-words (with
  ``--tokenizer``, of exactly :data:`BLOCK_TOKENS` tokens); the prompt is its blocks in order,
  cut to ``input_length``, or made up to it with words of its own.

``--trace-speed X`` replays it X times as fast (2: every gap halved). Why open loop: a trace
is a record of when users came, not of how fast a server answered, so each request is due at
its own time whether or not the earlier ones have finished, and a late send counts in its
latency (:class:`~soaktop.engine.load.loops.OpenLoop`). The run ends when the trace does.

Without ``hash_ids`` or a prompt, a request's prompt begins with the unique prefix of
:mod:`.prompts` (unless ``--no-unique-prefix``), so no prefix cache serves it. The blocks
named by ``hash_ids`` are salted by the run's salt while that prefix is on, so that two runs
do not share them either (within a run, requests sharing ids share them).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soaktop.engine.backends.base import Prompt
from soaktop.engine.errors import ConfigError
from soaktop.engine.load.prompts import (
    UNIQUE_PREFIX_TOKENS,
    VOCABULARY_SIZE,
    PromptSet,
    word,
)
from soaktop.engine.load.workloads import _messages, _word_ids, json_lines, read_text_file

#: Tokens a ``hash_ids`` block stands for: Mooncake's block size.
BLOCK_TOKENS = 512
_BLOCKS_KEPT = 2048  # blocks' text held for reuse (a few MB): traces name far more ids
_BLOCK_STREAM, _BODY_STREAM = 7, 8  # streams of the seed's generator (see .workloads)


@dataclass(frozen=True)
class TraceEntry:
    """One request of a trace: when it is due (ms from the trace's start, before any
    speed-up), its lengths, its prefix blocks and any prompt it gives, and its line."""

    t_ms: float
    input_length: int | None
    output_length: int | None
    hash_ids: tuple[int, ...]
    text: str | None
    messages: tuple[dict[str, str], ...] | None
    line: int


def _length(obj: dict, key: str, at: str, needed: bool) -> int | None:
    value = obj.get(key)
    if value is None:
        if needed:
            raise ConfigError(f"{at}: '{key}' is needed (a whole number of tokens)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{at}: '{key}' must be a whole number >= 1 (got {value!r})")
    return value


def _entry(obj: Any, at: str, line: int) -> TraceEntry:
    if not isinstance(obj, dict):
        raise ConfigError(f"{at}: a JSON object with 'timestamp' and 'input_length' is needed")
    t = obj.get("timestamp")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
        raise ConfigError(f"{at}: 'timestamp' must be milliseconds, a number >= 0 (got {t!r})")
    ids = obj.get("hash_ids", ())
    if not isinstance(ids, list | tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"{at}: 'hash_ids' must be a list of whole numbers")
    text, messages = obj.get("prompt"), None
    if text is not None and (not isinstance(text, str) or not text):
        raise ConfigError(f"{at}: 'prompt' must be non-empty text")
    if "messages" in obj:
        messages = _messages(obj["messages"], at)
        text = "\n".join(m["content"] for m in messages)
    given = text is not None
    return TraceEntry(float(t), _length(obj, "input_length", at, not given),
                      _length(obj, "output_length", at, False), tuple(ids), text, messages,
                      line)


def read_trace(path: str | os.PathLike) -> tuple[list[TraceEntry], dict[str, Any]]:
    """A trace's requests and what the record says of the file (name, size, sha256)."""
    p = Path(path)
    name = p.name
    raw, text = read_text_file(path, "trace")
    entries: list[TraceEntry] = []
    for n, at, obj in json_lines(text, name):
        entry = _entry(obj, at, n)
        if entries and entry.t_ms < entries[-1].t_ms:
            raise ConfigError(f"{at}: timestamp {entry.t_ms:g} ms is before the line above's "
                              f"({entries[-1].t_ms:g} ms): a trace is in time order")
        entries.append(entry)
    if not entries:
        raise ConfigError(f"trace {path} holds no requests")
    span_ms = entries[-1].t_ms - entries[0].t_ms
    info = {"name": name, "path": str(p.resolve()), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "requests": len(entries),
            "span_s": round(span_ms / 1e3, 3)}
    return entries, info


class TracePrompts:
    """Each request's prompt from its trace line (request ``i`` is line ``i``'s request), and
    when each is due."""

    def __init__(self, path: str, speed: float, seed: int, unique_prefix: bool = True,
                 salt: str | None = None, tokenizer: Any = None) -> None:
        self.entries, self.info = read_trace(path)
        self.speed, self.seed, self.tokenizer = speed, seed, tokenizer
        self._prefix = PromptSet(seed, 1, UNIQUE_PREFIX_TOKENS if unique_prefix else 1, 0, salt,
                                 unique_prefix=unique_prefix)
        self.salt, self.unique = self._prefix.salt, self._prefix.unique
        # a salted block stays this run's own; unsalted (--no-unique-prefix), any run's alike
        self._block_salt = self.salt if unique_prefix else ""
        self._blocks: OrderedDict[int, tuple[str, tuple[int, ...]]] = OrderedDict()

    def due_offsets_ns(self) -> Iterator[int]:
        """When each request is due, in ns after the replay's start (the first line's time
        is 0), at ``speed``."""
        t0 = self.entries[0].t_ms
        for entry in self.entries:
            yield round((entry.t_ms - t0) * 1e6 / self.speed)

    @property
    def mean_rate(self) -> float:
        """Requests a second over the replay (what a phase shows as its rate)."""
        span_s = (self.entries[-1].t_ms - self.entries[0].t_ms) / 1e3 / self.speed
        return len(self.entries) / span_s if span_s > 0 else float(len(self.entries))

    def _block(self, hash_id: int) -> tuple[str, tuple[int, ...]]:
        """Block ``hash_id``'s text and ids: the same for every request that names it."""
        block = self._blocks.get(hash_id)
        if block is not None:
            self._blocks.move_to_end(hash_id)
            return block
        digest = hashlib.blake2b(f"{self._block_salt}:{hash_id}".encode(), digest_size=8)
        rng = np.random.default_rng([self.seed, _BLOCK_STREAM,
                                     int.from_bytes(digest.digest(), "big")])
        ids = tuple(rng.integers(0, VOCABULARY_SIZE, size=BLOCK_TOKENS).tolist())
        if self.tokenizer is not None:
            block = self.tokenizer.exact(ids, BLOCK_TOKENS)
        else:
            block = (" ".join(map(word, ids)), ids)
        self._blocks[hash_id] = block
        if len(self._blocks) > _BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return block

    def _words(self, request_id: int, n: int, unique: bool) -> tuple[int, ...]:
        """``n`` word ids of this request's own: its unique prefix (``unique``), then seeded
        words."""
        head = self._prefix.unique_ids(request_id)[:n] if unique else ()
        rng = np.random.default_rng([self.seed, _BODY_STREAM, request_id])
        return head + tuple(rng.integers(0, VOCABULARY_SIZE, size=n - len(head)).tolist())

    def _own(self, request_id: int, n: int, unique: bool) -> tuple[str, tuple[int, ...]]:
        if self.tokenizer is not None:  # a few words more, for exact() to choose from
            return self.tokenizer.exact(self._words(request_id, n + 8, unique), n)
        ids = self._words(request_id, n, unique)
        return " ".join(map(word, ids)), ids

    def prompt(self, request_id: int) -> Prompt:
        entry = self.entries[request_id]
        if entry.text is not None:
            head = " ".join(map(word, self._prefix.unique_ids(request_id)))
            messages = entry.messages
            text = f"{head} {entry.text}" if head else entry.text
            if head and messages:
                messages = ({**messages[0], "content": f"{head} {messages[0]['content']}"},
                            *messages[1:])
            ids = (tuple(self.tokenizer.encode(text)) if self.tokenizer is not None
                   else _word_ids(text))
            return Prompt(index=request_id, token_ids=ids, text=text, messages=messages)
        n = entry.input_length
        if not entry.hash_ids:
            text, ids = self._own(request_id, n, True)
            return Prompt(index=request_id, token_ids=ids, text=text)
        texts, ids = [], ()
        for hash_id in entry.hash_ids:
            if len(ids) >= n:
                break
            block_text, block_ids = self._block(hash_id)
            take = n - len(ids)
            if take < len(block_ids):  # the last block, partly: its first words
                if self.tokenizer is not None:
                    block_text, block_ids = self.tokenizer.exact(block_ids, take)
                else:
                    block_ids = block_ids[:take]
                    block_text = " ".join(map(word, block_ids))
            texts.append(block_text)
            ids += tuple(block_ids)
        if len(ids) < n:  # longer than its blocks: words of its own after them
            tail_text, tail_ids = self._own(request_id, n - len(ids), False)
            texts.append(tail_text)
            ids += tail_ids
        return Prompt(index=request_id, token_ids=ids, text=" ".join(texts))

    def output_length(self, request_id: int) -> int | None:
        return self.entries[request_id].output_length

    def describe(self) -> dict[str, Any]:
        return {"trace_file": dict(self.info), "trace_speed": self.speed,
                "prompt_seed": self.seed, "block_tokens": BLOCK_TOKENS,
                "unique_prefix_tokens": self.unique, "prefix_salt": self.salt,
                "prompts_sha256": self.info["sha256"]}
