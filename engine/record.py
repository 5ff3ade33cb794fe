"""Session records: one JSON object per line, the header first, flushed at least every second.

Why JSON lines: a record must survive ``kill -9`` (every whole line is readable), be followed
while it is still being written (``attach``), and be read by anyone with ``jq``. Per-token
times are the bulk, so a ``request_done`` stores its arrival offsets delta-encoded as integer
microseconds (``arrivals_dus``): small numbers, a few bytes per token.

Writing happens on a thread of its own: the session's event loop only appends to a queue, so
a slow or full disk never delays a token timestamp. A write error stops recording (and says
why in :attr:`RecordWriter.error`); the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import RecordError
from engine.events import (
    SCHEMA_VERSION,
    TYPE_TAGS,
    RequestDone,
    SessionStart,
)

_BY_TAG = {tag: cls for cls, tag in TYPE_TAGS.items()}
FLUSH_INTERVAL_S = 0.5


_NO_DEFAULT = object()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def encode(event: Any) -> dict[str, Any]:
    """The record form of ``event`` (a dict with a ``type`` tag)."""
    data = {"type": TYPE_TAGS[type(event)]}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name == "arrivals_us":
            data["arrivals_dus"] = np.diff(value, prepend=0).tolist() if value else []
        elif value == _default(f):
            continue  # defaults stay implicit: smaller records
        elif isinstance(value, tuple):
            data[f.name] = list(value)
        else:
            data[f.name] = value
    return data


def decode(data: dict[str, Any]) -> Any:
    """The event a record line holds; raises ``KeyError``/``TypeError`` on a malformed one."""
    data = dict(data)
    cls = _BY_TAG[data.pop("type")]
    if cls is RequestDone:
        deltas = data.pop("arrivals_dus")
        data["arrivals_us"] = tuple(np.cumsum(deltas, dtype=np.int64).tolist()) if deltas else ()
    for f in dataclasses.fields(cls):
        if isinstance(data.get(f.name), list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)


def default_path(directory: Path, wall_start: datetime, host: str, model: str) -> Path:
    """``YYYYmmdd-HHMMSS_<host>_<model>.jsonl`` in ``directory`` (names made filename-safe)."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "unknown"

    stamp = wall_start.strftime("%Y%m%d-%H%M%S")
    return directory / f"{stamp}_{safe(host)}_{safe(model)}.jsonl"


class RecordWriter:
    """Appends events to a record file from a background thread.

    ``write`` never blocks and never raises; ``close`` drains the queue, flushes and syncs.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "x", encoding="utf-8")  # noqa: SIM115 - owned by thread
        except FileExistsError:
            raise RecordError(f"record {self.path} already exists; choose another path") from None
        except OSError as exc:
            raise RecordError(f"cannot create record {self.path}: {exc.strerror}") from None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="soaktop-record", daemon=True)
        self._thread.start()

    def write(self, event: Any) -> None:
        if type(event) in TYPE_TAGS and self.error is None:
            self._queue.put(event)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch = []
            try:
                item = self._queue.get(timeout=FLUSH_INTERVAL_S)
                batch.append(item)
                while True:  # take whatever else is waiting, without blocking
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if None in batch:
                done = True
                batch = batch[: batch.index(None)]
            if self.error is not None:
                continue
            try:
                if batch:
                    self._file.write(
                        "".join(json.dumps(encode(e), separators=(",", ":")) + "\n" for e in batch)
                    )
                self._file.flush()
            except (OSError, ValueError) as exc:  # ENOSPC, EIO, a file closed under us
                reason = getattr(exc, "strerror", None) or str(exc)
                self.error = f"recording stopped: cannot write {self.path}: {reason}"
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or f"recording stopped: cannot close {self.path}: {exc}"


@dataclasses.dataclass
class RecordReader:
    """Reads a record back; lines that cannot be used are skipped and listed in ``warnings``."""

    path: Path
    warnings: list[str] = dataclasses.field(default_factory=list)

    def events(self) -> Iterator[Any]:
        try:
            handle = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            raise RecordError(f"no such record: {self.path}") from None
        except OSError as exc:
            raise RecordError(f"cannot read record {self.path}: {exc.strerror}") from None
        number = 0
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    self.warnings.append(f"line {number}: cut short (the writer was stopped)")
                    break
                try:
                    event = decode(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    if number == 1:
                        raise RecordError(f"{self.path} is not a soaktop record") from None
                    self.warnings.append(f"line {number}: unreadable ({type(exc).__name__})")
                    continue
                if number == 1:
                    if not (isinstance(event, SessionStart)
                            and isinstance(event.schema_version, int)):
                        raise RecordError(f"{self.path} is not a soaktop record")
                    if event.schema_version > SCHEMA_VERSION:
                        raise RecordError(
                            f"{self.path} has schema v{event.schema_version}; this soaktop "
                            f"reads up to v{SCHEMA_VERSION}: upgrade soaktop"
                        )
                yield event
        if number == 0:
            raise RecordError(f"{self.path} is empty: not a soaktop record")
