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
    # four float64 columns with doubling headroom: < 100 B a request. Keeping every token
    # as even a 4-byte int would take 4 MB here.
    assert grown < 2000 * 100, grown
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
