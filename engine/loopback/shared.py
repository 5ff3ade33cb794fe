"""What the processes of one multi-process loopback server share (``--processes P``).

Why: one Python process paces a few thousand tokens a second before its own event loop makes
chunks late, and then calibrate and the benches would measure the server instead of soaktop.
Several processes accept on one port (``SO_REUSEPORT``: the kernel spreads connections over
them), but a client asks any one of them for the truth, so what each knows must be readable
by all:

- :class:`Spool`: every process appends each finished request's :class:`Emission`, one JSON
  line, to a file of its own in a folder the parent owns. ``GET /_loopback/emissions``, on
  whichever process it lands, takes the new lines of every file under a lock and moves a
  shared read offset past them, so what one call returned no other call returns again, as
  with one process. One ``write`` per request, not batches: a request the client saw end is
  then on file before its next request could ask, and at 64 tokens a request that is a few
  hundred writes a second at the rates calibrate asks, microseconds each.
- :class:`TokenLedger`: the tokens sent per simulated-GPU step, a column per process in a
  memory-mapped file, so the simulated GPUs of :mod:`soaktop.engine.loopback.dcgm` heat with
  the load of all processes whichever one serves ``/metrics``. Each process writes only its
  own column; every reader sums the columns, so each integrates the same steps the same way.

All of this is Linux-first (``SO_REUSEPORT`` spreading connections, ``fcntl`` locks, a shared
``CLOCK_MONOTONIC``); one process (the default) uses none of it.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from soaktop.engine.loopback.schedule import Emission

#: Steps the ledger holds per process before it wraps (each cell is tagged with its step, so
#: a wrapped cell is never counted for the wrong step). 2**16 steps: 18 h at 1 s a step, longer
#: than any stretch without a scrape; the file is sparse, so unused cells cost nothing.
LEDGER_STEPS = 1 << 16


@dataclass(frozen=True, slots=True)
class Shared:
    """One process's place among ``processes``: its ``index`` (0-based), the parent's
    ``folder`` and the parent's clock origin (``perf_counter_ns``), which all processes use so
    that the simulated GPUs' steps start at the same moment in each."""

    folder: Path
    index: int
    processes: int
    origin_ns: int


class Spool:
    """Emissions of all processes: each appends its own, any takes everyone's new ones."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self._fd = os.open(self._path(shared.index), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                           0o600)

    def _path(self, index: int) -> Path:
        return self.shared.folder / f"emissions-{index}.jsonl"

    def write(self, emission: Emission) -> None:
        os.write(self._fd, json.dumps(emission.to_dict(), separators=(",", ":")).encode()
                 + b"\n")

    def take(self) -> list[Emission]:
        """Every emission written by any process since the last take (by any process), in the
        order the requests arrived. A line still being written is left for the next take."""
        folder = self.shared.folder
        taken: list[Emission] = []
        with open(folder / "emissions.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            offsets_path = folder / "emissions.offsets"
            try:
                offsets = json.loads(offsets_path.read_text())
            except (FileNotFoundError, ValueError):
                offsets = [0] * self.shared.processes
            for index in range(self.shared.processes):
                try:
                    with open(self._path(index), "rb") as spool:
                        spool.seek(offsets[index])
                        data = spool.read()
                except FileNotFoundError:
                    continue
                complete = data[:data.rfind(b"\n") + 1]
                offsets[index] += len(complete)
                taken += (Emission.from_dict(json.loads(line))
                          for line in complete.splitlines())
            offsets_path.write_text(json.dumps(offsets))
        taken.sort(key=lambda e: e.received_ns)
        return taken

    def close(self) -> None:
        os.close(self._fd)


class TokenLedger:
    """Tokens sent per step, a column per process, in a file every process maps.

    A cell is two int64s, (step + 1, tokens), at ``step % LEDGER_STEPS`` of the writer's
    column; a cell whose tag is another step is stale and reads as 0.
    """

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        path = shared.folder / "tokens.ledger"
        size = shared.processes * LEDGER_STEPS * 16
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # sparse: zeros, no disk
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._map).cast("q")
        self._column = shared.index * LEDGER_STEPS * 2

    def add(self, step: int, tokens: int) -> None:
        cell = self._column + (step % LEDGER_STEPS) * 2
        cells = self._cells
        if cells[cell] != step + 1:
            cells[cell + 1] = 0
            cells[cell] = step + 1
        cells[cell + 1] += tokens

    def total(self, step: int) -> int:
        """The tokens all processes sent in ``step``."""
        cells, offset = self._cells, (step % LEDGER_STEPS) * 2
        total = 0
        for index in range(self.shared.processes):
            cell = index * LEDGER_STEPS * 2 + offset
            if cells[cell] == step + 1:
                total += cells[cell + 1]
        return total

    def close(self) -> None:
        self._cells.release()
        self._map.close()
