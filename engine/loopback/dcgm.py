"""Simulated GPUs behind the loopback server, served as an NVIDIA DCGM exporter's ``/metrics``.

Why: ``--telemetry prom=URL`` and the dashboard's GPU panel are built for a soak on a GPU
node, and there is no GPU where the tests and benches run. This stand-in gives them GPUs that
behave as a soak's do, driven by the load the loopback server is actually serving, so a run
against the loopback shows the whole story end to end: the cards warm up over minutes, one of
them runs hotter than its neighbours, crosses its slowdown threshold and throttles, power
climbs to its limit and is capped there, and memory fills as a KV cache would and stays full.

The model, in steps of ``step_s`` (1 s by default, as dcgm-exporter collects every second):

- Load: the tokens the server sent during a step, per second, over ``busy_tokens_per_s``
  (capped at 1) is every GPU's utilisation for that step: the work is spread evenly over the
  GPUs, as tensor parallelism spreads it.
- Temperature: first order. GPU ``i`` heads for ``idle_c + rise_i * u`` with time constant
  ``tau_s``, where ``rise_i = rise_c + spread_c * i`` (the hot GPU: ``hot_rise_c``); a step
  of constant load moves it exactly ``T_ss + (T - T_ss) * exp(-step_s / tau_s)``. The hot GPU
  has poor cooling (a blocked intake, a failing fan): throttling does not bring it back under
  its threshold, which is what a soak is run to catch.
- Thermal throttle: above ``slowdown_c`` the thermal limiter allows ``throttle_per_c`` less
  of the maximum SM clock per degree over (``min_clock_ratio`` at the least) and the
  ``sw_thermal`` reason is set. That is the driver's thermal limiter, the reason DCGM's
  thermal violation counter measures and the one soaktop's parser files that counter under,
  so the bitmask and the counters tell one story.
- Power: the load asks for ``idle_w + (peak_w - idle_w) * u`` at the maximum clock; above
  ``power_limit_w`` the power limiter allows the clock share ``power_limit_w / demand``, and
  ``sw_power_cap`` is set when it is the lower of the two limits. The clock is the maximum
  times the lower share, and power is the demand times the same share. An idle GPU (no tokens
  in the step) drops to ``idle_clock_mhz`` with ``gpu_idle``, as a real one does.
- Memory: the weights from the start, then KV cache blocks as tokens are served (``kv_mib``
  once ``kv_fill_tokens`` have been served), never given back: an engine frees blocks to its
  own pool, not to the driver.
- Counters: each step adds its power times its length to the energy (mJ), so the counter
  agrees with the power readings, and a whole step to the power or thermal violation counter
  (ns) when it ended under that reason. A step's power and reasons are those of its end.

Every reported figure is that of the last completed step (an exporter reports its last
collection), so what a scrape sees depends only on the tokens served in each step before it:
no randomness, no dependence on when or how often it is scraped. Field names, labels and
units are dcgm-exporter's (temperatures in C, clocks in MHz, power in W, framebuffer in MiB,
energy in mJ, violations in ns), the ones :mod:`soaktop.engine.telemetry.prometheus` reads,
plus the slowdown/shutdown thresholds and maximum clocks that dcgm-exporter serves when its
CSV lists them (the GPU panel needs them for margins and clock ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from soaktop.engine.telemetry.reasons import BITS

if TYPE_CHECKING:
    from soaktop.engine.loopback.shared import TokenLedger

_BIT = {name: bit for bit, name in BITS.items()}
GPU_IDLE, SW_POWER_CAP, SW_THERMAL = _BIT["gpu_idle"], _BIT["sw_power_cap"], _BIT["sw_thermal"]
HOSTNAME = "loopback"
MODEL_NAME = "NVIDIA H100 80GB HBM3"
DRIVER = "550.90.07"


@dataclass(frozen=True, slots=True)
class GpuModel:
    """The simulated GPUs' make-up: how many, how they heat, throttle, draw and fill.

    The defaults are an H100 SXM's figures (700 W limit, 1980 MHz, 80 GB) with a thermal time
    constant of two minutes; a test sets ``tau_s`` to seconds. ``hot_gpu`` counts as a Python
    index (-1: the last GPU).
    """

    gpus: int = 8
    tau_s: float = 120.0
    busy_tokens_per_s: float = 3000.0
    hot_gpu: int = -1
    step_s: float = 1.0
    idle_c: float = 32.0
    rise_c: float = 36.0
    spread_c: float = 0.5
    hot_rise_c: float = 58.0
    slowdown_c: float = 87.0
    shutdown_c: float = 92.0
    memory_c_above: float = 6.0
    max_clock_mhz: float = 1980.0
    idle_clock_mhz: float = 345.0
    memory_clock_mhz: float = 2619.0
    throttle_per_c: float = 0.06
    min_clock_ratio: float = 0.5
    idle_w: float = 70.0
    peak_w: float = 740.0
    power_limit_w: float = 700.0
    total_mib: int = 81559
    reserved_mib: int = 454
    weights_mib: int = 17000
    kv_mib: int = 52000
    kv_fill_tokens: int = 60000

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError("gpus must be at least 1")
        if not -self.gpus <= self.hot_gpu < self.gpus:
            raise ValueError(f"hot_gpu {self.hot_gpu} is not one of {self.gpus} GPUs")
        if self.tau_s <= 0 or self.step_s <= 0 or self.busy_tokens_per_s <= 0:
            raise ValueError("tau_s, step_s and busy_tokens_per_s must be above 0")
        if self.weights_mib + self.kv_mib + self.reserved_mib > self.total_mib:
            raise ValueError("weights, KV cache and reserved memory exceed the GPU's memory")

    @property
    def hot_index(self) -> int:
        return self.hot_gpu % self.gpus

    def rise(self, gpu: int) -> float:
        """Degrees above idle at full load for ``gpu``."""
        return self.hot_rise_c if gpu == self.hot_index else self.rise_c + self.spread_c * gpu


@dataclass(frozen=True, slots=True)
class GpuState:
    """One simulated GPU as a scrape reports it (the end of the last completed step)."""

    index: int
    temperature_c: float
    utilization: float  # 0..1, the last step's load
    sm_clock_mhz: float
    power_w: float
    reasons: int  # the clock-event reasons bitmask
    energy_mj: int
    power_violation_ns: int
    thermal_violation_ns: int
    memory_used_mib: int


class SimulatedGpus:
    """The GPUs of a :class:`GpuModel`, fed the tokens the server sends.

    Time is in seconds from the simulation's start, given by the caller (the server passes
    its own clock), so a test can drive it to any moment without waiting. Steps are integrated
    lazily, when a scrape asks, from the tokens counted in each; memory per GPU is a handful of
    numbers whatever the run's length.
    """

    def __init__(self, model: GpuModel | None = None, ledger: TokenLedger | None = None) -> None:
        """``ledger``: with a multi-process loopback, the tokens of every process are counted
        there (each process its own column), so the GPUs heat with the server's whole load
        whichever process is scraped; without one, they are counted here."""
        self.model = model or GpuModel()
        self._ledger = ledger
        n = self.model.gpus
        self._decay = math.exp(-self.model.step_s / self.model.tau_s)
        self._steps = 0  # steps integrated
        self._counted: dict[int, int] = {}  # step -> tokens sent in it, for steps not integrated
        self._served = 0  # tokens of the integrated steps
        self._load = 0.0  # the last integrated step's utilisation
        self._temps = [self.model.idle_c] * n
        self._energy_mj = [0.0] * n
        self._power_ns = [0] * n
        self._thermal_ns = [0] * n

    def served(self, t_s: float, tokens: int) -> None:
        """``tokens`` left the server at ``t_s``; cheap, since the server calls it per chunk."""
        step = max(int(t_s // self.model.step_s), self._steps)
        if self._ledger is not None:
            self._ledger.add(step, tokens)
            return
        self._counted[step] = self._counted.get(step, 0) + tokens

    def states(self, t_s: float) -> list[GpuState]:
        """Every GPU as of the last step completed at ``t_s``."""
        self._advance(int(t_s // self.model.step_s))
        m = self.model
        memory = m.weights_mib + round(m.kv_mib * min(1.0, self._served / m.kv_fill_tokens))
        states = []
        for i, temp in enumerate(self._temps):
            clock, power, reasons = self._electrics(temp, self._load)
            states.append(GpuState(
                i, temp, self._load, clock, power, reasons, round(self._energy_mj[i]),
                self._power_ns[i], self._thermal_ns[i], memory))
        return states

    def _electrics(self, temp: float, load: float) -> tuple[float, float, int]:
        """SM clock, power and reasons of a GPU at ``temp`` under ``load``.

        Each limiter allows a share of the maximum clock; the lower one holds, and power falls
        with the clock, so a GPU held at its power limit still loses clock to heat.
        """
        m = self.model
        reasons = 0
        demand = m.idle_w + (m.peak_w - m.idle_w) * load  # at the maximum clock
        power_ratio = min(1.0, m.power_limit_w / demand)
        thermal_ratio = 1.0
        if temp > m.slowdown_c:
            thermal_ratio = max(m.min_clock_ratio,
                                1.0 - m.throttle_per_c * (temp - m.slowdown_c))
            reasons |= SW_THERMAL
        ratio = min(power_ratio, thermal_ratio)
        if power_ratio < 1.0 and power_ratio <= thermal_ratio:
            reasons |= SW_POWER_CAP
        if load == 0.0:
            return m.idle_clock_mhz, demand, reasons | GPU_IDLE
        return m.max_clock_mhz * ratio, demand * ratio, reasons

    def _advance(self, steps: int) -> None:
        """Integrate every step before ``steps`` not integrated yet."""
        m = self.model
        step_ns = round(m.step_s * 1e9)
        while self._steps < steps:
            tokens = (self._counted.pop(self._steps, 0) if self._ledger is None
                      else self._ledger.total(self._steps))
            load = min(1.0, tokens / m.step_s / m.busy_tokens_per_s)
            for i, temp in enumerate(self._temps):
                steady = m.idle_c + m.rise(i) * load
                self._temps[i] = temp = steady + (temp - steady) * self._decay
                # the power and reasons a scrape at the step's end reports held for the step
                _, power, reasons = self._electrics(temp, load)
                self._energy_mj[i] += power * m.step_s * 1000.0
                if reasons & SW_POWER_CAP:
                    self._power_ns[i] += step_ns
                if reasons & SW_THERMAL:
                    self._thermal_ns[i] += step_ns
            self._served += tokens
            self._load = load
            self._steps += 1

    def metrics(self, t_s: float) -> str:
        """The ``/metrics`` text at ``t_s``, as dcgm-exporter writes it."""
        m = self.model
        states = self.states(t_s)
        rows = [
            ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
             lambda s: f"{s.sm_clock_mhz:.0f}"),
            ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).",
             lambda s: f"{m.memory_clock_mhz:.0f}"),
            ("DCGM_FI_DEV_MAX_SM_CLOCK", "gauge", "Maximum SM clock frequency (in MHz).",
             lambda s: f"{m.max_clock_mhz:.0f}"),
            ("DCGM_FI_DEV_MAX_MEM_CLOCK", "gauge", "Maximum memory clock frequency (in MHz).",
             lambda s: f"{m.memory_clock_mhz:.0f}"),
            ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).",
             lambda s: f"{s.temperature_c + m.memory_c_above:.0f}"),
            ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).",
             lambda s: f"{s.temperature_c:.0f}"),
            ("DCGM_FI_DEV_SLOWDOWN_TEMP", "gauge", "Slowdown temperature (in C).",
             lambda s: f"{m.slowdown_c:.0f}"),
            ("DCGM_FI_DEV_SHUTDOWN_TEMP", "gauge", "Shutdown temperature (in C).",
             lambda s: f"{m.shutdown_c:.0f}"),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).",
             lambda s: f"{s.power_w:.6f}"),
            ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W).",
             lambda s: f"{m.power_limit_w:.6f}"),
            ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
             "Total energy consumption since boot (in mJ).", lambda s: str(s.energy_mj)),
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
             lambda s: f"{100 * s.utilization:.0f}"),
            ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).",
             lambda s: f"{60 * s.utilization:.0f}"),
            ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
             "Current clock event reasons (bitmask).", lambda s: str(s.reasons)),
            ("DCGM_FI_DEV_POWER_VIOLATION", "counter",
             "Throttling duration due to power constraints (in ns).",
             lambda s: str(s.power_violation_ns)),
            ("DCGM_FI_DEV_THERMAL_VIOLATION", "counter",
             "Throttling duration due to thermal constraints (in ns).",
             lambda s: str(s.thermal_violation_ns)),
            ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
             lambda s: str(m.total_mib - m.reserved_mib - s.memory_used_mib)),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
             lambda s: str(s.memory_used_mib)),
            ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).",
             lambda s: str(m.reserved_mib)),
        ]
        labels = [_labels(s.index) for s in states]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{{{label}}} {value(s)}" for s, label in zip(states, labels)]
        return "\n".join(lines) + "\n"


def _labels(gpu: int) -> str:
    """dcgm-exporter's labels for one GPU (a made-up, stable UUID and bus id)."""
    return (f'gpu="{gpu}",UUID="GPU-10000000-0000-4000-8000-{gpu:012x}",'
            f'pci_bus_id="00000000:{0x18 + 0x10 * gpu:02X}:00.0",device="nvidia{gpu}",'
            f'modelName="{MODEL_NAME}",Hostname="{HOSTNAME}",DCGM_FI_DRIVER_VERSION="{DRIVER}"')
