"""The live view's numbers over a sliding window, in fixed memory.

Everything here lives in preallocated ring buffers, so a 30-minute (or 30-hour) run holds the
same memory as a 30-second one. Feed it events with :meth:`LiveStats.add`; read a
:class:`LiveSnapshot` whenever the screen or the status line wants one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Phase,
    RequestDone,
    ServerSample,
    TelemetryStatus,
    TokensArrived,
)
from soaktop.engine.metrics.stats import itl_gaps
from soaktop.engine.records.format import decode
from soaktop.engine.telemetry.live import LiveTelemetry, TelemetrySnapshot

_TELEMETRY = (GpuSample, HostSample, ServerSample, TelemetryStatus)

BUCKET_NS = 100_000_000  # tokens are counted per 100 ms
HISTORY_BUCKETS = 1200  # two minutes of token counts


class Ring:
    """The last ``capacity`` (time, value) pairs; older ones are overwritten."""

    __slots__ = ("times", "values", "_next", "_size")

    def __init__(self, capacity: int) -> None:
        self.times = np.zeros(capacity, dtype=np.int64)
        self.values = np.zeros(capacity, dtype=np.float64)
        self._next = 0
        self._size = 0

    def extend(self, t_ns: int, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)[-self.values.size :]
        n = values.size
        if n == 0:
            return
        idx = (self._next + np.arange(n)) % self.values.size
        self.times[idx] = t_ns
        self.values[idx] = values
        self._next = int((self._next + n) % self.values.size)
        self._size = min(self._size + n, self.values.size)

    def append(self, t_ns: int, value: float) -> None:
        """One value: :meth:`extend` without its array work (a request's TTFT, E2E, speed)."""
        i = self._next
        self.times[i] = t_ns
        self.values[i] = value
        self._next = (i + 1) % self.values.size
        if self._size < self.values.size:
            self._size += 1

    def since(self, t_ns: int) -> np.ndarray:
        """Values recorded at or after ``t_ns``."""
        times = self.times[: self._size]
        return self.values[: self._size][times >= t_ns]


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    t_ns: int
    tokens_per_s: float
    requests_ok: int
    requests_failed: int
    errors: dict[str, int]
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    e2e_p50_ms: float | None
    speed_p50_tps: float | None = None  # per-request output speed, (n - 1) / (t_last - t_first)
    telemetry: TelemetrySnapshot = TelemetrySnapshot()


class LiveStats:
    """Sliding-window statistics for the live display.

    ``window_s`` bounds the latency percentiles (the last N seconds of finished requests);
    ``rate_s`` the tokens/s figure. Warm-up requests are shown too: the live view says what is
    happening now; the summary is where warm-up is excluded.
    """

    def __init__(self, window_s: float = 10.0, rate_s: float = 1.0, capacity: int = 65_536):
        self.window_ns = int(window_s * 1e9)
        self.rate_buckets = max(1, int(rate_s * 1e9 / BUCKET_NS))
        self.token_buckets = np.zeros(HISTORY_BUCKETS, dtype=np.int64)
        self._bucket_now = 0  # absolute index of the newest bucket
        self.ttft_ms = Ring(4096)
        self.e2e_ms = Ring(4096)
        self.speed_tps = Ring(4096)
        self.itl_ms = Ring(capacity)
        self.ok = 0
        self.failed = 0
        self.errors: Counter = Counter()
        self.telemetry = LiveTelemetry(window_s)
        self.phase: Phase | None = None  # the load's shape now
        self.client: ClientSample | None = None  # the client's latest once-a-second view
        self._client_before: ClientSample | None = None  # the one before it

    def _advance(self, bucket: int) -> None:
        if bucket <= self._bucket_now:
            return
        gap = min(bucket - self._bucket_now, HISTORY_BUCKETS)
        for i in range(1, gap + 1):
            self.token_buckets[(self._bucket_now + i) % HISTORY_BUCKETS] = 0
        self._bucket_now = bucket

    #: :meth:`add` takes a ``request_done`` as its record line too (see :meth:`_add_line`)
    takes_record_lines = True

    def add(self, event: Any) -> None:
        if type(event) is dict:
            self._add_line(event)
        elif isinstance(event, TokensArrived):
            bucket = event.t_ns // BUCKET_NS
            self._advance(bucket)
            if self._bucket_now - bucket < HISTORY_BUCKETS:
                self.token_buckets[bucket % HISTORY_BUCKETS] += event.tokens
        elif isinstance(event, _TELEMETRY):
            self.telemetry.add(event)
        elif isinstance(event, Phase):
            self.phase = event
        elif isinstance(event, ClientSample):
            self._client_before, self.client = self.client, event
        elif isinstance(event, RequestDone) and event.finish_reason != "cancelled":
            if event.error_class is not None:
                self.failed += 1
                self.errors[event.error_class] += 1
                return
            self.ok += 1
            # request_metrics' definitions, in plain Python: numpy calls on a few dozen
            # offsets cost more than the arithmetic, and a replay feeds 100,000s of requests
            arrivals, tokens = event.arrivals_us, event.arrival_tokens
            if arrivals:
                self.ttft_ms.append(event.t_ns, arrivals[0] / 1e3)
                n = sum(tokens) if tokens else len(arrivals)
                span = arrivals[-1] - arrivals[0]
                if n >= 2 and span > 0:
                    self.speed_tps.append(event.t_ns, (n - 1) / (span / 1e6))
                if len(arrivals) > 1:
                    self.itl_ms.extend(event.t_ns, itl_gaps(arrivals, tokens or None) / 1e3)
            self.e2e_ms.append(event.t_ns, event.end_us / 1e3)

    def _add_line(self, data: dict[str, Any]) -> None:
        """A ``request_done`` as its record line, as a replay reads it (``RecordReader.events``
        with ``raw_requests``): what :meth:`add` does for its event, without making the event
        (several microseconds each, for 200,000 requests in a 30-minute soak). Its offsets
        are stored as differences: the first is the TTFT, the rest are the ITL gaps."""
        if data.get("arrival_tokens"):  # rare: the event's own path
            self.add(decode(data))
            return
        if data["finish_reason"] == "cancelled":
            return
        error_class = data.get("error_class")
        if error_class is not None:
            self.failed += 1
            self.errors[error_class] += 1
            return
        self.ok += 1
        t_ns, deltas = data["t_ns"], data["arrivals_dus"]
        if deltas:
            first = deltas[0]
            self.ttft_ms.append(t_ns, first / 1e3)
            n = len(deltas)
            span = sum(deltas) - first  # the last offset less the first
            if n >= 2 and span > 0:
                self.speed_tps.append(t_ns, (n - 1) / (span / 1e6))
            if n > 1:
                self.itl_ms.extend(t_ns, np.array(deltas[1:], dtype=np.float64) / 1e3)
        self.e2e_ms.append(t_ns, data["end_us"] / 1e3)

    def add_tokens(self, t_ns: np.ndarray, tokens: np.ndarray) -> None:
        """Many token arrivals at once, in time order (a replay's run of them): the same
        counts as an :meth:`add` of one TokensArrived each, without a million calls."""
        if t_ns.size == 0:
            return
        buckets = t_ns // BUCKET_NS
        self._advance(int(buckets[-1]))
        # a token more than the history behind the newest is gone, as one at a time (its
        # bucket's slot is cleared when the newest passes it)
        keep = self._bucket_now - buckets < HISTORY_BUCKETS
        np.add.at(self.token_buckets, buckets[keep] % HISTORY_BUCKETS, tokens[keep])

    def tokens_per_s(self, now_ns: int, over_s: float | None = None) -> float:
        """Tokens/s over the last ``over_s`` seconds of complete 100 ms buckets."""
        n = self.rate_buckets if over_s is None else max(1, int(over_s * 1e9 / BUCKET_NS))
        n = min(n, HISTORY_BUCKETS - 1)
        self._advance(now_ns // BUCKET_NS)
        newest_complete = self._bucket_now - 1
        idx = np.arange(newest_complete - n + 1, newest_complete + 1) % HISTORY_BUCKETS
        return float(self.token_buckets[idx].sum()) / (n * BUCKET_NS / 1e9)

    @property
    def client_bound_reasons(self) -> tuple[str, ...]:
        """Why the client's latest second was client-bound (empty: it was not)."""
        return self.client.client_bound_reasons if self.client is not None else ()

    def client_bound_at(self, t_ns: int) -> tuple[str, ...]:
        """Why the last client sample taken at or before ``t_ns`` was client-bound (empty:
        it was not). A status line at a tick asks this: the live run may already hold the
        sample of that very second (taken a moment after the tick), a replay at the tick
        never does."""
        sample = self.client
        if sample is not None and sample.t_ns > t_ns:
            sample = self._client_before
        if sample is None or sample.t_ns > t_ns:
            return ()
        return sample.client_bound_reasons

    def client_snapshot(self, now_ns: int) -> LiveSnapshot:
        """The snapshot of a run seen through its record (``attach``): tokens/s from the run's
        own latest ClientSample, since a request's tokens reach a record only when it ends."""
        snap, client = self.snapshot(now_ns), self.client
        if client is None or client.interval_ns <= 0:
            return snap
        return replace(snap, tokens_per_s=client.tokens / (client.interval_ns / 1e9))

    def snapshot(self, now_ns: int) -> LiveSnapshot:
        since = now_ns - self.window_ns

        def pct(ring: Ring, q: float) -> float | None:
            v = ring.since(since)
            return float(np.percentile(v, q)) if v.size else None

        return LiveSnapshot(
            t_ns=now_ns,
            tokens_per_s=self.tokens_per_s(now_ns),
            requests_ok=self.ok,
            requests_failed=self.failed,
            errors=dict(self.errors),
            ttft_p50_ms=pct(self.ttft_ms, 50),
            ttft_p95_ms=pct(self.ttft_ms, 95),
            itl_p50_ms=pct(self.itl_ms, 50),
            itl_p95_ms=pct(self.itl_ms, 95),
            e2e_p50_ms=pct(self.e2e_ms, 50),
            speed_p50_tps=pct(self.speed_tps, 50),
            telemetry=self.telemetry.snapshot(now_ns),
        )
