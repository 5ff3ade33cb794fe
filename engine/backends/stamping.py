"""A network layer for httpx that stamps bytes when they reach the event loop, not later.

Why: httpx delivers a chunk to soaktop several event-loop hops after the socket had it (the
protocol's ``data_received`` wakes a waiter, whose task step runs httpcore, which runs h11,
which hands bytes up). Under load each hop can wait behind a burst of other work, and a
timestamp taken at the top inherits every wait. This stream stamps each read in
``data_received``, the first Python code to see the bytes, and each write right after
``transport.write`` handed the request to the kernel. The backends read both stamps back
through ``response.extensions["network_stream"]``.

Plain TCP only: ``https://`` URLs keep httpx's own network layer (and its later stamps).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Any

import httpcore
import httpx


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.perf_counter_ns(), data))
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class StampedStream(httpcore.AsyncNetworkStream):
    """``last_read_ns``: arrival of the newest bytes handed out; ``last_write_ns``: the newest
    bytes handed to the kernel."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self.last_read_ns: int | None = None
        self.last_write_ns: int | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        while not p.chunks and not p.closed:
            try:
                await asyncio.wait_for(p.wait(), timeout)
            except asyncio.TimeoutError:
                raise httpcore.ReadTimeout("read timed out") from None
        if p.chunks:
            t_ns, data = p.chunks.popleft()
            if len(data) > max_bytes:
                p.chunks.appendleft((t_ns, data[max_bytes:]))
                data = data[:max_bytes]
            self.last_read_ns = t_ns
            return data
        if p.error is not None:
            raise httpcore.ReadError(str(p.error) or type(p.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        transport = self._protocol.transport
        if self._protocol.closed or transport is None or transport.is_closing():
            raise httpcore.WriteError("connection closed")
        if buffer:
            transport.write(buffer)
            self.last_write_ns = time.perf_counter_ns()

    async def aclose(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS goes through httpx's own network layer")

    def get_extra_info(self, info: str) -> Any:
        transport = self._protocol.transport
        if transport is None:
            return None
        if info == "is_readable":
            return self._protocol.closed or bool(self._protocol.chunks)
        if info in ("client_addr", "server_addr"):
            return transport.get_extra_info("sockname" if info == "client_addr" else "peername")
        return transport.get_extra_info(info)


class StampingBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port, local_addr=local), timeout)
        except asyncio.TimeoutError:
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = protocol.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return StampedStream(protocol)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported here")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class StampingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on :class:`StampingBackend`.

    httpx does not take a network backend, so the pool it built is replaced by an equal one
    on ours; the rest (request and response mapping, errors) stays httpx's.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=StampingBackend(),
        )


def arrival_ns(response: httpx.Response) -> int:
    """When the newest bytes of ``response`` reached the event loop (now, if unknown)."""
    stream = response.extensions.get("network_stream")
    stamp = getattr(stream, "last_read_ns", None)
    return stamp if stamp is not None else time.perf_counter_ns()


def sent_ns(response: httpx.Response) -> int | None:
    """When the request's last bytes were handed to the kernel, if the stream knows."""
    return getattr(response.extensions.get("network_stream"), "last_write_ns", None)
