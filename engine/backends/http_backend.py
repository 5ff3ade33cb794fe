"""The shared body of the HTTP backends: connection, probe, model list and the stream loop.

:mod:`soaktop.engine.backends.openai` and :mod:`soaktop.engine.backends.ollama` differ only in their
wire format (path, request body, how a response is read, how the model list looks); everything
else, the send stamp, the connect back-off, the timeout watchdog and the error mapping, is
here once, and so is asking the server what it is (:meth:`HttpBackend.describe`). The plumbing
it uses lives in :mod:`soaktop.engine.backends.http` and :mod:`soaktop.engine.backends.identity`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import httpx

from soaktop.engine.backends import identity
from soaktop.engine.backends.base import Arrival, Backend, GenerationRequest, RequestSent, StreamEnd
from soaktop.engine.backends.http import (
    ConnectBackoff,
    HeldBody,
    SendClock,
    Timeouts,
    Watchdog,
    check_stream_type,
    get_json,
    json_body,
    make_client,
    probe,
    raise_for_status,
    request_uuid,
    stale_connection,
    strip_credentials,
    transport_error,
)
from soaktop.engine.backends.stamping import sent_ns, sent_start_ns
from soaktop.engine.config import check_url
from soaktop.engine.errors import BackendUnavailable, ConfigError


class HttpBackend(Backend):
    """What the OpenAI-compatible and Ollama backends share; each supplies its wire format.

    A subclass names ``kind``, ``APIS`` (the first is the default), ``MODELS_PATH``,
    ``STREAM_TYPES`` and ``STREAM_NAME`` (what a stream's Content-Type may be), and
    implements :meth:`_path`, :meth:`_body`, :meth:`_read` and :meth:`_model_names`.
    :meth:`_retry_without` lets it answer a refusal by asking again differently (once per
    refusal it recognises); :meth:`_identity_calls` and :meth:`_identity` say how its kind
    of server tells what it is.
    """

    holds_sends: ClassVar[bool] = True  # a planned send's body waits (HeldBody)
    APIS: ClassVar[tuple[str, ...]]
    MODELS_PATH: ClassVar[str]
    #: The media types a streamed answer may come as, and what to call such a stream in a
    #: ``not_event_stream`` message.
    STREAM_TYPES: ClassVar[tuple[str, ...]]
    STREAM_NAME: ClassVar[str]

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api: str | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        api = api or self.APIS[0]
        if api not in self.APIS:
            raise ConfigError(f"unknown --api {api!r} for {self.kind}; choose "
                              + " or ".join(self.APIS))
        check_url(url, "--url")
        self.url = url.rstrip("/")
        self.model = model
        self.api = api
        self.timeouts = timeouts or Timeouts()
        self.run_id = uuid.uuid4().hex[:8]  # X-Request-Id prefix: unique per run
        self._api_key = api_key
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._backoff = ConnectBackoff()
        #: Requests sent a second time because their pooled connection had been closed
        #: by the server before it answered (see :func:`~.http.stale_connection`).
        self.resent = 0
        self.server: dict[str, Any] = {}
        # path -> absolute URL: httpx parses and merges a relative URL again for every
        # request, a fifth of a send's cost; an absolute URL object it takes as it is
        self._urls: dict[str, httpx.URL] = {}
        self._on_read: Callable[[int, int], None] | None = None

    def _new_client(self) -> httpx.AsyncClient:
        return make_client(self.url, self.timeouts, self._api_key, self._transport,
                           self._on_read)

    def watch_reads(self, on_read: Callable[[int, int], None]) -> bool:
        """``http://`` on Linux reads its own sockets with kernel receive stamps
        (:mod:`soaktop.engine.backends.stamping`); ``https://`` keeps httpx's layer."""
        if self._transport is not None or not self.url.startswith("http://"):
            return False
        if not sys.platform.startswith("linux"):
            return False
        self._on_read = on_read
        return True

    async def start(self) -> None:
        self._client = self._new_client()
        try:
            self.server = await self._identify(await probe(self._client, self.MODELS_PATH))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def models(self) -> list[str]:
        client = self._client or self._new_client()
        try:
            listing = await get_json(client, self.MODELS_PATH)
        finally:
            if client is not self._client:
                await client.aclose()
        names = self._model_names(listing)
        if names is None:
            raise BackendUnavailable(
                f"{strip_credentials(self.url)}{self.MODELS_PATH} is not a model list")
        return names

    def describe(self) -> dict[str, Any]:
        """Kind, URL (credentials stripped), API, and ``server``: what the server said about
        itself when :meth:`start` asked, always present and ``{}`` when it said nothing (or
        before ``start``). Its items, each there only if the server gave it: ``header`` (the
        HTTP ``Server`` header), ``version``, and the model in use as the server describes
        it (``model_entry`` from an OpenAI model list, ``model_details`` from Ollama)."""
        return {"kind": self.kind, "url": strip_credentials(self.url), "api": self.api,
                "server": self.server}

    async def _identify(self, probed: httpx.Response) -> dict[str, Any]:
        """What the server says about itself: the probe's ``Server`` header and model list,
        and the answers to :meth:`_identity_calls`, asked all at once so that start-up waits
        one round trip, for at most ``min(connect timeout, identity.TIMEOUT_S)``. Never
        raises: what fails to answer is left out (see :mod:`soaktop.engine.backends.identity`).

        The model is the one named, or else the only one the server lists: with several and
        none named, which one the run will use is not known here.
        """
        assert self._client is not None
        listing = identity.json_of(probed)
        names = self._model_names(listing) or []
        model = self.model or (names[0] if len(names) == 1 else None)
        calls = self._identity_calls(model)
        timeout_s = min(self.timeouts.connect_s, identity.TIMEOUT_S)
        answers = await asyncio.gather(*(
            identity.ask_json(self._client, method, path, timeout_s, body)
            for method, path, body in calls.values()
        ))
        found = {"header": probed.headers.get("server"),
                 **self._identity(dict(zip(calls, answers)), listing, model)}
        return identity.clean(found, identity.secrets_of(self.url, self._api_key))

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not been awaited")
        headers = {"X-Request-Id": request_uuid(self.run_id, request.request_id)}
        watchdog = Watchdog(self.timeouts)
        resent = False
        try:
            while True:
                sent = SendClock()  # each attempt its own: RequestSent is the last one's send
                answered = False
                data, sent_headers = json_body(self._body(request), headers)
                # planned: held until then (a second attempt's time has passed)
                content = (data if request.send_at_ns is None
                           else HeldBody(data, request.send_at_ns))
                try:
                    async with self._client.stream(
                        "POST", self._url(self._path()), content=content,
                        headers=sent_headers, extensions=sent.extensions(),
                    ) as response:
                        answered = True
                        self._backoff.connected()
                        if await self._retry_without(response):
                            continue
                        await raise_for_status(response)
                        await check_stream_type(response, self.STREAM_TYPES, self.STREAM_NAME)
                        sent_at = sent_ns(response) or sent.t_ns
                        if sent_at is not None:
                            yield RequestSent(sent_at)
                        try:
                            reading = aiter(self._read(response, watchdog))
                            first = await anext(reading, None)
                            if first is None:
                                return
                            # an answer stamped before the send stamp: the stamp was taken
                            # late (see StampedStream.write); the send moves back to the
                            # moment before its call, which no answer can precede
                            if (sent_at is not None and type(first) is Arrival
                                    and first.t_ns < sent_at):
                                start = sent_start_ns(response)
                                if start is not None:
                                    yield RequestSent(start)
                            yield first
                            async for item in reading:
                                yield item
                        finally:
                            await response.aclose()
                            # httpx's response and its stream point at each other: left so,
                            # each request's ~45 objects wait for the cyclic collector, whose
                            # passes then stall the loop for milliseconds (5 ms measured at
                            # 3,000 tokens/s). Cut, they are freed at once.
                            response.stream = httpx.ByteStream(b"")
                        return
                except httpx.HTTPError as exc:
                    # Sent again once, before any answer and never after one (a response
                    # may have been partly read); the stale socket is no server failure, so
                    # it does not touch the back-off.
                    if not answered and not resent and stale_connection(exc, sent):
                        resent = True
                        self._note_resent()
                        continue
                    raise self._backoff.failed(transport_error(exc)) from None
        except asyncio.CancelledError:
            if watchdog.fired is None:
                raise
            raise watchdog.error() from None
        finally:
            watchdog.close()

    def _note_resent(self) -> None:
        """Count a request sent again after a stale pooled connection; the first time, say so
        in the run (a mark in the record), since the server drops idle connections unasked."""
        self.resent += 1
        if self.resent == 1 and self.notice is not None:
            self.notice("the server closed a kept-alive connection as a request went out on it, "
                        "without answering; such requests are sent again once, on a new "
                        "connection", False)

    async def _retry_without(self, response: httpx.Response) -> bool:
        """Whether ``response`` is a refusal to answer by asking again differently."""
        return False

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._client.build_request("POST", path).url
        return url

    def _path(self) -> str:
        raise NotImplementedError

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _read(self, response: httpx.Response,
              watchdog: Watchdog) -> AsyncIterator[Arrival | StreamEnd]:
        raise NotImplementedError

    def _model_names(self, listing: Any) -> list[str] | None:
        raise NotImplementedError

    def _identity_calls(
        self, model: str | None
    ) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
        """Calls that ask the server what it is: name -> (method, path, JSON body)."""
        raise NotImplementedError

    def _identity(
        self, answers: dict[str, Any], listing: Any, model: str | None
    ) -> dict[str, Any]:
        """The items picked from the calls' JSON ``answers`` (``None`` where a call had none)
        and the model ``listing``, as they came; :func:`identity.clean` then vets them."""
        raise NotImplementedError
