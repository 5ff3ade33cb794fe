"""OpenAI-compatible servers (vLLM, SGLang, TGI, llama.cpp, LM Studio, ...) over streaming SSE.

Token truth: an arrival is a chunk whose delta carries text (``content``, or ``reasoning_content``
/ ``reasoning`` for reasoning models); an empty role chunk, a keep-alive comment, a usage-only
chunk and ``[DONE]`` are not tokens, so a server that sends an empty role chunk first cannot
shrink TTFT to zero. When the final ``usage`` says more tokens were generated than chunks
arrived, the tokens are shared among the chunks (see
:func:`~soaktop.engine.backends.http.share_tokens`) and each arrival records how many it carried.

The ``usage`` is kept whole in the record (``server_reported``): its ``prompt_tokens`` is the
server's own count of the prompt (its tokenizer), and ``prompt_tokens_details.cached_tokens``
(vLLM, SGLang) how many of them its prefix cache served; the summary sets both beside
soaktop's count (``input_tokens``, ``cached_share``).

``stream_options.include_usage`` is asked for; a server that answers 400/422 to it is asked
again without it, once, and never again in this run.

What the server is: ``GET /version`` (vLLM and SGLang answer ``{"version": "0.6.3"}``;
llama-cpp-python and others 404) and the model list's entry for the model in use, whose extra
fields say what serves it (vLLM's ``max_model_len``, ``owned_by``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from soaktop.engine.backends import identity
from soaktop.engine.backends.base import Arrival, GenerationRequest, StreamEnd
from soaktop.engine.backends.http import (
    Watchdog,
    parse_json,
    share_tokens,
    sse_events,
)
from soaktop.engine.backends.http_backend import HttpBackend
from soaktop.engine.errors import BackendError


class OpenAIBackend(HttpBackend):
    kind: ClassVar[str] = "openai"
    APIS = ("chat", "completions")
    MODELS_PATH = "/v1/models"
    STREAM_TYPES = ("text/event-stream",)
    STREAM_NAME = "an event stream"

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(url.rstrip("/").removesuffix("/v1"), *args, **kwargs)
        self._usage_supported = True
        self._length_options = True  # ignore_eos / min_tokens, until a server refuses them

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "usage_reported": self._usage_supported,
                "length_options": self._length_options}

    def _model_names(self, listing: Any) -> list[str] | None:
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            return None
        return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]

    def _identity_calls(
        self, model: str | None
    ) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
        return {"version": ("GET", "/version", None)}

    def _identity(
        self, answers: dict[str, Any], listing: Any, model: str | None
    ) -> dict[str, Any]:
        data = listing.get("data") if isinstance(listing, dict) else None
        entries = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        return {
            "version": identity.version_of(answers["version"]),
            "model_entry": next((m for m in entries if model and str(m.get("id")) == model),
                                None),
        }

    def _path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "max_tokens": request.max_tokens,
        }
        if self.api == "chat":
            body["messages"] = (list(request.prompt.messages) if request.prompt.messages
                                else [{"role": "user", "content": request.prompt.text}])
        else:
            body["prompt"] = request.prompt.text
        if self._usage_supported:
            body["stream_options"] = {"include_usage": True}
        if self._length_options:
            # the asked length, not one cut short by EOS (vLLM, SGLang and llama.cpp take these)
            body["ignore_eos"] = True
            body["min_tokens"] = request.max_tokens
        return body

    async def _retry_without(self, response: httpx.Response) -> bool:
        """A 400/422 to an option some servers do not know: drop it and ask again, once per
        option (the length options first, then usage in the stream)."""
        if response.status_code not in (400, 422):
            return False
        said = (await response.aread()).decode("utf-8", errors="replace")
        usage_named = "stream_options" in said or "include_usage" in said
        if self._length_options and not usage_named:
            self._length_options = False  # asked once; never again in this run
            return True
        if self._usage_supported:
            self._usage_supported = False
            return True
        return False

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
                text, reasoning = _choice_text(choice)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
                if text:
                    watchdog.token()
                    texts.append(text)
                    yield Arrival(t_ns=t_ns, tokens=1, text=text, reasoning=reasoning)
                if finish in FAILED_FINISH:  # a failure inside a 200: never a success
                    raise BackendError(f"the server ended the stream with finish_reason "
                                       f"{finish!r}", f"finish_{finish}")
        if not done:
            raise BackendError("stream ended without [DONE]", "incomplete_stream")
        reported = usage.get("completion_tokens")
        shares = None
        if isinstance(reported, int) and reported > len(texts) > 0:
            shares = tuple(share_tokens(texts, reported))
        yield StreamEnd(finish_reason=finish, arrival_tokens=shares, server=usage or None)


#: Finish reasons that mean the request failed, though the stream was a 200.
FAILED_FINISH = ("error", "abort")


def _choice_text(choice: dict[str, Any]) -> tuple[str, bool]:
    """A streamed choice's text, and whether it is reasoning (``reasoning_content`` as vLLM
    and SGLang send it, ``reasoning`` as some others do) rather than the answer."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        if delta.get("content"):
            return delta["content"], False
        thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
        return (thinking, True) if isinstance(thinking, str) else ("", False)
    return choice.get("text") or "", False
