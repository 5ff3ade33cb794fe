"""The HTTP backends over real sockets, against the loopback server misbehaving on purpose.

Each fault must end its request with the right class and a one-line message, and a run
against a server that misbehaves now and then must go on and count it.
"""

import asyncio
import json

import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, StreamEnd
from soaktop.engine.backends.http import Timeouts
from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import BackendError, BackendUnavailable
from soaktop.engine.events import RequestDone
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.session import Session
from tests.engine import streams

FAST = Schedule(ttft_ms=5, itl_ms=2, tokens=8, model="m")
REQUEST = GenerationRequest(0, Prompt(0, (1,), "hi"), 8, "m")
SHORT = Timeouts(connect_s=2, first_token_s=0.5, between_tokens_s=0.3)


async def collect(backend):
    return await streams.collect(backend, REQUEST)


async def test_a_clean_stream_over_a_socket():
    async with LoopbackServer(FAST) as server:
        items = await collect(OpenAIBackend(server.url, timeouts=SHORT))
        wire = server.emissions()
    arrivals = [i for i in items if isinstance(i, Arrival)]
    assert len(arrivals) == 8 and isinstance(items[-1], StreamEnd)
    assert items[-1].server["completion_tokens"] == 8
    # the role chunk is sent at once, the first token only after TTFT (5 ms): counting the
    # role chunk would put arrival 0 ~5 ms before the server's first content chunk. The
    # kernel stamps arrival inside the server's write, a few µs before the server's own
    # stamp taken after the write returned: hence the 1 ms allowance, far below 5 ms.
    assert all(a.t_ns >= c - 1_000_000 for a, c in zip(arrivals, wire[0].chunks_ns))
    assert arrivals[0].t_ns - wire[0].chunks_ns[0] < 1_000_000


@pytest.mark.parametrize(
    "fault, error_class",
    [
        ("reset", "connection_reset"),
        ("stall_first", "first_token_timeout"),
        ("stall_mid", "inter_token_timeout"),
        ("http_500", "http_500"),
        ("http_404", "http_404"),
        ("http_429", "http_429"),
        ("malformed_json", "malformed_json"),
        ("malformed_sse", "malformed_sse"),
        ("no_done", "incomplete_stream"),
        ("non_utf8", "non_utf8"),
        ("error_in_stream", "stream_error"),
        ("html_200", "not_event_stream"),
        ("redirect_302", "http_302"),
    ],
)
async def test_each_fault_is_classified(fault, error_class):
    async with LoopbackServer(FAST, fault=fault) as server:
        with pytest.raises(BackendError) as info:
            await asyncio.wait_for(collect(OpenAIBackend(server.url, timeouts=SHORT)), 10)
    assert info.value.error_class == error_class
    assert "\n" not in str(info.value)
    if fault == "http_429":
        assert info.value.retry_after_s == 1.0


async def test_a_stall_after_the_first_tokens_waits_the_token_timeout_not_the_first_tokens():
    """The token timeout is shorter than the first-token one (as the defaults, 60 s and
    120 s): a stream that stops after three tokens fails when the token timeout says, not
    when the first-token limit runs out (found by the stall drill, tests/tui/test_drills.py)."""
    timeouts = Timeouts(connect_s=2, first_token_s=30, between_tokens_s=0.3)
    async with LoopbackServer(FAST, fault="stall_mid") as server:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(BackendError) as info:
            await asyncio.wait_for(collect(OpenAIBackend(server.url, timeouts=timeouts)), 10)
        took = loop.time() - start
    assert info.value.error_class == "inter_token_timeout"
    assert 0.3 <= took < 2.0


async def test_a_server_refusing_include_usage_still_works():
    async with LoopbackServer(FAST, fault="refuse_usage") as server:
        backend = OpenAIBackend(server.url, timeouts=SHORT)
        items = await collect(backend)
    assert sum(isinstance(i, Arrival) for i in items) == 8
    assert backend.describe()["usage_reported"] is False


async def test_ollama_over_a_socket_keeps_the_server_timings():
    async with LoopbackServer(FAST) as server:
        items = await collect(OllamaBackend(server.url, timeouts=SHORT))
    assert sum(isinstance(i, Arrival) for i in items) == 8
    assert items[-1].server["eval_count"] == 8 and items[-1].server["eval_duration"] > 0


async def test_ollama_stream_without_done_line():
    async with LoopbackServer(FAST, fault="no_done") as server:
        with pytest.raises(BackendError) as info:
            await collect(OllamaBackend(server.url, timeouts=SHORT))
    assert info.value.error_class == "incomplete_stream"


@pytest.mark.parametrize("make", [OpenAIBackend, OllamaBackend], ids=["openai", "ollama"])
async def test_a_proxys_login_page_and_its_redirect_say_what_they_are(make):
    """Over a socket: the page is ``not_event_stream`` naming ``text/html`` and how the page
    begins; the redirect ``http_302`` naming where it pointed, not followed."""
    async with LoopbackServer(FAST, fault="html_200") as server:
        with pytest.raises(BackendError) as page:
            await asyncio.wait_for(collect(make(server.url, timeouts=SHORT)), 10)
    async with LoopbackServer(FAST, fault="redirect_302") as server:
        with pytest.raises(BackendError) as moved:
            await asyncio.wait_for(collect(make(server.url, timeouts=SHORT)), 10)
        served = server.emissions()
    assert page.value.error_class == "not_event_stream"
    assert "Content-Type text/html; charset=utf-8; the body begins <!DOCTYPE html>" in str(
        page.value)
    assert moved.value.error_class == "http_302"
    assert f"a redirect to {server.url}/login, not followed" in str(moved.value)
    assert [(e.status, e.fault) for e in served] == [(302, "redirect_302")]


async def test_models_lists_what_the_server_serves():
    async with LoopbackServer(FAST) as server:
        assert await OpenAIBackend(server.url).models() == ["m"]
        assert await OllamaBackend(server.url).models() == ["m"]


async def test_nobody_listening_stops_the_run_before_it_starts():
    async with LoopbackServer(FAST) as server:
        url = server.url  # the port is free again once the server has stopped
    with pytest.raises(BackendUnavailable, match="connection refused"):
        await OpenAIBackend(url).start()


async def test_a_run_against_a_flaky_server_goes_on_and_counts_by_class(tmp_path):
    async with LoopbackServer(FAST, fault="http_500", fault_every=4) as server:
        summary = SessionSummary()
        config = RunConfig(backend="openai", model="m", concurrency=4, max_requests=40,
                           warmup_requests=0, output_tokens=8, url=server.url)
        session = Session(config, OpenAIBackend(server.url, timeouts=SHORT),
                          record_path=tmp_path / "r.jsonl", listeners=(summary.add,))
        await session.run()
    result = summary.result()
    assert result.requests_ok == 30 and result.requests_failed == 10
    assert result.errors == {"http_500": 10}
    record = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    failed = [r for r in record if r.get("error_class") == "http_500"]
    assert len(failed) == 10 and "loopback: internal error" in failed[0]["error_message"]
    ok = [r for r in record if r["type"] == "request_done" and "error_class" not in r]
    assert ok[0]["server_reported"]["completion_tokens"] == 8


async def test_api_key_never_reaches_the_record(tmp_path):
    async with LoopbackServer(FAST) as server:
        config = RunConfig(backend="openai", model="m", concurrency=2, max_requests=4,
                           output_tokens=4, url=server.url)
        backend = OpenAIBackend(server.url, api_key="sk-very-secret", timeouts=SHORT)
        await Session(config, backend, record_path=tmp_path / "r.jsonl").run()
    assert "sk-very-secret" not in (tmp_path / "r.jsonl").read_text()


async def test_killed_server_then_restarted_load_resumes():
    """Refusals back off instead of hot-looping, and requests succeed again once it is back."""
    server = LoopbackServer(FAST)
    await server.start()
    port = server.port
    done: list[RequestDone] = []
    config = RunConfig(backend="openai", model="m", concurrency=8, duration_s=4.5,
                       warmup_requests=0, output_tokens=4, url=server.url)
    session = Session(config, OpenAIBackend(server.url, timeouts=SHORT),
                      listeners=(lambda e: done.append(e) if isinstance(e, RequestDone)
                                 else None,))

    revived = LoopbackServer(FAST, port=port)

    async def outage():
        await asyncio.sleep(0.5)
        await server.stop()
        await asyncio.sleep(1.0)
        await revived.start()

    try:
        await asyncio.gather(session.run(), outage())
    finally:
        await revived.stop()
    refused = [d for d in done if d.error_class == "connect_refused"]
    # backed off: 8 streams in a hot loop would fail thousands of times in the 1 s outage;
    # holds of 50, 100, 200, 400 ms... let each stream try about 5 times
    assert 0 < len(refused) < 8 * 8, len(refused)
    # the holds reach at most 0.8 s by the time the server is back at 1.5 s: by 3.5 s at
    # the latest, requests succeed again
    late_ok = [d for d in done if d.ok and 1.5e9 < d.sent_ns < 3.5e9]
    assert late_ok, "load did not resume after the server came back"


async def run_against(fault, fault_every=1, duration_s=3.0, concurrency=4, **config):
    async with LoopbackServer(FAST, fault=fault, fault_every=fault_every) as server:
        summary = SessionSummary()
        config = RunConfig(backend="openai", model="m", concurrency=concurrency,
                           duration_s=duration_s, warmup_requests=0, output_tokens=8,
                           url=server.url, **config)
        session = Session(config, OpenAIBackend(server.url, timeouts=SHORT),
                          listeners=(summary.add,))
        end = await session.run()
    return session, end, summary.result()


async def test_a_run_whose_every_request_is_refused_gives_up_in_one_line():
    session, end, result = await run_against("http_404")
    assert end.reason == "failed" and end.t_ns < 1e9  # not three seconds of hammering
    assert result.requests_failed < 3 * 8
    assert session.failure.startswith("every request was refused")
    assert "does not exist" in session.failure and "\n" not in session.failure
    assert end.detail == {"failure": session.failure}  # the record keeps why


@pytest.mark.parametrize("fault, error_class, says", [
    ("html_200", "not_event_stream", "Content-Type text/html"),
    ("redirect_302", "http_302", "/login, not followed"),
])
async def test_a_run_whose_every_request_fails_alike_gives_up_in_one_line(fault, error_class,
                                                                          says):
    """Whatever the class: 20 alike in a row (at concurrency 4), none succeeded, and the run
    stops, saying the class and one of the messages; not 3 s of failures."""
    session, end, result = await run_against(fault)
    assert end.reason == "failed" and end.t_ns < 1e9
    assert result.errors.keys() == {error_class} and result.requests_ok == 0
    assert 20 <= result.requests_failed < 20 + 4
    assert session.failure.startswith(f"every request failed as {error_class} (20 so far")
    assert says in session.failure and "\n" not in session.failure
    assert end.detail == {"failure": session.failure}


async def test_keep_going_runs_on_through_failures_that_are_certain():
    session, end, result = await run_against("html_200", duration_s=1.0, keep_going=True)
    assert end.reason == "completed" and session.failure is None
    assert result.errors.keys() == {"not_event_stream"} and result.requests_failed > 20


async def test_rate_limits_and_partial_failures_do_not_give_up():
    _, end, result = await run_against("http_429", duration_s=1.5)
    assert end.reason == "completed" and result.errors.keys() == {"http_429"}
    _, end, result = await run_against("http_404", fault_every=2, duration_s=1.0)
    assert end.reason == "completed" and result.requests_ok > 0


async def test_http_responses_come_through_soaktops_stamping_stream():
    """httpx takes no network backend, so soaktop swaps the pool of httpx's transport for one
    on its own; an httpx release that undid the swap would silently lose kernel stamps."""
    import sys
    import time

    from soaktop.engine.backends.http import make_client
    from soaktop.engine.backends.stamping import StampedStream

    body = {"model": "m", "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    async with LoopbackServer(FAST) as server:
        async with make_client(server.url, SHORT, None) as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                stream = response.extensions["network_stream"]
                await response.aread()
        wire = server.emissions()[0]
    assert isinstance(stream, StampedStream)
    assert stream.kernel_stamps is sys.platform.startswith("linux")
    # the request left before the server had read it, and the last bytes came after the
    # server's last content chunk went out (kernel stamps precede its post-write stamp by µs)
    assert stream.last_write_ns <= wire.received_ns
    assert wire.chunks_ns[-1] - 1_000_000 < stream.last_read_ns <= time.perf_counter_ns()


async def test_a_finished_stream_leaves_nothing_for_the_cyclic_collector():
    """httpx's response and its stream point at each other; the backend cuts that when the
    stream ends, or every request would leave ~45 objects for a collector pass that stalls
    the loop for milliseconds."""
    import gc

    async with LoopbackServer(FAST) as server:
        backend = OpenAIBackend(server.url, timeouts=SHORT)
        await backend.start()
        try:
            [i async for i in backend.stream(REQUEST)]  # pool and connection warm
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                items = [i async for i in backend.stream(REQUEST)]
                gc.collect()
                left = [type(o).__name__ for o in gc.garbage]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        finally:
            await backend.close()
    assert isinstance(items[-1], StreamEnd)
    assert left == []


async def test_a_compressed_stream_is_decoded_and_a_plain_one_read_raw():
    """Only an identity body skips httpx's decoding layer: a gzip one still parses."""
    import gzip

    events = b"".join(
        b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(3)
    ) + b"data: [DONE]\n\n"

    async def serve(reader, writer, body, encoding):
        await reader.readuntil(b"\r\n\r\n")
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                f"content-length: {len(body)}\r\n{encoding}connection: close\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    for body, encoding in ((gzip.compress(events), "content-encoding: gzip\r\n"),
                           (events, "")):
        server = await asyncio.start_server(
            lambda r, w, b=body, e=encoding: serve(r, w, b, e), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            items = await collect(OpenAIBackend(f"http://127.0.0.1:{port}", timeouts=SHORT))
        finally:
            server.close()
        texts = [i.text for i in items if isinstance(i, Arrival)]
        assert texts == ["t0", "t1", "t2"], encoding


@pytest.mark.parametrize("backend_cls, api", [(OpenAIBackend, "chat"), (OllamaBackend, None)])
@pytest.mark.parametrize("per_word", [1, 3])
async def test_the_servers_count_of_the_input_tokens_is_kept_and_warned_of(
        tmp_path, backend_cls, api, per_word):
    """A server whose tokenizer makes three tokens of each of soaktop's words: its count is
    in each request's record, the summary's input_tokens.server is it (from the live events
    and from the record's lines alike), and the summary warns; one token a word: silent."""
    from soaktop.engine.metrics.summary import summarise
    from soaktop.engine.records.format import RecordReader
    from soaktop.tui.text import summary_table

    schedule = Schedule(ttft_ms=2, itl_ms=1, tokens=4, model="m",
                        prompt_tokens_per_word=per_word, cached_prefix_tokens=4)
    async with LoopbackServer(schedule) as server:
        summary = SessionSummary()
        config = RunConfig(backend="openai", model="m", concurrency=2, max_requests=8,
                           warmup_requests=0, output_tokens=4, input_tokens=16,
                           url=server.url)
        backend = backend_cls(server.url, model="m", api=api, timeouts=SHORT)
        await Session(config, backend, record_path=tmp_path / "r.jsonl",
                      listeners=(summary.add,)).run()
    result = summary.result()
    assert result.requests_ok == 8
    assert result.input_tokens.asked == 16 and result.input_tokens.server == 16 * per_word
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    reported = [r["server_reported"] for r in lines if r["type"] == "request_done"]
    counts = [r.get("prompt_tokens", r.get("prompt_eval_count")) for r in reported]
    assert counts == [16 * per_word] * 8
    read_back = summarise(RecordReader(tmp_path / "r.jsonl").events(raw_requests=True))
    assert read_back.result().input_tokens == result.input_tokens
    text = summary_table(result, width=400)
    warned = [line for line in text.splitlines() if "input tokens asked" in line]
    if per_word == 3:
        assert warned == ["warning: the server counted 3.0x the input tokens asked (48 vs 16 a "
                          "request): its tokenizer is not the one soaktop counted with; give "
                          "--tokenizer for the server's model, or read input lengths and "
                          "per-token figures accordingly"]
    else:
        assert warned == []
    if backend_cls is OpenAIBackend:  # prefix-cache hits: 4 of each prompt's tokens
        assert result.cached_share == 4 / (16 * per_word) == result.phases[-1].cached_share
        assert f"{4 / (16 * per_word) * 100:.0f}% of prompt tokens served" in text
    else:  # Ollama reports none
        assert result.cached_share is None and "prefix cache" not in text
