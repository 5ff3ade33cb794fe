"""Live metrics for Prometheus (``--prometheus-port``): watch a soak in Grafana too.

A listener on the session's event stream that keeps prometheus_client metrics in a registry
of its own, served by prometheus_client's HTTP server on a daemon thread. It does no work per
token on the event loop: TTFT, ITL and E2E are observed once a request has finished (from its
arrival offsets), tokens/s and in-flight come from the once-a-second ClientSample, GPU
figures from the telemetry samples. Names follow Prometheus conventions (seconds, ``_total``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from soaktop.engine.errors import ConfigError
from soaktop.engine.events import ClientSample, GpuSample, Phase, RequestDone, TokensArrived
from soaktop.engine.metrics.stats import itl_gaps
from soaktop.engine.telemetry.derived import gpu_key

# latency buckets: 1 ms to 60 s, roughly x2 apart (plus the defaults' +Inf)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28,
                    2.5, 5.0, 10.0, 20.0, 40.0, 60.0)


class PrometheusExporter:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("soaktop_ttft_seconds", "Time to first token of each request",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("soaktop_itl_seconds", "Gaps between content tokens "
                             "(token-weighted)", buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("soaktop_e2e_seconds", "Request sent to end of response",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("soaktop_requests_total", "Finished requests by outcome",
                                ["outcome"], registry=r)
        self.errors = Counter("soaktop_errors_total", "Failed requests by error class",
                              ["error_class"], registry=r)
        self.tokens = Counter("soaktop_output_tokens_total", "Content tokens received",
                              registry=r)
        self.tokens_per_s = Gauge("soaktop_output_tokens_per_second",
                                  "Tokens received over the last second", registry=r)
        self.in_flight = Gauge("soaktop_requests_in_flight", "Requests out now", registry=r)
        self.concurrency = Gauge("soaktop_concurrency", "Concurrency of the current phase",
                                 registry=r)
        self.client_bound = Gauge("soaktop_client_bound", "1 when the last second was "
                                  "client-bound (latencies are upper bounds)", registry=r)
        self.loop_lag = Gauge("soaktop_event_loop_lag_p99_seconds", "soaktop's own event-loop "
                              "lag, p99 over the last second", registry=r)
        labels = ["gpu"]
        self.gpu_temp = Gauge("soaktop_gpu_temperature_celsius", "GPU temperature", labels,
                              registry=r)
        self.gpu_clock = Gauge("soaktop_gpu_sm_clock_hertz", "GPU SM clock", labels, registry=r)
        self.gpu_power = Gauge("soaktop_gpu_power_watts", "GPU power draw", labels, registry=r)
        self._server = None

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape target
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--prometheus-port {port}: cannot listen on {host}:{port}: "
                              f"{exc.strerror}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def add(self, event: Any) -> None:
        if type(event) is TokensArrived:  # most of the stream, and nothing to do: one check
            return
        if isinstance(event, RequestDone):
            self._add_request(event)
        elif isinstance(event, ClientSample):
            seconds = event.interval_ns / 1e9
            self.tokens_per_s.set(event.tokens / seconds if seconds > 0 else 0.0)
            self.in_flight.set(event.in_flight)
            self.client_bound.set(1 if event.client_bound else 0)
            if event.loop_lag_p99_us is not None:
                self.loop_lag.set(event.loop_lag_p99_us / 1e6)
        elif isinstance(event, Phase):
            self.concurrency.set(event.concurrency)
        elif isinstance(event, GpuSample):
            key = gpu_key(event.host, event.gpu_index)
            if event.temperature_c is not None:
                self.gpu_temp.labels(key).set(event.temperature_c)
            if event.sm_clock_mhz is not None:
                self.gpu_clock.labels(key).set(event.sm_clock_mhz * 1e6)
            if event.power_w is not None:
                self.gpu_power.labels(key).set(event.power_w)

    def _add_request(self, done: RequestDone) -> None:
        self.tokens.inc(done.output_tokens)
        if done.finish_reason == "cancelled":
            self.requests.labels("cancelled").inc()
            return
        if done.error_class is not None:
            self.requests.labels("failed").inc()
            self.errors.labels(done.error_class).inc()
            return
        self.requests.labels("ok").inc()
        if done.arrivals_us:
            self.ttft.observe(done.arrivals_us[0] / 1e6)
            gaps = itl_gaps(np.asarray(done.arrivals_us), done.arrival_tokens or None)
            for gap in (gaps / 1e6).tolist():
                self.itl.observe(gap)
        self.e2e.observe(done.end_us / 1e6)
