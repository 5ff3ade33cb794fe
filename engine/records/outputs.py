"""Saved outputs (``--save-outputs``): each request's output text in a side file beside the record.

Why a side file and not the record: a soak's record must stay small (a few bytes a token), and
output text is a hundred times that; most runs never look at it. A run that wants to inspect
what the model said asks for it, and gets ``RECORD.outputs.jsonl.gz`` (always compressed),
named in the record's header (``workload.outputs_file``), one JSON object a line:
``request_id``, ``worker_id`` (left out when 0), ``text`` (the answer) and ``reasoning`` (the
thinking of a model that reasons; left out when none). Lines go in the order requests ended.

Written by the record's own background writer
(:class:`~soaktop.engine.records.format.BackgroundWriter`), for the same reasons: the event
loop only hands the text to a thread, which writes one gzip member per half second (so
``kill -9`` loses about the last half second, and a cut file reads up to its last whole member).
Memory stays flat however long the run: the text not yet written is held up to
:data:`MAX_PENDING_CHARS` characters, and an output that would go past it (a disk that cannot
keep up) is counted in :attr:`OutputWriter.lost`, never queued without bound; the event loop
never waits for the disk.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soaktop.engine.errors import RecordError
from soaktop.engine.records.format import GZIP_LEVEL, BackgroundWriter, _LineSource

SUFFIX = ".outputs.jsonl.gz"
#: Text (answer and reasoning, in characters) handed to the writer and not yet written, at
#: most: 8 Mi characters, some seconds of the fastest server's output at high concurrency.
MAX_PENDING_CHARS = 8 << 20
#: A batch is written early once it holds this much text, so one gzip member stays small.
BATCH_CHARS = 1 << 20


def outputs_path(record: Path) -> Path:
    """The side file of ``record``: ``X.jsonl.gz`` (or ``X.jsonl``) -> ``X.outputs.jsonl.gz``."""
    name = record.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return record.with_name(name + SUFFIX)


class OutputWriter(BackgroundWriter):
    """Appends each request's output to the side file from a background thread.

    :meth:`add` never blocks and never raises; :meth:`close` writes what is left and syncs.
    """

    STOPPED = "saving outputs stopped"
    batch_limit = BATCH_CHARS

    def __init__(self, path: Path, max_pending_chars: int = MAX_PENDING_CHARS) -> None:
        path = Path(path)
        self.max_pending_chars = max_pending_chars
        #: Outputs not saved because the text waiting to be written was at its bound.
        self.lost = 0
        #: The most text (characters) ever waiting at once: never above ``max_pending_chars``.
        self.peak_pending_chars = 0
        self._pending = 0
        self._lock = threading.Lock()
        try:
            file = open(path, "xb")  # noqa: SIM115 - owned by the thread
        except FileExistsError:
            raise RecordError(f"outputs file {path} already exists; choose another "
                              "record path") from None
        except OSError as exc:
            raise RecordError(f"cannot create outputs file {path}: {exc.strerror}") from None
        self._start(path, file, "soaktop-outputs")

    def add(self, request_id: int, worker_id: int, text: str, reasoning: str = "") -> None:
        """One request's output; dropped (and counted in :attr:`lost`) rather than held when
        the text waiting to be written would pass its bound."""
        if self.error is not None:
            return
        size = len(text) + len(reasoning)
        with self._lock:
            if self._pending + size > self.max_pending_chars:
                self.lost += 1
                return
            self._pending += size
            if self._pending > self.peak_pending_chars:
                self.peak_pending_chars = self._pending
        self._queue.put((request_id, worker_id, text, reasoning))

    def _size(self, item: tuple[int, int, str, str]) -> int:
        return len(item[2]) + len(item[3])

    def _written(self, size: int) -> None:
        with self._lock:
            self._pending -= size

    def _encode(self, batch: list[tuple[int, int, str, str]]) -> bytes:
        # ASCII only: a lone surrogate a server sent still writes, and the file is compressed
        data = "".join(map(self._line, batch)).encode("ascii")
        return gzip.compress(data, GZIP_LEVEL, mtime=0)

    @staticmethod
    def _line(item: tuple[int, int, str, str]) -> str:
        request_id, worker_id, text, reasoning = item
        data: dict[str, Any] = {"request_id": request_id}
        if worker_id:
            data["worker_id"] = worker_id
        data["text"] = text
        if reasoning:
            data["reasoning"] = reasoning
        return json.dumps(data, separators=(",", ":")) + "\n"


@dataclass(frozen=True, slots=True)
class SavedOutput:
    """One request's saved output, as the side file holds it."""

    request_id: int
    text: str
    worker_id: int = 0
    reasoning: str = ""


@dataclass
class OutputReader:
    """Reads a side file back, a slice at a time; lines that cannot be used are skipped and
    listed in ``warnings`` (a file cut by a kill: its last whole lines are read, and a
    warning says it was cut)."""

    path: Path
    warnings: list[str] = field(default_factory=list)

    def outputs(self) -> Iterator[SavedOutput]:
        try:
            source = _LineSource(self.path, self.warnings)
        except RecordError:
            raise RecordError(f"no outputs file {self.path}") from None
        try:
            while not source.at_end:
                yield from self._decode(source, source.read(1 << 20))
            yield from self._decode(source, source.finish())
        finally:
            source.close()

    def _decode(self, source: _LineSource, lines: list[bytes]) -> Iterator[SavedOutput]:
        for line in lines:
            source.lines_read += 1
            try:
                data = json.loads(line)
                output = SavedOutput(request_id=data["request_id"], text=data["text"],
                                     worker_id=data.get("worker_id", 0),
                                     reasoning=data.get("reasoning", ""))
                if type(output.request_id) is not int or not isinstance(output.text, str):
                    raise TypeError("not an output line")
            except (ValueError, KeyError, TypeError) as exc:
                self.warnings.append(
                    f"line {source.lines_read}: unreadable ({type(exc).__name__})")
                continue
            yield output
