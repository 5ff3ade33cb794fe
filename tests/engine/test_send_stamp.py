"""The send stamp can never fall after the answer: it is taken before the call that hands the
request's last bytes to the kernel. A fast server answers while the client thread is still
on its way back from send() (preempted on a loaded machine); a stamp taken after the call then
came after the answer's kernel stamp, and TTFT read negative (seen against llama-server)."""

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
    sent = next(i.t_ns for i in items if isinstance(i, RequestSent))
    first = next(i.t_ns for i in items if isinstance(i, Arrival))
    # the answer came about 1 ms after the request left, long before send() returned: the
    # stamp taken before the call keeps TTFT positive and near the server's 1 ms, where one
    # taken after the call would read about -49 ms
    assert 0 < first - sent < PREEMPTED_S * 1e9 / 2
