"""Clock-event reasons: why a GPU runs below its maximum clock, decoded into stable names.

NVML reports the reasons active now as a bitmask (``nvmlDeviceGetCurrentClocksEventReasons``;
the same bits under the older "Throttle" name, and in DCGM's ``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS``
/ ``..._EVENT_REASONS``). The bit values are NVML's public ABI (``nvml.h``), written out here so
that decoding does not need the NVML library: a DCGM exporter scraped from a GPU-less laptop
decodes the same way.

``gpu_idle`` and ``applications_clocks``/``display_clocks`` are not throttling: an idle GPU
lowers its clocks on purpose. :data:`THROTTLING` lists the reasons that mean the work ran slower
than the chip could (power, thermal, hardware slowdown), the ones a soak verdict cares about.
"""

from __future__ import annotations

# bit -> name, in nvml.h's order (nvmlClocksEventReason*)
BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}

#: Reasons that cost performance (the rest are intended clock changes).
THROTTLING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal",
                        "hw_power_brake"})


def decode(mask: int) -> tuple[str, ...]:
    """The names of the bits set in ``mask``, in bit order; an unknown bit reads ``bit_N``."""
    names = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            names.append(BITS.get(1 << bit, f"bit_{bit}"))
        bit += 1
    return tuple(names)
