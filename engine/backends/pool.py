"""httpcore's connection pool, with its bookkeeping pass made linear in the connections.

Why: httpcore 1.0's pool runs ``_assign_requests_to_connections`` at every request start and
every response close, and that pass is quadratic in the pool's size: for each idle connection
it builds a list of all connections again only to take its length (encode/httpcore#1035, open
upstream; httpx2 rewrote the pass the same way). A closed loop at concurrency 64 on a server
that ends every stream together (fixed output lengths do that) closes 64 responses and opens
64 requests in one event-loop iteration, with up to 64 idle connections at once: measured on
2 cores, the pass took 1.05 s of the 20 s run, about 0.9 ms a call, and the loop stood still
for 20-40 ms each wave. Everything waiting on the loop (the lag probe, other streams' reads,
the next sends) waited that long too.

The pass here keeps httpcore's behaviour for soaktop's use, HTTP/1.1 to one origin: drop closed
connections, close expired ones and idle ones beyond ``max_keepalive_connections`` (which
httpcore's pass counts wrongly, as all connections, see the issue above), then give each queued
request an idle connection to its origin, else a new connection while under
``max_connections``, else close an idle one to another origin and open one. Unlike httpcore's
pass, one idle connection goes to one queued request per pass, not to every one of them (the
losers would only fail with ``ConnectionNotAvailable`` and queue again), and a response that
closes while nobody waits for a connection skips the walk (the tidying it would do happens at
the next request's pass, before a connection is picked). Everything else is httpcore's.
Measured on the same run: the pass went from p50 260 us / p90 715 us a call to 95 / 143, and
then half the calls were gone.
"""

from __future__ import annotations

import httpcore


class LinearPool(httpcore.AsyncConnectionPool):
    """An ``httpcore.AsyncConnectionPool`` for HTTP/1.1 whose assignment pass is O(n)."""

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        if not any(request.is_queued() for request in self._requests):
            # A response closed and nobody waits for a connection: the walk below would
            # only tidy up, which the next request's pass does before it picks one.
            return []
        closing: list[httpcore.AsyncConnectionInterface] = []
        kept: list[httpcore.AsyncConnectionInterface] = []
        idle = 0
        for connection in self._connections:  # oldest first, as httpcore walks them
            if connection.is_closed():
                continue
            if connection.has_expired():
                closing.append(connection)
                continue
            if connection.is_idle():
                if idle >= self._max_keepalive_connections:
                    closing.append(connection)
                    continue
                idle += 1
            kept.append(connection)
        self._connections[:] = kept

        queued = [request for request in self._requests if request.is_queued()]
        available = [c for c in kept if c.is_available()]  # for HTTP/1.1: the idle ones
        for pool_request in queued:
            origin = pool_request.request.url.origin
            reuse = next((c for c in available if c.can_handle_request(origin)), None)
            if reuse is not None:
                available.remove(reuse)  # one request per idle connection
                pool_request.assign_to_connection(reuse)
            elif len(self._connections) < self._max_connections:
                fresh = self.create_connection(origin)
                self._connections.append(fresh)
                pool_request.assign_to_connection(fresh)
            elif available:  # full, with idle connections to other origins: make room
                spare = available.pop(0)
                self._connections.remove(spare)
                closing.append(spare)
                fresh = self.create_connection(origin)
                self._connections.append(fresh)
                pool_request.assign_to_connection(fresh)
            else:
                break  # nothing to give: the rest wait for a connection to free up
        return closing
