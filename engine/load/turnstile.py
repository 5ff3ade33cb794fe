"""One heavy step per event-loop iteration, so that a wave of them cannot stall the loop.

Why: asyncio runs, in one iteration, every callback that was ready when the iteration began.
When a server ends many streams at once (fixed output lengths at concurrency 64 do that every
request lifetime), 64 requests wind down and 64 new ones go out in the same iteration: a send
is a fraction of a millisecond of Python (the prompt, httpx's request, the pool, h11) and so is
an end, so the loop stands still for tens of milliseconds, and everything else ready then
(another stream's chunk, the lag probe, the next send) waits behind the whole wave.

Through a turnstile those steps go one per iteration, in the order they came; the loop polls
its sockets between them and runs whatever else is ready. The wave takes the same CPU, but no
other callback waits longer than one step. How long a send waited for its turn is still
counted (the session measures send lateness from when the request was due).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turnstile:
    """``await turnstile.turn()`` returns in a later iteration of the loop, one caller per
    iteration, first come first served. A caller cancelled while waiting gives up its turn."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._releasing = False

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append(future)
        if not self._releasing:
            self._releasing = True
            loop.call_soon(self._release, loop)
        await future

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        # The released caller resumes in the next iteration, and so does this callback, which
        # then releases the one after: one caller an iteration.
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():  # done: cancelled while it waited
                future.set_result(None)
                break
        if self._waiting:
            loop.call_soon(self._release, loop)
        else:
            self._releasing = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)
