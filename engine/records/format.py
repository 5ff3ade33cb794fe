"""Session records: one JSON object per line, the header first, flushed at least every second.

Why JSON lines: a record must survive ``kill -9`` (every whole line is readable), be followed
while it is still being written (``attach``), and be read by anyone with ``jq``. Per-token
times are the bulk, so a ``request_done`` stores its arrival offsets delta-encoded as integer
microseconds (``arrivals_dus``): small numbers, a few bytes per token.

Compression where it pays: a record named ``*.gz`` (the default, ``.jsonl.gz``) is written as
one gzip member per flush. Concatenated members are one valid gzip file (``zcat r.jsonl.gz |
jq``), and each member holds whole lines, so a kill loses at most the member being written and
a corrupt byte loses one member's lines (half a second), not the rest of the file. Measured in
``bench/records.py``: 9.0 bytes per output token as plain JSON lines at concurrency 64, 3.1
compressed.

Writing happens on a thread of its own: the session's event loop only appends to a queue, so
a slow or full disk never delays a token timestamp. A write error stops recording (and says
why in :attr:`RecordWriter.error`); the run goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import math
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from soaktop.engine.errors import RecordError
from soaktop.engine.events import (
    SCHEMA_VERSION,
    TYPE_TAGS,
    RequestDone,
    SessionEnd,
    SessionStart,
)

_BY_TAG = {tag: cls for cls, tag in TYPE_TAGS.items()}
FLUSH_INTERVAL_S = 0.5
GZIP_LEVEL = 6  # measured: level 9 saves nothing more on records; level 1 costs 8% more bytes
_GZIP_MAGIC = b"\x1f\x8b\x08"
_INFLATE_SLICE = 1 << 16  # compressed bytes handed to zlib at a time (see _inflate)
_READ_SLICE = 1 << 20  # bytes of the file read at a time by RecordReader.events


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


_RAW_DECODE = json.JSONDecoder().raw_decode

try:  # a declared dependency; without it (a bare checkout) lines are parsed by json alone
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is installed with soaktop
    _orjson_loads = None


def _parse(line: bytes) -> Any:
    """``json.loads(line)``, three times faster for a well-formed line.

    A long soak's record is 200 MB of JSON text, and parsing it was most of what ``soaktop
    summary`` cost (measured on a 30-minute record: 1.0 s with ``json``, 0.3 s with orjson).
    orjson gives the same value as ``json.loads`` for every line it accepts; a line it refuses
    (not UTF-8, ``NaN``, an integer past 64 bits, a lone surrogate...) goes to ``json.loads``,
    so it is read, or fails with the same exception, exactly as before.
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(line)
        except ValueError:
            return json.loads(line)
    try:  # json alone: skip the encoding detection and the trailing-whitespace scan
        text = line.decode()
        data, end = _RAW_DECODE(text)
        if end == len(text):
            return data
    except ValueError:
        pass
    return json.loads(line)


def decode(data: dict[str, Any]) -> Any:
    """The event a record line holds; raises ``KeyError``/``TypeError`` on a malformed one.

    Plain Python, no numpy: a long soak's record holds hundreds of thousands of lines, and
    for a few dozen small integers a call into numpy costs more than the loop it saves.
    """
    data = dict(data)
    cls = _BY_TAG[data.pop("type")]
    if cls is RequestDone:
        deltas = data.pop("arrivals_dus")
        if deltas:
            arrivals = tuple(accumulate(deltas))
            if type(arrivals[-1]) is not int:  # a float or a string: not a record's offsets
                raise TypeError("arrivals_dus must hold integers")
            data["arrivals_us"] = arrivals
        else:
            data["arrivals_us"] = ()
    for name in [name for name, value in data.items() if type(value) is list]:
        data[name] = tuple(data[name])  # events hold tuples; an unknown name fails below
    return cls(**data)


_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestDone)) - {"arrivals_us"}
_REQUEST_REQUIRED = frozenset(
    f.name for f in dataclasses.fields(RequestDone)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
) - {"arrivals_us"}
_REQUEST_KEYS = _REQUEST_FIELDS | {"type", "arrivals_dus"}


def check_request_line(data: dict[str, Any]) -> None:
    """Raise what :func:`decode` would raise for this ``request_done`` line, build nothing.

    Why: a long soak's record is mostly ``request_done`` lines, and making a 19-field frozen
    dataclass costs several microseconds a line (a second of a 30-minute soak's ``summary``).
    A reader that takes the line's values straight from the dict (:meth:`RecordReader.events`
    with ``raw_requests``) checks it here, so a malformed line is skipped with the same
    warning either way: a missing ``arrivals_dus`` is a ``KeyError`` (as ``decode`` pops it
    first), offsets that are not integers or a missing or unknown field a ``TypeError``.
    """
    deltas = data["arrivals_dus"]
    if deltas:
        if type(deltas) is list and len(deltas) > 1:
            last = sum(deltas)  # what accumulate ends with; it fails on a string the same way
        else:
            last = tuple(accumulate(deltas))[-1]
        if type(last) is not int:
            raise TypeError("arrivals_dus must hold integers")
    keys = data.keys()
    if not keys <= _REQUEST_KEYS or not _REQUEST_REQUIRED <= keys:
        raise TypeError("not the fields of a request_done")


def default_path(directory: Path, wall_start: datetime, host: str, model: str) -> Path:
    """``YYYYmmdd-HHMMSS_<host>_<model>.jsonl.gz`` in ``directory`` (names made filename-safe)."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "unknown"

    stamp = wall_start.strftime("%Y%m%d-%H%M%S")
    return directory / f"{stamp}_{safe(host)}_{safe(model)}.jsonl.gz"


class BackgroundWriter:
    """Appends batches to a file from a background thread, so the event loop never waits for
    the disk: the record (:class:`RecordWriter`) and the saved outputs
    (:class:`~soaktop.engine.records.outputs.OutputWriter`) share it.

    A batch is what came in ``FLUSH_INTERVAL_S`` from its first item (or, where a subclass
    sizes items, up to ``batch_limit``), written at once and flushed into the kernel: a kill of
    the process loses nothing written, a cut gzip file reads up to its last whole member.
    A subclass opens the file (its own messages), then calls :meth:`_start`, and supplies
    :meth:`_encode`; ``STOPPED`` begins the message of a write that failed.
    """

    STOPPED: ClassVar[str]
    #: A batch is written early once its items' :meth:`_size` add up to this.
    batch_limit: float = math.inf

    def _start(self, path: Path, file: BinaryIO, thread_name: str) -> None:
        self.path = path
        self.error: str | None = None
        self._file = file
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Writes what is left, syncs and closes the file."""
        self._queue.put(None)
        self._thread.join()

    def _encode(self, batch: list[Any]) -> bytes:
        raise NotImplementedError

    def _size(self, item: Any) -> int:
        """An item's weight against ``batch_limit``; none by default."""
        return 0

    def _written(self, size: int) -> None:
        """A batch of that total :meth:`_size` has left the queue (written or not)."""

    def _run(self) -> None:
        done = False
        while not done:
            # Gather for FLUSH_INTERVAL_S from the first item of a batch, then write it all:
            # one write and one gzip member per half second, not one per event (measured at
            # concurrency 64: 4.9 bytes/token written as events came, 3.2 gathered).
            batch = [self._queue.get()]
            size = 0 if batch[0] is None else self._size(batch[0])
            deadline = time.monotonic() + FLUSH_INTERVAL_S
            while batch[-1] is not None and size < self.batch_limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                batch.append(item)
                if item is not None:
                    size += self._size(item)
            if batch[-1] is None:
                done = True
                batch.pop()
            if batch and self.error is None:
                try:
                    self._file.write(self._encode(batch))
                    self._file.flush()  # in the kernel now: a kill of this process loses nothing
                except (OSError, ValueError) as exc:  # ENOSPC, EIO, a file closed under us
                    reason = getattr(exc, "strerror", None) or str(exc)
                    self.error = f"{self.STOPPED}: cannot write {self.path}: {reason}"
            self._written(size)
        try:
            if self.error is None:
                os.fsync(self._file.fileno())  # and on the disk: a power cut loses nothing
            self._file.close()
        except (OSError, ValueError) as exc:
            self.error = self.error or f"{self.STOPPED}: cannot close {self.path}: {exc}"


class RecordWriter(BackgroundWriter):
    """Appends events to a record file from a background thread.

    ``write`` never blocks and never raises; ``close`` drains the queue, flushes and syncs.
    A path ending in ``.gz`` is written compressed, one gzip member per flush.
    """

    STOPPED = "recording stopped"

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self._compress = path.name.endswith(".gz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(path, "xb")  # noqa: SIM115 - owned by the thread
        except FileExistsError:
            raise RecordError(f"record {path} already exists; choose another path") from None
        except OSError as exc:
            raise RecordError(f"cannot create record {path}: {exc.strerror}") from None
        self._start(path, file, "soaktop-record")

    def write(self, event: Any) -> None:
        if type(event) in TYPE_TAGS and self.error is None:
            self._queue.put(event)

    def _encode(self, batch: list[Any]) -> bytes:
        text = "".join(json.dumps(encode(e), separators=(",", ":")) + "\n" for e in batch)
        data = text.encode("utf-8")
        return gzip.compress(data, GZIP_LEVEL, mtime=0) if self._compress else data


class _LineSource:
    """The whole lines of a record file written so far, plain or gzip, read incrementally.

    :meth:`read` returns the lines appended since the last call, so ``summary`` reads a file
    in one call and ``attach`` keeps calling it as another process writes. Compression is
    recognised by the gzip magic, not the name. Only whole gzip members are used while a file
    may still grow (the writer puts each one down in a single write); :meth:`finish` then takes
    what a killed writer left of its last one.
    """

    def __init__(self, path: Path, warnings: list[str]) -> None:
        self.path = path
        self._warnings = warnings
        try:
            self._handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise RecordError(f"no such record: {path}") from None
        except IsADirectoryError:
            raise RecordError(f"{path} is a folder, not a record") from None
        except OSError as exc:
            raise RecordError(f"cannot read record {path}: {exc.strerror}") from None
        self._gzip: bool | None = None  # not known until the first bytes are there
        self._raw = b""  # compressed bytes from the start of the member not yet whole
        self._skipping = False  # after a corrupt member, until the next member's start
        self._text = b""  # the start of a line whose end has not been read yet
        self.lines_read = 0
        self.bytes_read = 0
        self.at_end = False

    def close(self) -> None:
        self._handle.close()

    def read(self, size: int = -1) -> list[bytes]:
        """The whole lines in the next ``size`` bytes of the file (all of it when -1); sets
        :attr:`at_end` when the file has no more bytes now."""
        if self._gzip is None and size >= 0:
            size = max(size, len(_GZIP_MAGIC))  # enough to tell gzip from text
        data = self._handle.read(size)
        self.at_end = not data or size < 0
        self.bytes_read += len(data)
        if self._gzip is None and data:
            self._gzip = data[:2] == _GZIP_MAGIC[:2]
        if self._gzip:
            self._raw += data
            data = self._inflate(final=False)
        return self._split(data)

    def finish(self) -> list[bytes]:
        """What remains once the file is known to be complete (or its writer dead)."""
        lines = self.read()
        if self._gzip and self._raw and not self._skipping:
            lines += self._split(self._inflate(final=True))
            if self._raw:
                self._warnings.append(
                    f"after line {self.lines_read + len(lines)}: the last compressed block is "
                    f"cut short (the writer was stopped)")
        if self._text:
            self._warnings.append(
                f"line {self.lines_read + len(lines) + 1}: cut short (the writer was stopped)")
            self._text = b""
        return lines

    def _split(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        lines = (self._text + data).split(b"\n")
        self._text = lines.pop()
        return lines

    def _inflate(self, final: bool) -> bytes:
        """The text of every whole member in ``_raw``; ``_raw`` keeps what is left.

        Members are fed to zlib in slices of :data:`_INFLATE_SLICE` bytes from a position
        that moves on, never as "the rest of the buffer": zlib copies whatever follows a
        member's end into ``unused_data``, and a 30-minute record holds thousands of members,
        so handing it the rest each time copied the file over and over (seconds).
        """
        out = bytearray()
        raw = self._raw
        view = memoryview(raw)
        pos = 0
        while pos < len(raw):
            if self._skipping:
                start = raw.find(_GZIP_MAGIC, pos)
                if start < 0:
                    pos = max(pos, len(raw) - 2)  # the next member may start across two reads
                    break
                pos, self._skipping = start, False
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text, end = bytearray(), pos
            try:
                while not inflater.eof and end < len(raw):
                    piece = view[end : end + _INFLATE_SLICE]
                    text += inflater.decompress(piece)
                    end += len(piece) - len(inflater.unused_data)
            except zlib.error as exc:
                lines_before = self.lines_read + out.count(b"\n")
                self._warnings.append(
                    f"after line {lines_before}: corrupt compressed block ({exc}); its lines "
                    f"are lost, reading goes on at the next block")
                self._text = b""  # members hold whole lines: the next one starts a line
                pos, self._skipping = pos + 1, True
                continue
            if not inflater.eof:  # a member still being written, or cut by a kill
                if final:
                    out += text[: text.rfind(b"\n") + 1]
                break
            out += text
            pos = end
        view.release()
        self._raw = raw[pos:] if pos else raw
        return bytes(out)


@dataclasses.dataclass
class RecordReader:
    """Reads a record back; lines that cannot be used are skipped and listed in ``warnings``.

    :meth:`events` reads the file as it is now; :meth:`follow` goes on reading while another
    process writes it, until its ``session_end``. ``header`` is the ``session_start`` once read.
    """

    path: Path
    warnings: list[str] = dataclasses.field(default_factory=list)
    header: SessionStart | None = None

    def events(self, raw_requests: bool = False) -> Iterator[Any]:
        """Every usable event of the file as it is now.

        ``raw_requests``: each ``request_done`` comes as its record line, the ``dict`` that
        :func:`decode` would make the event of (checked as decode checks it, so the same lines
        are skipped with the same warnings), for a reader that takes its few values straight
        from there (:meth:`SessionSummary.add <soaktop.engine.metrics.summary.SessionSummary.add>`
        takes both forms): a 30-minute soak's 200,000 events cost a second to build.
        """
        source = _LineSource(self.path, self.warnings)
        try:
            while not source.at_end:  # a slice at a time: memory holds one, not the file
                yield from self._decode(source, source.read(_READ_SLICE), raw_requests)
            yield from self._decode(source, source.finish(), raw_requests)
        finally:
            source.close()
        if source.lines_read == 0:
            if source.bytes_read:
                raise RecordError(f"{self.path} holds no readable line: not a soaktop record")
            raise RecordError(f"{self.path} is empty: not a soaktop record")

    async def follow(self, poll_s: float = 0.25,
                     raw_requests: bool = False) -> AsyncIterator[Any]:
        """Every event, as the writer puts it down, until ``session_end``; cancel to stop.

        The writer flushes at least twice a second, so a follower is at most ~0.75 s behind.
        ``raw_requests`` as for :meth:`events` (catching up on a long record already written).
        """
        source = _LineSource(self.path, self.warnings)
        try:
            while True:
                # a slice at a time, as events() reads: catching up on a long record holds
                # a megabyte of it, not all of its text at once (a 30-minute soak's: 200 MB)
                for event in self._decode(source, source.read(_READ_SLICE), raw_requests):
                    yield event
                    if isinstance(event, SessionEnd):
                        return
                if source.at_end:  # nothing more for now
                    await asyncio.sleep(poll_s)
        finally:
            source.close()

    def _decode(self, source: _LineSource, lines: list[bytes],
                raw_requests: bool = False) -> Iterator[Any]:
        for line in lines:
            source.lines_read += 1
            number = source.lines_read
            try:
                data = _parse(line)
                if raw_requests and type(data) is dict and data.get("type") == "request_done" \
                        and number > 1:
                    check_request_line(data)
                    yield data
                    continue
                event = decode(data)
            except (ValueError, KeyError, TypeError) as exc:
                if number == 1:
                    raise RecordError(f"{self.path} is not a soaktop record") from None
                self.warnings.append(f"line {number}: unreadable ({type(exc).__name__})")
                continue
            if number == 1:
                self._check_header(event)
            yield event

    def _check_header(self, event: Any) -> None:
        if not (isinstance(event, SessionStart) and isinstance(event.schema_version, int)):
            raise RecordError(f"{self.path} is not a soaktop record")
        if event.schema_version > SCHEMA_VERSION:
            raise RecordError(
                f"{self.path} has schema v{event.schema_version}; this soaktop reads up to "
                f"v{SCHEMA_VERSION}: upgrade soaktop"
            )
        self.header = event
