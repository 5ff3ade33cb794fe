"""soaktop against llama.cpp's OpenAI-compatible server (llama-cpp-python), started by conftest.

Two layers, so a failure says whose it is: the first tests talk to the server directly with
httpx and pin down what its stream looks like; the last ones run soaktop's CLI against it, as
a user would, and check the summary it prints.

What llama-cpp-python 0.3.36 streams for ``POST /v1/chat/completions`` with ``stream: true``
(each event one ``data: {json}`` line and a blank line, ``Content-Type: text/event-stream``):

1. a role chunk with no text: ``"delta": {"role": "assistant"}``, ``finish_reason: null``
   (soaktop must not take this as the first token);
2. one chunk per generated token: ``"delta": {"content": "<text>"}`` (with the tiny model every
   token is printable ASCII, so never an empty or held-back piece);
3. a closing chunk with ``"delta": {}`` and ``finish_reason`` ``"length"`` (or ``"stop"``);
4. ``data: [DONE]``.

It sends no ``usage`` in the stream: it ignores ``stream_options.include_usage`` (an unknown
field to its request model, accepted and dropped), so a client counts tokens from the chunks.
The non-streamed response does carry ``usage``, which is how the test below checks that one
content chunk is one token. sse-starlette may add ``: ping`` comment lines on a quiet stream
(every 15 s), which an SSE parser must skip. Requests are served one at a time; the others
queue (see ``--interrupt_requests`` in conftest).

One quirk that bites a load generator: the server validates an ``X-Request-Id`` header as a UUID
(starlette-context's RequestIdPlugin) and answers anything else with an empty 400, before the
request reaches the model. A client that tags requests must use UUID-shaped ids.

What it says about itself is little: ``Server: uvicorn`` on every response, a 404 for
``/version`` (and ``/props``, ``/info``), and a model entry of ``id``, ``object``,
``owned_by: "me"`` and an empty ``permissions`` list. Its version shows only as
``info.version`` of FastAPI's ``/openapi.json``, which soaktop does not ask (other FastAPI
servers leave FastAPI's default there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "kalomi nerusa tivoze padofe"}]


def _sse_data(lines: list[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream, comments and blank separators dropped."""
    return [line[len("data:"):].strip() for line in lines if line.startswith("data:")]


def test_server_lists_its_model(llama_cpp_server):
    response = httpx.get(f"{llama_cpp_server.url}/v1/models", timeout=10)
    assert response.status_code == 200
    ids = [m["id"] for m in response.json()["data"]]
    assert ids == [llama_cpp_server.model]


def test_server_accepts_only_uuid_request_ids(llama_cpp_server):
    """Pins the X-Request-Id quirk above, so a 400 storm from soaktop has a known cause."""

    def status(request_id: str) -> int:
        response = httpx.post(
            f"{llama_cpp_server.url}/v1/chat/completions",
            json={"model": llama_cpp_server.model, "messages": MESSAGES, "max_tokens": 1},
            headers={"X-Request-Id": request_id},
            timeout=60,
        )
        return response.status_code

    assert status("soaktop-run-1") == 400
    assert status("8b4f6e0c-5d1a-4c3e-9f2a-0123456789ab") == 200


def test_non_streamed_usage_counts_every_token(llama_cpp_server):
    """The tiny model never stops early: a request yields exactly max_tokens tokens."""
    response = httpx.post(
        f"{llama_cpp_server.url}/v1/chat/completions",
        json={"model": llama_cpp_server.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    assert body["usage"]["prompt_tokens"] > 0
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"]


def test_server_streams_chat_completions_sse(llama_cpp_server):
    """The server side of the acceptance test works, independently of soaktop."""
    payload = {
        "model": llama_cpp_server.model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{llama_cpp_server.url}/v1/chat/completions", json=payload, timeout=60
    ) as response:
        assert response.status_code == 200, response.read().decode(errors="replace")
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())

    data = _sse_data(lines)
    assert data, f"no data events in the stream: {lines[:10]}"
    assert data[-1] == "[DONE]", f"stream did not end with [DONE]: {data[-3:]}"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]

    # 1. an empty role chunk first: no text, so not a token
    assert deltas[0].get("role") == "assistant"
    assert not deltas[0].get("content")
    # 2. one non-empty content chunk per token
    contents = [d["content"] for d in deltas if d.get("content")]
    assert len(contents) == MAX_TOKENS, deltas
    assert all(text.isascii() and text.isprintable() for text in contents)
    # 3. a closing chunk that says why it stopped
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # and every chunk is one of those three kinds
    assert len(chunks) == MAX_TOKENS + 2


def _soaktop(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soaktop.tui.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )


def _failure(proc: subprocess.CompletedProcess, server) -> str:
    return (f"soaktop exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-3000:]}\n--- server log\n{server.log_tail(2000)}")


async def test_soaktop_records_what_the_server_says_about_itself(llama_cpp_server):
    from soaktop.engine.backends.openai import OpenAIBackend

    backend = OpenAIBackend(llama_cpp_server.url, model=llama_cpp_server.model)
    await backend.start()
    await backend.close()
    # no version (its /version is a 404), the list's scalar fields (permissions is a list)
    assert backend.describe()["server"] == {
        "header": "uvicorn",
        "model_entry": {"id": llama_cpp_server.model, "object": "model", "owned_by": "me"},
    }


def test_soaktop_lists_the_server_models(llama_cpp_server):
    proc = _soaktop("models", "--backend", "openai", "--url", llama_cpp_server.url, timeout=60)
    assert proc.returncode == 0, _failure(proc, llama_cpp_server)
    assert llama_cpp_server.model in proc.stdout.split()


DURATION_S = 15
CONCURRENCY = 4
OUTPUT_TOKENS = 32


def test_soaktop_run_against_llama_cpp(llama_cpp_server):
    """The first promise to a user: a headless soak against a real server completes with no
    failure."""
    proc = _soaktop(
        "run", "--headless", "--backend", "openai",
        "--url", llama_cpp_server.url, "--model", llama_cpp_server.model,
        "--concurrency", str(CONCURRENCY), "--duration", f"{DURATION_S}s",
        "--json", "--no-record", "--output-tokens", str(OUTPUT_TOKENS),
        timeout=DURATION_S + 90,
    )
    assert proc.returncode == 0, _failure(proc, llama_cpp_server)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"--json printed no JSON object\n{_failure(proc, llama_cpp_server)}")

    keys = ("requests_ok", "requests_failed", "errors", "output_tokens", "duration_s",
            "output_tokens_per_s", "ttft_ms", "itl_ms", "ended")
    context = (json.dumps({k: result.get(k) for k in keys}) + f"\n--- soaktop stderr\n"
               f"{proc.stderr[-1500:]}\n--- server log\n{llama_cpp_server.log_tail(1500)}")
    assert result["requests_failed"] == 0, context
    assert result["errors"] == {}, context
    assert result["requests_ok"] > 0, context
    assert result["output_tokens"] > 0, context
    assert result["ttft_ms"]["p50"] is not None and result["ttft_ms"]["p50"] > 0, context
    assert result["itl_ms"]["p50"] is not None and result["itl_ms"]["p50"] > 0, context

    # The measured window is the run less its warm-up phase, so no longer than --duration.
    duration_s = result["duration_s"]
    assert 0 < duration_s <= DURATION_S + 1.0, context
    assert result["output_tokens_per_s"] == pytest.approx(
        result["output_tokens"] / duration_s, rel=1e-6
    ), context
    # Every request yields exactly OUTPUT_TOKENS tokens (the tiny model never stops early and
    # the server sends one chunk per token), so the window's tokens are requests_ok times that,
    # give or take the requests that straddle the window's two edges: at most CONCURRENCY in
    # flight at each edge (warm-up ones finishing inside it, unfinished ones at the stop).
    slack = 2 * CONCURRENCY * OUTPUT_TOKENS
    assert abs(result["output_tokens"] - OUTPUT_TOKENS * result["requests_ok"]) <= slack, context


INPUT_WORDS = 16


def test_the_servers_count_of_soaktops_prompt_and_what_the_summary_says_of_it(llama_cpp_server):
    """soaktop's prompts are pseudo-words, which this model's byte-level vocabulary splits into
    several tokens each: the server counts far more input tokens than soaktop asked for. Its
    count comes only with a non-streamed answer: llama-cpp-python streams no ``usage`` (see
    above), so soaktop cannot know it, and its summary says so (``input_tokens.server`` null,
    no warning) rather than guess; a server that streams usage (vLLM, SGLang, llama.cpp's own
    llama-server) has its count there (``test_llama_server_usage.py`` proves that path against
    llama-server, the loopback tests against a server of ours)."""
    from soaktop.engine.load.prompts import make_prompts

    prompt = make_prompts(0, 1, INPUT_WORDS)[0].text
    response = httpx.post(
        f"{llama_cpp_server.url}/v1/chat/completions",
        json={"model": llama_cpp_server.model, "max_tokens": 1,
              "messages": [{"role": "user", "content": prompt}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    served = response.json()["usage"]["prompt_tokens"]
    assert served > 2 * INPUT_WORDS  # what the issue saw: far more than asked

    proc = _soaktop(
        "run", "--headless", "--backend", "openai",
        "--url", llama_cpp_server.url, "--model", llama_cpp_server.model,
        "--concurrency", "2", "--duration", "5s", "--json", "--no-record",
        "--input-tokens", str(INPUT_WORDS), "--output-tokens", "4",
        timeout=90,
    )
    assert proc.returncode == 0, _failure(proc, llama_cpp_server)
    result = json.loads(proc.stdout)
    assert result["requests_ok"] > 0, _failure(proc, llama_cpp_server)
    assert result["input_tokens"] == {"asked": INPUT_WORDS, "server": None}
    assert result["cached_share"] is None
    assert "the server counted" not in proc.stdout + proc.stderr
