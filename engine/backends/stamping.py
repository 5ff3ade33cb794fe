"""A network layer for httpx that knows when bytes arrived: from the kernel, not the loop.

Why: httpx delivers a chunk to soaktop several event-loop hops after the socket had it, and a
timestamp taken at the top inherits every hop's wait behind other work (bursts of new
requests stretch loop iterations to milliseconds). This stream reads its socket itself with
``recvmsg`` and asks Linux for the receive time of the bytes (``SO_TIMESTAMPNS``): the time
the kernel queued them, whatever the loop was doing. Where the option is refused (another
OS), the stamp is taken as the loop hands the socket over, which is still before httpcore,
h11 and soaktop's parsing. Writes are stamped right after ``send`` handed the request to the
kernel. The backends read both stamps through ``response.extensions["network_stream"]``.

Plain TCP only: ``https://`` URLs keep httpx's own network layer (and its later stamps).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from soaktop.engine.backends.pool import LinearPool

SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
_READ_SIZE = 256 * 1024


#: Told of each kernel-stamped read: (read lag ns, gap since the stream's previous bytes ns).
ReadWatcher = Callable[[int, int], None]


class StampedStream(httpcore.AsyncNetworkStream):
    """``last_read_ns``: arrival of the newest bytes handed out; ``last_write_ns``: the newest
    bytes handed to the kernel, and ``last_write_start_ns`` the moment before that call. All
    ``perf_counter_ns`` readings.

    ``on_read`` hears of each kernel-stamped read how late it was (the kernel's receive
    stamp to ``recvmsg``) and how long after this socket's previous bytes its bytes came: a
    read has one stamp, so bytes that arrived apart but were read together all get the
    newest one's, and that happens only when a read is later than the gap between them."""

    def __init__(self, sock: socket.socket, kernel_stamps: bool,
                 on_read: ReadWatcher | None = None) -> None:
        self._sock = sock
        self.kernel_stamps = kernel_stamps
        self._on_read = on_read
        self._previous_ns: int | None = None
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._eof = False
        self._error: OSError | None = None
        self._waiter: asyncio.Future | None = None
        self.last_read_ns: int | None = None
        self.last_write_ns: int | None = None
        self.last_write_start_ns: int | None = None
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while not self._eof:
            try:
                if self.kernel_stamps:
                    data, ancillary, _, _ = self._sock.recvmsg(_READ_SIZE, _ANCILLARY)
                else:
                    data, ancillary = self._sock.recv(_READ_SIZE), []
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._error = exc
                self._finish_reading()
                break
            now = time.perf_counter_ns()
            if not data:
                self._finish_reading()
                break
            stamp = _kernel_stamp(ancillary, now)
            if stamp is None:
                stamp = now
            elif self._on_read is not None:
                previous, self._previous_ns = self._previous_ns, stamp
                self._on_read(now - stamp, stamp - previous if previous is not None else -1)
            self._chunks.append((stamp, data))
            if len(data) < _READ_SIZE:
                break
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish_reading(self) -> None:
        self._eof = True
        self._loop.remove_reader(self._sock.fileno())

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while not self._chunks and not self._eof:
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise httpcore.ReadTimeout("read timed out") from None
            finally:
                self._waiter = None
        if self._chunks:
            t_ns, data = self._chunks.popleft()
            if len(data) > max_bytes:
                self._chunks.appendleft((t_ns, data[max_bytes:]))
                data = data[:max_bytes]
            self.last_read_ns = t_ns
            return data
        if self._error is not None:
            raise httpcore.ReadError(str(self._error)) from self._error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        before = 0
        while view:
            before = time.perf_counter_ns()
            try:
                view = view[self._sock.send(view):]
            except (BlockingIOError, InterruptedError):
                await self._writable(timeout)
            except OSError as exc:
                raise httpcore.WriteError(str(exc)) from exc
        if buffer:
            self.last_write_ns = time.perf_counter_ns()
            # The bytes went to the kernel between these two readings. The later one is the
            # send stamp, but a thread preempted as send() returns takes it late, and a fast
            # server's answer can then bear an earlier kernel stamp (llama-server's tiny model
            # on a loaded machine: 55 requests of 825 read TTFT -50 us to -3 ms): the earlier
            # reading is what the send is moved back to then (soaktop.engine.backends
            # .http_backend).
            self.last_write_start_ns = before

    async def _writable(self, timeout: float | None) -> None:
        ready = self._loop.create_future()
        fd = self._sock.fileno()
        self._loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        except asyncio.TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        finally:
            self._loop.remove_writer(fd)

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            if not self._eof:
                self._loop.remove_reader(self._sock.fileno())
                self._eof = True
            self._sock.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS goes through httpx's own network layer")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":  # an idle keep-alive connection the server closed
            return self._eof or bool(self._chunks)
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        return None


def _kernel_stamp(ancillary: list[tuple[int, int, bytes]], now_ns: int) -> int | None:
    """The kernel's receive time on the ``perf_counter_ns`` clock, or None without one."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
            offset = time.time_ns() - time.perf_counter_ns()  # wall clock minus monotonic
            stamp = seconds * 1_000_000_000 + nanoseconds - offset
            # a wall clock stepped under us would give nonsense: trust only the plausible
            if now_ns - 1_000_000_000 < stamp <= now_ns + 1_000_000:
                return min(stamp, now_ns)
    return None


class StampingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, on_read: ReadWatcher | None = None) -> None:
        self.on_read = on_read

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            literal = ipaddress.ip_address(host)
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            targets = [(family, (host, port))]
        except ValueError:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            targets = [(info[0], info[4]) for info in infos]
        failure: OSError | None = None
        for family, address in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            except asyncio.TimeoutError:
                sock.close()
                raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from None
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            return StampedStream(sock, _enable_kernel_stamps(sock), self.on_read)
        # said in words: httpcore's pool re-raises "from None", dropping this cause
        refused = getattr(failure, "errno", None) == errno.ECONNREFUSED
        raise httpcore.ConnectError(("connection refused: " if refused else "") + str(failure)
                                    ) from failure

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported here")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _enable_kernel_stamps(sock: socket.socket) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


class StampingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on :class:`StampingBackend`.

    httpx does not take a network backend, so the pool it built is replaced by one on ours
    (httpcore's, with a linear bookkeeping pass: :mod:`soaktop.engine.backends.pool`); the rest
    (request and response mapping, errors) stays httpx's.
    """

    def __init__(self, limits: httpx.Limits, on_read: ReadWatcher | None = None) -> None:
        super().__init__(limits=limits)
        self._pool = LinearPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=StampingBackend(on_read),
        )


def arrival_ns(response: httpx.Response) -> int:
    """When the newest bytes of ``response`` reached the event loop (now, if unknown)."""
    stream = response.extensions.get("network_stream")
    stamp = getattr(stream, "last_read_ns", None)
    return stamp if stamp is not None else time.perf_counter_ns()


def sent_ns(response: httpx.Response) -> int | None:
    """When the request's last bytes were handed to the kernel, if the stream knows."""
    return getattr(response.extensions.get("network_stream"), "last_write_ns", None)


def sent_start_ns(response: httpx.Response) -> int | None:
    """The moment before the call that handed the request's last bytes to the kernel: the
    earliest they can have gone, if the stream knows."""
    return getattr(response.extensions.get("network_stream"), "last_write_start_ns", None)
