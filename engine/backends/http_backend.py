"""The shared body of the HTTP backends: connection, probe, model list and the stream loop.

:mod:`engine.backends.openai` and :mod:`engine.backends.ollama` differ only in their wire
format (path, request body, how a response is read, how the model list looks); everything
else, the send stamp, the connect back-off, the timeout watchdog and the error mapping, is
here once. The plumbing it uses lives in :mod:`engine.backends.http`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from engine.backends.base import Arrival, Backend, GenerationRequest, RequestSent, StreamEnd
from engine.backends.http import (
    ConnectBackoff,
    SendClock,
    Timeouts,
    Watchdog,
    get_json,
    make_client,
    probe,
    raise_for_status,
    request_uuid,
    strip_credentials,
    transport_error,
)
from engine.backends.stamping import sent_ns
from engine.config import check_url
from engine.errors import BackendUnavailable, ConfigError


class HttpBackend(Backend):
    """What the OpenAI-compatible and Ollama backends share; each supplies its wire format.

    A subclass names ``kind``, ``APIS`` (the first is the default), ``MODELS_PATH``, and
    implements :meth:`_path`, :meth:`_body`, :meth:`_read` and :meth:`_model_names`.
    :meth:`_retry_without` lets it answer a refusal by asking again differently (once per
    refusal it recognises).
    """

    APIS: ClassVar[tuple[str, ...]]
    MODELS_PATH: ClassVar[str]

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

    def _new_client(self) -> httpx.AsyncClient:
        return make_client(self.url, self.timeouts, self._api_key, self._transport)

    async def start(self) -> None:
        self._client = self._new_client()
        try:
            await probe(self._client, self.MODELS_PATH)
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
        return {"kind": self.kind, "url": strip_credentials(self.url), "api": self.api}

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not been awaited")
        headers = {"X-Request-Id": request_uuid(self.run_id, request.request_id)}
        watchdog = Watchdog(self.timeouts)
        try:
            while True:
                sent = SendClock()
                try:
                    async with self._client.stream(
                        "POST", self._path(), json=self._body(request), headers=headers,
                        extensions=sent.extensions(),
                    ) as response:
                        self._backoff.connected()
                        if await self._retry_without(response):
                            continue
                        await raise_for_status(response)
                        sent_at = sent_ns(response) or sent.t_ns
                        if sent_at is not None:
                            yield RequestSent(sent_at)
                        async for item in self._read(response, watchdog):
                            yield item
                        return
                except httpx.HTTPError as exc:
                    raise self._backoff.failed(transport_error(exc)) from None
        except asyncio.CancelledError:
            if watchdog.fired is None:
                raise
            raise watchdog.error() from None
        finally:
            watchdog.close()

    async def _retry_without(self, response: httpx.Response) -> bool:
        """Whether ``response`` is a refusal to answer by asking again differently."""
        return False

    def _path(self) -> str:
        raise NotImplementedError

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _read(self, response: httpx.Response,
              watchdog: Watchdog) -> AsyncIterator[Arrival | StreamEnd]:
        raise NotImplementedError

    def _model_names(self, listing: Any) -> list[str] | None:
        raise NotImplementedError
