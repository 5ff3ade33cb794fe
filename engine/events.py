"""The typed events every part of soaktop speaks: the spine of docs/design.md.

Each event is immutable and carries ``t_ns``: nanoseconds since the session started, read from
``time.perf_counter_ns()`` (monotonic). The wall clock appears once, in :class:`SessionStart`.
Live runs and replays produce the same events, so every consumer (statistics, recorder,
status line, TUI) works on both.

:class:`TokensArrived` is live-only: it gives the display per-token granularity and is never
written to a record; the record keeps each request's arrivals inside :class:`RequestDone`,
from which a replay derives the same ``TokensArrived`` stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = 1


class RecordedCode(str, Enum):
    """A code a record holds as a plain string: written as its value, shown as its value, and
    read back as the member, or as the string itself when this soaktop has no such member (a
    newer record, a benchmark's own), so a record of any age still reads."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, text: str) -> Any:
        """The member whose value is ``text``, or ``text`` itself when there is none."""
        try:
            return cls(text)
        except ValueError:
            return text


class PhaseReason(RecordedCode):
    """Why a phase began."""

    START = "start"
    WARMUP_DONE = "warm-up done"
    KEY = "key"  # a key in the dashboard
    COMMAND = "command"  # a change asked for through the session's API
    PAUSED = "paused"
    RESUMED = "resumed"
    KEY_PAUSED = "key: paused"  # the pause key, in the dashboard or over the control socket
    KEY_RESUMED = "key: resumed"
    RAMP = "ramp"
    SLO_SEARCH = "slo search"
    RERUN = "rerun: as recorded"  # a rerun repeating a recorded change


@dataclass(frozen=True, slots=True)
class SessionStart:
    """Header: what ran, where, and when on the wall clock."""

    t_ns: int
    schema_version: int
    wall_start: str  # ISO 8601 with timezone
    config: dict[str, Any]
    environment: dict[str, Any]
    backend: dict[str, Any]
    workload: dict[str, Any] = field(default_factory=dict)  # the prompts: seed, salt, hash


@dataclass(frozen=True, slots=True)
class Phase:
    """Load changed shape: a new concurrency, model or backend, and why."""

    t_ns: int
    phase_id: int
    concurrency: int
    model: str
    backend: str
    reason: PhaseReason | str  # a PhaseReason; a string only for one this soaktop does not know
    warmup: bool = False
    rate: float | None = None  # open loop: planned requests a second (None: closed loop)

    def __post_init__(self) -> None:
        if not isinstance(self.reason, PhaseReason):  # a record's string, or a caller's
            object.__setattr__(self, "reason", PhaseReason.of(self.reason))


class EndReason(RecordedCode):
    """How a session ended: ``ended`` in the summary."""

    COMPLETED = "completed"  # its duration or request count was reached, or its plan ended
    INTERRUPTED = "interrupted"  # stopped by the user: Ctrl-C, SIGTERM, q, ``soaktop stop``
    FAILED = "failed"  # every request so far was refused for one reason: the request was wrong
    CRASHED = "crashed"  # soaktop itself failed; the record is closed all the same
    STOP_CONDITION = "stop_condition"  # a --stop-when term held over its window
    SATURATED = "saturated"  # an open loop's server stopped keeping up (--on-saturation stop)
    CUT_SHORT = "cut_short"  # never written: a record with no session_end (its writer died)


@dataclass(frozen=True, slots=True)
class TokensArrived:
    """Live only: ``tokens`` content tokens of one request reached the client at ``t_ns``."""

    t_ns: int
    worker_id: int
    request_id: int
    tokens: int
    first: bool


@dataclass(frozen=True, slots=True)
class RequestDone:
    """One request, finished, failed or cut off at the end of the run.

    ``arrivals_us`` holds, for each arrival of content, its offset from ``sent_ns`` in integer
    microseconds; ``arrival_tokens`` how many tokens each arrival carried (empty when every
    arrival carried one). ``end_us`` is when the response ended (the last byte or the last
    token), also from ``sent_ns``.
    """

    t_ns: int
    worker_id: int
    request_id: int
    phase_id: int
    backend: str
    model: str
    sent_ns: int
    prompt_tokens: int
    arrivals_us: tuple[int, ...]
    end_us: int
    finish_reason: str  # "length", "stop", "error", "cancelled"
    arrival_tokens: tuple[int, ...] = ()
    warmup: bool = False
    error_class: str | None = None
    error_message: str | None = None
    server_reported: dict[str, Any] | None = None  # the server's own figures (usage, timings)
    #: Open loop: how long after its planned time it went out (a busy client, or a wait for
    #: a slot under --max-inflight). Its latencies count from the planned time (sent_ns).
    queued_us: int = 0
    #: Of the tokens above, how many were reasoning (thinking deltas), streamed before the
    #: answer; and when the first answer token came (from sent_ns, µs): TTFO. Both stay at
    #: their defaults for a model that does not reason (TTFO is then TTFT).
    reasoning_tokens: int = 0
    first_output_us: int | None = None
    #: ``--turns``: the conversation it belongs to (the request id of its first turn), and
    #: which turn it is, from 0; None outside conversations.
    conversation: int | None = None
    turn: int = 0

    @property
    def output_tokens(self) -> int:
        return sum(self.arrival_tokens) if self.arrival_tokens else len(self.arrivals_us)

    @property
    def ok(self) -> bool:
        return self.error_class is None and self.finish_reason != "cancelled"


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU's telemetry at one moment; ``None`` where the source does not say.

    ``source`` is ``"nvml"`` for a GPU of this machine, ``"dcgm"`` for one scraped from a DCGM
    exporter, in which case ``host`` names the machine. ``energy_mj`` is the driver's
    cumulative energy counter (millijoules since the driver loaded), so energy over a window is
    a difference of two samples: measured, not integrated from power readings.
    ``clock_event_counters_ns`` holds the driver's cumulative time (ns) spent under each
    clock-event reason where it keeps such counters; ``clock_event_reasons`` the reasons active
    at this moment, decoded into names (see :mod:`soaktop.engine.telemetry.reasons`).
    ``process_memory_bytes`` is the GPU memory of the watched process(es), where known.
    """

    t_ns: int
    gpu_index: int
    source: str = "nvml"
    host: str | None = None
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    slowdown_temperature_c: float | None = None
    shutdown_temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    sm_clock_max_mhz: float | None = None
    memory_clock_mhz: float | None = None
    memory_clock_max_mhz: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_mj: int | None = None
    gpu_utilization_percent: float | None = None
    memory_utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    performance_state: int | None = None
    clock_event_reasons: tuple[str, ...] | None = None
    clock_event_counters_ns: dict[str, int] | None = None
    process_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HostSample:
    """This machine at one moment: its CPUs, memory, soaktop itself and a watched process."""

    t_ns: int
    cpu_percent: float | None = None
    cpu_per_core_percent: tuple[float, ...] | None = None
    load_1m: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    soaktop_rss_bytes: int | None = None
    soaktop_cpu_percent: float | None = None  # of one core: 200 means two cores busy
    watched_pid: int | None = None
    watched_rss_bytes: int | None = None
    watched_cpu_percent: float | None = None
    cpu_temperature_c: float | None = None  # the hottest sensor the OS reports
    cpu_frequency_mhz: float | None = None


@dataclass(frozen=True, slots=True)
class ServerSample:
    """A serving engine's own view from its ``/metrics`` (vLLM, SGLang), beside the client's.

    Gauges are as scraped; ``*_total`` are the engine's cumulative counters.
    """

    t_ns: int
    source: str  # the scraped URL, credentials stripped
    engine: str  # "vllm", "sglang", or "unknown"
    model: str | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None  # fraction, 0..1
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    preemptions_total: float | None = None


@dataclass(frozen=True, slots=True)
class TelemetryStatus:
    """A telemetry source, or one GPU of it, became available or unavailable, and why.

    Absence is a value: no driver, no GPU, a field this GPU does not support, permission
    denied, a GPU lost mid-run or an exporter that stopped answering is written down here
    (and shown), and the run goes on. ``unavailable_fields`` maps a field of the samples to
    the reason it is missing; ``info`` holds static facts of a GPU when it comes online
    (name, UUID, VBIOS, driver and NVML versions, power limits, persistence mode).
    """

    t_ns: int
    source: str  # "nvml", "host", "prom:<url>"
    available: bool
    reason: str | None = None
    gpu_index: int | None = None
    host: str | None = None
    unavailable_fields: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientSample:
    """The client's own view, once a second.

    ``in_flight`` and ``tokens`` (content tokens received over the last ``interval_ns``) are
    what a reader of a record still being written (``soaktop attach``) cannot derive from
    finished requests alone: a request's tokens reach the record only when it ends.
    ``loop_lag_p99_us``, ``cpu_percent``, ``send_lateness_p99_us``, ``read_lag_p99_us`` and
    ``read_gap_p10_us`` are soaktop's own health (see
    :mod:`soaktop.engine.metrics.client_health`), to flag seconds where the client was the
    bottleneck; ``None`` where not measured. ``kernel_stamps`` says whether arrivals were
    stamped by the kernel (then read lag decides, not loop lag); None in older records.
    """

    t_ns: int
    in_flight: int
    tokens: int
    interval_ns: int
    loop_lag_p99_us: int | None = None
    cpu_percent: float | None = None  # of one core
    send_lateness_p99_us: int | None = None  # due -> sent, over the second's requests
    loop_cpu_percent: float | None = None  # the event loop's thread: the client's own work
    kernel_stamps: bool | None = None
    read_lag_p99_us: int | None = None  # kernel stamp -> read, over the second's reads
    read_gap_p10_us: int | None = None  # a stream's arrival to its next, the short end
    #: With --workers: each worker process's own figures this second (``worker_id``, loop and
    #: read lag, its read gap, CPU and loop CPU); the fields above are the worst process's.
    workers: tuple[dict[str, Any], ...] = ()

    def _health(self) -> dict[str, Any]:
        return {"kernel_stamps": self.kernel_stamps, "read_lag_p99_us": self.read_lag_p99_us,
                "read_gap_p10_us": self.read_gap_p10_us,
                "loop_lag_p99_us": self.loop_lag_p99_us,
                "send_lateness_p99_us": self.send_lateness_p99_us,
                "loop_cpu_percent": self.loop_cpu_percent}

    @property
    def client_bound_reasons(self) -> tuple[str, ...]:
        """Why the client was the bottleneck this second (empty: it was not)."""
        from soaktop.engine.metrics.client_health import client_bound_reasons

        return client_bound_reasons(**self._health())

    @property
    def headroom(self) -> float:
        """The client's margin to being the bottleneck this second, 0 to 1."""
        from soaktop.engine.metrics.client_health import headroom

        return headroom(**self._health())

    @property
    def client_bound(self) -> bool:
        """The client was the bottleneck this second: its latencies are upper bounds."""
        return bool(self.client_bound_reasons)


@dataclass(frozen=True, slots=True)
class WorkerClock:
    """An estimate of a worker's clock on another host (``--ray``): its ``perf_counter_ns``
    minus the session's, ``offset_ns``, true within ``uncertainty_ns`` (half the shortest
    round trip of those it was estimated from). Its stamps reach the session moved by it.
    Taken at the start (``t_ns`` 0) and every minute (soaktop.engine.load.ray_workers)."""

    t_ns: int
    worker_id: int
    host: str
    offset_ns: int
    uncertainty_ns: int


@dataclass(frozen=True, slots=True)
class Mark:
    t_ns: int
    note: str


@dataclass(frozen=True, slots=True)
class SessionEnd:
    t_ns: int
    reason: EndReason | str
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.reason, EndReason):  # a record's string, or a caller's
            object.__setattr__(self, "reason", EndReason.of(self.reason))


Event = (
    SessionStart | Phase | TokensArrived | RequestDone | GpuSample | HostSample | ServerSample
    | TelemetryStatus | ClientSample | WorkerClock | Mark | SessionEnd
)

#: The ``type`` tag of each event kind in a record.
TYPE_TAGS: dict[type, str] = {
    SessionStart: "session_start",
    Phase: "phase",
    RequestDone: "request_done",
    GpuSample: "gpu_sample",
    HostSample: "host_sample",
    ServerSample: "server_sample",
    TelemetryStatus: "telemetry_status",
    ClientSample: "client_sample",
    WorkerClock: "worker_clock",
    Mark: "mark",
    SessionEnd: "session_end",
}
