"""Telemetry beside the token events: GPUs through NVML, this host through psutil, and remote
GPUs and serving engines through Prometheus text.

Each source is polled on its own thread by a :class:`~soaktop.engine.telemetry.sampler.Sampler`; the
session turns what they deliver into events on its loop, in order with the token events.
:func:`build_sources` makes the sources a run configuration names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from soaktop.engine.telemetry.sampler import Sampler, Source

__all__ = ["Sampler", "Source", "build_sources"]


def build_sources(
    spec: Iterable[str], watch_pid: int | None = None, local_engine: bool = False
) -> list[Source]:
    """The sources of a parsed ``--telemetry`` spec (see
    :func:`soaktop.engine.config.parse_telemetry`).

    ``prom=`` URLs are used as given here (credentials included, to authenticate); only the
    stripped form reaches events and records. ``local_engine``: the model runs inside soaktop,
    so soaktop's own GPU memory is the server's.
    """
    sources: list[Source] = []
    for entry in spec:
        if entry == "nvml":
            from soaktop.engine.telemetry.nvml import NvmlSource

            pids = {watch_pid} if watch_pid is not None else set()
            if local_engine:
                pids.add(os.getpid())
            sources.append(NvmlSource(watch_pids=pids))
        elif entry == "host":
            from soaktop.engine.telemetry.host import HostSource

            sources.append(HostSource(watch_pid=watch_pid))
        elif entry.startswith("prom="):
            from soaktop.engine.telemetry.prometheus import PrometheusSource

            sources.append(PrometheusSource(entry[len("prom="):]))
    return sources
