"""GPU telemetry from NVML (``nvidia-ml-py``, the module ``pynvml``), for every GPU here.

Every NVML call goes through :func:`query`, which returns ``(value, None)`` or ``(None,
reason)``: a field this GPU does not support, a permission the user lacks or an old driver
without a function is an *absent value with a reason*, never an exception and never a 0.
The reasons a field is missing are sent once, in a :class:`TelemetryStatus`, and again only when
they change, so the samples stay small and a reader still learns why a column is empty.

What is read, per GPU and sample: GPU and memory temperature, SM and memory clocks, power and
the enforced limit, the cumulative energy counter, utilisation, memory, performance state, the
clock-event reasons active now (``nvmlDeviceGetCurrentClocksEventReasons``, or the older
``...ThrottleReasons`` name) and, in one ``nvmlDeviceGetFieldValues`` call, memory temperature
and the driver's cumulative per-reason counters (what ``nvidia-smi -q -d PERFORMANCE`` prints as
"Clocks Event Reasons Counters", in ns). Thresholds and maximum clocks are read once at start
and repeated in each sample so a sample can be read on its own. A GPU that falls off the bus
(``GPU is lost``) is reported once and no longer sampled; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pynvml

from soaktop.engine.events import GpuSample, TelemetryStatus
from soaktop.engine.telemetry.reasons import decode
from soaktop.engine.telemetry.sampler import Clock

_PLAIN = {
    pynvml.NVML_ERROR_NOT_SUPPORTED: "not supported on this GPU",
    pynvml.NVML_ERROR_NO_PERMISSION: "permission denied",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "not in this driver",
    pynvml.NVML_ERROR_GPU_IS_LOST: "GPU is lost (fell off the bus)",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "no NVIDIA driver (libnvidia-ml.so.1 not found)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA driver is not loaded",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "NVML and driver versions differ (reboot?)",
}

#: Counter name -> NVML field id, where this binding knows the field.
_COUNTER_FIELDS = {
    name: getattr(pynvml, constant)
    for name, constant in (
        ("sw_power_cap", "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP"),
        ("sync_boost", "NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST"),
        ("sw_thermal", "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN"),
        ("hw_thermal", "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN"),
        ("hw_power_brake", "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN"),
    )
    if hasattr(pynvml, constant)
}
_MEMORY_TEMP_FIELD = pynvml.NVML_FI_DEV_MEMORY_TEMP
_VALUE_ATTR = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def plain_reason(error: Exception) -> str:
    """One line a user can act on, for an NVML error (or a binding without the function)."""
    if isinstance(error, AttributeError):
        return "not in this nvidia-ml-py"
    code = getattr(error, "value", None)
    return _PLAIN.get(code, str(error))


def is_lost(reason: str | None) -> bool:
    return reason == _PLAIN[pynvml.NVML_ERROR_GPU_IS_LOST]


def query(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """``fn(*args)`` as ``(value, None)``, or ``(None, reason)`` when NVML says no."""
    try:
        return fn(*args), None
    except (pynvml.NVMLError, AttributeError) as exc:
        return None, plain_reason(exc)


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


#: The readings of a moment (not the limits read once): when none of them can be read, the
#: GPU is unavailable rather than "available, with every field missing".
_LIVE_FIELDS = frozenset({"temperature_c", "sm_clock_mhz", "power_w",
                          "gpu_utilization_percent", "memory_used_bytes"})


class _Gpu:
    """One GPU's handle, its static facts and what was last said about its missing fields."""

    def __init__(self, index: int, handle: Any, limits: dict[str, tuple[Any, str | None]]):
        self.index = index
        self.handle = handle
        self.limits = limits  # thresholds and maximum clocks, as query() results
        self.unavailable: dict[str, str] | None = None
        self.lost = False
        self.unreadable = False  # every live reading failing (a driver gone, an unknown error)


class NvmlSource:
    """The NVML telemetry :class:`~soaktop.engine.telemetry.sampler.Source`: every GPU of this
    machine.

    ``watch_pids``: processes whose GPU memory goes into ``process_memory_bytes`` (the
    server under test; for the local engine, soaktop itself). ``nvml`` stands in for the
    ``pynvml`` module in tests.
    """

    name = "nvml"
    max_hz = 100.0

    def __init__(self, watch_pids: Iterable[int] = (), nvml: Any = None) -> None:
        self._nv = pynvml if nvml is None else nvml
        self._pids = frozenset(watch_pids)
        self._gpus: list[_Gpu] = []
        self._initialised = False

    # -- the Source protocol ---------------------------------------------------------------
    def _init(self) -> tuple[int, str | None]:
        """Initialise NVML: the number of GPUs, or 0 and why there is none to watch."""
        nv = self._nv
        _, reason = query(nv.nvmlInit)
        if reason is not None:
            return 0, f"no NVIDIA GPU found: {reason}"
        self._initialised = True
        count, reason = query(nv.nvmlDeviceGetCount)
        if not count:
            return 0, f"no NVIDIA GPU found: {reason or 'the driver lists none'}"
        return count, None

    def _system(self) -> dict[str, Any]:
        nv = self._nv
        return {
            "driver_version": _text(query(nv.nvmlSystemGetDriverVersion)[0]),
            "nvml_version": _text(query(nv.nvmlSystemGetNVMLVersion)[0]),
            "cuda_driver_version": query(nv.nvmlSystemGetCudaDriverVersion)[0],
        }

    def describe(self) -> dict[str, Any]:
        """The GPUs of this machine for a record's header: versions and each GPU's static facts
        (name, UUID, VBIOS, persistence mode, power limits), or why there are none."""
        count, reason = self._init()
        try:
            if reason is not None:
                return {"available": False, "reason": reason}
            gpus = []
            for index in range(count):
                handle, why = query(self._nv.nvmlDeviceGetHandleByIndex, index)
                if why is not None:
                    gpus.append({"index": index, "unavailable": why})
                    continue
                gpus.append({"index": index, **self._info(handle)})
            return {"available": True, **self._system(), "gpus": gpus}
        finally:
            self.close()

    def open(self, clock: Clock) -> list[Any]:
        nv = self._nv
        count, reason = self._init()
        if reason is not None:
            return [TelemetryStatus(clock(), self.name, False, reason)]
        system = self._system()
        events: list[Any] = []
        for index in range(count):
            handle, reason = query(nv.nvmlDeviceGetHandleByIndex, index)
            if reason is not None:
                events.append(TelemetryStatus(clock(), self.name, False, reason, gpu_index=index))
                continue
            gpu = _Gpu(index, handle, self._limits(handle))
            self._gpus.append(gpu)
            sample, missing = self._read(gpu, clock)
            gpu.unavailable = missing
            events.append(TelemetryStatus(clock(), self.name, True, gpu_index=index,
                                          unavailable_fields=missing,
                                          info={**system, **self._info(handle)}))
            events.append(sample)
        return events

    def sample(self, clock: Clock) -> list[Any]:
        events: list[Any] = []
        for gpu in self._gpus:
            if gpu.lost:
                continue
            sample, missing = self._read(gpu, clock)
            lost = [r for r in missing.values() if is_lost(r)]
            if lost:
                gpu.lost = True
                events.append(TelemetryStatus(clock(), self.name, False, f"GPU {gpu.index}: "
                                              f"{lost[0]}; no longer sampled", gpu_index=gpu.index))
                continue
            if _LIVE_FIELDS <= missing.keys():
                # nothing of now could be read: a sample would hold only the limits read at
                # the start and look live. Say so once; sample again when reads come back.
                if not gpu.unreadable:
                    gpu.unreadable = True
                    events.append(TelemetryStatus(
                        clock(), self.name, False,
                        f"GPU {gpu.index}: {missing['temperature_c']}; no readings",
                        gpu_index=gpu.index))
                continue
            if gpu.unreadable:  # back: say it is available again, with what it lacks
                gpu.unreadable, gpu.unavailable = False, None
            if missing != gpu.unavailable:
                gpu.unavailable = missing
                events.append(TelemetryStatus(clock(), self.name, True, gpu_index=gpu.index,
                                              unavailable_fields=missing))
            events.append(sample)
        return events

    def close(self) -> None:
        if self._initialised:
            query(self._nv.nvmlShutdown)
            self._initialised = False

    # -- reading ---------------------------------------------------------------------------
    def _info(self, handle: Any) -> dict[str, Any]:
        """A GPU's identity and fixed limits, for its status event and the record header."""
        nv = self._nv
        limits, _ = query(nv.nvmlDeviceGetPowerManagementLimitConstraints, handle)
        default_limit, _ = query(nv.nvmlDeviceGetPowerManagementDefaultLimit, handle)
        return {
            "name": _text(query(nv.nvmlDeviceGetName, handle)[0]),
            "uuid": _text(query(nv.nvmlDeviceGetUUID, handle)[0]),
            "vbios": _text(query(nv.nvmlDeviceGetVbiosVersion, handle)[0]),
            "persistence_mode": query(nv.nvmlDeviceGetPersistenceMode, handle)[0],
            "power_default_limit_w": None if default_limit is None else default_limit / 1e3,
            "power_limit_range_w": None if limits is None else [v / 1e3 for v in limits],
        }

    def _limits(self, handle: Any) -> dict[str, tuple[Any, str | None]]:
        """Thresholds and maximum clocks: they do not change during a run, so they are read
        once and repeated in each sample (which can then be read on its own)."""
        nv = self._nv
        return {
            "slowdown_temperature_c": query(nv.nvmlDeviceGetTemperatureThreshold, handle,
                                            nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
            "shutdown_temperature_c": query(nv.nvmlDeviceGetTemperatureThreshold, handle,
                                            nv.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
            "sm_clock_max_mhz": query(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_SM),
            "memory_clock_max_mhz": query(nv.nvmlDeviceGetMaxClockInfo, handle,
                                          nv.NVML_CLOCK_MEM),
        }

    def _read(self, gpu: _Gpu, clock: Clock) -> tuple[GpuSample, dict[str, str]]:
        """One full sample of ``gpu``, and the reason for each field it lacks."""
        nv, h = self._nv, gpu.handle
        start = clock()
        values: dict[str, Any] = {}
        missing: dict[str, str] = {}

        def take(name: str, result: tuple[Any, str | None], scale: float = 1.0) -> Any:
            value, reason = result
            if reason is not None:
                missing[name] = reason
                return None
            values[name] = value * scale if scale != 1.0 else value
            return value

        for name, result in gpu.limits.items():
            take(name, result)
        take("temperature_c", query(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU))
        take("sm_clock_mhz", query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM))
        take("memory_clock_mhz", query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM))
        take("power_w", query(nv.nvmlDeviceGetPowerUsage, h), 1e-3)
        take("power_limit_w", query(nv.nvmlDeviceGetEnforcedPowerLimit, h), 1e-3)
        take("energy_mj", query(nv.nvmlDeviceGetTotalEnergyConsumption, h))
        take("performance_state", query(nv.nvmlDeviceGetPerformanceState, h))
        util, reason = query(nv.nvmlDeviceGetUtilizationRates, h)
        take("gpu_utilization_percent", (getattr(util, "gpu", None), reason))
        take("memory_utilization_percent", (getattr(util, "memory", None), reason))
        memory, reason = query(nv.nvmlDeviceGetMemoryInfo, h)
        take("memory_used_bytes", (getattr(memory, "used", None), reason))
        take("memory_total_bytes", (getattr(memory, "total", None), reason))
        mask, reason = query(nv.nvmlDeviceGetCurrentClocksEventReasons, h)
        if reason is not None:  # drivers before 535 know it by its older name
            mask, reason = query(nv.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        take("clock_event_reasons", (None if mask is None else decode(mask), reason))
        self._read_fields(h, take, missing)
        if self._pids:
            procs, reason = query(nv.nvmlDeviceGetComputeRunningProcesses, h)
            used = None if procs is None else sum(
                p.usedGpuMemory or 0 for p in procs if p.pid in self._pids)
            take("process_memory_bytes", (used, reason))
        end = clock()
        sample = GpuSample(t_ns=(start + end) // 2, gpu_index=gpu.index, **values)
        return sample, missing

    def _read_fields(self, h: Any, take: Callable, missing: dict[str, str]) -> None:
        """Memory temperature and the per-reason counters, in one driver call."""
        ids = [_MEMORY_TEMP_FIELD, *_COUNTER_FIELDS.values()]
        result, reason = query(self._nv.nvmlDeviceGetFieldValues, h, ids)
        if reason is not None:
            take("memory_temperature_c", (None, reason))
            take("clock_event_counters_ns", (None, reason))
            return
        got: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for item in result:
            if item.nvmlReturn == pynvml.NVML_SUCCESS:
                got[item.fieldId] = getattr(item.value, _VALUE_ATTR.get(item.valueType, "ullVal"))
            else:
                errors[item.fieldId] = plain_reason(pynvml.NVMLError(item.nvmlReturn))
        if _MEMORY_TEMP_FIELD in got:
            take("memory_temperature_c", (got[_MEMORY_TEMP_FIELD], None))
        else:
            missing["memory_temperature_c"] = errors.get(_MEMORY_TEMP_FIELD, "not reported")
        counters = {name: int(got[fid]) for name, fid in _COUNTER_FIELDS.items() if fid in got}
        if counters:
            take("clock_event_counters_ns", (counters, None))
        else:
            first = next((errors[f] for f in _COUNTER_FIELDS.values() if f in errors), None)
            missing["clock_event_counters_ns"] = first or "not reported"
