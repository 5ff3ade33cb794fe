"""Where a session ran: the facts a reader needs to trust or reproduce it.

Collected once, into the record header. Cheap and side-effect free: nothing here starts a GPU
context (the local backend reports its own device in its ``describe()``); the GPUs are
described through NVML, which reads the driver without one.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from soaktop.engine import __version__
from soaktop.engine.telemetry.nvml import NvmlSource


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=2, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    # a copy of the tree without its history answers "HEAD" and fails: that is not a commit
    if out.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    return commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_version() -> str | None:
    """torch's version without importing it (an import costs seconds; HTTP runs need none)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """The environment of this process, JSON-ready."""
    return {
        "soaktop_version": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "os": platform.system(),
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total,
        "torch": _torch_version(),
        "nvidia": NvmlSource().describe(),
    }
