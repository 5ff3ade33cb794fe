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


def test_integers_and_floats_count_alike_and_a_given_total_is_the_sum_kept():
    as_int, as_float = LogHistogram(), LogHistogram()
    as_int.add(np.array([3, 1500, 1500, 70_000], dtype=np.int64))
    as_float.add(np.array([3.0, 1499.6, 1500.4, 70_000.0]))  # rounded to the µs to count
    assert np.array_equal(as_int.counts, as_float.counts) and as_int.count == 4
    assert as_float.total == pytest.approx(73_003.0)
    # one 1 µs gap shared by seven tokens: the exact sum, not seven sevenths added up
    shared = LogHistogram()
    shared.add(np.full(7, 1 / 7), total=1)
    assert shared.total == 1.0 and shared.mean() == 1 / 7 and shared.count == 7
