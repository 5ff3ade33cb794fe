"""What the HTTP backends share: the client, timeouts, byte-exact stream reading, error classes.

Token times are taken when the bytes that carry them arrive: on Linux over ``http://`` each
read is a ``recvmsg`` that carries the kernel's receive time (``SO_TIMESTAMPNS``, see
:mod:`soaktop.engine.backends.stamping`); elsewhere the read is stamped as it returns. Every line
(and so every token) completed by those bytes gets that time. Parsing happens after the stamp,
so its cost never shifts a timestamp, only the moment the next read starts.

Lines are split on raw bytes and decoded as strict UTF-8, then handed to httpx-sse's
``SSEDecoder``. httpx-sse's public iterator would decode with ``errors="replace"`` (servers that
declare ``charset=utf-8`` force that), hiding non-UTF-8 bytes, and it skips malformed lines
silently; both must be counted as errors here.

Timeouts (connect, first token, between tokens) are enforced by one watchdog timer per request
that costs nothing per token: the stream only updates a number, and the timer re-arms itself
from that number when it fires early. The first token re-arms it once, since the limit between
tokens may end sooner than the one for the first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from httpx_sse._decoders import SSEDecoder  # see the module docstring for why not aiter_sse

from soaktop.engine.backends.stamping import StampingTransport, arrival_ns
from soaktop.engine.errors import BackendError, BackendUnavailable
from soaktop.engine.wakeups import until

_SSE_FIELDS = ("data", "event", "id", "retry")
BODY_EXCERPT = 200  # characters of an error status's body kept in its message
SHOWN_EXCERPT = 80  # characters of an unexpected body or header kept in a message
FIRST_BYTES_WAIT_S = 1.0  # how long the first bytes of an unexpected body are waited for


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 10.0
    first_token_s: float = 120.0
    between_tokens_s: float = 60.0


def strip_credentials(url: str) -> str:
    """The URL without ``user:password@`` and without a query string (where keys hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def make_client(
    base_url: str,
    timeouts: Timeouts,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_read: Callable[[int, int], None] | None = None,
) -> httpx.AsyncClient:
    """One pooled client for the whole run: connections are reused as a real client would.

    ``transport`` is for tests (``httpx.MockTransport``); real runs use httpx's own, or on
    ``http://`` the kernel-stamping one, which tells ``on_read`` of each read (see
    :class:`soaktop.engine.backends.stamping.StampedStream`).
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    if transport is None and base_url.startswith("http://"):
        transport = StampingTransport(limits, on_read)  # see engine/backends/stamping.py
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        transport=transport,
        timeout=httpx.Timeout(connect=timeouts.connect_s, read=None, write=timeouts.connect_s,
                              pool=None),
        limits=limits,
    )


class Watchdog:
    """Fails the current task's request when content stops arriving for too long."""

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started = self._loop.time()
        self.last_token: float | None = None
        self.fired: str | None = None
        self._handle = self._loop.call_at(self._deadline(), self._check)

    def _deadline(self) -> float:
        if self.last_token is None:
            return self._started + self._timeouts.first_token_s
        return self.last_token + self._timeouts.between_tokens_s

    def token(self) -> None:
        first = self.last_token is None
        self.last_token = self._loop.time()
        if first:
            # The deadline moves from the first-token limit to the between-tokens one, which
            # may come sooner (the defaults: 120 s, then 60 s): re-arm now, once per request,
            # or a stall after the first tokens would wait out the first-token limit. Later
            # tokens only push the deadline out; the timer catches up with them when it fires.
            self._handle.cancel()
            self._handle = self._loop.call_at(self._deadline(), self._check)

    def _check(self) -> None:
        deadline = self._deadline()
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self.fired = "first_token_timeout" if self.last_token is None else "inter_token_timeout"
        if self._task is not None:
            self._task.cancel()

    def error(self) -> BackendError:
        if self.fired == "first_token_timeout":
            limit = self._timeouts.first_token_s
            return BackendError(f"no token within {limit:g} s", "first_token_timeout")
        limit = self._timeouts.between_tokens_s
        return BackendError(f"no token for {limit:g} s mid-stream", "inter_token_timeout")

    def close(self) -> None:
        self._handle.cancel()
        if self.fired is not None and self._task is not None and hasattr(self._task, "uncancel"):
            self._task.uncancel()


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def request_uuid(run_id: str, request_id: int) -> str:
    """The ``X-Request-Id`` of request ``request_id`` in run ``run_id``.

    Unique per run and request, so server logs can be matched to the record (vLLM adopts it
    as its own request id) and the loopback server can pair requests. A UUID, because some
    servers (llama-cpp-python's) answer 400 to any other shape; derived, not random, so the
    pairing needs no table.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"soaktop:{run_id}:{request_id}"))


class SendClock:
    """Stamps the moment httpcore finished writing the request (its trace extension), and
    notes whether the request opened a connection of its own or went out on a pooled one."""

    __slots__ = ("t_ns", "connected")

    def __init__(self) -> None:
        self.t_ns: int | None = None
        self.connected = False  # it opened a new connection (else it reused a pooled one)

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            self.t_ns = time.perf_counter_ns()
        elif event == "connection.connect_tcp.started":
            self.connected = True

    def extensions(self) -> dict[str, Any]:
        return {"trace": self}


def json_body(body: Any, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A request's JSON body as httpx's ``json=`` encodes it, and ``headers`` with what
    ``json=`` adds (its type and length: with the length given, httpx sends no chunked body
    even for a :class:`HeldBody`)."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()
    return data, {**headers, "Content-Type": "application/json",
                  "Content-Length": str(len(data))}


class HeldBody(httpx.AsyncByteStream):
    """A request's body, held until its planned moment (``send_at_ns``, a ``perf_counter_ns``
    reading): the request is started a few milliseconds early, so that taking a pooled
    connection (or opening one) and writing the headers are done by then, and only the body's
    one write is left for the moment itself (soaktop.engine.load.loops.PREPARE_NS). httpx's
    own path from ``send`` to the body's write costs 0.3-0.5 ms of Python with a spread of
    its own; held this way, the write follows the wake-up within tens of microseconds. The
    server sees the request when its body is complete, as always.
    """

    def __init__(self, data: bytes, send_at_ns: int) -> None:
        self.data = data
        self.send_at_ns = send_at_ns

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await until(self.send_at_ns)
        yield self.data


def excerpt(data: bytes | str, limit: int = SHOWN_EXCERPT) -> str:
    """Untrusted text (a body, a header) as it may be shown: on one line, whitespace runs as
    one space, anything unprintable (control characters, a terminal's escape sequences,
    invisible format characters) escaped as ``\\xNN``/``\\uNNNN``, bytes that are not UTF-8
    as ``\\xNN``; at most ``limit`` characters, an ellipsis last where it was cut."""
    text = data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")
    units = [c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
             for c in " ".join(text.split())]
    shown = "".join(units)
    if len(shown) <= limit:
        return shown
    kept, size = [], 0
    for unit in units:  # whole escapes only: never half of one
        if size + len(unit) > limit - 1:
            break
        kept.append(unit)
        size += len(unit)
    return "".join(kept) + "\u2026"


def _redirect_target(response: httpx.Response) -> str:
    """Where a redirect pointed, absolute, without credentials or query, escaped."""
    location = response.headers.get("location")
    if not location:
        return "without a Location"
    try:
        target = strip_credentials(str(response.url.join(location)))
    except (httpx.InvalidURL, ValueError):
        target = location
    return f"to {excerpt(target)}"


async def raise_for_status(response: httpx.Response) -> None:
    """An HTTP error status becomes ``http_<status>`` with an excerpt of the body; a redirect
    (3xx) is ``http_<status>`` too, with where it pointed: it is never followed (a request
    sent again elsewhere would measure another server, often a login page)."""
    status = response.status_code
    if 300 <= status < 400:
        raise BackendError(f"HTTP {status}: a redirect {_redirect_target(response)}, not "
                           f"followed", f"http_{status}",
                           retry_after_s=retry_after_s(response.headers.get("retry-after")))
    if status < 400:
        return
    shown = excerpt((await response.aread())[:BODY_EXCERPT * 4], BODY_EXCERPT)
    raise BackendError(
        f"HTTP {status}: {shown}" if shown else f"HTTP {status}",
        f"http_{status}",
        retry_after_s=retry_after_s(response.headers.get("retry-after")),
        refused=status < 500 and status not in (408, 429),  # the request itself was wrong
    )


async def check_stream_type(response: httpx.Response, accepted: tuple[str, ...],
                            stream_name: str) -> None:
    """A 200 that is not the stream asked for fails as ``not_event_stream``, naming its
    Content-Type and how its body begins (escaped, :data:`SHOWN_EXCERPT` characters).

    A login page or a proxy's error page answered with 200 would otherwise be read as a
    stream that ended early, and a server that ignored ``stream: true`` (one JSON object) as
    a broken one: neither says what happened. ``accepted`` are media types (parameters such
    as ``charset`` aside); a response without a Content-Type is read as the stream it claims
    to be, and its parser judges it. The first bytes are waited for at most a second (a body
    that never comes is not worth the first-token limit here); the rest of a longer body is
    not read.
    """
    content_type = response.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.partition(";")[0].strip().lower()
    if media in accepted:
        return
    chunks: list[bytes] = []
    with contextlib.suppress(asyncio.TimeoutError, httpx.HTTPError):
        await asyncio.wait_for(_first_bytes(response, chunks, SHOWN_EXCERPT * 4),
                               FIRST_BYTES_WAIT_S)
    head = b"".join(chunks)
    begins = excerpt(head) if head.strip() else "(empty)"
    raise BackendError(
        f"not {stream_name}: HTTP {response.status_code} with Content-Type "
        f"{excerpt(content_type)}; the body begins {begins}", "not_event_stream")


async def _first_bytes(response: httpx.Response, chunks: list[bytes], size: int) -> None:
    """The body's first ``size`` bytes or so, into ``chunks`` as they come (what came is kept
    when the wait for the rest is cut short)."""
    async with contextlib.aclosing(_body(response)) as body:
        async for chunk in body:
            chunks.append(chunk)
            if sum(map(len, chunks)) >= size:
                return


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused: said in the message, or an ECONNREFUSED in the
    chain of causes (httpx's own message hides it)."""
    if "connection refused" in str(exc).lower():
        return True
    seen = 0
    while exc is not None and seen < 10:
        # asyncio's sock_connect raises a plain OSError carrying ECONNREFUSED
        if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == (
            errno.ECONNREFUSED
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


CONNECT_CLASSES = ("connect_refused", "connect_error", "connect_timeout")


def transport_error(exc: httpx.HTTPError) -> BackendError:
    """Classify what httpx raised while connecting or reading."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return BackendError(f"connect timed out: {text}", "connect_timeout")
    if isinstance(exc, httpx.ConnectError):
        if _refused(exc):
            return BackendError("connection refused", "connect_refused")
        return BackendError(f"cannot connect: {text}", "connect_error")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return BackendError(f"connection broken: {text}", "connection_reset")
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"timed out: {text}", "read_timeout")
    return BackendError(f"{type(exc).__name__}: {text}", "http_error")


def stale_connection(exc: httpx.HTTPError, clock: SendClock) -> bool:
    """Whether a request that failed before any answer came did so because it went out on a
    pooled connection the server had closed meanwhile: safe to send once more, since the
    server never answered it.

    Servers that close idle keep-alive connections without saying so (llama.cpp's, on
    cpp-httplib) race every request sent on one: it is read by no one, and the client sees
    the connection end (``RemoteProtocolError``: no response), or a reset or broken pipe
    (``ReadError``, ``WriteError``). Browsers and common clients send such a request again;
    only on a reused connection, as they do: a new connection that ends unanswered is the
    server failing, not a stale socket, and is reported.
    """
    return (isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
            and not clock.connected)


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's bytes as they come: raw where the server did not compress it, decoded where
    it did. httpx's decoding layer costs every chunk a generator hop and a decoder call even
    for an identity body: measured side by side, 114 us of client CPU per streamed token
    through it, 104 us without."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and not response.is_stream_consumed:
        return response.aiter_raw()
    return response.aiter_bytes()  # also a body already read (tests' canned transports)


async def stamped_lines(response: httpx.Response) -> AsyncIterator[tuple[int, str]]:
    """Each complete line of the body with the arrival time of the bytes that completed it."""
    pending = b""
    async for chunk in _body(response):
        t_ns = arrival_ns(response)
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            try:
                yield t_ns, raw.rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                raise BackendError(
                    f"stream is not UTF-8: {raw[:60]!r}", "non_utf8"
                ) from None
    if pending.strip():
        raise BackendError(f"stream ended mid-line: {pending[:60]!r}", "incomplete_stream")


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[int, str]]:
    """``(t_ns, data)`` of each server-sent event; a line that is not SSE is an error."""
    decoder = SSEDecoder()
    async for t_ns, line in stamped_lines(response):
        if line and not line.startswith(":") and line.partition(":")[0] not in _SSE_FIELDS:
            raise BackendError(f"not a server-sent event line: {line[:60]!r}", "malformed_sse")
        event = decoder.decode(line)
        if event is not None and event.data:
            yield t_ns, event.data


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise BackendError(f"not JSON: {text[:60]!r}", "malformed_json") from None


class ConnectBackoff:
    """Exponential back-off while the server cannot be connected to (50 ms doubling to 2 s).

    A closed loop replaces each failed request at once; against a dead server that would be
    a hot loop of thousands of refusals a second. The back-off rides on ``retry_after_s``, so
    the session holds new sends back exactly as it does for a server's Retry-After, and it
    resets on the first request that connects, so load resumes when the server returns. The
    delay doubles at most once per hold: the N requests of one concurrent round that fail
    together count as one failure, not N.
    """

    FIRST_S, LAST_S = 0.05, 2.0

    def __init__(self) -> None:
        self._delay_s = self.FIRST_S
        self._hold_until = 0.0

    def failed(self, error: BackendError) -> BackendError:
        if error.error_class in CONNECT_CLASSES:
            now = time.monotonic()
            if now >= self._hold_until:  # a new round of failures: wait longer than last time
                first = self._hold_until == 0.0
                self._delay_s = self.FIRST_S if first else min(self._delay_s * 2, self.LAST_S)
                self._hold_until = now + self._delay_s
            error.retry_after_s = max(error.retry_after_s or 0.0, self._hold_until - now)
        return error

    def connected(self) -> None:
        self._delay_s, self._hold_until = self.FIRST_S, 0.0


async def _get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """GET for set-up calls; a transport failure is a one-line ``BackendUnavailable``."""
    try:
        return await client.get(path)
    except httpx.HTTPError as exc:
        url = strip_credentials(f"{client.base_url}{path}")
        raise BackendUnavailable(f"cannot reach {url}: {transport_error(exc)}") from None


async def probe(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """Fail the start of a run, in one line, when nothing answers at the server's address.

    Any HTTP answer, even an error status, proves a server is there; only a transport failure
    stops the run before it starts. The answer is returned: its headers and body say what
    the server is (see :mod:`soaktop.engine.backends.identity`).
    """
    return await _get(client, path)


async def get_json(client: httpx.AsyncClient, path: str) -> Any:
    """GET for set-up calls (model lists): failures are one-line ``BackendUnavailable``."""
    url = f"{client.base_url}{path}"
    response = await _get(client, path)
    if response.status_code >= 400:
        raise BackendUnavailable(f"{strip_credentials(url)} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise BackendUnavailable(f"{strip_credentials(url)} did not answer JSON") from None


def share_tokens(texts: list[str], total: int) -> list[int]:
    """Split ``total`` tokens over arrivals in proportion to their text, at least one each.

    For servers that put several tokens in one chunk and report the true count only in
    ``usage``: without the server's tokenizer, text length is the best available share.
    """
    n = len(texts)
    if total <= n or n == 0:
        return [1] * n
    extra = total - n
    weights = [max(len(t), 1) for t in texts]
    scale = extra / sum(weights)
    raw = [w * scale for w in weights]
    shares = [int(r) for r in raw]
    # largest remainders take what rounding down left over
    for i in sorted(range(n), key=lambda i: raw[i] - shares[i], reverse=True)[
        : extra - sum(shares)
    ]:
        shares[i] += 1
    return [1 + s for s in shares]
