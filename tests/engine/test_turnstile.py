"""The turnstile lets one waiter through per event-loop iteration, in order, and a wave of
expensive sends through a session no longer stalls the loop for the whole wave."""

import asyncio
import time

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.events import RequestDone
from soaktop.engine.load.turnstile import Turnstile


class Iterations:
    """Counts event-loop iterations: a callback that schedules itself runs once in each."""

    def __init__(self):
        self.n = 0
        self.longest_s = 0.0
        self._last = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self):
        now = time.perf_counter()
        self.longest_s = max(self.longest_s, now - self._last)
        self._last = now
        self.n += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self):
        self._handle.cancel()


async def test_one_waiter_per_iteration_first_come_first_served():
    turnstile = Turnstile()
    iterations = Iterations()
    passed = []

    async def through(name):
        await turnstile.turn()
        passed.append((name, iterations.n))

    await asyncio.gather(*(through(i) for i in range(6)))
    iterations.stop()
    assert [name for name, _ in passed] == list(range(6))
    seen = [n for _, n in passed]
    assert all(b > a for a, b in zip(seen, seen[1:]))  # never two in one iteration
    assert turnstile.waiting == 0


async def test_a_waiter_cancelled_in_line_gives_up_its_turn():
    turnstile = Turnstile()
    passed = []

    async def through(name):
        await turnstile.turn()
        passed.append(name)

    tasks = [asyncio.ensure_future(through(i)) for i in range(4)]
    await asyncio.sleep(0)  # all four in line
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert passed == [0, 2, 3]
    await asyncio.wait_for(turnstile.turn(), 1)  # and the line still moves


class CostlySends(FakeBackend):
    """Each send costs the client 2 ms of CPU before its first await, as httpx's does 0.3-0.5."""

    async def stream(self, request):
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        async for item in super().stream(request):
            yield item


async def test_a_wave_of_sends_goes_out_one_per_iteration(make_session):
    # 40 requests due at once, 2 ms each: in one iteration that would hold the loop 80 ms
    session, _ = make_session(CostlySends(ttft_s=0.05, itl_s=0.01), concurrency=40,
                              output_tokens=3, max_requests=40, warmup_requests=0)
    run = asyncio.ensure_future(session.run())
    await session.started.wait()  # the clock runs; the 40 are launched just after this
    iterations = Iterations()
    await run
    iterations.stop()
    assert iterations.longest_s < 0.02, f"the loop stood still {iterations.longest_s * 1e3:.0f} ms"


class EndsNeverGetTheirTurn(Turnstile):
    """Sends pass at once; a stream's end waits in line until the run is stopped."""

    def __init__(self):
        super().__init__()
        self.ends_waiting = asyncio.Event()

    async def turn(self):
        task = asyncio.current_task()
        if getattr(task, "sent", False):
            self.ends_waiting.set()
            await asyncio.Event().wait()
        task.sent = True


async def test_a_request_that_ended_in_line_when_the_run_stops_is_kept_as_it_ended(make_session):
    session, events = make_session(FakeBackend(ttft_s=0.001, itl_s=0.001), concurrency=1,
                                   output_tokens=3, warmup_requests=0)
    session._turnstile = turnstile = EndsNeverGetTheirTurn()
    run = asyncio.ensure_future(session.run())
    await asyncio.wait_for(turnstile.ends_waiting.wait(), 5)
    session.stop()
    await asyncio.wait_for(run, 5)
    [done] = events.of(RequestDone)
    assert done.finish_reason == "length" and done.ok
    assert len(done.arrivals_us) == 3
