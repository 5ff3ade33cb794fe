"""Telemetry of this machine through psutil: CPUs, memory, soaktop itself and a watched PID.

Why it matters in a soak: a client box that runs out of CPU turns its own queueing into
"server latency", and a server process whose memory creeps up is the slow failure a 30-minute
run exists to catch. CPU shares are measured between two consecutive samples (psutil's
non-blocking ``cpu_percent``), so the first sample after start primes the counters and the
values are true averages over the sampling interval.

Absence is a value here too: a kernel without temperature sensors, a process that exits or
belongs to another user gives ``None`` and a :class:`TelemetryStatus` with the reason.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from soaktop.engine.events import HostSample, TelemetryStatus
from soaktop.engine.telemetry.sampler import Clock


def _hottest_cpu_c() -> float | None:
    """The hottest CPU package/core sensor, or ``None`` where the OS exposes none."""
    read = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    preferred = [sensors[k] for k in ("coretemp", "k10temp", "zenpower", "cpu_thermal")
                 if k in sensors]
    readings = [s.current for group in (preferred or sensors.values()) for s in group
                if s.current is not None]
    return max(readings) if readings else None


class HostSource:
    """The host telemetry :class:`~soaktop.engine.telemetry.sampler.Source`."""

    name = "host"
    max_hz = 100.0

    def __init__(self, watch_pid: int | None = None) -> None:
        self._own = psutil.Process(os.getpid())
        self._watch_pid = watch_pid
        self._watched: psutil.Process | None = None
        self._watch_problem: str | None = None
        self._has_temperature = True  # until open() finds no sensor: then not read again
        self._has_frequency = True
        #: field -> why it is missing; every status carries all of it (it replaces the last)
        self._missing: dict[str, str] = {}

    def _attach(self) -> str | None:
        """Find the watched process; the reason it cannot be watched, if so."""
        try:
            self._watched = psutil.Process(self._watch_pid)
            self._watched.cpu_percent(None)  # prime
        except psutil.NoSuchProcess:
            return f"watched process {self._watch_pid} does not exist"
        except psutil.AccessDenied:
            return f"watched process {self._watch_pid}: permission denied"
        return None

    def open(self, clock: Clock) -> list[Any]:
        psutil.cpu_percent(None, percpu=True)  # prime the interval counters
        self._own.cpu_percent(None)
        missing = self._missing
        if _hottest_cpu_c() is None:
            self._has_temperature = False
            missing["cpu_temperature_c"] = "the OS reports no CPU temperature sensor"
        if self._cpu_mhz() is None:
            self._has_frequency = False
            missing["cpu_frequency_mhz"] = "the OS reports no CPU frequency"
        if self._watch_pid is not None:
            self._watch_problem = self._attach()
            if self._watch_problem:
                missing["watched_rss_bytes"] = self._watch_problem
        info = {"cpu_count": psutil.cpu_count(), "watch_pid": self._watch_pid}
        return [TelemetryStatus(clock(), self.name, True, unavailable_fields=dict(missing),
                                info=info)]

    @staticmethod
    def _cpu_mhz() -> float | None:
        try:
            freq = psutil.cpu_freq()
        except (OSError, RuntimeError, NotImplementedError):
            return None
        return freq.current if freq and freq.current else None

    def _watched_figures(self, clock: Clock, events: list[Any]) -> dict[str, Any]:
        if self._watched is None:
            return {}
        try:
            with self._watched.oneshot():
                rss = self._watched.memory_info().rss
                cpu = self._watched.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
            why = "has exited" if isinstance(exc, psutil.NoSuchProcess) else "permission denied"
            self._watched = None
            self._missing["watched_rss_bytes"] = f"watched process {self._watch_pid} {why}"
            events.append(TelemetryStatus(clock(), self.name, True,
                                          unavailable_fields=dict(self._missing)))
            return {}
        return {"watched_pid": self._watch_pid, "watched_rss_bytes": rss,
                "watched_cpu_percent": cpu}

    def sample(self, clock: Clock) -> list[Any]:
        events: list[Any] = []
        t_ns = clock()
        per_core = psutil.cpu_percent(None, percpu=True)
        memory = psutil.virtual_memory()
        with self._own.oneshot():
            own_rss = self._own.memory_info().rss
            own_cpu = self._own.cpu_percent(None)
        try:
            load_1m = os.getloadavg()[0]
        except (OSError, AttributeError):
            load_1m = None
        sample = HostSample(
            t_ns=t_ns,
            cpu_percent=sum(per_core) / len(per_core) if per_core else None,
            cpu_per_core_percent=tuple(per_core) if per_core else None,
            load_1m=load_1m,
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            soaktop_rss_bytes=own_rss,
            soaktop_cpu_percent=own_cpu,
            cpu_temperature_c=_hottest_cpu_c() if self._has_temperature else None,
            cpu_frequency_mhz=self._cpu_mhz() if self._has_frequency else None,
            **self._watched_figures(clock, events),
        )
        events.append(sample)
        return events

    def close(self) -> None:
        pass
