"""NVML telemetry: what a sample holds and in which units, and absence as a value.

The GPU is a scripted stand-in (tests/engine/fake_nvml.py) built on pynvml's own constants,
error classes and field-value structs; the real-GPU check of this path is in the issue note
(bench/telemetry_cost.py and a CUDA run of the local engine on a lent H100).
"""

import os

import pynvml
import pytest

from soaktop.engine.events import GpuSample, TelemetryStatus
from soaktop.engine.telemetry.nvml import NvmlSource, query
from tests.engine.fake_nvml import FakeGpu, FakeNvml


def clock():
    return 1_000


def test_a_full_sample_in_soaktop_units():
    gpu = FakeGpu(processes=[(os.getpid(), 5 * 2**30), (999_999, 7 * 2**30)])
    source = NvmlSource(watch_pids={os.getpid()}, nvml=FakeNvml([gpu]))
    status, sample = source.open(clock)
    assert isinstance(status, TelemetryStatus) and status.available
    assert status.info["name"] == "NVIDIA H100 80GB HBM3"
    assert status.info["uuid"] == "GPU-00000000-fake"
    assert status.info["driver_version"] == "580.159.04"
    assert status.info["power_limit_range_w"] == [200.0, 700.0]
    assert status.unavailable_fields == {}
    assert isinstance(sample, GpuSample)
    assert sample.temperature_c == 61 and sample.memory_temperature_c == 70
    assert (sample.slowdown_temperature_c, sample.shutdown_temperature_c) == (87, 92)
    assert (sample.sm_clock_mhz, sample.sm_clock_max_mhz) == (1755, 1980)
    assert (sample.memory_clock_mhz, sample.memory_clock_max_mhz) == (2619, 2619)
    assert sample.power_w == pytest.approx(412.345)  # NVML says milliwatts
    assert sample.power_limit_w == pytest.approx(700.0)
    assert sample.energy_mj == 9_000_000
    assert (sample.gpu_utilization_percent, sample.memory_utilization_percent) == (97, 41)
    assert (sample.memory_used_bytes, sample.memory_total_bytes) == (30 * 2**30, 80 * 2**30)
    assert sample.performance_state == 0
    assert sample.clock_event_reasons == ("sw_power_cap", "hw_thermal")
    assert sample.clock_event_counters_ns == {
        "sw_power_cap": 5_000, "sync_boost": 0, "sw_thermal": 0, "hw_thermal": 1_000,
        "hw_power_brake": 0}
    assert sample.process_memory_bytes == 5 * 2**30  # the watched PID only


def test_samples_follow_the_gpu():
    gpu = FakeGpu()
    source = NvmlSource(nvml=FakeNvml([gpu]))
    source.open(clock)
    gpu.temperature_c, gpu.energy_mj, gpu.reasons_mask = 79, 9_500_000, 0
    (sample,) = source.sample(clock)
    assert sample.temperature_c == 79 and sample.energy_mj == 9_500_000
    assert sample.clock_event_reasons == ()


def test_unsupported_fields_are_none_with_a_reason_said_once():
    nv = FakeNvml([FakeGpu()])
    nv.errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    nv.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_NO_PERMISSION
    nv.field_errors[pynvml.NVML_FI_DEV_MEMORY_TEMP] = pynvml.NVML_ERROR_NOT_SUPPORTED
    source = NvmlSource(nvml=nv)
    status, sample = source.open(clock)
    assert status.available
    assert status.unavailable_fields == {
        "energy_mj": "not supported on this GPU",
        "power_w": "permission denied",
        "memory_temperature_c": "not supported on this GPU",
    }
    assert sample.energy_mj is None and sample.power_w is None
    assert sample.memory_temperature_c is None
    assert sample.temperature_c == 61  # the rest is still read
    # the same absence again: samples only, no repeated status
    assert [type(e) for e in source.sample(clock)] == [GpuSample]
    # the power reading comes back: one status saying what is still missing
    del nv.errors["nvmlDeviceGetPowerUsage"]
    status, sample = source.sample(clock)
    assert isinstance(status, TelemetryStatus)
    assert set(status.unavailable_fields) == {"energy_mj", "memory_temperature_c"}
    assert sample.power_w == pytest.approx(412.345)


def test_no_counters_no_field_values_and_an_old_driver():
    nv = FakeNvml([FakeGpu()])
    nv.errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    # a driver before 535 has only the Throttle name of the reasons function
    nv.errors["nvmlDeviceGetCurrentClocksEventReasons"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    status, sample = NvmlSource(nvml=nv).open(clock)
    assert sample.clock_event_reasons == ("sw_power_cap", "hw_thermal")
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in nv.calls
    assert sample.clock_event_counters_ns is None and sample.memory_temperature_c is None
    assert status.unavailable_fields["clock_event_counters_ns"] == "not supported on this GPU"


def test_counters_missing_one_by_one_keep_the_others():
    nv = FakeNvml([FakeGpu()])
    nv.field_errors[pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN] = \
        pynvml.NVML_ERROR_NOT_SUPPORTED
    _, sample = NvmlSource(nvml=nv).open(clock)
    assert set(sample.clock_event_counters_ns) == {"sw_power_cap", "sync_boost", "sw_thermal",
                                                   "hw_thermal"}


def test_no_driver_is_one_plain_status_and_no_samples():
    source = NvmlSource(nvml=FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    (status,) = source.open(clock)
    assert not status.available
    assert status.reason == ("no NVIDIA GPU found: no NVIDIA driver "
                             "(libnvidia-ml.so.1 not found)")
    assert source.sample(clock) == []


def test_a_driver_with_no_gpu():
    (status,) = NvmlSource(nvml=FakeNvml(gpus=[])).open(clock)
    assert not status.available and "the driver lists none" in status.reason


def test_a_gpu_lost_mid_run_is_said_once_and_the_others_go_on():
    nv = FakeNvml([FakeGpu(), FakeGpu(temperature_c=50)])
    source = NvmlSource(nvml=nv)
    assert len(source.open(clock)) == 4
    nv.errors[("nvmlDeviceGetTemperature", 0)] = pynvml.NVML_ERROR_GPU_IS_LOST
    nv.errors[("nvmlDeviceGetPowerUsage", 0)] = pynvml.NVML_ERROR_GPU_IS_LOST
    lost, sample = source.sample(clock)
    assert isinstance(lost, TelemetryStatus) and not lost.available
    assert lost.gpu_index == 0 and "GPU is lost" in lost.reason
    assert sample.gpu_index == 1 and sample.temperature_c == 50
    later = source.sample(clock)
    assert [(type(e), e.gpu_index) for e in later] == [(GpuSample, 1)]


def test_query_turns_nvml_errors_and_missing_functions_into_reasons():
    def fails():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    def missing():
        raise AttributeError("nvmlDeviceGetSomethingNew")

    assert query(lambda: 7) == (7, None)
    assert query(fails) == (None, "permission denied")
    assert query(missing) == (None, "not in this nvidia-ml-py")


def test_this_machine_for_real():
    """No mock: on a machine without an NVIDIA driver the source says so and samples nothing;
    with one, every GPU comes online."""
    source = NvmlSource()
    events = source.open(clock)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert len(events) == 1 and not events[0].available
        assert events[0].reason.startswith("no NVIDIA GPU found")
        assert source.sample(clock) == []
        return
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    statuses = [e for e in events if isinstance(e, TelemetryStatus)]
    assert [s.gpu_index for s in statuses] == list(range(count))
    assert all(s.available for s in statuses)
    source.close()


def test_describe_for_the_header_lists_each_gpu_and_the_versions():
    nv = FakeNvml([FakeGpu(), FakeGpu(name="NVIDIA H200")])
    facts = NvmlSource(nvml=nv).describe()
    assert facts["available"] and facts["driver_version"] == "580.159.04"
    assert facts["cuda_driver_version"] == 13000 and facts["nvml_version"] == "13.580.159.04"
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    assert facts["gpus"][1] == {
        "index": 1, "name": "NVIDIA H200", "uuid": "GPU-00000001-fake",
        "vbios": "96.00.99.00.01", "persistence_mode": 1, "power_default_limit_w": 700.0,
        "power_limit_range_w": [200.0, 700.0]}
    assert nv.calls[-1] == "nvmlShutdown"  # the header's look leaves NVML as it found it
    none = NvmlSource(nvml=FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)).describe()
    assert none == {"available": False,
                    "reason": "no NVIDIA GPU found: the NVIDIA driver is not loaded"}


def test_a_gpu_that_cannot_be_read_at_all_is_unavailable_until_reads_come_back():
    import pynvml

    from soaktop.engine.events import GpuSample, TelemetryStatus
    from soaktop.engine.telemetry.nvml import NvmlSource
    from tests.tui.test_drills import FailingNvml

    nvml = FailingNvml()
    source = NvmlSource(nvml=nvml)
    clock = iter(range(10**9, 10**12, 10**6)).__next__
    source.open(clock)
    first = source.sample(clock)
    assert any(isinstance(e, GpuSample) for e in first)
    nvml.failing = pynvml.NVML_ERROR_UNKNOWN
    down = source.sample(clock)
    assert not any(isinstance(e, GpuSample) for e in down)  # no sample pretending to be live
    statuses = [e for e in down if isinstance(e, TelemetryStatus)]
    assert statuses and not statuses[0].available and "Unknown Error" in statuses[0].reason
    assert source.sample(clock) == []  # said once
    nvml.failing = None
    back = source.sample(clock)
    assert [type(e) for e in back] == [TelemetryStatus, GpuSample]
    assert back[0].available
