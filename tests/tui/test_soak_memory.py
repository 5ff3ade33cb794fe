"""A long run holds flat memory. Ten minutes (after a minute of warm-up) of
``soaktop run --headless`` at 64 streams and 3,000 tokens/s against a loopback server process,
recording with host telemetry; soaktop's RSS may not stand 20 MB above its warm-up level at any
sample. The measurement is bench/soak_memory.py's own ``soak()``, so the bench and this test
cannot drift apart.

Slow tier (about 12 minutes): not in the default run; ``python -m pytest -m slow`` runs it.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak_memory.py"
_spec = importlib.util.spec_from_file_location("soak_memory", BENCH)
soak_memory = importlib.util.module_from_spec(_spec)
sys.modules["soak_memory"] = soak_memory  # dataclasses look their module up there
_spec.loader.exec_module(soak_memory)


@pytest.mark.slow
@pytest.mark.timeout(20 * 60)
def test_ten_minutes_at_3000_tokens_per_s_hold_flat_memory():
    result = soak_memory.soak(concurrency=64, tokens_per_s=3000, minutes=10, every_s=10,
                              warmup_s=60, report=print)
    report = "\n".join(soak_memory.verdict(result))
    assert result.exit_code == 0, report
    assert result.requests_failed == 0, report
    # the per-token path was exercised at a high rate, not starved
    assert result.tokens_per_s > 2000, report
    assert result.peak_growth < soak_memory.TARGET_BYTES, report
