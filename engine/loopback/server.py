"""The loopback server: HTTP/1.1 written by hand on asyncio streams.

No web framework, on purpose: faults need byte-level control (an RST in the middle of a chunked
body, a line of garbage between two events, a stream that stops without its terminator), and a
framework's per-request overhead would make the server, not the client under test, the thing
that is late at thousands of chunks a second. What is spoken: keep-alive connections, request
bodies by ``Content-Length``, and streamed responses with ``Transfer-Encoding: chunked``, one
HTTP chunk per SSE event or NDJSON line.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from soaktop.engine import __version__
from soaktop.engine.loopback.dcgm import GpuModel, SimulatedGpus
from soaktop.engine.loopback.schedule import Emission, Schedule
from soaktop.engine.loopback.shared import Shared, Spool, TokenLedger
from soaktop.engine.loopback.wire import (
    WIRES,
    Wire,
    ollama_show,
    ollama_tags,
    openai_models,
    words,
)

#: What ``/version`` and ``/api/version`` answer, as vLLM and Ollama tell theirs.
VERSION = f"loopback-{__version__}"
_STALL_S = 3600.0
_MALFORMED_JSON = b"{not json"
# No colon, so not ``field: value``; then a blank line, as if it ended an event.
_GARBAGE = b"%%% loopback garbage, not a field %%%\n\n"
_END = b"0\r\n\r\n"


class _BadRequest(Exception):
    """A request this server cannot parse; answered with 400 and the connection closed."""


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    body: bytes
    received_ns: int
    keep_alive: bool
    request_id: str | None = None
    #: Its connection already carried a generation request: a kept-alive one used again.
    reused: bool = False


@dataclass(slots=True)
class _Trace:
    """An :class:`Emission` while it is being made."""

    request: int
    path: str
    received_ns: int
    first_byte_ns: int | None = None
    chunks_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    status: int = 200
    fault: str | None = None
    request_id: str | None = None
    process: int = 0
    prompt: Any = None  # what the request asked with (text or chat messages), as received
    max_tokens: int | None = None
    #: When its schedule started: ``received_ns``, or later when it waited for one of
    #: ``max_active`` places (the server's queue).
    admitted_ns: int = 0

    def __post_init__(self) -> None:
        self.admitted_ns = self.admitted_ns or self.received_ns

    def freeze(self) -> Emission:
        return Emission(
            self.request, self.path, self.received_ns, self.first_byte_ns,
            tuple(self.chunks_ns), tuple(self.chunk_tokens), self.status, self.fault,
            self.request_id, self.process, self.prompt, self.max_tokens,
            None if self.admitted_ns == self.received_ns else self.admitted_ns,
        )


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on a connection, or ``None`` when the client closed it in between."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise _BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"not an HTTP/1.x request line: {request_line[:80]!r}")
    method, target, version = parts
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "transfer-encoding" in headers:
        raise _BadRequest("chunked request bodies are not supported; send Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise _BadRequest(f"bad Content-Length: {length!r}")
    body = await reader.readexactly(int(length))
    keep_alive = version == "HTTP/1.1" and headers.get("connection") != "close"
    return _Request(method, target.partition("?")[0], body, time.perf_counter_ns(), keep_alive,
                    headers.get("x-request-id"))


def _head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Server: soaktop-loopback"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_json(
    writer: asyncio.StreamWriter, status: int, body: Any, keep_alive: bool,
    headers: list[tuple[str, str]] | None = None,
) -> int:
    """Write a whole JSON response; returns when it was handed to the socket."""
    data = json.dumps(body).encode()
    head = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    writer.write(_head(status, head + (headers or []), keep_alive) + data)
    sent_ns = time.perf_counter_ns()
    await writer.drain()
    return sent_ns


async def _send_text(writer: asyncio.StreamWriter, text: str, keep_alive: bool) -> None:
    """Write a whole Prometheus text response."""
    data = text.encode()
    head = [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            ("Content-Length", str(len(data)))]
    writer.write(_head(200, head, keep_alive) + data)
    await writer.drain()


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> int:
    """Write one HTTP chunk; returns when it was handed to the socket (asyncio sends at once
    when nothing is queued before it, which is the case unless the client stops reading)."""
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    sent_ns = time.perf_counter_ns()
    await writer.drain()
    return sent_ns


async def _sleep_until(deadline_ns: int) -> None:
    delay_ns = deadline_ns - time.perf_counter_ns()
    if delay_ns > 0:
        await asyncio.sleep(delay_ns / 1e9)


# -- faults -------------------------------------------------------------------------------------


class _At(enum.Enum):
    """Where in a response a fault strikes. A response that is not streamed meets only the
    first: the others are points of a stream."""

    BEFORE_HEADERS = enum.auto()  # instead of the response
    BEFORE_FIRST_CHUNK = enum.auto()  # the headers are out, nothing of the body yet
    # When ``after_chunks`` content chunks have gone out, at the moment the next one is due (so
    # the client has had time to read the ones before), or after the last of fewer.
    MID_STREAM = enum.auto()
    LAST_CHUNK = enum.auto()  # the last content chunk is due and not yet made
    TERMINATOR = enum.auto()  # the content is out; the closing payloads, end marker last, not


@dataclass(frozen=True, slots=True)
class _Fault:
    """One way to misbehave: where it strikes, and what it does there. ``act`` returns whether
    the response goes on; one that ends it leaves in ``keep_alive`` whether the connection may
    carry another request."""

    at: _At
    act: Callable[[_Response], Awaitable[bool]]
    after_chunks: int = 0  # MID_STREAM: content chunks sent before it strikes
    #: The requests it applies to, by their JSON body (None: all); others are served normally.
    only_if: Callable[[dict[str, Any]], bool] | None = None
    #: Only requests on a connection that already carried a generation request.
    reused_only: bool = False


@dataclass(slots=True)
class _Response:
    """A generation response while it is written: what a fault acts on."""

    writer: asyncio.StreamWriter
    wire: Wire
    trace: _Trace
    keep_alive: bool  # the connection may carry another request after this response
    fault: str | None  # the fault this response gets, if any
    closing: list[bytes] = field(default_factory=list)  # the payloads after the content

    def strikes_at(self, at: _At) -> bool:
        return self.fault is not None and _FAULTS[self.fault].at is at

    def chunk_to_strike_before(self, chunks: int) -> int | None:
        """The content chunk (of ``chunks``) the fault strikes before, once it is due; ``chunks``
        itself: after the last. None: it strikes at no chunk."""
        if self.fault is None:
            return None
        fault = _FAULTS[self.fault]
        if fault.at is _At.MID_STREAM:
            return min(fault.after_chunks, chunks)
        if fault.at is _At.LAST_CHUNK and chunks:
            return chunks - 1
        return None

    async def strike(self) -> bool:
        """The fault acts (and the trace says so); returns whether the response goes on."""
        assert self.fault is not None
        self.trace.fault = self.fault
        return await _FAULTS[self.fault].act(self)


def _answer(status: int, message: str, kind: str,
            headers: tuple[tuple[str, str], ...] = ()) -> Callable[[_Response], Awaitable[bool]]:
    """An error status and body in the API's shape (``message`` may name ``{model}``)."""

    async def answer(response: _Response) -> bool:
        wire, trace = response.wire, response.trace
        trace.status = status
        body = wire.error_body(message.format(model=wire.model), kind)
        trace.first_byte_ns = await _send_json(
            response.writer, status, body, response.keep_alive, list(headers))
        return False

    return answer


def _inject(payload: Callable[[Wire], bytes]) -> Callable[[_Response], Awaitable[bool]]:
    """One HTTP chunk of ``payload`` amid the content; the stream goes on after it."""

    async def inject(response: _Response) -> bool:
        await _send_chunk(response.writer, payload(response.wire))
        return True

    return inject


#: What a single sign-on proxy answers in a server's place: its login page, with 200.
_LOGIN_PAGE = (b"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
               b"<title>Sign in</title></head>\n<body>\n<form method=\"post\" "
               b"action=\"/login\">\n<input name=\"user\"><input name=\"password\" "
               b"type=\"password\">\n<button>Sign in</button>\n</form>\n</body>\n</html>\n")
_MOVED = b'<html><body>Found: <a href="/login">sign in</a></body></html>\n'


def _page(status: int, body: bytes, to_login: bool = False
          ) -> Callable[[_Response], Awaitable[bool]]:
    """An HTML page of ``status`` in place of the answer, as a proxy in front of the server
    gives it (not in the API's shape); ``to_login``: with a ``Location`` to its login page."""

    async def page(response: _Response) -> bool:
        response.trace.status = status
        headers = [("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(body)))]
        if to_login:
            headers.append(("Location", "/login?next=" + quote(response.trace.path, safe="")))
        response.writer.write(_head(status, headers, response.keep_alive) + body)
        response.trace.first_byte_ns = time.perf_counter_ns()
        await response.writer.drain()
        return False

    return page


async def _stall(response: _Response) -> bool:
    response.keep_alive = False
    await asyncio.sleep(_STALL_S)
    return False


async def _reset(response: _Response) -> bool:
    # Linger 0 makes close() send RST instead of FIN: the client sees a reset, not EOF.
    sock = response.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    response.writer.transport.abort()
    response.keep_alive = False
    return False


async def _hang_up(response: _Response) -> bool:
    """The connection closes (FIN) with the request read and not a byte of answer sent:
    what a server that drops idle keep-alive connections does to a request that raced the
    close (llama.cpp's server, cpp-httplib, does it without a ``Connection: close``)."""
    response.keep_alive = False
    return False


async def _error_event(response: _Response) -> bool:
    """An error event, then the body ends well and the server closes the connection."""
    await _send_chunk(response.writer, response.wire.frame(response.wire.error_event()))
    response.writer.write(_END)
    await response.writer.drain()
    response.keep_alive = False
    return False


async def _finish_with_error(response: _Response) -> bool:
    response.wire.finish = "error"
    return True


async def _drop_end_marker(response: _Response) -> bool:
    response.closing = response.closing[:-1]
    return True


#: Every way the server can misbehave on request (see :mod:`soaktop.engine.loopback`).
_FAULTS: dict[str, _Fault] = {
    "reset": _Fault(_At.MID_STREAM, _reset, after_chunks=3),
    "stall_first": _Fault(_At.BEFORE_FIRST_CHUNK, _stall),
    "stall_mid": _Fault(_At.MID_STREAM, _stall, after_chunks=3),
    "http_500": _Fault(_At.BEFORE_HEADERS, _answer(
        500, "loopback: internal error", "server_error")),
    "http_404": _Fault(_At.BEFORE_HEADERS, _answer(
        404, "The model `{model}` does not exist.", "invalid_request_error")),
    "http_429": _Fault(_At.BEFORE_HEADERS, _answer(
        429, "loopback: rate limit reached", "rate_limit_error", (("Retry-After", "1"),))),
    "malformed_json": _Fault(_At.MID_STREAM, _inject(lambda wire: wire.frame(_MALFORMED_JSON)),
                             after_chunks=3),
    "malformed_sse": _Fault(_At.MID_STREAM, _inject(lambda wire: _GARBAGE), after_chunks=3),
    "no_done": _Fault(_At.TERMINATOR, _drop_end_marker),
    "non_utf8": _Fault(_At.MID_STREAM, _inject(lambda wire: wire.frame(wire.non_utf8())),
                       after_chunks=3),
    "error_in_stream": _Fault(_At.MID_STREAM, _error_event, after_chunks=2),
    "refuse_usage": _Fault(_At.BEFORE_HEADERS, _answer(
        400, "loopback: stream_options is not supported", "invalid_request_error"),
        only_if=lambda body: "stream_options" in body),
    # the last chunk's finish_reason is "error": a failure inside a 200
    "finish_error": _Fault(_At.LAST_CHUNK, _finish_with_error),
    # a proxy in front of the server: its login page, with 200 (not a stream) ...
    "html_200": _Fault(_At.BEFORE_HEADERS, _page(200, _LOGIN_PAGE)),
    # ... or a redirect to that page
    "redirect_302": _Fault(_At.BEFORE_HEADERS, _page(302, _MOVED, to_login=True)),
    # closes the connection unanswered: every time, or only where it was kept alive after
    # a generation request (a server closing idle connections as a request goes out on one;
    # set-up calls' connections are spared, so a request sent again finds a live one)
    "hang_up": _Fault(_At.BEFORE_HEADERS, _hang_up),
    "close_idle": _Fault(_At.BEFORE_HEADERS, _hang_up, reused_only=True),
}
#: The faults' names, in the table's order: what ``fault=`` and ``--fault`` accept.
FAULTS = tuple(_FAULTS)


class LoopbackServer:
    """An OpenAI-compatible and Ollama server that emits tokens on a :class:`Schedule`.

    Every ``fault_every``-th generation request (counted from 1; 1 means all) after the first
    ``fault_after`` gets ``fault``, one of :data:`FAULTS`. ``max_active``: at most this many
    generation requests are answered at once, the others wait in order and their schedule
    starts when they get a place: a server with a fixed service rate (``max_active`` over a
    request's length), whose queue grows when more is asked of it. What was sent, and when,
    is kept per request until :meth:`emissions` (or ``GET /_loopback/emissions``) takes it:
    read it now and then on long runs, since it grows with every chunk.

    With ``gpus`` (a :class:`~soaktop.engine.loopback.dcgm.GpuModel`), ``GET /metrics`` serves
    those GPUs as a DCGM exporter would, heated by the tokens this server sends, on a clock
    that starts with :meth:`start`.

    ``shared``: this server is one of several processes on one port (see
    :mod:`soaktop.engine.loopback.shared`; :mod:`soaktop.engine.loopback.process` starts them):
    it listens with ``SO_REUSEPORT``, spools its emissions where :meth:`emissions` of any of
    them takes them, counts its tokens where every process's GPUs see them, and starts the
    GPUs' clock at the parent's origin. Faults count each process's own requests.
    """

    def __init__(
        self,
        schedule: Schedule | None = None,
        fault: str | None = None,
        fault_every: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        gpus: GpuModel | None = None,
        shared: Shared | None = None,
        fault_after: int = 0,
        max_active: int | None = None,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
        if fault_every < 1:
            raise ValueError(f"fault_every must be at least 1 (got {fault_every})")
        if fault_after < 0:
            raise ValueError(f"fault_after must not be negative (got {fault_after})")
        if max_active is not None and max_active < 1:
            raise ValueError("max_active must be at least 1")
        self.schedule = schedule or Schedule()
        self.fault = fault
        self.fault_every = fault_every
        self.fault_after = fault_after
        self.max_active = max_active
        # at most max_active generation requests answered at once; the rest wait, in order
        self._places = None if max_active is None else asyncio.Semaphore(max_active)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests = 0
        self._finished: list[Emission] = []
        self.shared = shared
        self._spool = None if shared is None else Spool(shared)
        self._process = 0 if shared is None else shared.index
        ledger = None if shared is None or gpus is None else TokenLedger(shared)
        self.gpus = None if gpus is None else SimulatedGpus(gpus, ledger)
        self._origin_ns = time.perf_counter_ns()
        self._gets: dict[str, Callable[[], Any]] = {
            "/v1/models": lambda: openai_models(self.schedule.model),
            "/api/tags": lambda: ollama_tags(self.schedule.model),
            "/version": lambda: {"version": VERSION},
            "/api/version": lambda: {"version": VERSION},
            "/_loopback/emissions": lambda: [e.to_dict() for e in self.emissions()],
        }
        # POSTs that are not generation: the JSON body in, the JSON answer out.
        self._posts: dict[str, Callable[[Any], Any]] = {
            "/api/show": lambda body: ollama_show(str(body.get("model") or self.schedule.model)),
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; with ``port=0`` the system picks a free port, then found in :attr:`port`."""
        # the simulated GPUs' clock starts here (with processes, where the parent started)
        self._origin_ns = (time.perf_counter_ns() if self.shared is None
                           else self.shared.origin_ns)
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, reuse_port=self.shared is not None or None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection, stalled ones included."""
        if self._server is None:
            return
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> LoopbackServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def emissions(self) -> list[Emission]:
        """Every generation request finished since the last call, oldest first (with processes:
        those of every process, by arrival)."""
        if self._spool is not None:
            return self._spool.take()
        finished, self._finished = self._finished, []
        return finished

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # asyncio sets this already on TCP transports; said again because timing depends on it.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            keep_alive, generated = True, False
            while keep_alive:
                try:
                    request = await _read_request(reader)
                except _BadRequest as error:
                    body = {"error": {"message": str(error), "type": "invalid_request_error"}}
                    await _send_json(writer, 400, body, keep_alive=False)
                    break
                if request is None:
                    break
                request.reused = generated
                generated = generated or (request.method == "POST" and request.path in WIRES)
                keep_alive = await self._dispatch(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; there is no one left to answer
        except asyncio.CancelledError:
            # stop() ends connections this way. Ending quietly rather than cancelled keeps
            # Python 3.11's stream callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection may carry another."""
        wire = WIRES.get(request.path)
        if wire is not None and request.method == "POST":
            self._requests += 1
            trace = _Trace(self._requests, request.path, request.received_ns,
                           request_id=request.request_id, process=self._process)
            try:
                if self._places is None:
                    return await self._generate(request, wire, trace, writer)
                async with self._places:  # queued until a place is free: a server at capacity
                    trace.admitted_ns = time.perf_counter_ns()
                    return await self._generate(request, wire, trace, writer)
            finally:
                if self._spool is not None:
                    self._spool.write(trace.freeze())
                else:
                    self._finished.append(trace.freeze())
        get = self._gets.get(request.path)
        post = self._posts.get(request.path)
        if request.path == "/metrics" and self.gpus is not None and request.method == "GET":
            text = self.gpus.metrics((time.perf_counter_ns() - self._origin_ns) / 1e9)
            await _send_text(writer, text, request.keep_alive)
        elif get is not None and request.method == "GET":
            await _send_json(writer, 200, get(), request.keep_alive)
        elif post is not None and request.method == "POST":
            await self._answer_post(request, post, writer)
        elif get is not None or post is not None or wire is not None:
            message = f"{request.method} is not allowed on {request.path}"
            body = {"error": {"message": message, "type": "invalid_request_error"}}
            await _send_json(writer, 405, body, request.keep_alive)
        else:
            body = {"error": {"message": f"no route {request.path}", "type": "not_found_error"}}
            await _send_json(writer, 404, body, request.keep_alive)
        return request.keep_alive

    @staticmethod
    async def _answer_post(
        request: _Request, answer: Callable[[Any], Any], writer: asyncio.StreamWriter
    ) -> None:
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
        except ValueError as error:
            await _send_json(writer, 400, {"error": str(error)}, request.keep_alive)
            return
        await _send_json(writer, 200, answer(body), request.keep_alive)

    async def _generate(
        self, request: _Request, wire_type: type[Wire], trace: _Trace,
        writer: asyncio.StreamWriter,
    ) -> bool:
        keep_alive = request.keep_alive
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            wire = wire_type(body, trace.request, self.schedule)
        except ValueError as error:  # json.JSONDecodeError is one too
            trace.status = 400
            error_body = wire_type.error_body(str(error), "invalid_request_error")
            trace.first_byte_ns = await _send_json(writer, 400, error_body, keep_alive)
            return keep_alive
        trace.prompt, trace.max_tokens = body.get(wire.prompt_field), wire.tokens

        fault = self._fault_for(trace, body, request.reused)
        response = _Response(writer, wire, trace, keep_alive, fault)
        if response.strikes_at(_At.BEFORE_HEADERS) and not await response.strike():
            return response.keep_alive
        if self.schedule.stop_after is not None and wire.tokens > self.schedule.stop_after:
            wire.tokens, wire.finish = self.schedule.stop_after, "stop"  # EOS before the limit
        plan = self.schedule.plan(wire.tokens, trace.request)
        if not wire.stream:
            return await self._respond_whole(wire, plan, trace, writer, keep_alive)
        return await self._stream(request, plan, response)

    def _fault_for(self, trace: _Trace, body: dict[str, Any], reused: bool) -> str | None:
        """The fault this request gets: every ``fault_every``-th one after the first
        ``fault_after`` (a server that degrades on cue), where the fault applies (``reused``:
        the request came on a connection that already carried a generation request)."""
        if (self.fault is None or trace.request <= self.fault_after
                or trace.request % self.fault_every != 0):
            return None
        fault = _FAULTS[self.fault]
        if fault.reused_only and not reused:
            return None
        return self.fault if fault.only_if is None or fault.only_if(body) else None

    async def _stream(
        self, request: _Request, plan: list[tuple[int, int]], response: _Response
    ) -> bool:
        """A streamed answer: the headers, the opening, content chunks when the plan says, the
        closing and the end of the body, with the response's fault where it strikes."""
        wire, trace, writer = response.wire, response.trace, response.writer
        writer.write(_head(200, [
            ("Content-Type", wire.content_type), ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ], response.keep_alive))
        trace.first_byte_ns = time.perf_counter_ns()
        if response.strikes_at(_At.BEFORE_FIRST_CHUNK) and not await response.strike():
            return response.keep_alive
        for payload in wire.opening():
            await _send_chunk(writer, wire.frame(payload))

        strike_at = response.chunk_to_strike_before(len(plan))
        sent = 0
        for index, (offset_ns, tokens) in enumerate(plan):
            await _sleep_until(trace.admitted_ns + offset_ns)
            if index == strike_at and not await response.strike():
                return response.keep_alive
            payload = wire.content(words(sent, tokens), last=index == len(plan) - 1,
                                   reasoning=sent < self.schedule.reasoning_tokens)
            sent_ns = await _send_chunk(writer, wire.frame(payload))
            trace.chunks_ns.append(sent_ns)
            trace.chunk_tokens.append(tokens)
            self._served(sent_ns, tokens)
            sent += tokens
        if strike_at == len(plan) and not await response.strike():
            return response.keep_alive

        response.closing = wire.closing(self._timing(trace))
        if response.strikes_at(_At.TERMINATOR) and not await response.strike():
            return response.keep_alive
        for payload in response.closing:
            await _send_chunk(writer, wire.frame(payload))
        writer.write(_END)
        await writer.drain()
        return response.keep_alive

    async def _respond_whole(
        self, wire: Wire, plan: list[tuple[int, int]], trace: _Trace,
        writer: asyncio.StreamWriter, keep_alive: bool,
    ) -> bool:
        """A non-streaming answer, sent when the last token is due. Stream faults do not apply;
        Ollama's timings take the first token as sent when it was planned."""
        if plan:
            await _sleep_until(trace.admitted_ns + plan[-1][0])
        first_ns = trace.admitted_ns + plan[0][0] if plan else time.perf_counter_ns()
        timing = (trace.received_ns, first_ns, time.perf_counter_ns())
        body = wire.response(words(0, wire.tokens), timing)
        trace.first_byte_ns = await _send_json(writer, 200, body, keep_alive)
        if wire.tokens:
            trace.chunks_ns.append(trace.first_byte_ns)
            trace.chunk_tokens.append(wire.tokens)
            self._served(trace.first_byte_ns, wire.tokens)
        return keep_alive

    def _served(self, sent_ns: int, tokens: int) -> None:
        """Content tokens left at ``sent_ns``: the load that heats the simulated GPUs."""
        if self.gpus is not None:
            self.gpus.served((sent_ns - self._origin_ns) / 1e9, tokens)

    @staticmethod
    def _timing(trace: _Trace) -> tuple[int, int, int]:
        """``(received, first content, last content)``; without content, now for both."""
        now = time.perf_counter_ns()
        chunks = trace.chunks_ns or [now]
        return trace.received_ns, chunks[0], chunks[-1]
