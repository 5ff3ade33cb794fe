"""A request that went out on a pooled connection the server had just closed is sent again once.

llama.cpp's server closes idle keep-alive connections without ``Connection: close``; a request
sent on one at that moment gets no answer at all (httpx: "Server disconnected without sending
a response"). The loopback server's ``close_idle`` fault does that deterministically: a
request on a connection that already carried a generation request is read and left
unanswered, the connection closed. Attempts are counted on the server side, where every
request read is an emission with the client's ``X-Request-Id``.
"""

import asyncio
from collections import Counter

import httpx
import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, RequestSent
from soaktop.engine.backends.http import Timeouts, request_uuid
from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import BackendError
from soaktop.engine.events import RequestDone
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.session import Session

FAST = Schedule(ttft_ms=5, itl_ms=2, tokens=8, model="m")
SHORT = Timeouts(connect_s=2, first_token_s=0.5, between_tokens_s=0.3)
N = 8


def request(i: int) -> GenerationRequest:
    return GenerationRequest(i, Prompt(i, (1,), "hi"), 8, "m")


async def sequential(backend, count: int = N) -> list[list | BackendError]:
    """``count`` requests one after another on one started backend (one pooled client)."""
    results: list[list | BackendError] = []
    await backend.start()
    try:
        for i in range(count):
            try:
                results.append([item async for item in backend.stream(request(i))])
            except BackendError as exc:
                results.append(exc)
    finally:
        await backend.close()
    return results


def attempts(backend, emissions) -> list[int]:
    """How many times the server read each request, by its ``X-Request-Id``, in order."""
    seen = Counter(e.request_id for e in emissions)
    return [seen[request_uuid(backend.run_id, i)] for i in range(N)]


@pytest.mark.parametrize("make", [OpenAIBackend, OllamaBackend])
async def test_requests_on_connections_the_server_closed_are_sent_again_and_succeed(make):
    async with LoopbackServer(FAST, fault="close_idle") as server:
        backend = make(server.url, timeouts=SHORT)
        results = await asyncio.wait_for(sequential(backend), 20)
        wire = server.emissions()
    assert [type(r) for r in results] == [list] * N, results
    hung_up = [e for e in wire if e.fault == "close_idle"]
    # every request after the first goes out on the connection the one before it used,
    # which the server then closes unanswered: each of them is sent exactly twice
    assert attempts(backend, wire) == [1] + [2] * (N - 1)
    assert backend.resent == len(hung_up) == N - 1
    assert all(e.first_byte_ns is None for e in hung_up)  # nothing was ever answered there
    for items in results:  # each request's send stamp is one, and the answered attempt's
        assert sum(isinstance(i, RequestSent) for i in items) == 1
        assert sum(isinstance(i, Arrival) for i in items) == 8


async def test_a_resent_requests_latency_runs_from_its_answered_send_and_the_run_says_so(
        tmp_path):
    """Through a session: no errors, and the send the record keeps is the second attempt's:
    after the server read (and dropped) the first, before it read the second. The first
    resend is a mark in the record."""
    async with LoopbackServer(FAST, fault="close_idle") as server:
        done: list[RequestDone] = []
        config = RunConfig(backend="openai", model="m", concurrency=1, max_requests=6,
                           warmup_requests=0, output_tokens=8, url=server.url)
        backend = OpenAIBackend(server.url, timeouts=SHORT)
        session = Session(config, backend, record_path=tmp_path / "run.jsonl",
                          listeners=(lambda e: done.append(e) if isinstance(e, RequestDone)
                                     else None,))
        await asyncio.wait_for(session.run(), 20)
        wire = server.emissions()
    assert len(done) == 6 and all(d.ok for d in done), [d.error_class for d in done]
    assert backend.resent == 5
    for d in done[1:]:
        rid = request_uuid(backend.run_id, d.request_id)
        dropped = next(e for e in wire if e.request_id == rid and e.fault == "close_idle")
        answered = next(e for e in wire if e.request_id == rid and e.fault is None)
        sent_ns = d.sent_ns + session._origin_ns  # the record's send, on the server's clock
        assert dropped.received_ns < sent_ns < answered.received_ns
        assert d.arrivals_us[0] * 1000 >= answered.chunks_ns[0] - sent_ns - 1_000_000
    record = (tmp_path / "run.jsonl").read_text()
    assert record.count("sent again once") == 1


async def test_a_server_that_hangs_up_on_every_request_fails_it_after_one_resend():
    async with LoopbackServer(FAST, fault="hang_up") as server:
        backend = OpenAIBackend(server.url, timeouts=SHORT)
        results = await asyncio.wait_for(sequential(backend), 20)
        wire = server.emissions()
    assert all(isinstance(r, BackendError) and r.error_class == "connection_reset"
               for r in results), results
    tries = attempts(backend, wire)
    # the first request went out on the connection start-up used: stale, so sent again
    # (on a new one, since the set-up calls shared one), and that answered nothing either
    assert tries[0] == 2
    # the rest go out on new connections (the server closed each one): a new connection
    # that ends unanswered is the server failing, never sent again
    assert tries[1:] == [1] * (N - 1)
    assert backend.resent == 1


def counting(exc: Exception):
    """A transport that raises ``exc`` for every request, and the list of its calls."""
    calls: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        raise exc

    return httpx.MockTransport(handler), calls


@pytest.mark.parametrize("exc, error_class, sends", [
    (httpx.RemoteProtocolError("Server disconnected without sending a response."),
     "connection_reset", 2),
    (httpx.ReadError("reset by peer"), "connection_reset", 2),
    (httpx.WriteError("broken pipe"), "connection_reset", 2),
    (httpx.ConnectError("connection refused"), "connect_refused", 1),
    (httpx.ConnectTimeout("timed out"), "connect_timeout", 1),
    (httpx.ReadTimeout("timed out"), "read_timeout", 1),
])
async def test_only_a_broken_connection_before_any_answer_is_sent_again(exc, error_class,
                                                                         sends):
    transport, calls = counting(exc)
    backend = OpenAIBackend("http://server.test", model="m", timeouts=SHORT,
                            transport=transport)
    backend._client = backend._new_client()  # no start(): its probe would fail the same way
    try:
        with pytest.raises(BackendError) as info:
            [item async for item in backend.stream(request(0))]
    finally:
        await backend.close()
    assert info.value.error_class == error_class
    assert len(calls) == sends
    # the resend is not a connect failure: nothing is held back for it
    assert not info.value.retry_after_s if error_class == "connection_reset" else True


async def test_a_connection_broken_after_the_answer_began_is_not_sent_again():
    """``reset`` breaks the stream after three chunks, on the connection start-up used:
    tokens have arrived, so sending it again would count the request twice."""
    async with LoopbackServer(FAST, fault="reset") as server:
        backend = OpenAIBackend(server.url, timeouts=SHORT)
        results = await asyncio.wait_for(sequential(backend, 2), 20)
        wire = server.emissions()
    assert all(isinstance(r, BackendError) and r.error_class == "connection_reset"
               for r in results), results
    assert [e.request_id for e in wire] == [request_uuid(backend.run_id, i) for i in range(2)]
    assert backend.resent == 0


async def test_a_dead_server_is_not_asked_twice():
    """The server is gone between start-up and the request: the pooled connection is dead
    and so is the port. One resend on a new connection, refused: the refusal is what is
    reported, and it backs off as refusals do."""
    server = LoopbackServer(FAST)
    await server.start()
    backend = OpenAIBackend(server.url, timeouts=SHORT)
    await backend.start()
    await server.stop()
    try:
        with pytest.raises(BackendError) as info:
            [item async for item in backend.stream(request(0))]
    finally:
        await backend.close()
    assert info.value.error_class == "connect_refused"
    assert info.value.retry_after_s and info.value.retry_after_s > 0
