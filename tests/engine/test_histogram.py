import numpy as np
import pytest

from soaktop.engine.metrics.histogram import N_BUCKETS, LogHistogram, bucket_index, bucket_value


def test_buckets_are_contiguous_and_exact_below_1024us():
    v = np.arange(0, 3_000_000)
    idx = bucket_index(v)
    assert np.all(np.diff(idx) >= 0) and np.all(np.diff(idx) <= 1)
    assert np.array_equal(bucket_value(idx[:1024]), v[:1024])
    rel = np.abs(bucket_value(idx[1024:]) - v[1024:]) / v[1024:]
    assert rel.max() <= 1e-3  # the documented 0.1% bound


def test_huge_values_land_in_the_last_bucket_instead_of_crashing():
    assert bucket_index(np.array([2**50]))[0] == N_BUCKETS - 1


def test_quantiles_match_nearest_rank_within_precision():
    rng = np.random.default_rng(7)
    values = np.rint(rng.lognormal(mean=9, sigma=1.2, size=50_000))
    h = LogHistogram()
    for part in np.array_split(values, 100):  # added a request at a time
        h.add(part)
    exact = np.percentile(values, [50, 90, 99], method="inverted_cdf")
    got = h.quantiles((50, 90, 99))
    for g, e in zip(got, exact):
        assert g == pytest.approx(e, rel=1e-3, abs=1)
    assert h.mean() == pytest.approx(values.mean())
    assert h.count == values.size


def test_small_hand_example_and_empty():
    h = LogHistogram()
    assert h.quantiles((50,)) == [None] and h.mean() is None
    h.add(np.array([500, 1000, 1000]))
    assert h.quantiles((0, 50, 100)) == [500, 1000, 1000]
