"""Reasoning models, outputs shorter than asked, and failures inside a 200 stream, against a
loopback server set to each: TTFT vs TTFO, reasoning apart from output, the length asked for,
and finish reasons that mean failure."""

import json

import httpx
import pytest

from soaktop.engine.backends.http import Timeouts
from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session

SHORT = Timeouts(connect_s=2, first_token_s=5, between_tokens_s=5)


async def run(server_url, backend_cls=OpenAIBackend, api=None, requests=12, tokens=20,
              concurrency=2):
    summary = SessionSummary()
    config = RunConfig(backend="openai", model="m", concurrency=concurrency,
                       max_requests=requests, warmup_requests=0, output_tokens=tokens,
                       input_tokens=8, url=server_url)
    backend = backend_cls(server_url, model="m", api=api, timeouts=SHORT)
    await Session(config, backend, listeners=(summary.add,)).run()
    return summary.result(), backend


@pytest.mark.parametrize("backend_cls, api", [(OpenAIBackend, "chat"), (OllamaBackend, "chat")])
async def test_reasoning_counts_apart_and_ttfo_waits_for_the_answer(backend_cls, api):
    """5 thinking tokens, then 15 of answer, 10 ms apart after a 20 ms TTFT: TTFT ~20 ms,
    TTFO ~70 ms; 5 reasoning and 15 output tokens a request."""
    schedule = Schedule(ttft_ms=20, itl_ms=10, tokens=20, reasoning_tokens=5, model="m")
    async with LoopbackServer(schedule) as server:
        result, _ = await run(server.url, backend_cls, api)
    assert result.requests_ok == 12
    assert result.reasoning_tokens == 12 * 5
    assert result.output_tokens == 12 * 15
    assert 18 <= result.ttft_ms.p50 <= 30
    assert 65 <= result.ttfo_ms.p50 <= 80
    assert result.ttfo_ms.p50 - result.ttft_ms.p50 == pytest.approx(50, abs=5)


async def test_without_reasoning_ttfo_is_ttft():
    async with LoopbackServer(Schedule(ttft_ms=10, itl_ms=5, tokens=10, model="m")) as server:
        result, _ = await run(server.url)
    assert result.reasoning_tokens == 0
    assert result.ttfo_ms == result.ttft_ms


async def test_outputs_cut_short_by_eos_are_reported_under_the_length_asked():
    schedule = Schedule(ttft_ms=5, itl_ms=2, tokens=20, stop_after=12, model="m")
    async with LoopbackServer(schedule) as server:
        result, _ = await run(server.url)
    assert result.output_length_attained == 0.0
    async with LoopbackServer(Schedule(ttft_ms=5, itl_ms=2, model="m")) as server:
        result, _ = await run(server.url)
    assert result.output_length_attained == 1.0


async def test_a_finish_reason_of_error_is_a_failure_with_its_class():
    schedule = Schedule(ttft_ms=5, itl_ms=2, tokens=8, model="m")
    async with LoopbackServer(schedule, fault="finish_error", fault_every=3) as server:
        result, _ = await run(server.url)
    assert result.errors == {"finish_error": 4}  # requests 0, 3, 6, 9 of 12
    assert result.requests_ok == 8


async def test_the_length_asked_for_is_requested_and_dropped_only_if_refused():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        bodies.append(body)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if "ignore_eos" in body:
            return httpx.Response(400, json={"error": {"message": "Unrecognized request "
                                                       "argument supplied: ignore_eos"}})
        stream = (b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"length"}]}\n\n'
                  b"data: [DONE]\n\n")
        return httpx.Response(200, content=stream,
                              headers={"content-type": "text/event-stream"})

    config = RunConfig(backend="openai", model="m", concurrency=1, max_requests=2,
                       warmup_requests=0, output_tokens=7, url="http://test")
    backend = OpenAIBackend("http://test", model="m", timeouts=SHORT,
                            transport=httpx.MockTransport(handler))
    summary = SessionSummary()
    await Session(config, backend, listeners=(summary.add,)).run()
    generation = [b for b in bodies if "messages" in b]
    assert generation[0]["ignore_eos"] is True and generation[0]["min_tokens"] == 7
    assert "ignore_eos" not in generation[1] and "stream_options" in generation[1]
    assert all("ignore_eos" not in b for b in generation[2:])  # dropped once, for the run
    assert summary.result().requests_ok == 2
    assert backend.describe()["length_options"] is False
    assert backend.describe()["usage_reported"] is True  # usage was not what it refused


async def test_chunks_of_several_tokens_keep_itl_per_token_beside_inter_chunk_latency():
    """4 tokens a chunk, a chunk every 20 ms: inter-chunk latency ~20 ms, ITL ~5 ms a token
    (the gap shared among the chunk's tokens; usage gives the true count)."""
    schedule = Schedule(ttft_ms=10, itl_ms=20, tokens=32, chunk_tokens=4, model="m")
    async with LoopbackServer(schedule) as server:
        result, _ = await run(server.url, tokens=32)
    assert result.output_tokens == 12 * 32
    assert result.inter_chunk_ms.p50 == pytest.approx(20, abs=2)
    assert result.itl_ms.p50 == pytest.approx(5, abs=0.6)
    assert result.tpot_ms.p50 == pytest.approx(20 * 7 / 31, abs=0.6)


async def test_an_open_loop_against_a_server_keeps_its_schedule():
    summary = SessionSummary()
    async with LoopbackServer(Schedule(ttft_ms=10, itl_ms=2, tokens=8, model="m")) as server:
        config = RunConfig(backend="openai", model="m", rate=40.0, duration_s=1.5,
                           warmup_requests=0, output_tokens=8, input_tokens=8, url=server.url)
        events = []
        await Session(config, OpenAIBackend(server.url, model="m", timeouts=SHORT),
                      listeners=(summary.add, events.append)).run()
    from soaktop.engine.events import RequestDone

    sent = sorted(e.sent_ns for e in events if isinstance(e, RequestDone))
    assert 55 <= len(sent) <= 61
    assert set(__import__("numpy").diff(sent).tolist()) == {25_000_000}
    assert 9 <= summary.result().ttft_ms.p50 <= 20  # from the planned time
