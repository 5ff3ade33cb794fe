"""The send stamp never falls after the answer. It is taken as send() returns; a fast server
can answer while the client thread is still on its way back from send() (preempted on a loaded
machine), and the answer's kernel stamp then came before the send stamp: TTFT read negative
(seen against llama-server). The send then moves back to the moment before the call."""

import socket
import sys
import time

import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, RequestSent
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.loopback import Schedule
from soaktop.engine.loopback.process import spawn

PREEMPTED_S = 0.05  # the client thread held up this long as send() returns


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel stamps: Linux only")
async def test_a_client_held_up_as_send_returns_still_stamps_before_the_answer(monkeypatch):
    real_send = socket.socket.send

    def held_up_send(self, data, *flags):
        sent = real_send(self, data, *flags)
        time.sleep(PREEMPTED_S)  # the bytes are out; the server answers meanwhile
        return sent

    # the server runs in a process of its own: only this process's sockets are held up
    with spawn(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as url:
        backend = OpenAIBackend(url, model="loopback")
        await backend.start()
        try:
            monkeypatch.setattr(socket.socket, "send", held_up_send)
            request = GenerationRequest(0, Prompt(0, (1, 2), "a b"), 2, "loopback")
            items = [item async for item in backend.stream(request)]
        finally:
            monkeypatch.undo()
            await backend.close()
    first_at = next(n for n, i in enumerate(items) if isinstance(i, Arrival))
    sent = [i.t_ns for i in items[:first_at] if isinstance(i, RequestSent)][-1]
    first = items[first_at].t_ns
    # the answer came about 1 ms after the request left, long before send() returned: the
    # stamp taken before the call keeps TTFT positive and near the server's 1 ms, where one
    # taken after the call would read about -49 ms
    assert 0 < first - sent < PREEMPTED_S * 1e9 / 2


async def test_a_request_not_held_up_is_stamped_once_as_send_returns():
    with spawn(Schedule(ttft_ms=5, itl_ms=0, tokens=2)) as url:
        backend = OpenAIBackend(url, model="loopback")
        await backend.start()
        try:
            request = GenerationRequest(0, Prompt(0, (1, 2), "a b"), 2, "loopback")
            items = [item async for item in backend.stream(request)]
        finally:
            await backend.close()
    sent = [i.t_ns for i in items if isinstance(i, RequestSent)]
    first = next(i.t_ns for i in items if isinstance(i, Arrival))
    assert len(sent) == 1 and 4_000_000 < first - sent[0] < 50_000_000  # the server's 5 ms


async def test_the_session_takes_a_corrected_send_stamp_for_its_latencies():
    """A second RequestSent before any arrival replaces the first: TTFT runs from it."""
    from soaktop.engine.backends.base import Backend, StreamEnd
    from soaktop.engine.config import RunConfig
    from soaktop.engine.events import RequestDone
    from soaktop.engine.session import Session

    class Corrected(Backend):
        kind = "fake"

        async def models(self):
            return ["m"]

        async def stream(self, request):
            now = time.perf_counter_ns()
            yield RequestSent(now + 3_000_000)  # stamped late, after the answer
            yield RequestSent(now)  # moved back
            yield Arrival(t_ns=now + 1_000_000, tokens=1, text="x")
            yield StreamEnd("length")

    events = []
    config = RunConfig(backend="fake", model="m", max_requests=3, warmup_requests=0,
                       concurrency=1, telemetry=())
    await Session(config, Corrected(), listeners=(events.append,)).run()
    done = [e for e in events if isinstance(e, RequestDone)]
    assert len(done) == 3 and all(900 <= d.arrivals_us[0] <= 1100 for d in done)
