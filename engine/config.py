"""The run configuration: everything needed to run a session again, its defaults and its
validation.

A :class:`RunConfig` is built from what the user asked for: the command line's flags, or a
record's header for a rerun. The defaults that depend on other fields are filled in when it is
made (the concurrency a ramp or an SLO search starts at, the local engine's preset), so every
reader sees one resolved value; the one default that needs a server's answer, the model it
serves first, is filled in by :func:`soaktop.engine.factory.build_session`, which also strips
credentials from URLs before a session, and so its record, sees them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from soaktop.engine.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


_TELEMETRY_KINDS = ("nvml", "host")
LOCAL_MODEL = "tiny"  # the local engine's preset when none is named: it runs on any CPU
CONCURRENCY = 4  # requests in flight when none is given (an SLO search starts at 1)


def check_url(url: str, flag: str) -> None:
    """A ConfigError naming ``flag`` unless ``url`` is an http(s) URL with a host and, if
    given, a numeric port (what every later use of it, and httpx, relies on)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{flag} must start with http:// or https:// (got {url!r})")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for "host:abc" or a port out of range
    except ValueError as exc:
        raise ConfigError(f"{flag} {url!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"{flag} {url!r} names no host")


def parse_telemetry(text: str) -> tuple[str, ...]:
    """The sources in ``"nvml,host,prom=http://node7:9400/metrics"``; ``"none"`` for none.

    Each entry is ``nvml``, ``host`` or ``prom=URL`` (a DCGM exporter or a serving engine's
    ``/metrics``; give ``prom=`` once per URL).
    """
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    if entries in ((), ("none",)):
        return ()
    for entry in entries:
        if entry.startswith("prom="):
            check_url(entry[len("prom="):], "telemetry prom=")
        elif entry not in _TELEMETRY_KINDS:
            raise ConfigError(
                f"unknown telemetry source {entry!r}: use nvml, host, prom=URL or none"
            )
    if len(set(entries)) != len(entries):
        raise ConfigError(f"telemetry source given twice in {text!r}")
    return entries


def parse_duration(text: str) -> float:
    """Seconds in ``"20s"``, ``"30m"``, ``"1.5h"``, ``"500ms"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 20s, 30m, 1h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class RunConfig:
    backend: str = "local"
    #: None: the local engine's ``tiny`` preset (set when the config is made), or the first
    #: model a server lists (set by :func:`soaktop.engine.factory.build_session`).
    model: str | None = None
    device: str = "auto"
    #: None: the first step of a ramp, 1 for an SLO search (it doubles from there), else 4;
    #: always a number once the config is made.
    concurrency: int | None = None
    duration_s: float | None = None  # None: until max_requests, or until stopped
    max_requests: int | None = None  # measured requests, warm-up not included
    warmup_requests: int | None = None  # None: as many as the starting concurrency
    #: A fixed length (an int), or a distribution's normalised text: ``MEAN:SD`` (normal,
    #: clipped at 1), ``MIN-MAX`` (uniform) or ``LEN:WEIGHT,...`` (buckets), drawn per
    #: request from the seed (soaktop.engine.load.workloads).
    input_tokens: int | str = 128
    output_tokens: int | str = 128
    seed: int = 0
    prompt_pool: int = 256
    #: The server's base URL. A session's config (and so its record) holds it without
    #: credentials or query: :func:`soaktop.engine.factory.build_session` strips them.
    url: str | None = None
    api: str | None = None
    connect_timeout_s: float = 10.0
    first_token_timeout_s: float = 120.0
    token_timeout_s: float = 60.0
    #: Telemetry sources (see :func:`parse_telemetry`); prom URLs with credentials stripped.
    #: Empty here (library use, tests); the command line's default is ``("nvml", "host")``.
    telemetry: tuple[str, ...] = ()
    telemetry_hz: float = 4.0
    watch_pid: int | None = None  # a server process whose CPU, memory and GPU memory to watch
    #: The room's (or inlet's) temperature as the user read it: thermal results depend on it,
    #: and no sensor soaktop can read tells it.
    ambient_c: float | None = None
    #: A ramp: the concurrency of each step (``--ramp 1,2,4,8``), ``phase_s`` each.
    ramp: tuple[int, ...] = ()
    #: The SLO whose capacity to search (``--slo 'ttft_p95<=2s,speed_p25>=30'``).
    slo: str | None = None
    phase_s: float = 120.0  # one step of a ramp or an SLO search
    #: Words every prompt starts with (a system prompt's worth); 0: none, every prompt unique
    #: from its first word (soaktop.engine.load.prompts).
    shared_prefix: int = 0
    #: Open loop (``--rate``): requests a second, instead of a concurrency kept in flight.
    rate: float | None = None
    arrival: str = "constant"  # or "poisson"
    max_inflight: int | None = None  # open loop: at most this many out; the wait counts
    #: Processes that read the streams (openai, ollama): 1 reads them in the session's own
    #: process; None (``--workers auto``) lets :func:`soaktop.engine.load.workers.auto_workers`
    #: choose. A session's config holds the number it ran with.
    workers: int | None = None
    #: ``--ray``: the workers as Ray actors on the nodes of the cluster at this address
    #: (``auto``: the one running here), soaktop.engine.load.ray_workers; None: processes
    #: of this host. With it, ``workers`` None is one worker per node.
    ray: str | None = None
    #: ``--prompts``: a prompt file (JSON Lines, ShareGPT JSON or text) sent instead of the
    #: synthetic prompts, in a seeded order; the record's workload holds its sha256.
    prompts: str | None = None
    #: Every prompt starts with words of its own, so no prefix cache serves it; False
    #: (``--no-unique-prefix``): prompts as they are (a file's repeats may hit the cache).
    unique_prefix: bool = True
    #: ``--tokenizer``: a local tokenizer.json (or a folder with one): synthetic prompts of
    #: an exact token length (soaktop.engine.load.tokenizer).
    tokenizer: str | None = None
    #: ``--keep-going``: run on when every request fails alike from the start, where a run
    #: would give up (soaktop.engine.session.Session._give_up_on_failures).
    keep_going: bool = False
    #: ``--trace``: a timestamped trace (JSON Lines, or Mooncake's) replayed open loop at its
    #: own times, ``trace_speed`` times as fast (soaktop.engine.load.traces).
    trace: str | None = None
    trace_speed: float = 1.0
    #: ``--turns``: requests a conversation makes, each with the history so far; and the
    #: think time before each later turn, seconds: ``S``, ``MEAN:SD`` or ``MIN-MAX``
    #: (soaktop.engine.load.conversations).
    turns: int = 1
    think_time: float | str = 0.0
    #: ``--save-outputs``: each request's output text to a side file beside the record
    #: (soaktop.engine.records.outputs); off by default, so a soak's record stays small.
    save_outputs: bool = False
    #: ``--stop-when``: end the run when a term (the ``--slo`` grammar, e.g.
    #: ``error_rate>5%,ttft_p95>30s``) holds over the last ``stop_window_s``; and what an open
    #: loop does when its server stops keeping up: ``stop`` or ``warn`` (None: ``warn``).
    #: See soaktop.engine.load.stop_conditions.
    stop_when: str | None = None
    stop_window_s: float = 30.0
    on_saturation: str | None = None

    def __post_init__(self) -> None:
        # a record's header gives lists: keep tuples, so a config is hashable and compares equal
        object.__setattr__(self, "telemetry", tuple(self.telemetry))
        object.__setattr__(self, "ramp", tuple(self.ramp))
        if self.model is None and self.backend == "local":
            object.__setattr__(self, "model", LOCAL_MODEL)
        if self.concurrency is None:
            start = self.ramp[0] if self.ramp else 1 if self.slo else CONCURRENCY
            object.__setattr__(self, "concurrency", start)
        elif self.ramp and self.concurrency != self.ramp[0]:
            raise ConfigError(f"--ramp starts at {self.ramp[0]}: leave --concurrency out")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1 (got {self.concurrency})")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError("duration must be positive")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"requests must be at least 1 (got {self.max_requests})")
        if self.warmup_requests is not None and self.warmup_requests < 0:
            raise ConfigError("warm-up requests cannot be negative")
        from soaktop.engine.load.workloads import parse_lengths  # numpy: only when made

        inputs = parse_lengths(self.input_tokens, "--input-tokens")
        object.__setattr__(self, "input_tokens", inputs.text())
        object.__setattr__(self, "output_tokens",
                           parse_lengths(self.output_tokens, "--output-tokens").text())
        if min(self.connect_timeout_s, self.first_token_timeout_s, self.token_timeout_s) <= 0:
            raise ConfigError("timeouts must be positive")
        if not 0 < self.telemetry_hz <= 100:
            raise ConfigError(f"telemetry rate must be above 0 and at most 100 Hz "
                              f"(got {self.telemetry_hz:g})")
        if self.ambient_c is not None and not -40 <= self.ambient_c <= 80:
            raise ConfigError(f"ambient temperature {self.ambient_c:g} C is not plausible "
                              f"(give degrees Celsius)")
        if self.prompt_pool < 1:
            raise ConfigError("the prompt pool needs at least one prompt")
        if self.ramp and self.slo:
            raise ConfigError("--ramp and --slo are two plans: choose one")
        if self.phase_s <= 0:
            raise ConfigError("a phase must last more than 0 s")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"--rate must be above 0 requests/s (got {self.rate:g})")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError(f"--arrival is constant or poisson (got {self.arrival!r})")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ConfigError("--max-inflight must be at least 1")
        if self.rate is None and (
                (self.max_inflight is not None and self.trace is None)
                or self.arrival != "constant"):
            raise ConfigError("--max-inflight and --arrival shape an open loop: give --rate too")
        if self.rate is not None and (self.ramp or self.slo):
            raise ConfigError("--rate is an open loop; --ramp and --slo step a concurrency")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, or auto (got {self.workers})")
        if self.ray is not None and (not self.ray.strip() or self.backend not in ("openai",
                                                                              "ollama")):
            raise ConfigError("--ray takes a Ray address (host:port) or auto, and applies to "
                              "--backend openai or ollama")
        if not 0 <= self.shared_prefix < inputs.floor:
            raise ConfigError(f"--shared-prefix must be below the input length "
                              f"({inputs.floor} tokens; got {self.shared_prefix})")
        if self.prompts is not None and (not str(self.prompts).strip() or self.shared_prefix):
            raise ConfigError("--prompts takes a file, and its prompts are sent as they are: "
                              "leave --shared-prefix out")
        self._check_trace_and_turns()
        self._check_stop_conditions()
        if self.tokenizer is not None and not str(self.tokenizer).strip():
            raise ConfigError("--tokenizer takes a tokenizer.json or a folder holding one")

    def _check_stop_conditions(self) -> None:
        if self.stop_when is not None:
            from soaktop.engine.load.stop_conditions import parse_stop_when

            parse_stop_when(str(self.stop_when))  # one line naming a term it cannot read
        if not (isinstance(self.stop_window_s, (int, float)) and self.stop_window_s > 0
                and math.isfinite(self.stop_window_s)):
            raise ConfigError(f"--stop-window must be above 0 s (got {self.stop_window_s!r})")
        if self.on_saturation is not None:
            if self.on_saturation not in ("stop", "warn"):
                raise ConfigError(f"--on-saturation is stop or warn (got "
                                  f"{self.on_saturation!r})")
            if self.rate is None:
                # not a trace's: its own bursts would read as a queue that grows
                raise ConfigError("--on-saturation watches an open loop at a --rate (a --trace "
                                  "replay is not watched): give --rate too")

    def _check_trace_and_turns(self) -> None:
        if self.trace is not None:
            if not str(self.trace).strip():
                raise ConfigError("--trace takes a trace file (JSON Lines)")
            if self.rate is not None or self.ramp or self.slo:
                raise ConfigError("--trace sets its own arrival times: leave --rate, --ramp "
                                  "and --slo out")
            if self.prompts is not None or self.shared_prefix:
                raise ConfigError("--trace says each request's prompt: leave --prompts and "
                                  "--shared-prefix out")
            if self.turns != 1:
                raise ConfigError("--trace and --turns cannot be combined yet")
        if not (isinstance(self.trace_speed, (int, float)) and self.trace_speed > 0
                and math.isfinite(self.trace_speed)):
            raise ConfigError(f"--trace-speed must be above 0 (got {self.trace_speed!r})")
        if self.trace is None and self.trace_speed != 1:
            raise ConfigError("--trace-speed applies to --trace")
        if isinstance(self.turns, bool) or not isinstance(self.turns, int) or self.turns < 1:
            raise ConfigError(f"--turns must be at least 1 (got {self.turns!r})")
        from soaktop.engine.load.conversations import parse_think_time

        object.__setattr__(self, "think_time", parse_think_time(self.think_time).text())
        if self.turns == 1 and self.think_time != 0:
            raise ConfigError("--think-time is the pause between a conversation's turns: "
                              "give --turns too")

    @property
    def warmup(self) -> int:
        """Warm-up requests: as given, else the concurrency (closed loop) or one second of
        arrivals (open loop)."""
        if self.warmup_requests is not None:
            return self.warmup_requests
        if self.trace is not None:  # every line of a trace is its workload
            return 0
        return math.ceil(self.rate) if self.rate is not None else self.concurrency

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples): the header a live run holds equals the one read back."""
        return {**asdict(self), "warmup_requests": self.warmup, "telemetry": list(self.telemetry),
                "ramp": list(self.ramp)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config a record's header holds (:meth:`to_dict`), validated again. Keys this
        version does not know are left out, and those a record lacks take their defaults, so
        a record from another version still reads."""
        known = {f.name for f in fields(cls)}
        from soaktop.engine.load.workloads import parse_lengths

        for key in ("input_tokens", "output_tokens"):  # a length the header cannot mean
            try:
                parse_lengths(data.get(key, 1))
            except ConfigError as exc:
                raise ConfigError(f"the recorded config is not one soaktop can run: "
                                  f"{key} {exc}") from None
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as exc:  # a value of the wrong type: a damaged header
            raise ConfigError(f"the recorded config is not one soaktop can run: {exc}") from None
