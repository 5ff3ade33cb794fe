"""httpcore's connection pool, with its bookkeeping pass made linear in the connections.

Why: httpcore 1.0's pool runs ``_assign_requests_to_connections`` at every request start and
every response close, and that pass is quadratic in the pool's size: for each idle connection
it builds a list of all connections again only to take its length (encode/httpcore#1035, open
upstream). A closed loop at concurrency 64 against a server that ends every stream together
(fixed output lengths do that) closes 64 responses and opens 64 requests in one event-loop
iteration, and the loop stood still for tens of milliseconds in that pass: everything waiting
on it (the lag probe, other streams' reads, the next sends) waited that long too.

The pass here keeps httpcore's behaviour for soaktop's use, HTTP/1.1 to one origin: drop closed
connections, close expired ones and idle ones beyond ``max_keepalive_connections`` (which
httpcore's pass counts wrongly, as all connections, see the issue above), then give each queued
request an idle connection to its origin, else a new connection while under
``max_connections``, else close an idle one to another origin and open one. Unlike httpcore's
pass, one idle connection goes to one queued request per pass, not to every one of them (the
losers would only fail with ``ConnectionNotAvailable`` and queue again); a response that
closes while nobody waits for a connection skips the pass, and the tidying walk (closed,
expired and surplus connections) runs at most ten times a second, while a connection about to
be reused is always checked for expiry first (a server that closed an idle connection must not
get a request on it). Everything else is httpcore's. httpcore is pinned to the 1.0 series,
whose pool has the method this overrides.
"""

from __future__ import annotations

import time

import httpcore


class LinearPool(httpcore.AsyncConnectionPool):
    """An ``httpcore.AsyncConnectionPool`` for HTTP/1.1 whose assignment pass is O(n), and
    usually less: the tidying walk runs at most every ``TIDY_S``, and a request takes the
    first idle connection to its origin that has not expired."""

    TIDY_S = 0.1  # keep-alive expiry is counted in seconds: tidying 10 times a second is ample
    _tidy_at = 0.0

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        if not any(request.is_queued() for request in self._requests):
            # A response closed and nobody waits for a connection: nothing to hand out, and
            # the tidying can wait for the next request's pass.
            return []
        now = time.monotonic()
        closing: list[httpcore.AsyncConnectionInterface] = []
        if now >= self._tidy_at:
            self._tidy_at = now + self.TIDY_S
            closing = self._tidy()
        taken: set[httpcore.AsyncConnectionInterface] = set()
        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            reuse = self._idle_to(origin, taken, closing)
            if reuse is not None:
                taken.add(reuse)  # one request per idle connection
                pool_request.assign_to_connection(reuse)
                continue
            if len(self._connections) >= self._max_connections:
                # full: close an idle connection to another origin to make room, if any
                spare = next((c for c in self._connections
                              if c not in taken and c.is_available()), None)
                if spare is None:
                    break  # nothing to give: the rest wait for a connection to free up
                self._connections.remove(spare)
                closing.append(spare)
            fresh = self.create_connection(origin)
            self._connections.append(fresh)
            pool_request.assign_to_connection(fresh)
        return closing

    def _idle_to(self, origin: httpcore.Origin, taken: set[httpcore.AsyncConnectionInterface],
                 closing: list[httpcore.AsyncConnectionInterface]
                 ) -> httpcore.AsyncConnectionInterface | None:
        """The oldest idle connection to ``origin`` not yet handed out in this pass; expired
        ones met on the way (the server closed them) are closed, never handed out."""
        found, expired = None, []
        for connection in self._connections:
            if connection in taken or not connection.is_available():
                continue
            if not connection.can_handle_request(origin):
                continue
            if connection.has_expired():
                expired.append(connection)
                continue
            found = connection
            break
        for connection in expired:
            self._connections.remove(connection)
        closing.extend(expired)
        return found

    def _tidy(self) -> list[httpcore.AsyncConnectionInterface]:
        """Drop closed connections; close expired ones and idle ones beyond the keep-alive
        limit (oldest kept, as httpcore keeps them). Returns those to close."""
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
        return closing
