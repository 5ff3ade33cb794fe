"""Metric definitions against values computed by hand."""

import numpy as np
import pytest

from soaktop.engine.metrics.stats import distribution, itl_gaps, request_metrics


def test_single_token_per_arrival():
    m = request_metrics([1000, 1500, 2500, 2600], end_us=3000)
    assert m.output_tokens == 4
    assert m.ttft_us == 1000
    assert m.itl_us.tolist() == [500, 1000, 100]
    assert m.tpot_us == pytest.approx(1600 / 3)
    assert m.speed_tps == pytest.approx(3 / 1600e-6)
    assert m.e2e_us == 3000


def test_multi_token_chunks_share_their_gap():
    # chunk 0 carries 2 tokens at 1000; chunk 1 carries 3 at 1600; chunk 2 carries 1 at 2200
    m = request_metrics([1000, 1600, 2200], end_us=2300, arrival_tokens=[2, 3, 1])
    assert m.output_tokens == 6
    assert m.itl_us.tolist() == pytest.approx([200, 200, 200, 600])
    assert m.tpot_us == pytest.approx(1200 / 5)
    assert m.speed_tps == pytest.approx(5 / 1.2e-3)


def test_one_token_response_has_ttft_but_no_itl_tpot_or_speed():
    m = request_metrics([800], end_us=900)
    assert (m.ttft_us, m.tpot_us, m.speed_tps, m.e2e_us) == (800, None, None, 900)
    assert m.itl_us.size == 0


def test_no_tokens_at_all():
    m = request_metrics([], end_us=50)
    assert m.output_tokens == 0 and m.ttft_us is None and m.tpot_us is None


def test_itl_gaps_without_chunk_counts_equals_diff():
    assert itl_gaps(np.array([5, 7, 12])).tolist() == [2, 5]


def test_distribution_by_hand():
    d = distribution(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), scale=1e-3)
    # numpy linear interpolation on [1,2,3,4]: p50 = 2.5, p90 = 3.7; NaN (undefined) ignored
    assert d.p50 == pytest.approx(2.5e-3)
    assert d.p90 == pytest.approx(3.7e-3)
    assert d.mean == pytest.approx(2.5e-3)


def test_distribution_of_nothing_is_none_not_zero():
    d = distribution(np.array([]))
    assert d.to_dict() == {"p50": None, "p90": None, "p95": None, "p99": None, "mean": None}
