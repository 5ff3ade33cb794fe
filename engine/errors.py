"""Every error soaktop raises on purpose, in one tree.

    SoaktopError                 base: anything a user can cause or fix; the CLI prints
    │                            ``str(error)`` on one line and exits 2, never a traceback
    ├── ConfigError              a bad flag or value (unknown preset, concurrency < 1, "20q")
    ├── DeviceError              a device that is not there (``--device cuda`` without CUDA)
    ├── RecordError              a session record that cannot be written or read
    └── BackendError             one request failed; the run goes on and counts it by class
        ├── EngineCrashed        the local engine's batch loop died; pending requests fail
        └── OutOfMemory          the device ran out of memory for this batch

A ``BackendError`` carries ``error_class``: the short, stable name under which failures are
counted in the status line, the summary and the record (``oom``, ``engine_crash``, ...).
"""

from __future__ import annotations


class SoaktopError(Exception):
    """Base class; the message is meant for the user, on one line."""


class ConfigError(SoaktopError):
    """A run configuration that cannot work."""


class DeviceError(SoaktopError):
    """A compute device that was asked for and is not available."""


class RecordError(SoaktopError):
    """A session record that cannot be written or read."""


class BackendError(SoaktopError):
    """A single request failed; ``error_class`` names the kind of failure for counting."""

    error_class = "backend_error"

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


class EngineCrashed(BackendError):
    error_class = "engine_crash"


class OutOfMemory(BackendError):
    error_class = "oom"
