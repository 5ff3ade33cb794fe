import numpy as np
import pytest

from soaktop.engine.events import RequestDone, TokensArrived
from soaktop.engine.metrics.live import HISTORY_BUCKETS, LiveStats, Ring

S = 1_000_000_000


def test_tokens_per_second_counts_complete_buckets_of_the_last_second():
    live = LiveStats(rate_s=1.0)
    for i in range(30):  # 30 tokens spread over 1.0 s .. 1.29 s
        live.add(TokensArrived(S + i * 10_000_000, 0, 0, 1, i == 0))
    live.add(TokensArrived(int(2.05 * S), 0, 1, 5, True))  # in the unfinished bucket
    assert live.tokens_per_s(int(2.05 * S)) == pytest.approx(30.0)
    # eleven seconds later the window holds nothing
    assert live.tokens_per_s(13 * S) == 0.0


def test_old_latencies_leave_the_window():
    live = LiveStats(window_s=10)

    def request(t_s, ttft_us):
        return RequestDone(int(t_s * S), 0, 0, 0, "fake", "m", int(t_s * S) - 5000,
                           4, (ttft_us, ttft_us + 10), ttft_us + 20, "length")

    live.add(request(1, 1000))
    live.add(request(15, 3000))
    snap = live.snapshot(16 * S)
    assert snap.ttft_p50_ms == pytest.approx(3.0)  # the 1 ms request is 15 s old: gone
    assert snap.requests_ok == 2


def test_ring_is_fixed_size():
    ring = Ring(8)
    for t in range(100):
        ring.extend(t, np.arange(5))
    assert ring.values.size == 8 and ring.since(0).size == 8
    assert HISTORY_BUCKETS * 8 < 20_000  # token history is a few kilobytes, whatever the run


def test_client_bound_at_a_tick_ignores_a_sample_taken_after_it():
    from soaktop.engine.events import ClientSample

    live = LiveStats()
    live.add(ClientSample(1_000_500_000, 2, 100, 10**9, loop_lag_p99_us=5000))  # bound
    live.add(ClientSample(2_000_300_000, 2, 100, 10**9, loop_lag_p99_us=100))  # not bound
    assert live.client_bound_at(2_000_000_000) == ("loop late",)  # the 1 s sample decides
    assert not live.client_bound_at(2_500_000_000)
    assert not live.client_bound_at(900_000_000)  # no sample by then


def test_a_request_s_figures_are_the_definitions_by_hand():
    # 3 tokens at 1, 2 and 4 ms after the send, ended at 5 ms: TTFT 1 ms, E2E 5 ms, output
    # speed (3 - 1) / 3 ms = 666.7 tokens/s, ITL 1 and 2 ms; then one in chunks of 1 and 3
    # tokens 3 ms apart: ITL 1 ms three times, speed 3 / 3 ms = 1000 tokens/s
    live = LiveStats(window_s=10)
    live.add(RequestDone(S, 0, 0, 0, "fake", "m", S - 5_000_000, 4, (1000, 2000, 4000), 5000,
                         "length"))
    live.add(RequestDone(S, 0, 1, 0, "fake", "m", S - 5_000_000, 4, (2000, 5000), 6000,
                         "length", arrival_tokens=(1, 3)))
    assert live.ttft_ms.since(0).tolist() == [1.0, 2.0]
    assert live.e2e_ms.since(0).tolist() == [5.0, 6.0]
    assert live.speed_tps.since(0).tolist() == pytest.approx([2 / 0.003, 3 / 0.003])
    assert live.itl_ms.since(0).tolist() == pytest.approx([1.0, 2.0, 1.0, 1.0, 1.0])
