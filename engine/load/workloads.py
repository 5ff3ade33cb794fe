"""Real workloads: prompt files and length distributions, beside the synthetic prompts.

A length (``--input-tokens``, ``--output-tokens``) is a fixed number or a distribution, each
draw seeded by the run's seed and the request's number, so a request's length does not depend
on the order requests went out in:

- ``128``: always 128;
- ``512:64``: normal, mean 512, standard deviation 64, rounded and clipped at 1;
- ``100-900``: uniform over 100 to 900, both included;
- ``128:3,1024:1``: buckets ``LEN:WEIGHT``, two or more (one ``A:B`` is a normal).

The config holds the normalised text (:func:`normalise_lengths`): a number stays a number, so
a run without distributions has the config it always had.

A prompt file (``--prompts FILE``): JSON Lines (an object a line: ``prompt`` text or chat
``messages``, and optionally ``output_tokens``), a ShareGPT JSON file (a list of
``{"conversations": [{"from": "human", "value": ...}, ...]}``: the turns up to the first
human one are the prompt), or plain text (one prompt a line). Its prompts go out in a seeded
order, a new permutation each time through the file, each with the unique prefix of
:mod:`.prompts` in front (unless ``--no-unique-prefix``), so no prefix cache serves a repeat.
The record's workload names the file, its size and its sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
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

# Streams of the seed's generator, apart from the prompt pool's (0) and shared prefix's (1).
_INPUT_STREAM, _OUTPUT_STREAM, _ORDER_STREAM = 2, 3, 4
_CHUNK = 4096  # lengths are drawn this many requests at a time
_NUMBER = r"\d+(?:\.\d+)?"


@dataclass(frozen=True)
class Lengths:
    """A length distribution: ``kind`` fixed, normal, uniform or buckets."""

    kind: str
    values: tuple[float, ...]  # fixed (n,), normal (mean, sd), uniform (lo, hi), buckets: lens
    weights: tuple[float, ...] = ()  # buckets only

    def text(self) -> int | str:
        """The normalised form the config keeps (a fixed length stays an int)."""
        v = self.values
        if self.kind == "fixed":
            return int(v[0])
        if self.kind == "normal":
            return f"{v[0]:g}:{v[1]:g}"
        if self.kind == "uniform":
            return f"{int(v[0])}-{int(v[1])}"
        return ",".join(f"{int(n)}:{w:g}" for n, w in zip(v, self.weights))

    @property
    def mean(self) -> float:
        v = self.values
        if self.kind in ("fixed", "normal"):
            return v[0]
        if self.kind == "uniform":
            return (v[0] + v[1]) / 2
        return float(np.dot(v, self.weights) / sum(self.weights))

    @property
    def floor(self) -> int:
        """The shortest length to check a shared prefix against (a normal's mean: its draws
        below the shared prefix get part of it only)."""
        if self.kind == "buckets":
            return int(min(self.values))
        return int(self.values[0])

    @property
    def ceiling(self) -> int:
        """The longest length it draws in practice (a normal: mean + 6 SD)."""
        v = self.values
        if self.kind == "normal":
            return max(1, math.ceil(v[0] + 6 * v[1]))
        return int(max(v))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        v = self.values
        if self.kind == "fixed":
            return np.full(n, int(v[0]), dtype=np.int64)
        if self.kind == "normal":
            return np.maximum(np.rint(rng.normal(v[0], v[1], n)), 1).astype(np.int64)
        if self.kind == "uniform":
            return rng.integers(int(v[0]), int(v[1]) + 1, size=n)
        p = np.asarray(self.weights, dtype=np.float64)
        return np.asarray(v, dtype=np.int64)[rng.choice(len(v), size=n, p=p / p.sum())]


def parse_lengths(value: int | str, flag: str = "") -> Lengths:
    """A fixed length, ``MEAN:SD``, ``MIN-MAX`` or ``LEN:WEIGHT,LEN:WEIGHT,...``."""
    flag = f"{flag}: " if flag else ""  # argparse names the flag itself
    if isinstance(value, bool):
        raise ConfigError(f"{flag}{value!r} is not a length")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise ConfigError(f"{flag}a length must be at least 1 (got {value})")
        return Lengths("fixed", (int(value),))
    text = str(value).replace(" ", "")
    hint = f"{flag}cannot read {value!r}: use 128, MEAN:SD (512:64), MIN-MAX (100-900) or " \
           f"LEN:WEIGHT,... (128:3,1024:1)"
    if re.fullmatch(r"\d+", text):
        return parse_lengths(int(text), flag.removesuffix(": "))
    if m := re.fullmatch(rf"({_NUMBER}):({_NUMBER})", text):
        mean, sd = float(m.group(1)), float(m.group(2))
        if mean < 1:
            raise ConfigError(f"{flag}a normal's mean must be at least 1 (got {value!r})")
        return Lengths("normal", (mean, sd)) if sd > 0 else Lengths("fixed", (round(mean),))
    if m := re.fullmatch(r"(\d+)-(\d+)", text):
        lo, hi = int(m.group(1)), int(m.group(2))
        if not 1 <= lo <= hi:
            raise ConfigError(f"{flag}MIN-MAX needs 1 <= MIN <= MAX (got {value!r})")
        return Lengths("uniform", (lo, hi)) if lo < hi else Lengths("fixed", (lo,))
    parts = text.split(",")
    if len(parts) >= 2 and all(re.fullmatch(rf"\d+:{_NUMBER}", p) for p in parts):
        lens = tuple(int(p.split(":")[0]) for p in parts)
        weights = tuple(float(p.split(":")[1]) for p in parts)
        if min(lens) < 1 or min(weights) <= 0:
            raise ConfigError(f"{flag}buckets need lengths >= 1 and weights > 0 "
                              f"(got {value!r})")
        return Lengths("buckets", lens, weights)
    raise ConfigError(hint)


def normalise_lengths(value: int | str, flag: str = "") -> int | str:
    """The config's form of a length: an int when fixed, else the normalised text."""
    return parse_lengths(value, flag).text()


class LengthDraws:
    """Request ``i``'s length from ``lengths``: the same for a seed whatever the order asked."""

    def __init__(self, lengths: Lengths, seed: int, stream: int) -> None:
        self.lengths, self.seed, self.stream = lengths, seed, stream
        self._chunks: dict[int, np.ndarray] = {}

    def __call__(self, request_id: int) -> int:
        if self.lengths.kind == "fixed":
            return int(self.lengths.values[0])
        chunk, at = divmod(request_id, _CHUNK)
        draws = self._chunks.get(chunk)
        if draws is None:
            if len(self._chunks) > 4:
                self._chunks.clear()
            rng = np.random.default_rng([self.seed, self.stream, chunk])
            draws = self._chunks[chunk] = self.lengths.draw(rng, _CHUNK)
        return int(draws[at])


# -- prompt files --------------------------------------------------------------------------


@dataclass(frozen=True)
class FilePrompt:
    """One prompt of a file: its text (messages' contents joined), its chat messages if it
    had any, the output length it asks for, and where it was (line or entry, from 1)."""

    text: str
    messages: tuple[dict[str, str], ...] | None
    output_tokens: int | None
    where: int
    #: A ShareGPT entry of several human turns: all its turns through the last human one.
    #: A one-request run sends ``messages`` (up to the first human turn); a conversation run
    #: (``--turns``) sends these turn by turn (soaktop.engine.load.conversations).
    conversation: tuple[dict[str, str], ...] | None = None


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                   "bard": "assistant"}


def _messages(value: Any, at: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{at}: 'messages' must be a non-empty list")
    out = []
    for m in value:
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)):
            raise ConfigError(f"{at}: each message needs a 'role' and a 'content' string")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _output_tokens(value: Any, at: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{at}: 'output_tokens' must be a whole number >= 1 (got {value!r})")
    return value


def json_lines(text: str, name: str) -> Iterator[tuple[int, str, Any]]:
    """A JSON Lines file's objects, each with its line number and where it is for an error
    (``chats.jsonl line 3``); blank lines skipped, a line that is not JSON a one-line error."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{name} line {n}"
        try:
            yield n, at, json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{at}: not JSON ({exc.args[0].split(':')[0]})") from None


def _jsonl(text: str, name: str) -> list[FilePrompt]:
    prompts = []
    for n, at, obj in json_lines(text, name):
        if not isinstance(obj, dict):
            raise ConfigError(f"{at}: a JSON object with 'prompt' or 'messages' is needed")
        out = _output_tokens(obj.get("output_tokens"), at)
        if isinstance(obj.get("prompt"), str) and obj["prompt"]:
            prompts.append(FilePrompt(obj["prompt"], None, out, n))
        elif "messages" in obj:
            messages = _messages(obj["messages"], at)
            prompts.append(FilePrompt("\n".join(m["content"] for m in messages), messages,
                                      out, n))
        else:
            raise ConfigError(f"{at}: a JSON object with 'prompt' (text) or 'messages' is needed")
    return prompts


def _sharegpt(text: str, name: str) -> list[FilePrompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{name}: a ShareGPT file is a JSON list of conversations")
    prompts = []
    for n, entry in enumerate(data, 1):
        at = f"{name} entry {n}"
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            raise ConfigError(f"{at}: no 'conversations' list")
        every = []
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise ConfigError(f"{at}: each turn needs 'from' and a 'value' string")
            role = _SHAREGPT_ROLES.get(str(turn.get("from")).lower())
            if role is None:
                raise ConfigError(f"{at}: unknown speaker {turn.get('from')!r}")
            every.append({"role": role, "content": turn["value"]})
        users = [i for i, m in enumerate(every) if m["role"] == "user"]
        if not users:
            continue  # a conversation without a human turn: nothing to send
        messages = tuple(every[: users[0] + 1])
        whole = tuple(every[: users[-1] + 1]) if len(users) > 1 else None
        prompts.append(FilePrompt("\n".join(m["content"] for m in messages), messages,
                                  None, n, whole))
    return prompts


def read_text_file(path: str | os.PathLike, what: str) -> tuple[bytes, str]:
    """A workload file's bytes (for its sha256) and its UTF-8 text; a missing or unreadable
    file, or one that is not UTF-8, is a one-line error naming it (``what``: "prompt file",
    "trace") or the line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{Path(path).name} line {line}: not UTF-8 text") from None


def read_prompt_file(path: str | os.PathLike) -> tuple[list[FilePrompt], dict[str, Any]]:
    """The prompts of a file and what the record says of it (name, size, sha256, format).

    The format: ``.jsonl`` JSON Lines, ``.json`` ShareGPT; otherwise a first character ``[``
    is ShareGPT, ``{`` JSON Lines, anything else plain text (one prompt a line)."""
    p = Path(path)
    name = p.name
    raw, text = read_text_file(path, "prompt file")
    first = text.lstrip()[:1]
    if p.suffix == ".jsonl" or (p.suffix != ".json" and first == "{"):
        kind, prompts = "jsonl", _jsonl(text, name)
    elif p.suffix == ".json" or first == "[":
        kind, prompts = "sharegpt", _sharegpt(text, name)
    else:
        kind = "text"
        prompts = [FilePrompt(line, None, None, n)
                   for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompts")
    info = {"name": name, "path": str(p.resolve()), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "format": kind, "prompts": len(prompts)}
    return prompts, info


def file_sha256(path: str | os.PathLike) -> str | None:
    """The file's sha256, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _word_ids(text: str) -> tuple[int, ...]:
    """Words as ids for the local engine (which takes ids): one word, one id."""
    return tuple(zlib.crc32(w.encode()) % VOCABULARY_SIZE for w in text.split())


class FilePrompts:
    """A prompt file's prompts, each request's from a seeded permutation of the file, a new
    one each time through it; the unique prefix (``UNIQUE_PREFIX_TOKENS`` pseudo-words) first."""

    def __init__(self, path: str, seed: int, unique_prefix: bool = True,
                 salt: str | None = None, tokenizer: Any = None,
                 conversations: bool = False) -> None:
        self.entries, self.info = read_prompt_file(path)
        #: ``--turns``: a ShareGPT entry's prompt is its whole conversation, to send turn by turn
        self.conversations = conversations
        self.seed, self.tokenizer = seed, tokenizer
        # the unique prefix's words come from PromptSet's, seeded by the same salt
        self._prefix = PromptSet(seed, 1, UNIQUE_PREFIX_TOKENS if unique_prefix else 1, 0, salt,
                                 unique_prefix=unique_prefix)
        self.salt, self.unique = self._prefix.salt, self._prefix.unique
        self._cycle, self._order = -1, np.empty(0, dtype=np.int64)

    def index(self, request_id: int) -> int:
        """Which of the file's prompts (0-based, in file order) request ``request_id`` sends."""
        cycle, at = divmod(request_id, len(self.entries))
        if cycle != self._cycle:
            rng = np.random.default_rng([self.seed, _ORDER_STREAM, cycle])
            self._cycle, self._order = cycle, rng.permutation(len(self.entries))
        return int(self._order[at])

    def entry(self, request_id: int) -> FilePrompt:
        return self.entries[self.index(request_id)]

    def prompt(self, request_id: int) -> Prompt:
        entry = self.entry(request_id)
        head = " ".join(map(word, self._prefix.unique_ids(request_id)))
        messages = (entry.conversation or entry.messages) if self.conversations \
            else entry.messages
        if head:
            if messages:
                first = {**messages[0], "content": f"{head} {messages[0]['content']}"}
                messages = (first, *messages[1:])
            text = f"{head} {entry.text}"
        else:
            text = entry.text
        ids = (tuple(self.tokenizer.encode(text)) if self.tokenizer is not None
               else _word_ids(text))
        return Prompt(index=request_id, token_ids=ids, text=text, messages=messages)

    def describe(self) -> dict[str, Any]:
        return {"prompt_file": dict(self.info), "prompt_seed": self.seed,
                "prompt_order": "a seeded permutation of the file each time through it",
                "unique_prefix_tokens": self.unique, "prefix_salt": self.salt,
                "prompts_sha256": self.info["sha256"]}


class SyntheticPrompts:
    """Synthetic prompts of a drawn length (or an exact token length, with a tokenizer):
    the pool's rows are ``ceiling`` words long, cycled when a draw is longer."""

    def __init__(self, seed: int, pool: int, lengths: Lengths, shared_prefix: int = 0,
                 salt: str | None = None, unique_prefix: bool = True,
                 tokenizer: Any = None) -> None:
        self.lengths, self.tokenizer = lengths, tokenizer
        self.draws = LengthDraws(lengths, seed, _INPUT_STREAM)
        width = max(lengths.ceiling, shared_prefix + UNIQUE_PREFIX_TOKENS, 1)
        self._base = PromptSet(seed, 1, width, shared_prefix, salt, unique_prefix=unique_prefix)
        self.salt, self.unique = self._base.salt, self._base.unique
        rng = np.random.default_rng(seed)
        self._pool = rng.integers(0, VOCABULARY_SIZE, size=(pool, width), dtype=np.int64)
        self._describe = {"prompt_seed": seed, "prompt_pool": pool,
                          "input_tokens": lengths.text(), "shared_prefix_tokens": shared_prefix,
                          "unique_prefix_tokens": self.unique, "prefix_salt": self.salt,
                          "prompts_sha256": hashlib.sha256(self._pool.astype(np.uint16).tobytes()
                                                           + repr(self._base._shared).encode()
                                                           ).hexdigest()}

    def words(self, request_id: int, n: int) -> tuple[int, ...]:
        """``n`` word ids: shared prefix, unique prefix, then the pool row (cycled)."""
        row = self._pool[request_id % len(self._pool)]
        body = np.resize(row, n).tolist()
        head = (self._base._shared + self._base.unique_ids(request_id))[:n]
        return tuple(head) + tuple(body[len(head):])

    def prompt(self, request_id: int) -> Prompt:
        n = self.draws(request_id)
        if self.tokenizer is None:
            ids = self.words(request_id, n)
            return Prompt(index=request_id, token_ids=ids, text=" ".join(map(word, ids)))
        text, ids = self.tokenizer.exact(self.words(request_id, n + 8), n)
        return Prompt(index=request_id, token_ids=ids, text=text)

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)


class Workload:
    """What a session sends: each request's prompt and output length, and the record's
    account of them. Without prompt files, distributions or a tokenizer it is the
    :class:`~soaktop.engine.load.prompts.PromptSet` it always was."""

    def __init__(self, config: Any, salt: str | None = None) -> None:
        tokenizer = None
        if getattr(config, "tokenizer", None):
            from soaktop.engine.load.tokenizer import LocalTokenizer
            tokenizer = LocalTokenizer(config.tokenizer)
        unique = getattr(config, "unique_prefix", True)
        inputs = parse_lengths(config.input_tokens, "--input-tokens")
        self.output = parse_lengths(config.output_tokens, "--output-tokens")
        self._outputs = LengthDraws(self.output, config.seed, _OUTPUT_STREAM)
        self.file: FilePrompts | None = None
        self.trace = None  # a TracePrompts (--trace)
        if getattr(config, "trace", None):
            from soaktop.engine.load.traces import TracePrompts

            self.trace = TracePrompts(config.trace, config.trace_speed, config.seed, unique,
                                      salt, tokenizer)
            self.source: Any = self.trace
        elif getattr(config, "prompts", None):
            self.file = FilePrompts(config.prompts, config.seed, unique, salt, tokenizer,
                                    conversations=getattr(config, "turns", 1) > 1)
            self.source: Any = self.file
        elif inputs.kind == "fixed" and tokenizer is None:
            self.source = PromptSet(config.seed, config.prompt_pool, inputs.text(),
                                    config.shared_prefix, salt, unique_prefix=unique)
        else:
            self.source = SyntheticPrompts(config.seed, config.prompt_pool, inputs,
                                           config.shared_prefix, salt, unique, tokenizer)
        self.tokenizer = tokenizer
        self.salt = self.source.salt
        self.turns = getattr(config, "turns", 1)
        self.seed = config.seed
        if self.turns > 1:
            from soaktop.engine.load.conversations import parse_think_time

            self.think_time = parse_think_time(config.think_time)

    def encode(self, text: str) -> list[int]:
        """A text's token ids: the tokenizer's, else one a word (the local engine's ids)."""
        return self.tokenizer.encode(text) if self.tokenizer is not None else \
            list(_word_ids(text))

    def prompt(self, request_id: int) -> Prompt:
        return self.source.prompt(request_id)

    def max_tokens(self, request_id: int) -> int:
        """Its output length: the prompt file's, else a draw from ``--output-tokens``."""
        if self.file is not None:
            asked = self.file.entry(request_id).output_tokens
            if asked is not None:
                return asked
        if self.trace is not None:
            asked = self.trace.output_length(request_id)
            if asked is not None:
                return asked
        return self._outputs(request_id)

    def describe(self) -> dict[str, Any]:
        out = self.source.describe()
        if self.output.kind != "fixed":
            out["output_tokens"] = self.output.text()
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.describe()
        if self.turns > 1:
            out["turns"] = self.turns
            out["think_time_s"] = self.think_time.text()
        return out
