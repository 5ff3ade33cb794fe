"""A backend with a schedule you set: for tests and for trying the UI without a model.

Each request waits ``ttft_s``, then emits ``max_tokens`` tokens ``itl_s`` apart (in chunks of
``chunk`` tokens), stamping each arrival when it is emitted. ``fail_every=k`` makes every k-th
request (by id) fail with ``error_class``. ``max_concurrent`` models a server that can only
process that many requests at once (the rest queue for a slot), so throughput plateaus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from soaktop.engine.backends.base import Arrival, Backend, GenerationRequest, StreamEnd
from soaktop.engine.errors import BackendError


class FakeBackend(Backend):
    kind = "fake"

    def __init__(
        self,
        ttft_s: float = 0.01,
        itl_s: float = 0.005,
        chunk: int = 1,
        fail_every: int = 0,
        error_class: str = "fake_error",
        max_concurrent: int | None = None,
    ) -> None:
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.chunk = chunk
        self.fail_every = fail_every
        self.error_class = error_class
        self.max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None
        self.closed = False

    async def start(self) -> None:
        if self.max_concurrent is not None:
            self._slots = asyncio.Semaphore(self.max_concurrent)

    async def close(self) -> None:
        self.closed = True

    async def models(self) -> list[str]:
        return ["fake"]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Arrival | StreamEnd]:
        async with self._slots or contextlib.nullcontext():
            async for item in self._generate(request):
                yield item

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Arrival | StreamEnd]:
        await asyncio.sleep(self.ttft_s)
        if self.fail_every and request.request_id % self.fail_every == self.fail_every - 1:
            raise BackendError(f"request {request.request_id} failed on purpose", self.error_class)
        sent = 0
        while sent < request.max_tokens:
            if sent:
                await asyncio.sleep(self.itl_s * self.chunk)
            n = min(self.chunk, request.max_tokens - sent)
            sent += n
            yield Arrival(t_ns=time.perf_counter_ns(), tokens=n,
                          text="x " * n if request.want_text else "")
        yield StreamEnd("length")
