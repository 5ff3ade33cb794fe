"""Remote telemetry: scrape Prometheus text from a DCGM exporter or a serving engine's /metrics.

Why: the GPUs under a soak test are often on another machine (a cluster node, a cloud box)
where soaktop cannot load NVML. Such machines usually already serve what we need over HTTP:
NVIDIA's dcgm-exporter (the GPU Operator installs it) for the GPUs, and the serving engine's own
``/metrics`` (vLLM, SGLang) for its queue and KV cache. Scraping that text with a plain HTTP GET
lets one soaktop watch GPUs and engines on other machines with nothing installed there: no
agent, no SSH, no driver on the client. The text is parsed with prometheus_client's parser.

An exporter that stops answering is a value, not an error: one ``TelemetryStatus`` says so
(naming the URL and the problem), another says when it answers again, and the run goes on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from soaktop.engine.backends.http import strip_credentials
from soaktop.engine.events import GpuSample, ServerSample, TelemetryStatus
from soaktop.engine.telemetry.reasons import decode
from soaktop.engine.telemetry.sampler import Clock

MIB = 1 << 20
KINDS = ("dcgm", "vllm", "sglang")
UNKNOWN_TEXT = "answered with no metric soaktop knows (DCGM, vLLM, SGLang)"

# DCGM fields whose unit is already the GpuSample field's unit.
_DCGM_PLAIN = {
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_MEMORY_TEMP": "memory_temperature_c",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
    "DCGM_FI_DEV_MEM_CLOCK": "memory_clock_mhz",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": "power_limit_w",
    "DCGM_FI_DEV_GPU_UTIL": "gpu_utilization_percent",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "memory_utilization_percent",
    # not in dcgm-exporter's default set; used where its CSV adds them (fields 158, 159, 110, 111)
    "DCGM_FI_DEV_SLOWDOWN_TEMP": "slowdown_temperature_c",
    "DCGM_FI_DEV_SHUTDOWN_TEMP": "shutdown_temperature_c",
    "DCGM_FI_DEV_MAX_SM_CLOCK": "sm_clock_max_mhz",
    "DCGM_FI_DEV_MAX_MEM_CLOCK": "memory_clock_max_mhz",
}
_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # mJ, cumulative
_FB = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED")  # MiB
_REASONS = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")
# DCGM's violation counters are NVML's perf-policy counters passed through unchanged
# (dcgm_fields.cpp maps field 240 to NVML_FI_DEV_PERF_POLICY_POWER, 241 to ..._THERMAL, 242 to
# ..._SYNC_BOOST). NVML counts them in NANOSECONDS (nvmlViolationTime_t.violationTime "in
# Nanoseconds"); dcgm_fields.h said "usec" up to DCGM 4.0 and says "ns" since 4.1, and
# dcgm-exporter's counter help changed "(in us)" to "(in ns)" in Dec 2025 (NVIDIA/dcgm-exporter#589,
# a doc fix, not a change of value), so the value is already ns and is not scaled. What each
# measures: "how long <limiter> held the GPU below application clocks". nvml.h defines
# NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP and ..._SYNC_BOOST as aliases of the POWER and
# SYNC_BOOST policy counters, so those two are exactly the reasons of the same name. THERMAL has
# no such alias (NVML added separate SW/HW thermal-slowdown counters, fields 269/270, that DCGM
# does not export); the thermal policy is the driver's software thermal limiter, so it is filed
# under sw_thermal, the nearest reason. BOARD_LIMIT, LOW_UTIL and RELIABILITY match no reason bit.
_VIOLATIONS = {
    "DCGM_FI_DEV_POWER_VIOLATION": "sw_power_cap",
    "DCGM_FI_DEV_THERMAL_VIOLATION": "sw_thermal",
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": "sync_boost",
}
_DCGM_KNOWN = {*_DCGM_PLAIN, _ENERGY, *_FB, *_REASONS, *_VIOLATIONS}
# DCGM's "no value" sentinels (int32/fp64 blank, not found, not supported, no permission); older
# exporters print them as values. int64 sentinels (2**63 - 16 and up) are caught by magnitude.
_BLANKS = {*(2147483632 + i for i in range(4)), *(140737488355328.0 + i for i in range(4))}

# Serving engines: metric name (a counter's ``_total`` removed) -> ServerSample field.
# vLLM's KV usage moved from gpu_cache_usage_perc (deprecated in 0.9) to kv_cache_usage_perc.
_SERVER = {
    "vllm": {
        "vllm:num_requests_running": "requests_running",
        "vllm:num_requests_waiting": "requests_waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
        "vllm:gpu_cache_usage_perc": "kv_cache_usage_old",
        "vllm:prompt_tokens": "prompt_tokens_total",
        "vllm:generation_tokens": "generation_tokens_total",
        "vllm:num_preemptions": "preemptions_total",
    },
    "sglang": {
        "sglang:num_running_reqs": "requests_running",
        "sglang:num_queue_reqs": "requests_waiting",
        "sglang:token_usage": "kv_cache_usage",
        "sglang:prompt_tokens": "prompt_tokens_total",
        "sglang:generation_tokens": "generation_tokens_total",
    },
}
_FRACTIONS = {"kv_cache_usage", "kv_cache_usage_old"}  # averaged across engines; the rest summed


def _number(value: float) -> float | None:
    """None where the exporter says "no value": NaN, or one of DCGM's sentinels."""
    if math.isnan(value) or value in _BLANKS or value >= 9.2e18:
        return None
    return value  # the parser's int stays an int: energy and counters keep every digit


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


_WANTED = frozenset({*_DCGM_KNOWN, *(n for names in _SERVER.values() for n in names)})


def _wanted_lines(text: str) -> str:
    """Only the lines of metrics soaktop reads (and their HELP/TYPE lines).

    A vLLM ``/metrics`` is mostly histogram buckets soaktop does not read; the parser is pure
    Python and holds the GIL while it works, so parsing all of it would stall the event loop
    (and token timestamps) for ~9 ms a scrape. Filtering by metric name first leaves the
    parsing to prometheus_client but only of what is used (bench/telemetry_cost.py).
    """
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
        else:
            name = line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""
        if name in _WANTED or name.removesuffix("_total") in _WANTED:
            keep.append(line)
    return "\n".join(keep) + "\n"


def _samples(text: str):
    """(name, labels, value) of every counter, gauge and untyped sample.

    prometheus_client's parser names a counter family without ``_total`` and, when the sample
    itself lacks the suffix (DCGM's counters), appends it to the sample; a counter with no TYPE
    line comes back as an untyped family named with ``_total``. Stripping ``_total`` from the
    family name gives one name in all three cases; ``_created`` and histogram samples drop out.
    """
    wanted = _wanted_lines(text)
    if not wanted.strip():
        wanted = text  # nothing soaktop reads: parse it all, to tell "not metrics" from "none"
    for family in text_string_to_metric_families(wanted):
        if family.type not in ("counter", "gauge", "unknown"):
            continue
        base = family.name.removesuffix("_total")
        for sample in family.samples:
            if sample.name in (family.name, base + "_total"):
                yield base, sample.labels, sample.value


def parse_metrics(text: str, t_ns: int, source: str, default_host: str) -> list[Any]:
    """GpuSamples (DCGM) and ServerSamples (vLLM, SGLang) from one scrape's text.

    ``source`` is the scraped URL (credentials stripped) for ServerSample.source; GPUs are named
    by the exporter's ``Hostname``/``hostname`` label, else ``default_host``. Raises ValueError
    for text that does not parse. Engine series are per model; where an engine splits a model
    across data-parallel ranks (vLLM's ``engine``, SGLang's ``dp_rank`` label) counts are
    summed and KV usage averaged; series that differ only in other labels (SGLang's tp/pp
    ranks, which repeat one scheduler's view) count once.
    """
    gpus: dict[tuple[str, int], dict[str, tuple[bool, float]]] = defaultdict(dict)
    servers: dict[tuple[str, str | None], dict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict))
    for name, labels, value in _samples(text):
        if name in _DCGM_KNOWN and labels.get("gpu", "").isdigit():
            host = labels.get("Hostname") or labels.get("hostname") or default_host
            fields = gpus[(host, int(labels["gpu"]))]
            mig = bool(labels.get("GPU_I_ID"))  # a MIG instance's row never hides the GPU's own
            if name not in fields or (fields[name][0] and not mig):
                fields[name] = (mig, value)
            continue
        engine = name.partition(":")[0]
        field = _SERVER.get(engine, {}).get(name)
        if field is None or (value := _number(value)) is None:
            continue
        parts = servers[(engine, labels.get("model_name"))][field]
        rank = labels.get("engine") or labels.get("dp_rank") or ""
        parts[rank] = max(parts.get(rank, value), float(value))
    events: list[Any] = [_gpu(t_ns, host, index, raw)
                         for (host, index), raw in sorted(gpus.items())]
    for (engine, model), fields in sorted(servers.items(), key=lambda i: (i[0][0], i[0][1] or "")):
        values = {f: (sum(p.values()) / len(p) if f in _FRACTIONS else sum(p.values()))
                  for f, p in fields.items()}
        kv = values.pop("kv_cache_usage", None)
        old = values.pop("kv_cache_usage_old", None)
        events.append(ServerSample(t_ns, source, engine, model,
                                   kv_cache_usage=old if kv is None else kv, **values))
    return events


def _gpu(t_ns: int, host: str, index: int, raw: dict[str, tuple[bool, float]]) -> GpuSample:
    v = {name: _number(value) for name, (_, value) in raw.items()}
    used, free, reserved = (v.get(n) for n in _FB)
    reasons = next((v[n] for n in _REASONS if v.get(n) is not None), None)
    counters = {r: int(v[n]) for n, r in _VIOLATIONS.items() if v.get(n) is not None}
    return GpuSample(
        t_ns, index, source="dcgm", host=host,
        **{field: _float(v.get(name)) for name, field in _DCGM_PLAIN.items()},
        energy_mj=None if v.get(_ENERGY) is None else int(v[_ENERGY]),
        memory_used_bytes=None if used is None else int(used * MIB),
        memory_total_bytes=(None if used is None or free is None
                            else int((used + free + (reserved or 0)) * MIB)),
        clock_event_reasons=None if reasons is None else decode(int(reasons)),
        clock_event_counters_ns=counters or None,
    )


class PrometheusSource:
    """Source for the Sampler. name = f"prom:{strip_credentials(url)}"; max_hz = 1.0"""

    max_hz = 1.0  # exporters refresh about once a second; faster scrapes see the same numbers

    def __init__(self, url: str, timeout_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.safe_url = strip_credentials(url)
        self.name = f"prom:{self.safe_url}"
        parts = urlsplit(url)
        self.host = parts.hostname or self.safe_url
        userinfo = parts.netloc.rpartition("@")[0]
        # what an error message must not repeat: "user:password@", the password, the query
        self._secrets = [s for s in (userinfo and userinfo + "@", parts.password, parts.query) if s]
        self._timeout_s = timeout_s
        self._available: bool | None = None  # None until the first scrape
        # user:password in the URL becomes HTTP basic auth (httpx does this itself)
        self._client = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=True,
                                    headers={"Accept": "text/plain;version=0.0.4"})

    def open(self, clock: Clock) -> list[Any]:
        """The first scrape: a status naming the kinds found (or why none), then its samples."""
        return self._scrape(clock)

    def sample(self, clock: Clock) -> list[Any]:
        return self._scrape(clock)

    def close(self) -> None:
        self._client.close()

    def _scrape(self, clock: Clock) -> list[Any]:
        events: list[Any] = []
        t_ns = None
        try:
            response = self._client.get(self.url)
            t_ns = clock()  # when the answer arrived: the samples' time
            if response.status_code >= 400:
                problem = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            else:
                events = parse_metrics(response.text, t_ns, self.safe_url, self.host)
                problem = None if events else UNKNOWN_TEXT
        except httpx.TimeoutException:
            problem = f"no answer within {self._timeout_s:g} s"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        except ValueError as exc:  # the parser's word for text that is not Prometheus text
            problem = f"text does not parse as Prometheus metrics: {exc}"
        return self._status(clock() if t_ns is None else t_ns, problem, events) + events

    def _status(self, t_ns: int, problem: str | None, events: list[Any]) -> list[Any]:
        """One status per change of state: not one per failed scrape."""
        if problem is None:
            if self._available:
                return []
            self._available = True
            found = {"dcgm" if isinstance(e, GpuSample) else e.engine for e in events}
            info = {"kinds": [k for k in KINDS if k in found]}
            return [TelemetryStatus(t_ns, self.name, True, host=self.host, info=info)]
        if self._available is False:
            return []
        self._available = False
        for secret in self._secrets:
            problem = problem.replace(secret, "***")
        reason = " ".join(f"{self.safe_url}: {problem}".split())  # one line
        return [TelemetryStatus(t_ns, self.name, False, reason=reason, host=self.host)]
