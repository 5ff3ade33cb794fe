"""The wire formats the loopback server speaks, one class per generation endpoint.

Shapes follow what real servers send, so a client tested here meets no surprise there: OpenAI
chat and completions chunks as vLLM streams them (Server-Sent Events, ``data: [DONE]`` last, an
optional ``usage`` chunk with empty ``choices`` before it) and Ollama's newline-delimited JSON
(a last line with ``done: true`` and the server's own timings in nanoseconds). A :class:`Wire`
is bound to one request: it reads what the request asks for and renders payloads; framing
them into HTTP chunks and timing them is the server's business.
"""

from __future__ import annotations

import abc
import json
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

from soaktop.engine.loopback.schedule import Schedule

_WORDS = (
    "the", "soak", "test", "runs", "warm", "and", "steady", "while", "tokens", "flow", "out",
    "of", "a", "loopback", "server", "on", "time",
)

GENERATION_FAILED = "loopback: generation failed"
# A string value written as JSON and then swapped for raw invalid UTF-8 (fault ``non_utf8``).
_SENTINEL = "\x00"
_SENTINEL_JSON = b'"\\u0000"'


def words(start: int, count: int) -> str:
    """``count`` tokens of text, one word each with a leading space, as BPE tokens look."""
    return "".join(" " + _WORDS[(start + i) % len(_WORDS)] for i in range(count))


def count_words(value: Any) -> int:
    """Prompt tokens, counted as words (token ids count one each) in strings, lists, messages."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(1 if isinstance(v, int) else count_words(v) for v in value)
    if isinstance(value, dict):
        return count_words(value.get("content", value.get("text", "")))
    return 0


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class Wire(abc.ABC):
    """One generation request's wire format, made from its JSON body and its number (which
    OpenAI ids carry); raises ``ValueError`` on a request it refuses."""

    content_type: ClassVar[str]
    prompt_field: ClassVar[str]  # "messages" or "prompt": where the prompt is, to count it

    def __init__(self, body: dict[str, Any], request: int, schedule: Schedule) -> None:
        self.model = str(body.get("model") or schedule.model)
        self.role_chunk = schedule.role_chunk
        self.stream = self._wants_stream(body)
        limit = self._limit(body)
        self.tokens = schedule.tokens if limit is None else limit
        # A named limit is what ends the output; without one the "model" stops by itself.
        self.finish = "stop" if limit is None else "length"
        # the server's count of the prompt: its tokenizer may make several tokens of a word
        self.prompt_tokens = (count_words(body.get(self.prompt_field, ""))
                              * schedule.prompt_tokens_per_word)
        self.cached_tokens = min(schedule.cached_prefix_tokens, self.prompt_tokens)
        self.reports_cached = schedule.cached_prefix_tokens > 0

    @abc.abstractmethod
    def _wants_stream(self, body: dict[str, Any]) -> bool: ...

    @abc.abstractmethod
    def _limit(self, body: dict[str, Any]) -> int | None:
        """The output length the request names, if any."""


    @abc.abstractmethod
    def frame(self, payload: bytes) -> bytes:
        """One event or line of the stream, as it goes into one HTTP chunk."""

    def opening(self) -> list[bytes]:
        """Payloads sent as soon as the response starts, before any content."""
        return []

    @abc.abstractmethod
    def content(self, text: str, last: bool, reasoning: bool = False) -> bytes:
        """The payload of one content chunk (``last``: it ends the output; ``reasoning``: it
        is thinking, sent in the field reasoning models use, where the endpoint has one)."""

    @abc.abstractmethod
    def closing(self, timing: tuple[int, int, int]) -> list[bytes]:
        """Payloads after the content; the last one is the end marker.

        ``timing`` is ``(received_ns, first_content_ns, last_content_ns)``.
        """

    @abc.abstractmethod
    def response(self, text: str, timing: tuple[int, int, int]) -> dict[str, Any]:
        """The body of a non-streaming response."""

    @classmethod
    @abc.abstractmethod
    def error_body(cls, message: str, kind: str) -> dict[str, Any]:
        """An error response's body (a classmethod: a request that cannot be read gets one)."""

    @abc.abstractmethod
    def error_event(self) -> bytes:
        """The payload of an error reported inside a stream that had started well."""

    def non_utf8(self) -> bytes:
        """A content payload whose text is the raw bytes ``\\xff\\xfe``: invalid UTF-8."""
        return self.content(_SENTINEL, False).replace(_SENTINEL_JSON, b'"\xff\xfe"')


class _OpenAI(Wire):
    content_type = "text/event-stream"
    object_name: ClassVar[str]
    id_prefix: ClassVar[str]

    def __init__(self, body: dict[str, Any], request: int, schedule: Schedule) -> None:
        super().__init__(body, request, schedule)
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.created = int(time.time())
        self.id = f"{self.id_prefix}-loopback-{request}"

    def _wants_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def _limit(self, body: dict[str, Any]) -> int | None:
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValueError("max_tokens must be a positive integer")
        return limit

    def frame(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _dumps({
            "id": self.id, "object": self.object_name, "created": self.created,
            "model": self.model, "choices": choices, **extra,
        })

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        }
        if self.reports_cached:  # as vLLM (with prompt token details on) and SGLang do
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    def closing(self, timing: tuple[int, int, int]) -> list[bytes]:
        usage = [self._chunk([], usage=self._usage())] if self.include_usage else []
        return [*usage, b"[DONE]"]

    response_object: ClassVar[str]

    @abc.abstractmethod
    def _piece(self, text: str) -> dict[str, Any]:
        """A streamed choice's text, in this endpoint's field."""

    @abc.abstractmethod
    def _whole(self, text: str) -> dict[str, Any]:
        """A non-streamed choice's text, in this endpoint's field."""

    def content(self, text: str, last: bool, reasoning: bool = False) -> bytes:
        piece = self._thinking(text) if reasoning else self._piece(text)
        return self._chunk([{"index": 0, **piece, "logprobs": None,
                             "finish_reason": self.finish if last else None}])

    def _thinking(self, text: str) -> dict[str, Any]:
        return self._piece(text)  # an endpoint with no reasoning field sends it as text

    def response(self, text: str, timing: tuple[int, int, int]) -> dict[str, Any]:
        return {
            "id": self.id, "object": self.response_object, "created": self.created,
            "model": self.model, "usage": self._usage(),
            "choices": [{"index": 0, **self._whole(text), "logprobs": None,
                         "finish_reason": self.finish}],
        }

    @classmethod
    def error_body(cls, message: str, kind: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind}}

    def error_event(self) -> bytes:
        return _dumps({"error": {"message": GENERATION_FAILED, "code": 500}})


class OpenAIChat(_OpenAI):
    """``POST /v1/chat/completions``."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    prompt_field = "messages"

    def opening(self) -> list[bytes]:
        if not self.role_chunk:
            return []
        delta = {"role": "assistant", "content": ""}
        return [self._chunk([{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": None}])]

    response_object = "chat.completion"

    def _piece(self, text: str) -> dict[str, Any]:
        return {"delta": {"content": text}}

    def _thinking(self, text: str) -> dict[str, Any]:
        return {"delta": {"reasoning_content": text}}  # as vLLM and SGLang send it

    def _whole(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}


class OpenAICompletions(_OpenAI):
    """``POST /v1/completions``."""

    object_name = "text_completion"
    id_prefix = "cmpl"

    prompt_field = "prompt"

    response_object = "text_completion"

    def _piece(self, text: str) -> dict[str, Any]:
        return {"text": text}

    _whole = _piece  # a whole completion carries its text the same way


class _Ollama(Wire):
    content_type = "application/x-ndjson"
    _created_at: str | None = None

    def _wants_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False  # Ollama streams unless told not to

    def _limit(self, body: dict[str, Any]) -> int | None:
        limit = (body.get("options") or {}).get("num_predict")
        if limit is not None and type(limit) is not int:
            raise ValueError("options.num_predict must be an integer")
        return None if limit is None or limit < 0 else limit  # negative: no limit

    def frame(self, payload: bytes) -> bytes:
        return payload + b"\n"

    @abc.abstractmethod
    def _line(self, text: str, done: bool, reasoning: bool = False) -> dict[str, Any]:
        """One line of the stream, with the text in this endpoint's field."""

    def _head(self) -> dict[str, Any]:
        # Ollama stamps each line; formatting a datetime per line cost about half of this
        # server's work per line (measured), and no client reads it: once per request
        if self._created_at is None:
            self._created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"model": self.model, "created_at": self._created_at}

    def content(self, text: str, last: bool, reasoning: bool = False) -> bytes:
        return _dumps(self._line(text, False, reasoning))

    def _done(self, text: str, timing: tuple[int, int, int]) -> dict[str, Any]:
        """The last line; durations from this server's clock (the first token counts as the
        prompt's: Ollama's prompt phase ends when it has sampled the first token)."""
        received, first, last = timing
        return {
            **self._line(text, True),
            "done_reason": self.finish,
            "total_duration": time.perf_counter_ns() - received,
            "load_duration": 0,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": first - received,
            "eval_count": self.tokens,
            "eval_duration": last - first,
        }

    def closing(self, timing: tuple[int, int, int]) -> list[bytes]:
        return [_dumps(self._done("", timing))]

    def response(self, text: str, timing: tuple[int, int, int]) -> dict[str, Any]:
        return self._done(text, timing)

    @classmethod
    def error_body(cls, message: str, kind: str) -> dict[str, Any]:
        return {"error": message}

    def error_event(self) -> bytes:
        return _dumps({"error": GENERATION_FAILED})


class OllamaGenerate(_Ollama):
    """``POST /api/generate``."""

    prompt_field = "prompt"

    def _line(self, text: str, done: bool, reasoning: bool = False) -> dict[str, Any]:
        return {**self._head(), "response": text, "done": done}


class OllamaChat(_Ollama):
    """``POST /api/chat``."""

    prompt_field = "messages"

    def _line(self, text: str, done: bool, reasoning: bool = False) -> dict[str, Any]:
        field = "thinking" if reasoning else "content"  # Ollama's field for thinking models
        return {**self._head(), "message": {"role": "assistant", field: text}, "done": done}


#: Generation endpoints: path -> wire format.
WIRES: dict[str, type[Wire]] = {
    "/v1/chat/completions": OpenAIChat,
    "/v1/completions": OpenAICompletions,
    "/api/generate": OllamaGenerate,
    "/api/chat": OllamaChat,
}


def openai_models(model: str) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [{
        "id": model, "object": "model", "created": 0, "owned_by": "soaktop",
        "max_model_len": 4096,
    }]}


_OLLAMA_MODIFIED_AT = "1970-01-01T00:00:00Z"
_OLLAMA_DETAILS = {"parent_model": "", "format": "gguf", "family": "loopback",
                   "families": ["loopback"], "parameter_size": "0", "quantization_level": "none"}


def ollama_tags(model: str) -> dict[str, Any]:
    """``GET /api/tags``."""
    return {"models": [{
        "name": model, "model": model, "modified_at": _OLLAMA_MODIFIED_AT, "size": 0,
        "digest": "0" * 64, "details": _OLLAMA_DETAILS,
    }]}


def ollama_show(model: str) -> dict[str, Any]:
    """``POST /api/show`` for ``model`` (any name: generation accepts any too)."""
    return {
        "modelfile": f"FROM {model}\n", "parameters": "", "template": "{{ .Prompt }}",
        "details": _OLLAMA_DETAILS, "model_info": {"general.architecture": "loopback"},
        "capabilities": ["completion"], "modified_at": _OLLAMA_MODIFIED_AT,
    }
