"""The loopback server: wire formats, keep-alive, the emission truth, each fault, the process.

Talks to it with httpx directly: soaktop's own HTTP backends are tested against this server,
so they must not be what tests it.
"""

import asyncio
import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

import soaktop.engine
from soaktop.engine.errors import SoaktopError
from soaktop.engine.loopback import (
    FAULTS,
    READY,
    Emission,
    GpuModel,
    LoopbackServer,
    Schedule,
    processes_for,
    spawn,
    spawn_process,
)

FAST = Schedule(ttft_ms=2, itl_ms=1, tokens=6)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "say five words"}], "stream": True}
GENERATE = {"model": "m", "prompt": "say five words"}


async def post_raw(server, path, body, timeout=5.0):
    """Status, headers and the raw body bytes of one request on a fresh client."""
    async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as client:
        response = await client.post(path, json=body)
        return response.status_code, response.headers, response.content


def sse_events(raw):
    """The ``data:`` payloads of an SSE body, in order."""
    return [block[len("data: "):] for block in raw.decode().split("\n\n") if block]


def contents(events):
    """The text of each content chunk (chat or completions), skipping empty role deltas."""
    texts = []
    for event in events:
        if event == "[DONE]":
            continue
        for choice in json.loads(event)["choices"]:
            text = choice["delta"].get("content") if "delta" in choice else choice["text"]
            if text:
                texts.append(text)
    return texts


# -- wire formats ---------------------------------------------------------------------------


async def test_chat_stream_is_sse_opening_with_a_role_chunk_and_ending_with_done():
    async with LoopbackServer(FAST) as server:
        status, headers, raw = await post_raw(server, "/v1/chat/completions", CHAT)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    assert raw.endswith(b"data: [DONE]\n\n")
    events = sse_events(raw)
    role = json.loads(events[0])
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]
    chunks = [json.loads(e) for e in events[1:-1]]
    assert len(chunks) == FAST.tokens
    assert {c["id"] for c in chunks} == {role["id"]} and {c["model"] for c in chunks} == {"m"}
    # No max_tokens named: the output ends by itself ("stop") after Schedule.tokens.
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]


async def test_role_chunk_can_be_left_out():
    schedule = Schedule(ttft_ms=2, itl_ms=1, tokens=3, role_chunk=False)
    async with LoopbackServer(schedule) as server:
        _, _, raw = await post_raw(server, "/v1/chat/completions", CHAT)
    first = json.loads(sse_events(raw)[0])
    assert first["choices"][0]["delta"]["content"].strip()


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_output_length_named_by_the_request_is_obeyed(field):
    async with LoopbackServer(FAST) as server:
        _, _, raw = await post_raw(server, "/v1/chat/completions", {**CHAT, field: 3})
    chunks = [json.loads(e) for e in sse_events(raw)[1:-1]]
    assert len(chunks) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_usage_chunk_comes_last_before_done_and_counts_true_tokens():
    body = {**CHAT, "max_tokens": 10, "stream_options": {"include_usage": True}}
    async with LoopbackServer(Schedule(ttft_ms=2, itl_ms=1, chunk_tokens=3)) as server:
        _, _, raw = await post_raw(server, "/v1/chat/completions", body)
        emission, = server.emissions()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    # "say five words" is three prompt tokens; 10 output tokens went out in chunks of 3.
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 10,
                                    "total_tokens": 13}
    texts = contents(events)
    assert [len(t.split()) for t in texts] == [3, 3, 3, 1]
    assert emission.chunk_tokens == (3, 3, 3, 1)


async def test_completions_stream_format():
    body = {"model": "m", "prompt": "once upon", "stream": True, "max_tokens": 2}
    async with LoopbackServer(FAST) as server:
        _, _, raw = await post_raw(server, "/v1/completions", body)
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion"] * 2
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]
    assert all(c["choices"][0]["text"].strip() for c in chunks)


async def test_non_streaming_request_gets_one_json_completion():
    body = {"model": "m", "messages": CHAT["messages"], "max_tokens": 4}
    async with LoopbackServer(FAST) as server:
        status, headers, raw = await post_raw(server, "/v1/chat/completions", body)
    completion = json.loads(raw)
    assert headers["content-type"] == "application/json"
    assert completion["object"] == "chat.completion"
    assert len(completion["choices"][0]["message"]["content"].split()) == 4
    assert completion["usage"]["completion_tokens"] == 4


async def test_ollama_generate_streams_ndjson_with_done_fields_matching_what_was_sent():
    body = {**GENERATE, "options": {"num_predict": 5}}
    async with LoopbackServer(FAST) as server:
        status, headers, raw = await post_raw(server, "/api/generate", body)
        emission, = server.emissions()
    assert headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert all(line["response"].strip() and line["model"] == "m" for line in lines[:-1])
    done = lines[-1]
    assert done["done_reason"] == "length"
    assert done["eval_count"] == 5 == sum(emission.chunk_tokens)
    assert done["prompt_eval_count"] == 3
    # The server's durations come from the same clock as the emission truth.
    first, last = emission.chunks_ns[0], emission.chunks_ns[-1]
    assert done["prompt_eval_duration"] == first - emission.received_ns
    assert done["eval_duration"] == last - first
    assert done["total_duration"] >= last - emission.received_ns


async def test_ollama_chat_streams_messages():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}  # streams by default
    async with LoopbackServer(FAST) as server:
        _, _, raw = await post_raw(server, "/api/chat", body)
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(lines) == FAST.tokens + 1
    assert all(line["message"]["role"] == "assistant" for line in lines)
    assert all(line["message"]["content"].strip() for line in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


async def test_model_listings_and_version():
    async with LoopbackServer(Schedule(model="tiny")) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            models = await client.get("/v1/models")
            tags = (await client.get("/api/tags")).json()
            version = (await client.get("/version")).json()
            ollama_version = (await client.get("/api/version")).json()
            show = await client.post("/api/show", json={"model": "other"})
            show_get = await client.get("/api/show")
            show_bad = await client.post("/api/show", content=b"{nope")
    assert models.headers["server"] == "soaktop-loopback" == show.headers["server"]
    models = models.json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 4096
    assert tags["models"][0]["name"] == tags["models"][0]["model"] == "tiny"
    assert version == ollama_version == {"version": f"loopback-{soaktop.engine.__version__}"}
    assert show.status_code == 200 and show.json()["modelfile"] == "FROM other\n"
    assert show.json()["details"] == tags["models"][0]["details"]
    assert show_get.status_code == 405 and show_bad.status_code == 400


async def test_bad_requests_get_4xx_not_a_dropped_connection():
    async with LoopbackServer(FAST) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/nowhere")).status_code == 404
            assert (await client.get("/v1/chat/completions")).status_code == 405
            bad_json = await client.post("/v1/chat/completions", content=b"{nope")
            zero = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    assert zero.status_code == 400 and "max_tokens" in zero.json()["error"]["message"]


async def test_keep_alive_serves_several_streams_on_one_connection():
    async with LoopbackServer(FAST) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            addresses = []
            for _ in range(2):
                async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
                    raw = await response.aread()
                    addresses.append(response.extensions["network_stream"]
                                     .get_extra_info("client_addr"))
                assert raw.endswith(b"data: [DONE]\n\n")
    assert addresses[0] == addresses[1]  # same local port: the connection was reused


# -- the truth ------------------------------------------------------------------------------


def test_jittered_plan_is_reproducible_and_bounded():
    schedule = Schedule(ttft_ms=10, itl_ms=5, jitter_ms=2, seed=7)
    plan = schedule.plan(50, request=3)
    assert plan == schedule.plan(50, request=3)
    assert plan != schedule.plan(50, request=4)
    offsets = [offset for offset, _ in plan]
    assert 8e6 <= offsets[0] <= 12e6
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert all(3e6 <= gap <= 7e6 for gap in gaps) and len(set(gaps)) > 1


async def test_emissions_follow_the_schedule_without_drift_and_are_cleared_when_read():
    schedule = Schedule(ttft_ms=20, itl_ms=3, tokens=60)
    async with LoopbackServer(schedule) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.post("/v1/chat/completions", json=CHAT)
            served = (await client.get("/_loopback/emissions")).json()
            assert (await client.get("/_loopback/emissions")).json() == []
        assert server.emissions() == []
    emission = Emission.from_dict(served[0])
    assert emission.request == 1 and emission.path == "/v1/chat/completions"
    assert emission.status == 200 and emission.fault is None
    times = emission.chunks_ns
    assert len(times) == 60 and emission.chunk_tokens == (1,) * 60
    assert emission.received_ns < emission.first_byte_ns < times[0]
    assert all(b > a for a, b in zip(times, times[1:]))
    lateness_ms = [
        (t - emission.received_ns - offset) / 1e6
        for t, (offset, _) in zip(times, schedule.plan(60, emission.request))
    ]
    # The server sleeps until each planned moment, so no chunk is early.
    assert min(lateness_ms) >= 0
    # Lateness does not accumulate: the median over the last 10 chunks stays within 5 ms.
    # Sleeping itl after each write instead would add epoll's rounding up to the next
    # millisecond (0.5 ms on average) at every chunk, about 30 ms by the end. 5 ms leaves room
    # for a busy 2-core machine; the single-chunk bound of 50 ms only catches gross failure.
    assert sorted(lateness_ms[-10:])[5] < 5.0
    assert max(lateness_ms) < 50.0


def test_emission_times_are_comparable_with_a_client_process_clock():
    """The point of the truth: its clock is this process's ``perf_counter_ns`` too."""
    with spawn(Schedule(ttft_ms=5, itl_ms=5, tokens=10)) as url:
        arrivals = []
        with httpx.Client(base_url=url) as client:
            body = {**CHAT, "max_tokens": 10}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and contents([line[len("data: "):]]):
                        arrivals.append(time.perf_counter_ns())
            emission = Emission.from_dict(client.get("/_loopback/emissions").json()[0])
    assert len(arrivals) == len(emission.chunks_ns) == 10
    delays_ms = [(a - e) / 1e6 for a, e in zip(arrivals, emission.chunks_ns)]
    # Arrival minus emission is a loopback hop plus parsing: tens of microseconds. Two clocks
    # that differ (wall clock, another epoch) would be off by seconds at least. The server
    # reads its clock just after send() returns, so a client on the other core could in
    # principle see the bytes first if the server is preempted there: hence -5 ms, not 0; and
    # 20 ms allows for a preempted client on a busy machine.
    assert all(-5 < d < 20 for d in delays_ms), delays_ms


# -- faults ---------------------------------------------------------------------------------


async def stream_until_error(server, path, body, timeout=5.0):
    """Content lines read before the stream ended, and the exception that ended it (or None)."""
    lines = []
    async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as client:
        try:
            async with client.stream("POST", path, json=body) as response:
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)
        except httpx.HTTPError as error:
            return lines, error
    return lines, None


async def send_raw(server, path, body):
    """A request written on a raw socket; returns the socket's reader and writer."""
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), len(data), data))
    return reader, writer


async def test_reset_after_three_chunks_raises_in_the_client():
    async with LoopbackServer(Schedule(ttft_ms=2, itl_ms=5), fault="reset") as server:
        lines, error = await stream_until_error(server, "/v1/chat/completions", CHAT)
        emission, = server.emissions()
        # And on a raw socket: a reset (RST), not a clean close (FIN, which read() takes as EOF).
        reader, writer = await send_raw(server, "/v1/chat/completions", CHAT)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError))
    assert len(contents([line[len("data: "):] for line in lines])) == 3
    assert emission.fault == "reset" and len(emission.chunks_ns) == 3


@pytest.mark.parametrize(("fault", "chunks"), [("stall_first", 0), ("stall_mid", 3)])
async def test_stalls_make_the_client_read_timeout_fire(fault, chunks):
    async with LoopbackServer(FAST, fault=fault) as server:
        lines, error = await stream_until_error(
            server, "/v1/chat/completions", CHAT, timeout=httpx.Timeout(5.0, read=0.3)
        )
    assert isinstance(error, httpx.ReadTimeout)
    if fault == "stall_first":
        assert lines == []  # headers only: not even the role chunk
    else:
        assert len(contents([line[len("data: "):] for line in lines])) == chunks


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/v1/chat/completions", CHAT,
     {"error": {"message": "loopback: internal error", "type": "server_error"}}),
    ("/api/generate", GENERATE, {"error": "loopback: internal error"}),
])
async def test_http_500_has_an_error_body_in_the_api_s_shape(path, body, expected):
    async with LoopbackServer(FAST, fault="http_500") as server:
        status, _, raw = await post_raw(server, path, body)
    assert status == 500 and json.loads(raw) == expected


async def test_http_404_says_the_model_is_not_found():
    async with LoopbackServer(FAST, fault="http_404") as server:
        status, _, raw = await post_raw(server, "/v1/chat/completions", CHAT)
    error = json.loads(raw)["error"]
    assert status == 404 and "`m`" in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_http_429_carries_retry_after():
    async with LoopbackServer(FAST, fault="http_429") as server:
        status, headers, raw = await post_raw(server, "/v1/chat/completions", CHAT)
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(("fault", "injected"), [
    ("malformed_json", b"data: {not json\n\n"),
    ("malformed_sse", b"%%% loopback garbage, not a field %%%\n\n"),
    ("non_utf8", b'"content":"\xff\xfe"'),
])
async def test_injected_event_sits_after_three_chunks_and_the_rest_follows(fault, injected):
    async with LoopbackServer(FAST, fault=fault) as server:
        status, _, raw = await post_raw(server, "/v1/chat/completions", CHAT)
    assert status == 200 and raw.count(injected) == 1
    before, after = raw.split(injected)
    assert before.count(b'"content":" ') == 3  # role chunk's content is "", not counted
    assert after.count(b'"content":" ') == FAST.tokens - 3
    assert raw.endswith(b"data: [DONE]\n\n")
    if fault == "non_utf8":
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    if fault == "malformed_sse":  # what the server sent (count == 1 above) has no field name
        assert b":" not in injected


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT),
                                            ("/api/generate", GENERATE)])
async def test_no_done_ends_the_stream_cleanly_without_its_terminator(path, body):
    async with LoopbackServer(FAST, fault="no_done") as server:
        lines, error = await stream_until_error(server, path, body)
    assert error is None
    assert len(lines) == FAST.tokens + (path == "/v1/chat/completions")  # + the role chunk
    assert "data: [DONE]" not in lines and all('"done":true' not in line for line in lines)


async def test_error_in_stream_follows_two_chunks_then_the_server_closes():
    async with LoopbackServer(FAST, fault="error_in_stream") as server:
        # A raw socket, so that "closed" is seen as such: read() returns only at EOF.
        reader, writer = await send_raw(server, "/v1/chat/completions", CHAT)
        raw = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert chunked.endswith(b"\r\n0\r\n\r\n")  # the body itself ended well
    events = [line[len(b"data: "):].decode() for line in chunked.split(b"\r\n")
              if line.startswith(b"data: ")]
    assert len(contents(events[:-1])) == 2
    assert json.loads(events[-1]) == {
        "error": {"message": "loopback: generation failed", "code": 500}
    }


async def test_refuse_usage_refuses_only_requests_with_stream_options():
    body = {**CHAT, "stream_options": {"include_usage": True}}
    async with LoopbackServer(FAST, fault="refuse_usage") as server:
        refused, _, raw = await post_raw(server, "/v1/chat/completions", body)
        served, _, _ = await post_raw(server, "/v1/chat/completions", CHAT)
        faults = [e.fault for e in server.emissions()]
    assert refused == 400 and "stream_options" in json.loads(raw)["error"]["message"]
    assert served == 200
    assert faults == ["refuse_usage", None]


async def test_fault_every_strikes_every_nth_request_only():
    async with LoopbackServer(FAST, fault="http_500", fault_every=2) as server:
        statuses = [(await post_raw(server, "/v1/chat/completions", CHAT))[0] for _ in range(4)]
        emissions = server.emissions()
    assert statuses == [200, 500, 200, 500]
    assert [e.fault for e in emissions] == [None, "http_500", None, "http_500"]
    assert [e.status for e in emissions] == statuses


async def test_fault_after_spares_the_first_n_requests_then_counts_from_there():
    async with LoopbackServer(FAST, fault="http_500", fault_every=2, fault_after=4) as server:
        statuses = [(await post_raw(server, "/v1/chat/completions", CHAT))[0] for _ in range(8)]
    # requests 1-4 spared (4 too, though even); then every 2nd by its own number: 6 and 8
    assert statuses == [200, 200, 200, 200, 200, 500, 200, 500]


@pytest.mark.parametrize("flag, value, message", [
    ("--fault-after", "-1", "fault_after must not be negative (got -1)"),
    ("--fault-every", "0", "fault_every must be at least 1 (got 0)"),
    ("--max-active", "0", "max_active must be at least 1"),
])
def test_bad_fault_and_queue_values_are_one_line_naming_the_value(flag, value, message):
    out = subprocess.run([sys.executable, "-m", "soaktop.engine.loopback", "--fault", "reset",
                          flag, value], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].endswith(message)
    assert "Traceback" not in out.stderr


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault"):
        LoopbackServer(fault="gremlins")
    assert "reset" in FAULTS


# -- as a process ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_announces_itself_on_one_line_and_exits_cleanly(signum):
    child = subprocess.Popen(
        [sys.executable, "-m", "soaktop.engine.loopback", "--port", "0", "--ttft-ms", "1",
         "--itl-ms", "1", "--model", "proc"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline()
        assert re.fullmatch(r"soaktop-loopback listening on http://127\.0\.0\.1:\d+\n", line)
        url = line[len(READY):].strip()
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "proc"
        child.send_signal(signum)
        out, err = child.communicate(timeout=10)
    finally:
        child.kill()
    assert child.returncode == 0
    assert out == "" and err == ""  # exactly one line, and no traceback


def test_spawn_reports_a_child_that_cannot_start():
    with pytest.raises(SoaktopError, match="did not start.*invalid choice"):
        with spawn(fault="gremlins"):
            pass


def test_a_port_out_of_range_is_one_line():
    out = subprocess.run([sys.executable, "-m", "soaktop.engine.loopback", "--port", "99999"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith("soaktop-loopback: ") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# -- several processes on one port ----------------------------------------------------------


def request_ids_in_parallel(url, n, body=None, tokens=None):
    """``n`` streamed chat requests at once, each on a connection of its own (so the kernel
    spreads them over the processes listening on the port); their ids."""
    body = {**CHAT, **({"max_tokens": tokens} if tokens else {}), **(body or {})}

    async def one(i):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=body,
                                         headers={"X-Request-Id": f"req-{i}"})
            assert response.status_code == 200
        return f"req-{i}"

    async def run():
        return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(run())


def emissions_from_fresh_connections(url, times=6):
    """The emissions, asked on ``times`` new connections (so any process may answer each)."""
    taken = []
    for _ in range(times):
        with httpx.Client(base_url=url) as client:
            taken.append([Emission.from_dict(e)
                          for e in client.get("/_loopback/emissions").json()])
    return taken


def test_two_processes_on_one_port_both_serve_and_their_emissions_are_merged():
    schedule = Schedule(ttft_ms=5, itl_ms=2, tokens=8)
    with spawn(schedule, processes=2) as url:
        ids = request_ids_in_parallel(url, 24)
        first, *later = emissions_from_fresh_connections(url)
    assert sorted(e.request_id for e in first) == sorted(ids)  # every request, once
    by_process = {}
    for e in first:
        by_process.setdefault(e.process, []).append(e.request)
    assert sorted(by_process) == [0, 1], by_process  # both accepted connections
    for numbers in by_process.values():  # each counts its own requests
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert [e.received_ns for e in first] == sorted(e.received_ns for e in first)
    assert later == [[]] * len(later)  # taken once, whichever process was asked
    for e in first:  # each process paced its streams on the schedule
        assert len(e.chunks_ns) == 8
        assert all(0 <= late < 50e6 for late in e.lateness_ns(schedule)), e.lateness_ns(schedule)


def test_the_simulated_gpus_see_the_tokens_of_every_process():
    """Memory fills with every token served (``kv_mib`` per ``kv_fill_tokens``), so a scrape's
    framebuffer figure tells how many tokens its GPUs were fed: it must be all processes'."""
    model = GpuModel(gpus=2)
    with spawn(Schedule(ttft_ms=2, itl_ms=1, tokens=40), processes=2, gpus=model) as url:
        request_ids_in_parallel(url, 16)
        served = sum(sum(e.chunk_tokens) for e in emissions_from_fresh_connections(url, 1)[0])
        time.sleep(2.2)  # the steps that hold them are complete: a scrape integrates them
        used = set()
        for _ in range(8):  # fresh connections: whichever process answers, the same figure
            text = httpx.get(f"{url}/metrics").text
            used |= {float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("DCGM_FI_DEV_FB_USED{")}
    assert served == 16 * 40
    expected = model.weights_mib + round(model.kv_mib * served / model.kv_fill_tokens)
    assert used == {expected}


def test_a_parent_of_processes_takes_them_with_it_when_it_ends_or_is_killed():
    for ending in ("terminate", "kill"):
        with spawn_process(Schedule(ttft_ms=1, itl_ms=1, tokens=2), processes=2) as server:
            assert httpx.get(f"{server.url}/v1/models").status_code == 200
            getattr(server.process, ending)()
            server.process.wait(timeout=10)
            deadline = time.monotonic() + 5  # a killed parent: its children see stdin close
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{server.url}/v1/models", timeout=1)
                except httpx.ConnectError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"a server process still listens after the parent's {ending}")


def test_processes_for_a_rate_one_per_4000_tokens_per_s_leaving_a_core_to_the_client():
    assert [processes_for(rate, cores=16) for rate in (500, 4000, 4001, 8000, 30000)] == [
        1, 1, 2, 2, 8]
    assert processes_for(100_000, cores=4) == 3
    assert processes_for(100_000, cores=2) == 1 and processes_for(100_000, cores=1) == 1


def test_bad_process_counts_are_one_line():
    out = subprocess.run([sys.executable, "-m", "soaktop.engine.loopback", "--processes", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--processes must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr


# -- the server's own count of the prompt -----------------------------------------------------


async def test_usage_counts_the_prompt_as_a_tokenizer_that_splits_words_would():
    """prompt_tokens_per_word: the usage's prompt_tokens (and Ollama's prompt_eval_count) are
    that many tokens a word; cached_prefix_tokens: vLLM's and SGLang's prefix-cache hits."""
    body = {**CHAT, "max_tokens": 4, "stream_options": {"include_usage": True}}
    schedule = Schedule(ttft_ms=2, itl_ms=1, prompt_tokens_per_word=3, cached_prefix_tokens=5)
    async with LoopbackServer(schedule) as server:
        _, _, raw = await post_raw(server, "/v1/chat/completions", body)
        _, _, whole = await post_raw(server, "/v1/chat/completions", {**body, "stream": False})
        _, _, ndjson = await post_raw(server, "/api/generate", {**GENERATE, "stream": False})
    usage = json.loads(sse_events(raw)[-2])["usage"]
    # "say five words": three words, nine tokens, five of them from the prefix cache
    assert usage == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                     "prompt_tokens_details": {"cached_tokens": 5}}
    assert json.loads(whole)["usage"] == usage
    assert json.loads(ndjson)["prompt_eval_count"] == 9
    tiny = Schedule(ttft_ms=2, itl_ms=1, cached_prefix_tokens=50)  # never more than the prompt
    async with LoopbackServer(tiny) as server:
        _, _, raw = await post_raw(server, "/v1/chat/completions", body)
    assert json.loads(sse_events(raw)[-2])["usage"]["prompt_tokens_details"] == \
        {"cached_tokens": 3}
    with pytest.raises(ValueError):
        Schedule(prompt_tokens_per_word=0)
    with pytest.raises(ValueError):
        Schedule(cached_prefix_tokens=-1)
