"""Ollama's native API: ``/api/generate`` or ``/api/chat``, streamed as NDJSON.

Each line with non-empty ``response`` (generate) or ``message.content`` / ``message.thinking``
(chat) is one token: Ollama streams token by token. The last line (``done: true``) carries the
server's own view of the request, ``eval_count``, ``eval_duration``, ``prompt_eval_count``,
``prompt_eval_duration``, ``load_duration`` and ``total_duration`` (nanoseconds), which is kept
in the record beside the client's timestamps so the two can be compared.
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
    parse_json,
    probe,
    raise_for_status,
    request_id_header,
    stamped_lines,
    strip_credentials,
    transport_error,
)
from engine.errors import BackendError, ConfigError

APIS = ("generate", "chat")
SERVER_FIELDS = ("eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration",
                 "load_duration", "total_duration", "done_reason")


class OllamaBackend(Backend):
    kind: ClassVar[str] = "ollama"

    def __init__(
        self,
        url: str = "http://127.0.0.1:11434",
        model: str | None = None,
        api: str = "generate",
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **_ignored: Any,
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"unknown --api {api!r} for ollama; choose generate or chat")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https:// (got {url!r})")
        self.url = url.rstrip("/")
        self.model = model
        self.api = api
        self.timeouts = timeouts or Timeouts()
        self._transport = transport
        self.run_id = uuid.uuid4().hex[:8]
        self._client: httpx.AsyncClient | None = None
        self._backoff = ConnectBackoff()

    async def start(self) -> None:
        self._client = make_client(self.url, self.timeouts, None, self._transport)
        try:
            await probe(self._client, "/api/tags")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def models(self) -> list[str]:
        client = self._client or make_client(self.url, self.timeouts, None, self._transport)
        try:
            listing = await get_json(client, "/api/tags")
        finally:
            if client is not self._client:
                await client.aclose()
        data = listing.get("models") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise ConfigError(f"{strip_credentials(self.url)}/api/tags is not a model list")
        return [str(m.get("name") or m.get("model")) for m in data if isinstance(m, dict)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": strip_credentials(self.url), "api": self.api}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "options": {"num_predict": request.max_tokens},
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt.text}]
        else:
            body["prompt"] = request.prompt.text
        return body

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        if self._client is None:
            raise RuntimeError("OllamaBackend.start() has not been awaited")
        watchdog = Watchdog(self.timeouts)
        sent = SendClock()
        try:
            async with self._client.stream(
                "POST", f"/api/{self.api}", json=self._body(request),
                headers=request_id_header(self.run_id, request.request_id),
                extensions=sent.extensions(),
            ) as response:
                self._backoff.connected()
                await raise_for_status(response)
                if sent.t_ns is not None:
                    yield RequestSent(sent.t_ns)
                async for item in self._read(response, watchdog):
                    yield item
        except httpx.HTTPError as exc:
            raise self._backoff.failed(transport_error(exc)) from None
        except asyncio.CancelledError:
            if watchdog.fired is None:
                raise
            raise watchdog.error() from None
        finally:
            watchdog.close()

    async def _read(
        self, response: httpx.Response, watchdog: Watchdog
    ) -> AsyncIterator[Arrival | StreamEnd]:
        end: StreamEnd | None = None
        async for t_ns, line in stamped_lines(response):
            if not line.strip():
                continue
            chunk = parse_json(line)
            if not isinstance(chunk, dict):
                raise BackendError(f"unexpected line: {line[:60]!r}", "malformed_json")
            if "error" in chunk:
                raise BackendError(f"error inside the stream: {chunk['error']}", "stream_error")
            text = chunk.get("response") or ""
            message = chunk.get("message")
            if isinstance(message, dict):
                text = message.get("content") or message.get("thinking") or ""
            if text:
                watchdog.token()
                yield Arrival(t_ns=t_ns, tokens=1, text=text)
            if chunk.get("done"):
                end = StreamEnd(finish_reason=str(chunk.get("done_reason") or "stop"),
                                server={k: chunk[k] for k in SERVER_FIELDS if k in chunk} or None)
        # the body is read to its end, or the connection could not go back to the pool
        if end is None:
            raise BackendError("stream ended without done: true", "incomplete_stream")
        yield end
