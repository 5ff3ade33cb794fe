"""Token truth and error classes of the HTTP backends, on canned bytes (httpx.MockTransport).

Timing, resets and stalls need real sockets: those are in test_http_backends.py against the
loopback server.
"""

import json

import httpx
import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, StreamEnd
from soaktop.engine.backends.http import excerpt, share_tokens, strip_credentials
from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.errors import BackendError
from tests.engine import streams

REQUEST = GenerationRequest(7, Prompt(0, (1, 2), "hello there"), 16, "m")


def sse(*events, done=True):
    body = "".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(content=None, role=None, finish=None, **extra):
    delta = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


class Server:
    """A canned server: answers /v1/models and streams ``body`` for each completion."""

    def __init__(self, body=b"", status=200, headers=None, refuse_usage=False):
        self.body, self.status, self.headers = body, status, headers or {}
        self.refuse_usage = refuse_usage
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path in ("/v1/models", "/api/tags"):
            return httpx.Response(200, json={"data": [{"id": "m"}], "models": [{"name": "m"}]})
        if self.refuse_usage and b"stream_options" in request.content:
            return httpx.Response(400, json={"error": {"message": "unknown stream_options"}})
        # each API's own stream type, as the servers send them (Ollama: NDJSON)
        stream_type = ("application/x-ndjson" if request.url.path.startswith("/api/")
                       else "text/event-stream")
        return httpx.Response(self.status, content=self.body,
                              headers={"content-type": stream_type, **self.headers})


async def collect(backend):
    return await streams.collect(backend, REQUEST)


def openai(server, **kw):
    return OpenAIBackend("http://soaktop.test", transport=httpx.MockTransport(server), **kw)


async def test_role_chunk_and_usage_chunk_are_not_tokens():
    server = Server(sse(chunk("", role="assistant"), chunk("Hel"), chunk("lo"),
                        chunk(finish="length"),
                        {"choices": [], "usage": {"completion_tokens": 2}}))
    items = await collect(openai(server))
    arrivals = [i for i in items if isinstance(i, Arrival)]
    assert [a.text for a in arrivals] == ["Hel", "lo"]
    end = items[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "length"
    assert end.arrival_tokens is None  # usage agrees with one token per chunk
    assert end.server == {"completion_tokens": 2}
    body = json.loads(server.requests[-1].content)
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 16
    assert body["messages"] == [{"role": "user", "content": "hello there"}]


async def test_multi_token_chunks_are_counted_from_usage():
    server = Server(sse(chunk("a"), chunk("bbbbbb"), chunk("cc"),
                        {"choices": [], "usage": {"completion_tokens": 7}}))
    end = (await collect(openai(server)))[-1]
    assert sum(end.arrival_tokens) == 7 and len(end.arrival_tokens) == 3
    assert end.arrival_tokens[1] == max(end.arrival_tokens)  # the longest text got most


def test_share_tokens_by_hand():
    assert share_tokens(["a", "bb", "c"], 3) == [1, 1, 1]
    assert share_tokens(["a", "bbb"], 6) == [2, 4]  # 4 extra split 1:3
    assert sum(share_tokens(["x"] * 5, 13)) == 13


async def test_a_server_refusing_include_usage_is_asked_again_without_it():
    server = Server(sse(chunk("x"), chunk("y")), refuse_usage=True)
    backend = openai(server)
    items = await collect(backend)
    assert [i.text for i in items if isinstance(i, Arrival)] == ["x", "y"]
    assert backend.describe()["usage_reported"] is False
    await backend.start()
    [_ async for _ in backend.stream(REQUEST)]
    await backend.close()
    # asked with stream_options once, refused; never again in this run, not even by the
    # second stream
    assert sum(b"stream_options" in r.content for r in server.requests) == 1
    assert b"stream_options" not in server.requests[-1].content


async def test_completions_api_reads_text():
    server = Server(sse({"choices": [{"text": "to", "index": 0}]},
                        {"choices": [{"text": "ken", "index": 0, "finish_reason": "stop"}]}))
    items = await collect(openai(server, api="completions"))
    assert [i.text for i in items if isinstance(i, Arrival)] == ["to", "ken"]
    assert items[-1].finish_reason == "stop"
    assert json.loads(server.requests[-1].content)["prompt"] == "hello there"


async def test_api_key_is_sent_as_bearer_and_kept_out_of_describe():
    server = Server(sse(chunk("x")))
    backend = openai(server, api_key="sk-secret-123")
    await collect(backend)
    assert server.requests[-1].headers["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in json.dumps(backend.describe())


def test_credentials_never_leave_a_url():
    assert strip_credentials("https://user:pw@host:8443/v1?key=abc") == "https://host:8443/v1"


@pytest.mark.parametrize(
    "body, status, error_class, words",
    [
        (sse(chunk("a"), "{not json"), 200, "malformed_json", "not JSON"),
        (sse(chunk("a"), done=False), 200, "incomplete_stream", "[DONE]"),
        (b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n', 200, "non_utf8",
         "UTF-8"),
        (b"data: " + json.dumps(chunk("a")).encode() + b"\n\ngarbage line\n\n", 200,
         "malformed_sse", "not a server-sent event"),
        (sse(chunk("a"), {"error": {"message": "engine died"}}), 200, "stream_error",
         "engine died"),
        (b'{"error": {"message": "model m not found"}}', 404, "http_404", "model m not found"),
        (b"<html>overloaded</html>", 503, "http_503", "overloaded"),
    ],
)
async def test_each_failure_has_its_class_and_a_one_line_message(body, status, error_class,
                                                                words):
    with pytest.raises(BackendError) as info:
        await collect(openai(Server(body, status)))
    assert info.value.error_class == error_class
    assert words in str(info.value) and "\n" not in str(info.value)
    # only a 4xx says the request itself was wrong; the rest may succeed on another try
    assert info.value.refused is (error_class == "http_404")


async def test_429_carries_retry_after():
    server = Server(b'{"error": "slow down"}', 429, headers={"retry-after": "2"})
    with pytest.raises(BackendError) as info:
        await collect(openai(server))
    assert info.value.error_class == "http_429" and info.value.retry_after_s == 2.0
    assert not info.value.refused  # load, not a mistake


async def test_ollama_tokens_and_server_timings():
    lines = [
        {"model": "m", "response": "Hel", "done": False},
        {"model": "m", "response": "", "done": False},
        {"model": "m", "response": "lo", "done": False},
        {"model": "m", "response": "", "done": True, "done_reason": "length", "eval_count": 2,
         "eval_duration": 40_000_000, "prompt_eval_count": 5, "prompt_eval_duration": 1_000},
    ]
    server = Server("".join(json.dumps(x) + "\n" for x in lines).encode())
    items = await collect(OllamaBackend("http://soaktop.test",
                                       transport=httpx.MockTransport(server)))
    assert [i.text for i in items if isinstance(i, Arrival)] == ["Hel", "lo"]
    end = items[-1]
    assert end.finish_reason == "length"
    assert end.server["eval_count"] == 2 and end.server["eval_duration"] == 40_000_000
    body = json.loads(server.requests[-1].content)
    assert body["options"]["num_predict"] == 16 and body["prompt"] == "hello there"


async def test_ollama_stream_without_done_is_incomplete():
    server = Server(b'{"response": "a", "done": false}\n')
    with pytest.raises(BackendError) as info:
        await collect(OllamaBackend("http://soaktop.test", transport=httpx.MockTransport(server)))
    assert info.value.error_class == "incomplete_stream"


def ollama(server, **kw):
    return OllamaBackend("http://soaktop.test", transport=httpx.MockTransport(server), **kw)


LOGIN_PAGE = (b"<!DOCTYPE html>\n<html>\n<head><title>Sign in</title></head>\n<body>\n"
              b"<form action=\"/login\"><input name=\"user\"></form>\n" + b" " * 4000
              + b"</body></html>\n")
NDJSON = (b'{"response": "a", "done": false}\n'
          b'{"response": "", "done": true, "eval_count": 1}\n')


def shown_body(message: str) -> str:
    """What a ``not_event_stream`` message shows of the body."""
    return message.partition("; the body begins ")[2]


@pytest.mark.parametrize("make", [openai, ollama], ids=["openai", "ollama"])
async def test_a_login_page_with_200_is_not_an_event_stream(make):
    """A proxy's login page answered with 200: ``not_event_stream``, naming the content type
    and showing how the body begins, on one line, at most 80 characters of it; not a stream
    that ended early, which is what it was counted as before."""
    server = Server(LOGIN_PAGE, headers={"content-type": "text/html; charset=utf-8"})
    with pytest.raises(BackendError) as info:
        await collect(make(server))
    message = str(info.value)
    assert info.value.error_class == "not_event_stream"
    assert "Content-Type text/html; charset=utf-8" in message and "\n" not in message
    body = shown_body(message)
    assert body.startswith("<!DOCTYPE html> <html> <head><title>Sign in</title>")
    assert len(body) == 80 and body.endswith("\u2026")  # cut, and said to be
    assert not info.value.refused and info.value.retry_after_s is None


@pytest.mark.parametrize(
    "make, body, content_type",
    [
        # a server that ignored "stream": true and answered the whole completion at once
        (openai, json.dumps({"id": "x", "choices": [{"message": {"content": "hi"}}]}).encode(),
         "application/json"),
        (ollama, b'{"model": "m", "response": "hi", "done": true}', "application/json"),
        (ollama, sse(chunk("a")), "text/event-stream"),  # an OpenAI stream where NDJSON is due
        (openai, NDJSON, "application/x-ndjson"),  # and the other way round
        (openai, b"", "text/plain"),
    ],
    ids=["openai-json", "ollama-json", "ollama-sse", "openai-ndjson", "empty-text"],
)
async def test_a_200_of_another_type_is_not_an_event_stream(make, body, content_type):
    server = Server(body, headers={"content-type": content_type})
    with pytest.raises(BackendError) as info:
        await collect(make(server))
    assert info.value.error_class == "not_event_stream"
    assert f"Content-Type {content_type};" in str(info.value)
    assert shown_body(str(info.value)) == (excerpt(body) if body else "(empty)")


@pytest.mark.parametrize(
    "make, body, content_type",
    [
        (openai, sse(chunk("a")), "text/event-stream; charset=utf-8"),  # vLLM's
        (openai, sse(chunk("a")), "Text/Event-Stream"),
        (ollama, NDJSON, "application/x-ndjson"),
        (ollama, NDJSON, "application/x-ndjson; charset=utf-8"),
    ],
)
async def test_the_stream_types_are_read_with_any_parameters(make, body, content_type):
    items = await collect(make(Server(body, headers={"content-type": content_type})))
    assert [i.text for i in items if isinstance(i, Arrival)] == ["a"]


@pytest.mark.parametrize("make, body", [(openai, sse(chunk("a"))), (ollama, NDJSON)],
                         ids=["openai", "ollama"])
async def test_a_stream_without_a_content_type_is_judged_by_its_bytes(make, body):
    """No Content-Type at all is no proof of a wrong answer: the stream is read, and only a
    body that is not one fails (as it did before)."""

    def bare(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/v1/models", "/api/tags"):
            return httpx.Response(200, json={"data": [{"id": "m"}], "models": [{"name": "m"}]})
        return httpx.Response(200, content=body)

    items = await collect(make(bare))
    assert [i.text for i in items if isinstance(i, Arrival)] == ["a"]
    assert "content-type" not in bare(httpx.Request("POST", "http://x/v1/chat/completions")
                                      ).headers


@pytest.mark.parametrize("make", [openai, ollama], ids=["openai", "ollama"])
@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_is_http_3xx_with_where_it_pointed_and_never_followed(make, status):
    server = Server(b"<html>Found</html>", status, headers={
        "content-type": "text/html",
        "location": "https://sso.example:8443/login?next=%2Fv1&token=s3cret"})
    with pytest.raises(BackendError) as info:
        await collect(make(server))
    message = str(info.value)
    assert info.value.error_class == f"http_{status}"
    assert "to https://sso.example:8443/login" in message and "not followed" in message
    assert "s3cret" not in message  # a query may carry a token: left out
    assert not info.value.refused
    assert [r.url.host for r in server.requests] == ["soaktop.test"] * len(server.requests)
    asked = [r for r in server.requests if r.url.path in ("/v1/chat/completions",
                                                          "/api/generate")]
    assert len(asked) == 1  # asked once, not again where it pointed


async def test_a_relative_redirect_is_named_in_full():
    server = Server(b"", 302, headers={"location": "/login?next=x"})
    with pytest.raises(BackendError) as info:
        await collect(openai(server))
    assert "a redirect to http://soaktop.test/login, not followed" in str(info.value)
    server = Server(b"", 303)
    with pytest.raises(BackendError) as info:
        await collect(openai(server))
    assert info.value.error_class == "http_303" and "without a Location" in str(info.value)


async def test_what_a_message_shows_of_a_body_is_escaped():
    """A body is untrusted: a terminal's escape sequences, invisible characters and bytes
    that are not UTF-8 are shown escaped, never passed to the screen as they are."""
    body = b"\x1b[2J\x1b]0;owned\x07<h1>\xe2\x80\xaeevil\xff\xfe</h1>"
    server = Server(body, headers={"content-type": "text/html\x1b[31m"})
    with pytest.raises(BackendError) as info:
        await collect(openai(server))
    message = str(info.value)
    assert message.isprintable()
    assert "Content-Type text/html\\x1b[31m;" in message
    assert shown_body(message) == "\\x1b[2J\\x1b]0;owned\\x07<h1>\\u202eevil\\xff\\xfe</h1>"


def test_an_excerpt_is_one_printable_line_of_at_most_its_limit():
    assert excerpt(b"a\r\n\t b") == "a b"
    assert excerpt("x" * 80) == "x" * 80
    assert excerpt("x" * 81) == "x" * 79 + "\u2026"
    # an escape is never cut in half: it goes whole, or not at all
    cut = excerpt("x" * 76 + "\x1b" + "yyy")
    assert cut == "x" * 76 + "\u2026" and len(cut) <= 80
    assert excerpt(b"\x00" * 100, 20) == "\\x00" * 4 + "\u2026"
    assert all(len(excerpt(bytes(range(256)) * k)) <= 80 for k in (1, 2, 3))


async def test_an_error_status_body_is_escaped_too():
    server = Server(b"\x1b[31mdown\x1b[0m " + b"z" * 500, 502)
    with pytest.raises(BackendError) as info:
        await collect(openai(server))
    message = str(info.value)
    assert message.startswith("HTTP 502: \\x1b[31mdown\\x1b[0m zzz") and message.isprintable()
    assert len(message) == len("HTTP 502: ") + 200  # the 200 characters it always kept
