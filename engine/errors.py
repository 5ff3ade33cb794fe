"""Every error soaktop raises on purpose, in one tree.

    SoaktopError                 base: anything a user can cause or fix; the CLI prints
    │                            ``str(error)`` on one line and exits 2, never a traceback
    ├── ConfigError              a bad flag or value (unknown preset, concurrency < 1, "20q")
    ├── DeviceError              a device that is not there (``--device cuda`` without CUDA)
    ├── RecordError              a session record that cannot be written or read
    ├── BackendUnavailable       a server that cannot be reached or listed at start-up
    ├── RunStopped               a --stop-when term or over-saturation ended the run: the
    │                            CLI prints the summary, then ``soaktop: stopped: LINE``, exit 3
    └── BackendError             one request failed; the run goes on and counts it by class
        ├── EngineCrashed        the local engine's batch loop died; pending requests fail
        └── OutOfMemory          the device ran out of memory for this batch

A ``BackendError`` carries ``error_class``: the short, stable name under which failures are
counted in the status line, the summary and the record. The HTTP backends use:
``connect_refused``, ``connect_error``, ``connect_timeout``, ``connection_reset``,
``read_timeout`` and ``http_error`` (other transport failures), ``first_token_timeout``,
``inter_token_timeout``, ``http_<status>`` (``http_429``, ``http_500``, ...; a redirect too,
``http_302``, never followed), ``not_event_stream`` (a 200 whose Content-Type is not the
stream asked for: a proxy's login page, a whole JSON answer), ``malformed_sse``,
``malformed_json``, ``non_utf8``, ``incomplete_stream`` (a stream that ended without
``[DONE]`` or ``done: true``) and ``stream_error`` (an error object inside a 200 stream). The
local engine uses ``oom``, ``engine_crash``, ``engine_closed`` and ``prompt_too_long``.
``retry_after_s`` is set when the server asked the client to wait (429/503 with
``Retry-After``); the session then holds new requests back until it has passed. ``refused`` says the
request itself was rejected as invalid (an HTTP 4xx other than 408/429, a prompt too long for
the local model): sending it again unchanged cannot succeed, so a run whose every request is
refused stops sooner than one whose every request fails otherwise (see
``Session._give_up_on_failures``).
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


class BackendUnavailable(SoaktopError):
    """The server is not there (or not what we expected) before the run even starts."""


class RunStopped(SoaktopError):
    """A stop condition ended the run (``session_end`` reason ``stop_condition`` or
    ``saturated``): the server failed what the run was told to watch. Exit status 3, apart
    from 2 (soaktop could not run as asked), so a CI job can tell the two apart."""

    exit_code = 3


class BackendError(SoaktopError):
    """A single request failed; ``error_class`` names the kind of failure for counting."""

    error_class = "backend_error"
    retry_after_s: float | None = None
    #: What the stream had said before it failed, ``(answer, reasoning)``, where it was
    #: wanted and is known only here (a worker process hands its text over in its error).
    output: tuple[str, str] | None = None

    def __init__(
        self,
        message: str,
        error_class: str | None = None,
        retry_after_s: float | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class
        self.retry_after_s = retry_after_s
        self.refused = refused


class EngineCrashed(BackendError):
    error_class = "engine_crash"


class OutOfMemory(BackendError):
    error_class = "oom"
