"""Long runs hold flat memory: the summary grows per request, the live view not at all, and
neither grows per token. Measured with tracemalloc on synthetic events (no timing involved)."""

import tracemalloc

from soaktop.engine.events import Phase, RequestDone, TokensArrived
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.summary import SessionSummary

TOKENS_PER_REQUEST = 500


def requests(start, count):
    arrivals = tuple(range(1000, 1000 + 20 * TOKENS_PER_REQUEST, 20))  # every 20 µs
    for i in range(start, start + count):
        sent = i * 1_000_000
        yield RequestDone(sent + 20_000_000, 0, i, 0, "fake", "m", sent, 16, arrivals,
                          arrivals[-1] + 10, "length")


def grown_bytes(feed, warm, measured):
    feed(warm)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    feed(measured)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before


def test_summary_grows_per_request_not_per_token():
    summary = SessionSummary()
    summary.add(Phase(0, 0, 64, "m", "fake", "start"))
    done = iter(requests(0, 3000))

    def feed(n):
        for _ in range(n):
            summary.add(next(done))

    grown = grown_bytes(feed, 500, 2000)  # 2000 requests = 1,000,000 tokens
    # four float64 latency columns and two float32 token counts with their growth headroom,
    # and the verdict's first window (24 B a request for its first minutes): 76.5 B a
    # request measured, 86.8 while token counts took 8 bytes. Keeping every token as even
    # a 4-byte int would take 4 MB here.
    assert grown < 2000 * 80, grown
    assert summary.result().requests_ok == 2500


def test_live_view_does_not_grow_at_all():
    live = LiveStats()
    done = iter(requests(0, 3000))
    t = [0]

    def feed(n):
        for _ in range(n):
            d = next(done)
            for k in range(0, TOKENS_PER_REQUEST, 50):
                t[0] += 200_000
                live.add(TokensArrived(t[0], 0, d.request_id, 50, k == 0))
            live.add(d)
        live.snapshot(t[0])

    grown = grown_bytes(feed, 500, 2000)
    assert grown < 20_000, grown  # rings are preallocated; only small ints and floats churn


def test_token_counts_take_four_bytes_a_request_and_read_back_exactly():
    import numpy as np

    from soaktop.engine.metrics.summary import _LENGTHS, _Column, _PhaseStats

    columns = _PhaseStats(Phase(0, 0, 4, "m", "fake", "start")).columns
    assert {name: c._data.itemsize for name, c in columns.items() if name in _LENGTHS} == {
        name: 4 for name in _LENGTHS}
    assert columns["ttft_us"]._data.itemsize == 8  # latencies keep their doubles
    counts = _Column(single=True)
    counts.extend(np.array([1, 2**24 - 1, 128], dtype=np.int64))
    counts.append(None)
    counts.append(65)
    values = counts.values()
    assert values[[0, 1, 2, 4]].tolist() == [1, 2**24 - 1, 128, 65] and np.isnan(values[3])
    assert values.dtype == np.float64

