"""Telemetry availability in words: what the command line prints as a source comes and goes,
and what the dashboard's GPU panel shows for a source or GPU it cannot read."""

from __future__ import annotations

from soaktop.engine.events import TelemetryStatus


def describe_status(status: TelemetryStatus) -> str:
    """``"nvml: unavailable: no NVIDIA driver ..."``, ``"nvml GPU 1: unavailable: ..."``,
    ``"nvml GPU 0 (NVIDIA H100): available; not available: energy_mj (...)"``."""
    where = status.source
    if status.gpu_index is not None:
        where += f" GPU {status.gpu_index}" + (f" on {status.host}" if status.host else "")
    if status.available:
        if status.info.get("name"):
            where += f" ({status.info['name']})"
        missing = ", ".join(f"{k} ({v})" for k, v in sorted(status.unavailable_fields.items()))
        return f"{where}: available" + (f"; not available: {missing}" if missing else "")
    return f"{where}: unavailable: {status.reason}"
