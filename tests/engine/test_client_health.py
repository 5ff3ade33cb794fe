"""soaktop checks itself: a client starved of its CPU is flagged, the same run without the
starvation is not."""

import threading
import time

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.events import ClientSample
from soaktop.engine.metrics.client_health import ClientHealth, is_client_bound
from soaktop.engine.metrics.summary import SessionSummary


def test_the_thresholds():
    assert not is_client_bound(300, 40.0)
    assert is_client_bound(1500, 40.0)  # lag p99 over 1 ms
    assert is_client_bound(200, 95.0)  # a whole core busy
    assert not is_client_bound(None, None)


async def _run(make_session, starve: bool):
    session, events = make_session(FakeBackend(ttft_s=0.005, itl_s=0.004), concurrency=4,
                                   output_tokens=20, duration_s=3.2, warmup_requests=0)
    summary = SessionSummary()
    session.add_listener(summary.add)
    stop = threading.Event()

    def hog():  # pure Python: holds the GIL for a switch interval (5 ms) at a time
        while not stop.is_set():
            sum(i * i for i in range(20_000))

    thread = threading.Thread(target=hog, daemon=True)
    if starve:
        thread.start()
    try:
        await session.run()
    finally:
        stop.set()
    return events.of(ClientSample), summary.result()


async def test_a_starved_client_is_flagged(make_session):
    samples, result = await _run(make_session, starve=True)
    assert len(samples) == 3
    assert all(s.client_bound for s in samples)
    assert all(s.loop_lag_p99_us > 1000 for s in samples)
    assert result.client_bound_s >= 2.5


async def test_the_same_run_without_starvation_is_not(make_session):
    samples, result = await _run(make_session, starve=False)
    assert len(samples) == 3
    # the machine's other work can cost one second's p99 a millisecond (2 shared cores); a
    # starved client is flagged every second, with lags several times longer
    assert sum(s.client_bound for s in samples) <= 1
    assert sorted(s.loop_lag_p99_us for s in samples)[1] < 1000  # the median second
    assert all(s.send_lateness_p99_us is not None for s in samples)
    assert result.client_bound_s <= 1.1


def test_send_lateness_is_due_to_sent():
    health = ClientHealth()
    for late_us in (10, 20, 5000):
        health.sent(1_000_000, 1_000_000 + late_us * 1000)
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # this thread, the "loop", busy for the whole second
        pass
    _, lateness, cpu, loop_cpu = health.take()
    assert lateness == int(__import__("numpy").percentile([10, 20, 5000], 99))
    assert loop_cpu > 70 and cpu >= loop_cpu - 10  # the process includes the loop thread
    time.sleep(0.3)  # now idle
    _, lateness, cpu, loop_cpu = health.take()
    assert lateness is None  # taken: the next second starts empty
    assert loop_cpu < 30
