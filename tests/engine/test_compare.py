"""compare: the rank test against a reference implementation, and verdicts on known shifts."""

import numpy as np
import pytest

from soaktop.engine.events import Phase, RequestDone, SessionEnd, SessionStart
from soaktop.engine.metrics.compare import Difference, compare, differences, mann_whitney_p
from soaktop.engine.metrics.summary import SessionSummary


def test_mann_whitney_matches_scipy():
    """Reference p-values from scipy.stats.mannwhitneyu(a, b, method="asymptotic",
    use_continuity=False) (scipy 1.17.1), on the same arrays; the third case has many ties."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(50, 5, 200), rng.normal(52, 5, 200)
    assert mann_whitney_p(a, b) == pytest.approx(8.15414056129219e-05, rel=1e-9)
    a, b = rng.integers(0, 5, 50).astype(float), rng.integers(0, 6, 60).astype(float)
    assert mann_whitney_p(a, b) == pytest.approx(0.3161940338187901, rel=1e-9)
    a, b = rng.normal(0, 1, 30), rng.normal(0, 1, 40)
    assert mann_whitney_p(a, b) == pytest.approx(0.2908605553803312, rel=1e-9)
    assert mann_whitney_p(a[:5], b) is None  # too few for the approximation
    assert mann_whitney_p(np.ones(10), np.ones(10)) == 1.0


def session(ttft_ms, itl_ms=10.0, tokens=20, model="m", seed=0):
    """A summary of requests whose TTFTs are ``ttft_ms`` (one per request)."""
    rng = np.random.default_rng(seed)
    s = SessionSummary()
    s.add(SessionStart(0, 1, "2026-11-23T00:00:00+00:00",
                       {"backend": "fake", "model": model, "concurrency": 4}, {}, {}))
    s.add(Phase(0, 0, 4, model, "fake", "start"))
    t = 0
    for i, ttft in enumerate(ttft_ms):
        gaps = np.maximum(rng.normal(itl_ms, 1.0, tokens - 1), 0.5)
        offsets = (np.concatenate([[ttft], ttft + np.cumsum(gaps)]) * 1000).astype(int)
        s.add(RequestDone(t + int(offsets[-1]) * 1000, 0, i, 0, "fake", model, t, 8,
                          tuple(offsets.tolist()), int(offsets[-1]), "length"))
        t += 50_000_000
    s.add(SessionEnd(t + 10**9, "completed"))
    return s


def test_a_real_shift_is_beyond_noise_and_the_same_thing_is_not():
    rng = np.random.default_rng(7)
    base = session(rng.normal(50, 5, 300), seed=1)
    slower = session(rng.normal(60, 5, 300), seed=2)
    same = session(rng.normal(50, 5, 300), seed=3)
    rows = {r.metric: r for r in compare(base, slower)}
    ttft = rows["TTFT p50 (ms)"]
    assert ttft.verdict == "beyond noise" and ttft.ratio == pytest.approx(1.2, rel=0.05)
    assert rows["TPOT p50 (ms)"].verdict == "within noise"  # ITL was the same on both
    assert rows["output tokens/s"].verdict == "one run each"
    rows = {r.metric: r for r in compare(base, same)}
    assert rows["TTFT p50 (ms)"].verdict == "within noise"
    assert rows["TTFT p50 (ms)"].ratio == pytest.approx(1.0, abs=0.03)


def test_differences_name_what_ran_differently():
    a, b = session([50] * 10), session([50] * 10, model="other")
    assert differences(a, b) == [Difference("model", "m", "other")]
    assert differences(a, session([50] * 10)) == []


def test_differences_name_a_different_server_version():
    import dataclasses

    a, b = session([50] * 10), session([50] * 10)
    a.header = dataclasses.replace(a.header, backend={"server": {"version": "0.6.3"}})
    b.header = dataclasses.replace(b.header, backend={"server": {"version": "0.7.0"}})
    assert differences(a, b) == [Difference("server version", "0.6.3", "0.7.0")]



def test_differences_name_other_prompts_and_another_load_shape():
    import dataclasses

    a, b = session([50] * 10), session([50] * 10)
    a.header = dataclasses.replace(a.header, workload={"prompts_sha256": "aa"})
    b.header = dataclasses.replace(b.header, workload={"prompts_sha256": "bb"},
                                   config={**b.header.config, "rate": 5.0})
    assert differences(a, b) == [Difference("prompts", "aa", "bb"), Difference("rate", None, 5.0)]


def test_differences_name_the_prompt_file_trace_and_conversation_settings():
    """Facts newer than some records: a prompt file or trace by name, hash and size; turns,
    think time and unique prefixes with their defaults where a record has none."""
    def run(config=None, workload=None):
        s = SessionSummary()
        s.add(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", dict(config or {}), {}, {},
                           dict(workload or {})))
        return s

    file = {"name": "p.jsonl", "sha256": "0123456789abcdef" * 4, "size": 42}
    assert differences(run(), run(workload={"prompt_file": file})) == [
        Difference("prompt file", None, "p.jsonl (0123456789ab, 42 B)")]
    assert differences(run(workload={"trace_file": file, "trace_speed": 2.0}), run()) == [
        Difference("trace", "p.jsonl (0123456789ab, 42 B)", None),
        Difference("trace speed", 2.0, None)]
    # an older record says nothing of them: it ran one turn, no think time, unique prefixes
    assert differences(run(), run({"turns": 1, "think_time": 0.0, "unique_prefix": True})) == []
    assert differences(run(), run({"turns": 3, "think_time": 0.5, "unique_prefix": False})) == [
        Difference("turns", 1, 3), Difference("think time", 0.0, 0.5),
        Difference("unique prefix", True, False)]
