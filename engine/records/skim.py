"""A record's events less its ``request_done`` lines, read fast: what ``attach`` draws the
whole run from before it has read the rest (soaktop.engine.metrics.history, "An outline
first").

Why: a long soak's record is mostly ``request_done`` lines (199,000 of 266,000 in a 30-minute
one at concurrency 64), and decoding them is most of what reading it costs; tokens/s (the
``client_sample`` of each second), the GPUs, the host, phases and marks are in the others. A
``request_done`` line is told by its first bytes, the compact ``{"type":"request_done"`` the
writer puts first, and never parsed; any other line is decoded as :class:`RecordReader`
decodes it (its line source and decoder, used as they are), so a line written another way is
still read, only slower, and a ``request_done`` that comes out of it is dropped.

It reads the file as it is now the way :meth:`RecordReader.follow` does (a gzip member still
being written is left for later) and stops after ``session_end``, so what it yields is what a
follow of the same file yields first, less the requests. Unreadable lines are skipped without
a word: the full read after it warns of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from soaktop.engine.errors import RecordError
from soaktop.engine.events import RequestDone, SessionEnd, SessionStart
from soaktop.engine.records.format import _LineSource, _parse, decode

REQUEST_PREFIX = b'{"type":"request_done"'
_GPU_PREFIX = b'{"type":"gpu_sample"'
_HOST_PREFIX = b'{"type":"host_sample"'
# a GPU line's identity, from its bytes: its index and host fields (a JSON string cannot hold
# an unescaped quote, so these match field names, never text inside a value)
_GPU_INDEX = re.compile(rb'"gpu_index":(-?[0-9]+)[,}]')
_GPU_HOST = re.compile(rb'"host":("(?:[^"\\]|\\.)*"|null)[,}]')
_SLICE = 1 << 20  # compressed bytes read at a time: memory holds a slice, not the file


def without_requests(path: Path, stop: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """The events of the record at ``path`` but its ``request_done``, in file order, with
    its GPU and host samples thinned: between two other events, only the last sample of
    each GPU and of the host is decoded and yielded (in file order), the latest readings
    a ``client_sample`` is drawn with. Sampled at 4 Hz, that is a quarter of their decoding.

    ``stop`` is asked between slices of the file (a viewer that quits meanwhile). A file
    whose first line is not a ``session_start`` raises :class:`RecordError`.
    """
    source = _LineSource(Path(path), [])
    number = 0
    # the samples not decoded yet: per GPU (its index and host as bytes) or the host, the
    # numbers and lines since the last other event, newest last
    waiting: dict[Any, list[tuple[int, bytes]]] = {}
    try:
        while True:
            for line in source.read(_SLICE):
                number += 1
                if number > 1:
                    if line.startswith(REQUEST_PREFIX):
                        continue
                    key = _sample_key(line)
                    if key is not None:
                        waiting.setdefault(key, []).append((number, line))
                        continue
                event = _decoded(line)
                if number == 1 and not isinstance(event, SessionStart):
                    raise RecordError(f"{path} is not a soaktop record")
                if event is None or type(event) is RequestDone:
                    continue
                if waiting:
                    yield from _latest(waiting)
                    waiting.clear()
                yield event
                if type(event) is SessionEnd:
                    return
            if source.at_end or stop():
                break
        yield from _latest(waiting)
    finally:
        source.close()


def _sample_key(line: bytes) -> Any:
    """Which GPU (or the host) a sample's line is of, from its bytes; None for another
    line, or a sample line that does not say plainly (decoded in its turn instead)."""
    if line.startswith(_HOST_PREFIX):
        return "host"
    if not line.startswith(_GPU_PREFIX):
        return None
    index = _GPU_INDEX.search(line)
    if index is None:
        return None
    host = _GPU_HOST.search(line)
    return index.group(1), host.group(1) if host else None


def _latest(waiting: dict[Any, list[tuple[int, bytes]]]) -> list[Any]:
    """Of each GPU's (and the host's) waiting lines, the newest that decodes, in file order
    (a corrupt newest line leaves the one before it the latest, as a full read does)."""
    found = []
    for lines in waiting.values():
        for number, line in reversed(lines):
            event = _decoded(line)
            if event is not None:
                found.append((number, event))
                break
    found.sort(key=lambda pair: pair[0])
    return [event for _, event in found]


def _decoded(line: bytes) -> Any:
    try:
        return decode(_parse(line))
    except (ValueError, KeyError, TypeError):
        return None
