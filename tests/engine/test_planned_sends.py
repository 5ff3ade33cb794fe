"""A planned send (an open loop's, a trace's) leaves at its time, never before it.

asyncio's timers wake in whole milliseconds (epoll), and httpx spends 0.3-0.5 ms of Python
between ``send`` and the body's write; so an open loop starts each request
``PREPARE_NS`` early, an HTTP backend writes the headers then and holds the body until the
planned moment (:class:`~soaktop.engine.backends.http.HeldBody`), and a backend that cannot
hold is called at the moment itself (:func:`soaktop.engine.wakeups.until`). How close to the
moment the sends land is bench/trace_timing.py's to measure; these tests hold what can be
asserted on a busy machine: the order, and never early.
"""

import asyncio
import json
import time

import pytest

from soaktop.engine.backends.base import (
    Arrival,
    GenerationRequest,
    Prompt,
    RequestSent,
    StreamEnd,
)
from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import RequestDone
from soaktop.engine.load.loops import PREPARE_NS
from soaktop.engine.load.workers import WorkerPool
from soaktop.engine.session import Session
from soaktop.engine.wakeups import until

AHEAD_NS = 300_000_000  # the planned moment, this far ahead of the call


@pytest.fixture(params=["timerfd", "asyncio"])
def waker(request, monkeypatch):
    """until() on Linux's timerfd, and on asyncio's timer where there is none."""
    from soaktop.engine import wakeups

    if request.param == "asyncio":
        monkeypatch.setattr(wakeups, "_LIBC", None)
    else:
        assert wakeups._LIBC is not None  # this test machine is Linux
    return request.param


async def test_until_never_returns_before_its_time_and_a_cancelled_wait_wakes_no_other(waker):
    start = time.perf_counter_ns()
    times = [start + k * 1_000_000 for k in (30, 2, 17, 9, 9, 25, 1, 40)]
    woke: dict[int, int] = {}

    async def wait(n: int, t_ns: int) -> None:
        await until(t_ns)
        woke[n] = time.perf_counter_ns()

    tasks = [asyncio.ensure_future(wait(n, t)) for n, t in enumerate(times)]
    tasks[3].cancel()  # 9 ms, and another waits for the same moment
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(woke) == [0, 1, 2, 4, 5, 6, 7]
    assert all(woke[n] >= times[n] for n in woke)
    assert sorted(woke, key=woke.get) == sorted(woke, key=lambda n: times[n])


async def test_a_wait_planned_sooner_than_those_waiting_does_not_wait_for_them(waker):
    """The timer is re-armed for an earlier moment: a 5 ms wait added while a 400 ms one
    waits wakes long before 400 ms (200 ms of slack for a busy machine)."""
    start = time.perf_counter_ns()
    later = asyncio.ensure_future(until(start + 400_000_000))
    await asyncio.sleep(0)  # the 400 ms wait is planned first
    await until(start + 5_000_000)
    assert time.perf_counter_ns() - start < 200_000_000
    await later
    await until(start - 1)  # a moment past: at once
    assert time.perf_counter_ns() - start < 10**9


def _answer() -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    body = (f"data: {json.dumps(chunk)}\n\n" "data: [DONE]\n\n").encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Server:
    """A bare HTTP/1.1 server that stamps when each request's headers and body arrived."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers_at = time.perf_counter_ns()
                lines = head.decode().split("\r\n")
                fields = {k.lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in lines[1:] if line)}
                if lines[0].startswith("GET"):
                    listing = json.dumps({"data": [{"id": "m"}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(listing)).encode()
                                 + b"\r\n\r\n" + listing)
                    continue
                body = await reader.readexactly(int(fields["content-length"]))
                self.requests.append({"headers_at": headers_at, "fields": fields,
                                      "body_at": time.perf_counter_ns(), "body": body})
                writer.write(_answer())
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _request(send_at_ns: int | None) -> GenerationRequest:
    return GenerationRequest(0, Prompt(0, (), "a b ü"), 4, "m", send_at_ns=send_at_ns)


async def test_an_http_backend_writes_the_headers_at_once_and_the_body_at_its_time():
    server = _Server()
    async with server as url:
        backend = OpenAIBackend(url, model="m")
        await backend.start()
        try:
            called = time.perf_counter_ns()
            send_at = called + AHEAD_NS
            items = [item async for item in backend.stream(_request(send_at))]
            after = [item async for item in backend.stream(_request(None))]
        finally:
            await backend.close()
    held, plain = server.requests
    # the headers went at once, the body at its time and not before
    assert held["headers_at"] - called < AHEAD_NS / 2
    assert held["body_at"] >= send_at
    [sent] = [item.t_ns for item in items if isinstance(item, RequestSent)]
    assert send_at <= sent < held["body_at"]
    assert [type(i) for i in items if not isinstance(i, RequestSent)] == [Arrival, StreamEnd]
    # the same request as an unplanned one: the same JSON bytes, a length and no chunking
    assert held["body"] == plain["body"]
    assert json.loads(held["body"])["messages"][0]["content"] == "a b ü"
    assert held["fields"]["content-type"] == plain["fields"]["content-type"]
    assert held["fields"]["content-length"] == str(len(held["body"]))
    assert "transfer-encoding" not in held["fields"]
    assert any(isinstance(i, Arrival) for i in after)


async def test_a_worker_process_holds_a_planned_body_until_its_time():
    server = _Server()
    async with server as url:
        pool = WorkerPool("openai", {"url": url, "model": "m"}, 1)
        await pool.start()
        try:
            called = time.perf_counter_ns()
            send_at = called + AHEAD_NS
            items = [item async for item in pool.stream(_request(send_at))]
        finally:
            await pool.close()
    [seen] = server.requests
    assert seen["headers_at"] - called < AHEAD_NS / 2  # the worker started it at once
    assert seen["body_at"] >= send_at
    assert min(i.t_ns for i in items if isinstance(i, RequestSent)) >= send_at


class _Recording(FakeBackend):
    """A fake that notes when each request reached it, on the session's clock."""

    def __init__(self, holds: bool) -> None:
        super().__init__(ttft_s=0.001, itl_s=0.001)
        self.holds_sends = holds
        self.called: dict[int, tuple[int, int | None]] = {}
        self.session: Session | None = None

    async def stream(self, request):
        self.called[request.request_id] = (self.session.now_ns(), request.send_at_ns)
        async for item in super().stream(request):
            yield item


async def _open_loop(holds: bool) -> tuple[_Recording, Session, dict[int, int]]:
    backend = _Recording(holds)
    events: list = []
    config = RunConfig(backend="fake", rate=40.0, duration_s=0.5, output_tokens=2,
                       telemetry=())
    session = Session(config, backend, listeners=(events.append,))
    backend.session = session
    await session.run()
    dues = {e.request_id: e.sent_ns for e in events if isinstance(e, RequestDone)}
    assert len(dues) >= 10
    return backend, session, dues


async def test_a_backend_that_cannot_hold_is_called_at_the_planned_time_not_before():
    backend, _, dues = await _open_loop(holds=False)
    for rid, due in dues.items():
        at, send_at = backend.called[rid]
        assert send_at is None and at >= due


async def test_a_backend_that_holds_is_called_early_and_told_the_planned_time():
    backend, session, dues = await _open_loop(holds=True)
    early = 0
    for rid, due in dues.items():
        at, send_at = backend.called[rid]
        assert send_at == due + session.origin_ns  # the planned moment, on perf_counter_ns
        assert at >= due - PREPARE_NS
        early += at < due
    assert early > len(dues) / 2  # handed over ahead of the moment, to prepare
