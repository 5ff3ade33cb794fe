"""OpenAI-compatible servers (vLLM, SGLang, TGI, llama.cpp, LM Studio, ...) over streaming SSE.

Token truth: an arrival is a chunk whose delta carries text (``content``, or ``reasoning_content``
/ ``reasoning`` for reasoning models); an empty role chunk, a keep-alive comment, a usage-only
chunk and ``[DONE]`` are not tokens, so a server that sends an empty role chunk first cannot
shrink TTFT to zero. When the final ``usage`` says more tokens were generated than chunks
arrived, the tokens are shared among the chunks (see :func:`~engine.backends.http.share_tokens`)
and each arrival records how many it carried.

``stream_options.include_usage`` is asked for; a server that answers 400/422 to it is asked
again without it, once, and never again in this run.
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
    share_tokens,
    sse_events,
    strip_credentials,
    transport_error,
)
from engine.errors import BackendError, ConfigError

APIS = ("chat", "completions")


class OpenAIBackend(Backend):
    kind: ClassVar[str] = "openai"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api: str = "chat",
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **_ignored: Any,
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"unknown --api {api!r}; choose chat or completions")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https:// (got {url!r})")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.api = api
        self._api_key = api_key
        self.timeouts = timeouts or Timeouts()
        self._transport = transport
        self.run_id = uuid.uuid4().hex[:8]
        self._client: httpx.AsyncClient | None = None
        self._backoff = ConnectBackoff()
        self._usage_supported = True

    async def start(self) -> None:
        self._client = make_client(self.url, self.timeouts, self._api_key, self._transport)
        try:
            await probe(self._client, "/v1/models")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def models(self) -> list[str]:
        client = self._client or make_client(
            self.url, self.timeouts, self._api_key, self._transport
        )
        try:
            listing = await get_json(client, "/v1/models")
        finally:
            if client is not self._client:
                await client.aclose()
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise ConfigError(f"{strip_credentials(self.url)}/v1/models is not a model list")
        return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": strip_credentials(self.url), "api": self.api,
                "usage_reported": self._usage_supported}

    def _body(self, request: GenerationRequest, usage: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "max_tokens": request.max_tokens,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt.text}]
        else:
            body["prompt"] = request.prompt.text
        if usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[RequestSent | Arrival | StreamEnd]:
        if self._client is None:
            raise RuntimeError("OpenAIBackend.start() has not been awaited")
        path = "/v1/chat/completions" if self.api == "chat" else "/v1/completions"
        watchdog = Watchdog(self.timeouts)
        try:
            usage = self._usage_supported
            while True:
                sent = SendClock()
                try:
                    async with self._client.stream(
                        "POST", path, json=self._body(request, usage),
                        headers={"Accept": "text/event-stream",
                                 **request_id_header(self.run_id, request.request_id)},
                        extensions=sent.extensions(),
                    ) as response:
                        self._backoff.connected()
                        if usage and response.status_code in (400, 422):
                            await response.aread()
                            self._usage_supported = usage = False  # once, then never again
                            continue
                        await raise_for_status(response)
                        if sent.t_ns is not None:
                            yield RequestSent(sent.t_ns)
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

    async def _read(
        self, response: httpx.Response, watchdog: Watchdog
    ) -> AsyncIterator[Arrival | StreamEnd]:
        texts: list[str] = []
        finish = "unknown"
        usage: dict[str, Any] = {}
        done = False
        async for t_ns, data in sse_events(response):
            if data == "[DONE]":
                done = True
                continue  # read to the end of the body, or the connection cannot be reused
            if done:
                raise BackendError(f"data after [DONE]: {data[:60]!r}", "malformed_sse")
            chunk = parse_json(data)
            if not isinstance(chunk, dict):
                raise BackendError(f"unexpected chunk: {data[:60]!r}", "malformed_json")
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise BackendError(f"error inside the stream: {message}", "stream_error")
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = _choice_text(choice)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
                if text:
                    watchdog.token()
                    texts.append(text)
                    yield Arrival(t_ns=t_ns, tokens=1, text=text)
        if not done:
            raise BackendError("stream ended without [DONE]", "incomplete_stream")
        reported = usage.get("completion_tokens")
        shares = None
        if isinstance(reported, int) and reported > len(texts) > 0:
            shares = tuple(share_tokens(texts, reported))
        yield StreamEnd(finish_reason=finish, arrival_tokens=shares, server=usage or None)


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return (delta.get("content") or delta.get("reasoning_content")
                or delta.get("reasoning") or "")
    return choice.get("text") or ""
