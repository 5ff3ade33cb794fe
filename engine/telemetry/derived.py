"""What the raw telemetry means over a window: thermal margins, throttling time, energy per token.

Definitions (the README's "Thermal and energy" table says the same):
- SM clock ratio: SM clock ÷ the GPU's maximum SM clock, per sample; mean and minimum.
- Temperature margin: slowdown threshold − GPU temperature, per sample; the minimum is the
  closest the card came to thermal slowdown.
- Power ratio: power ÷ enforced power limit, per sample.
- Energy: the increase of the driver's cumulative energy counter between the window's first
  and last sample (measured joules, not a TDP guess); mean power is that energy ÷ the time
  between those samples. Where a GPU has no energy counter, mean power is the mean of the
  power samples instead, and ``energy_from`` says so.
- Time under each clock-event reason: the increase of the driver's cumulative per-reason
  counter ÷ the time between the first and last sample, where the driver keeps counters;
  otherwise the share of time the sampled bitmask showed the reason, each sample's reasons held
  until the next sample. ``clock_events_from`` says which.
- Energy per output token = mean power × window duration ÷ output tokens in the window;
  tokens/s per watt = output tokens/s ÷ mean power. Both sum the power of every GPU sampled.

Every accumulator here keeps a fixed handful of numbers per GPU, whatever the run's length.
"""

from __future__ import annotations

from typing import Any

from soaktop.engine.events import GpuSample, HostSample, ServerSample

#: A counter that claims more than this share of the wall time is not trusted (field ids have
#: been renumbered between NVML versions): the sampled bitmask is used instead.
_PLAUSIBLE_FRACTION = 1.05


class Stat:
    """Count, mean, minimum and maximum of a stream of optional numbers."""

    __slots__ = ("n", "total", "low", "high")

    def __init__(self) -> None:
        self.n, self.total, self.low, self.high = 0, 0.0, float("inf"), float("-inf")

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.n += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def min(self) -> float | None:
        return self.low if self.n else None

    def max(self) -> float | None:
        return self.high if self.n else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


class GpuWindow:
    """Derived figures of one GPU over a window, fed one sample at a time."""

    __slots__ = ("temperature", "margin", "sm_clock", "sm_ratio", "power", "power_ratio",
                 "memory_used", "utilization", "energy_mj", "energy_ns", "_last_energy",
                 "_first_counters", "_last_counters", "_sampled_ns", "_active_ns", "_prev",
                 "first_t_ns", "last_t_ns")

    def __init__(self) -> None:
        self.temperature, self.margin, self.sm_clock, self.sm_ratio = Stat(), Stat(), Stat(), Stat()
        self.power, self.power_ratio, self.memory_used = Stat(), Stat(), Stat()
        self.utilization = Stat()
        self.energy_mj = 0
        self.energy_ns = 0
        self._last_energy: tuple[int, int] | None = None
        self._first_counters: tuple[int, dict[str, int]] | None = None
        self._last_counters: tuple[int, dict[str, int]] | None = None
        self._sampled_ns = 0
        self._active_ns: dict[str, int] = {}
        self._prev: GpuSample | None = None
        self.first_t_ns: int | None = None
        self.last_t_ns: int | None = None

    def add(self, s: GpuSample) -> None:
        if self.first_t_ns is None:
            self.first_t_ns = s.t_ns
        self.last_t_ns = s.t_ns
        self.temperature.add(s.temperature_c)
        self.margin.add(_diff(s.slowdown_temperature_c, s.temperature_c))
        self.sm_clock.add(s.sm_clock_mhz)
        self.sm_ratio.add(_ratio(s.sm_clock_mhz, s.sm_clock_max_mhz))
        self.power.add(s.power_w)
        self.power_ratio.add(_ratio(s.power_w, s.power_limit_w))
        self.memory_used.add(s.memory_used_bytes)
        self.utilization.add(s.gpu_utilization_percent)
        if s.energy_mj is not None:
            if self._last_energy is not None:
                t0, e0 = self._last_energy
                if s.energy_mj >= e0:  # a smaller value means the driver reloaded: skip the gap
                    self.energy_mj += s.energy_mj - e0
                    self.energy_ns += s.t_ns - t0
            self._last_energy = (s.t_ns, s.energy_mj)
        if s.clock_event_counters_ns:
            if self._first_counters is None:
                self._first_counters = (s.t_ns, s.clock_event_counters_ns)
            self._last_counters = (s.t_ns, s.clock_event_counters_ns)
        prev = self._prev
        if prev is not None and prev.clock_event_reasons is not None:
            dt = s.t_ns - prev.t_ns
            self._sampled_ns += dt
            for reason in prev.clock_event_reasons:
                self._active_ns[reason] = self._active_ns.get(reason, 0) + dt
        self._prev = s

    def energy_counted(self) -> bool:
        """Whether the energy counter measured this window: it was read across some time, and
        the power it implies is within a factor of 3 of the power readings' mean, where there
        are readings of more than 1 W. A counter that disagrees more (stuck while the readings
        say hundreds of watts, or a unit a thousand times off) is not believed; sampling at a
        few Hz under bursty load moves the readings' mean by tens of percent, not threefold."""
        if self.energy_ns <= 0:
            return False
        if not (self.power.n and self.power.total / self.power.n > 1):
            return True
        counted_w = self.energy_mj / 1e3 / (self.energy_ns / 1e9)
        sampled_w = self.power.total / self.power.n
        return sampled_w / 3 <= counted_w <= sampled_w * 3

    def mean_power_w(self) -> float | None:
        """From the energy counter where it measured, else the mean of the power samples."""
        if self.energy_counted():
            return self.energy_mj / 1e3 / (self.energy_ns / 1e9)
        return self.power.mean()

    def clock_event_fractions(self) -> tuple[dict[str, float], str | None]:
        """Share of the window spent under each reason, and where it came from."""
        if self._first_counters and self._last_counters:
            (t0, first), (t1, last) = self._first_counters, self._last_counters
            if t1 > t0:
                shares = {k: (last[k] - first.get(k, last[k])) / (t1 - t0) for k in last}
                if all(0 <= v <= _PLAUSIBLE_FRACTION for v in shares.values()):
                    return {k: min(v, 1.0) for k, v in shares.items()}, "counters"
        if self._sampled_ns > 0:
            shares = {k: v / self._sampled_ns for k, v in sorted(self._active_ns.items())}
            return shares, "samples"
        return {}, None

    def result(self) -> dict[str, Any]:
        fractions, source = self.clock_event_fractions()
        return {
            "samples": self.temperature.n or self.sm_clock.n or self.power.n,
            "temperature_c": {"mean": self.temperature.mean(), "max": self.temperature.max()},
            "temperature_margin_c": {"min": self.margin.min(), "mean": self.margin.mean()},
            "sm_clock_mhz": {"mean": self.sm_clock.mean(), "min": self.sm_clock.min()},
            "sm_clock_ratio": {"mean": self.sm_ratio.mean(), "min": self.sm_ratio.min()},
            "power_w": {"mean": self.mean_power_w(), "max": self.power.max()},
            "power_ratio": {"mean": self.power_ratio.mean(), "max": self.power_ratio.max()},
            "energy_j": self.energy_mj / 1e3 if self.energy_counted() else None,
            "energy_from": "counter" if self.energy_counted() else ("power samples"
                                                                   if self.power.n else None),
            "memory_used_bytes": {"max": self.memory_used.max()},
            "gpu_utilization_percent": {"mean": self.utilization.mean()},
            "clock_event_fraction": fractions,
            "clock_events_from": source,
        }


class HostWindow:
    """Host figures over a window."""

    __slots__ = ("cpu", "own_cpu", "own_rss", "watched_cpu", "watched_rss", "cpu_temperature")

    def __init__(self) -> None:
        self.cpu, self.own_cpu, self.own_rss = Stat(), Stat(), Stat()
        self.watched_cpu, self.watched_rss, self.cpu_temperature = Stat(), Stat(), Stat()

    def add(self, s: HostSample) -> None:
        self.cpu.add(s.cpu_percent)
        self.own_cpu.add(s.soaktop_cpu_percent)
        self.own_rss.add(s.soaktop_rss_bytes)
        self.watched_cpu.add(s.watched_cpu_percent)
        self.watched_rss.add(s.watched_rss_bytes)
        self.cpu_temperature.add(s.cpu_temperature_c)

    def result(self) -> dict[str, Any]:
        return {
            "samples": self.cpu.n,
            "cpu_percent": {"mean": self.cpu.mean(), "max": self.cpu.max()},
            "soaktop_cpu_percent": {"mean": self.own_cpu.mean(), "max": self.own_cpu.max()},
            "soaktop_rss_bytes": {"max": self.own_rss.max()},
            "watched_cpu_percent": {"mean": self.watched_cpu.mean()},
            "watched_rss_bytes": {"max": self.watched_rss.max()},
            "cpu_temperature_c": {"max": self.cpu_temperature.max()},
        }


class ServerWindow:
    """A serving engine's own view over a window: its queue, KV cache and generation rate."""

    __slots__ = ("running", "waiting", "kv", "_first", "_last")

    def __init__(self) -> None:
        self.running, self.waiting, self.kv = Stat(), Stat(), Stat()
        self._first: ServerSample | None = None
        self._last: ServerSample | None = None

    def add(self, s: ServerSample) -> None:
        self.running.add(s.requests_running)
        self.waiting.add(s.requests_waiting)
        self.kv.add(s.kv_cache_usage)
        if s.generation_tokens_total is not None:
            self._first = self._first or s
            self._last = s

    def result(self) -> dict[str, Any]:
        rate = None
        first, last = self._first, self._last
        if first and last and last.t_ns > first.t_ns:
            tokens = last.generation_tokens_total - first.generation_tokens_total
            if tokens >= 0:  # a restarted server resets its counters
                rate = tokens / ((last.t_ns - first.t_ns) / 1e9)
        return {
            "samples": self.running.n or self.kv.n,
            "requests_running": {"mean": self.running.mean(), "max": self.running.max()},
            "requests_waiting": {"mean": self.waiting.mean(), "max": self.waiting.max()},
            "kv_cache_usage": {"mean": self.kv.mean(), "max": self.kv.max()},
            "generation_tokens_per_s": rate,
        }


def gpu_key(host: str | None, gpu_index: int) -> str:
    """``"0"`` for GPU 0 of this machine, ``"node7/3"`` for GPU 3 scraped from node7."""
    return f"{host}/{gpu_index}" if host else str(gpu_index)


def energy_figures(gpus: dict[str, GpuWindow], tokens: int, duration_s: float) -> dict[str, Any]:
    """Power of all GPUs together, energy per output token and tokens/s per watt."""
    powers = [w.mean_power_w() for w in gpus.values()]
    if not powers or any(p is None for p in powers):
        return {"power_w": None, "energy_j_per_token": None, "tokens_per_s_per_w": None}
    power = sum(powers)
    return {
        "power_w": power,
        "energy_j_per_token": power * duration_s / tokens if tokens and power else None,
        "tokens_per_s_per_w": tokens / duration_s / power if duration_s and power else None,
    }
