"""What the server says about itself reaches the record header, and asking never hurts a run.

Against the loopback server over real sockets for what a well-behaved server says; against
canned answers (httpx.MockTransport) for servers that say nothing, nonsense, or too much.
"""

import asyncio
import base64
import json
import time

import httpx
import pytest

from soaktop.engine.backends import identity
from soaktop.engine.backends.http import Timeouts
from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.loopback.server import VERSION
from soaktop.engine.session import Session

FAST = Schedule(ttft_ms=5, itl_ms=2, tokens=4, model="m")
SHORT = Timeouts(connect_s=2, first_token_s=0.5, between_tokens_s=0.3)


async def started(backend):
    """``backend.describe()`` after ``start()``; the backend is closed again."""
    await backend.start()
    try:
        return backend.describe()
    finally:
        await backend.close()


# -- what a server that answers says ----------------------------------------------------------

async def test_an_openai_server_gives_its_version_header_and_model_entry():
    async with LoopbackServer(FAST) as server:
        facts = await started(OpenAIBackend(server.url, model="m", timeouts=SHORT))
    assert VERSION.startswith("loopback-")
    assert facts["server"] == {
        "header": "soaktop-loopback",
        "version": VERSION,
        "model_entry": {"id": "m", "object": "model", "created": 0, "owned_by": "soaktop",
                        "max_model_len": 4096},
    }


async def test_an_ollama_server_gives_its_version_and_model_details():
    async with LoopbackServer(FAST) as server:
        facts = await started(OllamaBackend(server.url, model="m", timeouts=SHORT))
    assert facts["server"] == {
        "header": "soaktop-loopback",
        "version": VERSION,
        "model_details": {"family": "loopback", "parameter_size": "0",
                          "quantization_level": "none", "format": "gguf",
                          "modified_at": "1970-01-01T00:00:00Z"},
    }


async def test_without_a_model_named_the_only_one_served_is_described():
    async with LoopbackServer(FAST) as server:
        openai = await started(OpenAIBackend(server.url, timeouts=SHORT))
        ollama = await started(OllamaBackend(server.url, timeouts=SHORT))
    assert openai["server"]["model_entry"]["id"] == "m"
    assert ollama["server"]["model_details"]["family"] == "loopback"


async def test_the_record_header_keeps_what_the_server_said(tmp_path):
    async with LoopbackServer(FAST) as server:
        config = RunConfig(backend="openai", model="m", concurrency=1, max_requests=2,
                           warmup_requests=0, output_tokens=4, url=server.url)
        backend = OpenAIBackend(server.url, model="m", timeouts=SHORT)
        await Session(config, backend, record_path=tmp_path / "r.jsonl").run()
    header = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert header["type"] == "session_start"
    assert header["backend"]["server"]["version"] == VERSION
    assert header["backend"]["server"]["model_entry"]["max_model_len"] == 4096


# -- servers that say nothing, nonsense, or too much -----------------------------------------

MODELS = {"object": "list", "data": [{"id": "m", "max_model_len": 8192}]}


def canned(version_answer):
    """A server whose /v1/models is fine and whose /version is ``version_answer(request)``."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS, headers={"server": "canned"})
        if request.url.path == "/version":
            return await version_answer(request)
        return httpx.Response(404)

    return httpx.MockTransport(handle)


async def not_found(request):
    return httpx.Response(404, json={"detail": "Not Found"})


async def html(request):
    return httpx.Response(200, text="<html>hello</html>")


async def not_utf8(request):
    return httpx.Response(200, content=b'{"version": "\xff\xfe"}')


async def wrong_shape(request):
    return httpx.Response(200, json={"version": {"major": 0, "minor": 6}})


async def a_list(request):
    return httpx.Response(200, json=["0.6.3"])


async def broken(request):
    raise httpx.RemoteProtocolError("server hung up", request=request)


async def too_big(request):
    return httpx.Response(200, json={"version": "1", "pad": "x" * (identity.BODY_LIMIT + 1)})


@pytest.mark.parametrize(
    "answer", [not_found, html, not_utf8, wrong_shape, a_list, broken, too_big]
)
async def test_a_version_that_cannot_be_read_is_left_out(answer):
    backend = OpenAIBackend("http://soaktop.test", model="m", transport=canned(answer))
    facts = await started(backend)
    assert facts["server"] == {"header": "canned",
                               "model_entry": {"id": "m", "max_model_len": 8192}}


async def test_a_version_that_never_comes_costs_at_most_the_identity_timeout():
    async def hang(request):
        await asyncio.sleep(60)
        return httpx.Response(200, json={"version": "late"})

    timeouts = Timeouts(connect_s=0.3)  # the identity calls get min(connect, 3 s)
    backend = OpenAIBackend("http://soaktop.test", model="m", timeouts=timeouts,
                            transport=canned(hang))
    t0 = time.monotonic()
    facts = await started(backend)
    elapsed = time.monotonic() - t0
    assert "version" not in facts["server"] and facts["server"]["header"] == "canned"
    # 0.3 s allowed; 2 s of slack for a loaded CI machine, far below the 60 s hang
    assert 0.3 <= elapsed < 2.3


async def test_a_server_with_no_answers_at_all_still_starts_with_an_empty_server():
    backend = OpenAIBackend("http://soaktop.test", model="m",
                            transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    assert (await started(backend))["server"] == {}
    assert OpenAIBackend("http://soaktop.test").describe()["server"] == {}  # before start()


async def test_server_text_is_kept_as_short_scalars():
    entry = {"id": "m", "max_model_len": 32768, "root": None, "permission": [{"x": 1}],
             "parent": {"nested": True}, "note": "x" * 1000, "ratio": float("nan"),
             "huge": 10**30, "mixed": True}

    def handle(request):
        if request.url.path == "/v1/models":
            # json.dumps writes NaN (not JSON, but Python's json reads it back)
            return httpx.Response(200, content=json.dumps({"data": [entry]}),
                                  headers={"server": "s" * 500})
        return httpx.Response(200, json={"version": "v" * 500})

    facts = await started(OpenAIBackend("http://soaktop.test", model="m",
                                        transport=httpx.MockTransport(handle)))
    server = facts["server"]
    assert server["header"] == "s" * 200 and server["version"] == "v" * 200
    assert server["model_entry"] == {"id": "m", "max_model_len": 32768, "note": "x" * 200,
                                     "mixed": True}
    json.dumps(facts, allow_nan=False)  # no NaN or other non-JSON made it through


def test_an_object_keeps_at_most_field_limit_fields():
    many = {f"k{i}": i for i in range(identity.FIELD_LIMIT * 2)}
    assert len(identity.fields(many)) == identity.FIELD_LIMIT


async def test_ollama_asks_its_two_questions_at_once():
    """Each answer waits until both questions have arrived: asked one after the other, the
    first would wait out its timeout and be left out."""
    arrived: set[str] = set()
    both = asyncio.Event()

    async def handle(request):
        path = request.url.path
        if path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "m"}]})
        arrived.add(path)
        if len(arrived) == 2:
            both.set()
        await both.wait()
        if path == "/api/version":
            return httpx.Response(200, json={"version": "0.5.7"})
        assert json.loads(request.content) == {"model": "m"}
        return httpx.Response(200, json={"details": {"family": "llama", "families": ["llama"]},
                                         "modified_at": "2025-01-01T00:00:00Z",
                                         "license": "long text"})

    facts = await started(OllamaBackend("http://soaktop.test", model="m",
                                        timeouts=Timeouts(connect_s=1),
                                        transport=httpx.MockTransport(handle)))
    assert facts["server"] == {"version": "0.5.7", "model_details": {
        "family": "llama", "modified_at": "2025-01-01T00:00:00Z"}}


async def test_ollama_with_several_models_and_none_named_asks_about_none():
    shown = []

    def handle(request):
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "a"}, {"name": "b"}]})
        if request.url.path == "/api/show":
            shown.append(request)
        return httpx.Response(200, json={"version": "0.5.7", "details": {"family": "x"}})

    facts = await started(OllamaBackend("http://soaktop.test",
                                        transport=httpx.MockTransport(handle)))
    assert shown == [] and facts["server"] == {"version": "0.5.7"}


# -- secrets ---------------------------------------------------------------------------------

KEY, USER, PASSWORD = "sk-very-secret", "alice", "hunter2-pw"


def echoing(request: httpx.Request) -> httpx.Response:
    """A server (or proxy) that echoes what it was sent into every answer."""
    said = request.headers.get("authorization", "")
    if request.url.path == "/v1/models":
        entry = {"id": "m", "auth": said, "url": str(request.url), "plain": "kept"}
        return httpx.Response(200, json={"data": [entry]}, headers={"server": said})
    return httpx.Response(200, json={"version": f"echo {said}"})


@pytest.mark.parametrize(
    "url, api_key",
    [("http://soaktop.test", KEY), (f"http://{USER}:{PASSWORD}@soaktop.test", None)],
)
async def test_credentials_never_reach_the_description(url, api_key):
    backend = OpenAIBackend(url, model="m", api_key=api_key,
                            transport=httpx.MockTransport(echoing))
    text = json.dumps(await started(backend))
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (KEY, PASSWORD, basic, "Bearer", "Basic"):
        assert secret not in text
    # only what held a secret went: the rest of the entry is still there
    assert json.loads(text)["server"]["model_entry"]["plain"] == "kept"


async def test_credentials_in_the_url_stay_out_over_a_real_socket():
    async with LoopbackServer(FAST) as server:
        url = server.url.replace("http://", f"http://{USER}:{PASSWORD}@")
        facts = await started(OpenAIBackend(url, model="m", api_key=KEY, timeouts=SHORT))
    text = json.dumps(facts)
    assert facts["server"]["version"] == VERSION  # the server did answer
    assert KEY not in text and PASSWORD not in text and USER not in text


def test_secrets_cover_what_a_server_could_echo_of_the_url():
    found = identity.secrets_of("http://a%40b:p%2Fw@h:1/?token=t0k", "sk-1")
    basic = base64.b64encode(b"a@b:p/w").decode()  # what httpx sends for that userinfo
    assert {"sk-1", "a@b", "p/w", "p%2Fw", "t0k", basic} <= set(found)
    assert identity.scalar("said p/w", found) is None and identity.scalar("fine", found) == "fine"
