"""Ollama's native API: ``/api/generate`` or ``/api/chat``, streamed as NDJSON.

Each line with non-empty ``response`` (generate) or ``message.content`` / ``message.thinking``
(chat) is one token: Ollama streams token by token. The last line (``done: true``) carries the
server's own view of the request, ``eval_count``, ``eval_duration``, ``prompt_eval_count``,
``prompt_eval_duration``, ``load_duration`` and ``total_duration`` (nanoseconds), which is kept
in the record beside the client's timestamps so the two can be compared.

What the server is: ``GET /api/version``, and from ``POST /api/show`` the model's ``details``
(family, parameter size, quantisation, format) and when it was last changed, so two runs of
"llama3" can be told apart when the tag was pulled again in between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from soaktop.engine.backends import identity
from soaktop.engine.backends.base import Arrival, GenerationRequest, StreamEnd
from soaktop.engine.backends.http import Watchdog, parse_json, stamped_lines
from soaktop.engine.backends.http_backend import HttpBackend
from soaktop.engine.errors import BackendError

DEFAULT_URL = "http://127.0.0.1:11434"
SERVER_FIELDS = ("eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration",
                 "load_duration", "total_duration", "done_reason")
DETAIL_FIELDS = ("family", "parameter_size", "quantization_level", "format")


class OllamaBackend(HttpBackend):
    kind: ClassVar[str] = "ollama"
    APIS = ("generate", "chat")
    MODELS_PATH = "/api/tags"
    #: Ollama's own (``application/x-ndjson``), and the other names NDJSON goes by
    STREAM_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                    "application/x-jsonlines", "application/jsonlines")
    STREAM_NAME = "an NDJSON stream"

    def __init__(self, url: str = DEFAULT_URL, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)

    def _model_names(self, listing: Any) -> list[str] | None:
        data = listing.get("models") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            return None
        return [str(m.get("name") or m.get("model")) for m in data if isinstance(m, dict)]

    def _identity_calls(
        self, model: str | None
    ) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
        calls: dict[str, tuple[str, str, dict[str, Any] | None]] = {
            "version": ("GET", "/api/version", None)}
        if model:
            calls["show"] = ("POST", "/api/show", {"model": model})
        return calls

    def _identity(
        self, answers: dict[str, Any], listing: Any, model: str | None
    ) -> dict[str, Any]:
        show = answers.get("show") if isinstance(answers.get("show"), dict) else {}
        details = show.get("details") if isinstance(show.get("details"), dict) else {}
        return {
            "version": identity.version_of(answers["version"]),
            "model_details": {**{k: details[k] for k in DETAIL_FIELDS if k in details},
                              "modified_at": show.get("modified_at")},
        }

    def _path(self) -> str:
        return f"/api/{self.api}"

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "options": {"num_predict": request.max_tokens},
        }
        if self.api == "chat":
            body["messages"] = (list(request.prompt.messages) if request.prompt.messages
                                else [{"role": "user", "content": request.prompt.text}])
        else:
            body["prompt"] = request.prompt.text
        return body

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
            text, reasoning = chunk.get("response") or "", False
            message = chunk.get("message")
            if isinstance(message, dict):
                text = message.get("content") or ""
                if not text and message.get("thinking"):
                    text, reasoning = message["thinking"], True  # a thinking model's thoughts
            if text:
                watchdog.token()
                yield Arrival(t_ns=t_ns, tokens=1, text=text, reasoning=reasoning)
            if chunk.get("done"):
                end = StreamEnd(finish_reason=str(chunk.get("done_reason") or "stop"),
                                server={k: chunk[k] for k in SERVER_FIELDS if k in chunk} or None)
        # the body is read to its end, or the connection could not go back to the pool
        if end is None:
            raise BackendError("stream ended without done: true", "incomplete_stream")
        yield end
