"""A stand-in for the ``pynvml`` module: scripted GPUs, and any call made to fail with a real
NVML error code. Constants, error classes and the field-value structs are pynvml's own, so the
code under test decodes exactly what the real binding would hand it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    temperature_c: int = 61
    slowdown_c: int = 87
    shutdown_c: int = 92
    sm_mhz: int = 1755
    sm_max_mhz: int = 1980
    mem_mhz: int = 2619
    mem_max_mhz: int = 2619
    power_mw: int = 412_345
    limit_mw: int = 700_000
    energy_mj: int = 9_000_000
    util_gpu: int = 97
    util_mem: int = 41
    used_bytes: int = 30 * 2**30
    total_bytes: int = 80 * 2**30
    pstate: int = 0
    reasons_mask: int = 0x4 | 0x40
    memory_temp_c: int = 70
    counters_ns: dict[str, int] = field(
        default_factory=lambda: {"sw_power_cap": 5_000, "sync_boost": 0, "sw_thermal": 0,
                                 "hw_thermal": 1_000, "hw_power_brake": 0})
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)


_COUNTER_IDS = {
    "sw_power_cap": pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP,
    "sync_boost": pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST,
    "sw_thermal": pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN,
    "hw_thermal": pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN,
    "hw_power_brake": pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN,
}


class FakeNvml:
    """``errors[(function_name, gpu_index)]`` (or ``errors[function_name]``) = an NVML error
    code that call raises; ``field_errors[field_id]`` = a code in that field's result."""

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None):
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.init_error = init_error
        self.errors: dict[Any, int] = {}
        self.field_errors: dict[int, int] = {}
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:  # constants and anything not faked
        if name.startswith("nvml") and name[4:5].isupper():
            raise AttributeError(name)  # a function this fake (like an old binding) lacks
        return getattr(pynvml, name)

    def _check(self, fn: str, handle: int | None = None) -> FakeGpu | None:
        self.calls.append(fn)
        code = self.errors.get((fn, handle), self.errors.get(fn))
        if code is not None:
            raise pynvml.NVMLError(code)
        return None if handle is None else self.gpus[handle]

    # system
    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self):
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self):
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self):
        return "13.580.159.04"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check("nvmlDeviceGetHandleByIndex", index)
        return index

    # static
    def nvmlDeviceGetName(self, h):
        return self._check("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-0000000{h}-fake"

    def nvmlDeviceGetVbiosVersion(self, h):
        return "96.00.99.00.01"

    def nvmlDeviceGetPersistenceMode(self, h):
        return 1

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h):
        return 700_000

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h):
        return [200_000, 700_000]

    def nvmlDeviceGetTemperatureThreshold(self, h, which):
        g = self._check("nvmlDeviceGetTemperatureThreshold", h)
        return g.slowdown_c if which == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN else \
            g.shutdown_c

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        g = self._check("nvmlDeviceGetMaxClockInfo", h)
        return g.sm_max_mhz if clock == pynvml.NVML_CLOCK_SM else g.mem_max_mhz

    # per sample
    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._check("nvmlDeviceGetTemperature", h).temperature_c

    def nvmlDeviceGetClockInfo(self, h, clock):
        g = self._check("nvmlDeviceGetClockInfo", h)
        return g.sm_mhz if clock == pynvml.NVML_CLOCK_SM else g.mem_mhz

    def nvmlDeviceGetPowerUsage(self, h):
        return self._check("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._check("nvmlDeviceGetEnforcedPowerLimit", h).limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self._check("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def nvmlDeviceGetPerformanceState(self, h):
        return self._check("nvmlDeviceGetPerformanceState", h).pstate

    def nvmlDeviceGetUtilizationRates(self, h):
        g = self._check("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=g.util_gpu, memory=g.util_mem)

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self._check("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(used=g.used_bytes, total=g.total_bytes,
                               free=g.total_bytes - g.used_bytes)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._check("nvmlDeviceGetCurrentClocksEventReasons", h).reasons_mask

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self._check("nvmlDeviceGetCurrentClocksThrottleReasons", h).reasons_mask

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        g = self._check("nvmlDeviceGetComputeRunningProcesses", h)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in g.processes]

    def nvmlDeviceGetFieldValues(self, h, ids):
        g = self._check("nvmlDeviceGetFieldValues", h)
        values = (pynvml.c_nvmlFieldValue_t * len(ids))()
        by_id = {fid: name for name, fid in _COUNTER_IDS.items()}
        for i, fid in enumerate(ids):
            values[i].fieldId = fid
            code = self.field_errors.get(fid)
            if code is not None:
                values[i].nvmlReturn = code
                continue
            values[i].nvmlReturn = pynvml.NVML_SUCCESS
            if fid == pynvml.NVML_FI_DEV_MEMORY_TEMP:
                values[i].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                values[i].value.uiVal = g.memory_temp_c
            else:
                values[i].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[i].value.ullVal = g.counters_ns[by_id[fid]]
        return values
