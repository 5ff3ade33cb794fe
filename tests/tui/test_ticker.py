"""One status ticker for the live run, a replay and an attach: the same line from the same
figures, at each multiple of the interval on the clock it follows."""

import asyncio
import io
import time

from soaktop.engine.events import ClientSample, Phase
from soaktop.engine.metrics.live import LiveStats
from soaktop.tui.ticker import StatusTicker


class Session:  # what a ticker reads of a live session
    in_flight = 2


def stats() -> LiveStats:
    live = LiveStats()
    live.add(Phase(0, 0, 3, "m", "fake", "start"))
    return live


def test_a_live_run_and_its_replay_print_the_same_line():
    live = stats()
    out = io.StringIO()
    StatusTicker.for_session(Session(), live, out, 1.0).tick(10**9)
    StatusTicker.for_replay(lambda: live, lambda t_ns: 2, out, 1.0).tick(10**9)
    first, second = out.getvalue().splitlines()
    assert first == second and first.startswith("[    1.0s] in flight 2/3 |")


def test_a_followed_record_shows_its_writers_own_samples():
    live = stats()
    live.add(ClientSample(10**9, in_flight=3, tokens=250, interval_ns=10**9))
    out = io.StringIO()
    StatusTicker.for_writer(live, lambda: 10**9, out, 1.0).tick(123)
    assert out.getvalue().startswith("[    1.0s] in flight 3/3 | 250 tok/s |")


async def test_lines_come_at_each_multiple_of_the_interval_then_the_check_after_each():
    out, after = io.StringIO(), []
    ticker = StatusTicker(stats, lambda live, t_ns: (live.snapshot(t_ns), 0, False), out, 0.1,
                          after_each=lambda: after.append(out.getvalue().count("\n")))
    start = time.perf_counter_ns()
    ticking = asyncio.ensure_future(ticker.follow(lambda: time.perf_counter_ns() - start))
    await asyncio.sleep(0.35)
    ticking.cancel()
    assert [line[:10] for line in out.getvalue().splitlines()] == [
        "[    0.1s]", "[    0.2s]", "[    0.3s]"]
    assert after == [1, 2, 3]  # each check ran after its line
