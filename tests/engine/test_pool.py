"""The connection pool's bookkeeping pass: httpcore's decisions, in linear time.

The pass is driven directly with stand-in connections whose state the test sets, as httpcore's
own pool tests do (in a running loop: assigning a connection sets an async event); a real
run's reuse of connections is checked against a loopback server.
"""

import asyncio

import httpcore

from soaktop.engine.backends.base import GenerationRequest
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.backends.pool import LinearPool
from soaktop.engine.load.prompts import PromptSet
from soaktop.engine.loopback import LoopbackServer, Schedule

A = httpcore.URL("http://a:1/").origin
B = httpcore.URL("http://b:1/").origin


class Connection:
    """A stand-in with httpcore's connection interface; counts the state queries made."""

    queries = 0

    def __init__(self, origin, state="idle", expired=False):
        self.origin, self.state, self.expired = origin, state, expired

    def _ask(self):
        Connection.queries += 1

    def can_handle_request(self, origin):
        return origin == self.origin

    def is_available(self):
        self._ask()
        return self.state == "idle"

    def is_idle(self):
        self._ask()
        return self.state == "idle"

    def is_closed(self):
        self._ask()
        return self.state == "closed"

    def has_expired(self):
        self._ask()
        return self.expired

    def __repr__(self):
        return f"Connection({self.origin.host!r}, {self.state})"


class Pool(LinearPool):
    def __init__(self, connections, **limits):
        super().__init__(**limits)
        self._connections = list(connections)

    def create_connection(self, origin):
        return Connection(origin, state="new")

    def queue(self, url="http://a:1/x"):
        request = httpcore._async.connection_pool.AsyncPoolRequest(httpcore.Request("POST", url))
        self._requests.append(request)
        return request


async def test_an_idle_connection_serves_one_queued_request_and_the_next_gets_a_new_one():
    idle = Connection(A)
    pool = Pool([Connection(A, "active"), idle], max_connections=None)
    first, second = pool.queue(), pool.queue()
    assert pool._assign_requests_to_connections() == []
    assert first.connection is idle  # reused, not a second connect
    assert second.connection is not idle and second.connection.state == "new"
    assert len(pool._connections) == 3


async def test_closed_connections_go_and_expired_or_surplus_idle_ones_are_closed():
    closed, expired = Connection(A, "closed"), Connection(A, expired=True)
    kept_idle, surplus, active = Connection(A), Connection(A), Connection(A, "active")
    pool = Pool([closed, expired, kept_idle, surplus, active], max_connections=None,
                max_keepalive_connections=1)
    waiting = pool.queue()
    closing = pool._assign_requests_to_connections()
    assert closing == [expired, surplus]  # the oldest idle one is kept, as httpcore keeps it
    assert waiting.connection is kept_idle
    assert pool._connections == [kept_idle, active]


async def test_a_full_pool_closes_an_idle_connection_to_another_origin_to_make_room():
    other, busy = Connection(B), Connection(A, "active")
    pool = Pool([other, busy], max_connections=2)
    waiting = pool.queue()
    assert pool._assign_requests_to_connections() == [other]
    assert waiting.connection.state == "new" and waiting.connection.origin == A
    assert other not in pool._connections


async def test_a_full_pool_with_nothing_idle_leaves_the_request_waiting():
    pool = Pool([Connection(A, "active"), Connection(B, "active")], max_connections=2)
    waiting = pool.queue()
    assert pool._assign_requests_to_connections() == []
    assert waiting.is_queued()


async def test_a_response_closing_with_nobody_waiting_costs_no_walk():
    pool = Pool([Connection(A) for _ in range(64)], max_connections=None)
    Connection.queries = 0
    assert pool._assign_requests_to_connections() == []
    assert Connection.queries == 0


async def test_the_pass_is_linear_in_the_connections():
    """httpcore 1.0's own pass asks every connection's state again for each idle one: at 64
    idle connections that is over 4,000 queries a pass (tens of ms for a wave of them); this
    one asks each connection a bounded number of times."""
    for n in (64, 512):
        pool = Pool([Connection(A) for _ in range(n)], max_connections=None)
        pool.queue()
        Connection.queries = 0
        pool._assign_requests_to_connections()
        assert Connection.queries <= 4 * n


async def test_a_run_reuses_its_connections():
    server = LoopbackServer(Schedule(ttft_ms=1, itl_ms=1, tokens=3, jitter_ms=0))
    await server.start()
    backend = OpenAIBackend(server.url, model="loopback")
    await backend.start()
    try:
        for wave in range(3):  # 8 at once, three times over: 8 connections, not 24
            await asyncio.gather(*(
                _drain(backend, GenerationRequest(8 * wave + i, _prompt(), 3, "loopback"))
                for i in range(8)))
        pool = backend._client._transport._pool
        assert isinstance(pool, LinearPool)
        assert len(pool.connections) == 8
        assert all(c.is_idle() for c in pool.connections)
    finally:
        await backend.close()
        await server.stop()


async def _drain(backend, request):
    return [item async for item in backend.stream(request)]


def _prompt():
    return PromptSet(0, 4, 8, 0).prompt(0)


async def test_between_tidyings_an_expired_idle_connection_is_closed_not_handed_out():
    pool = Pool([Connection(A)], max_connections=None)
    pool.queue()
    pool._assign_requests_to_connections()  # tidied now: the next walk is 0.1 s away
    server_closed, fresh_idle = Connection(A, expired=True), Connection(A)
    pool._connections[:] = [server_closed, fresh_idle]
    waiting = pool.queue()
    assert pool._assign_requests_to_connections() == [server_closed]
    assert waiting.connection is fresh_idle
    assert pool._connections == [fresh_idle]
