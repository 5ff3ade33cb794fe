"""The server's count of the prompt against soaktop's, with llama.cpp's C++ ``llama-server``.

llama-cpp-python's server streams no ``usage``, so ``input_tokens.server`` stays null against it
(``test_llama_cpp.py``). The upstream ``llama-server`` (built and started by conftest, see
``llama_server.py``) streams it: on ``/v1/completions`` its last chunk before ``[DONE]`` carries
``usage`` (``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens``)
and llama.cpp's ``timings`` (``prompt_n``, ``predicted_n``, ...).

The tiny model's vocabulary is byte-level BPE (``make_tiny_gguf.py``), so a pseudo-word of
soaktop's costs about three tokens. ``make_tiny_tokenizer.py`` writes the same vocabulary as a
``tokenizer.json``; with it as ``--tokenizer`` soaktop builds prompts of the exact token length
asked and counts them as the server does. One difference is by design: the model adds a BOS
token (``add_bos_token``), which the server counts in ``prompt_tokens`` and soaktop does not
(its count is of the prompt's own tokens, ``engine/load/tokenizer.py``). So the server's count
is soaktop's plus exactly one, per request and so in the mean. Without ``--tokenizer``
soaktop counts words, the server counts about three times as many tokens, and the summary
warns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The first use on a machine builds llama-server inside the fixture's setup (minutes on two
#: cores; cached after), which pytest-timeout counts against the first test here.
pytestmark = pytest.mark.timeout(3600)

INPUT_TOKENS = 64
OUTPUT_TOKENS = 4
BOS = 1  # the one special token the server adds to a completions prompt


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tokenizers")
    from make_tiny_tokenizer import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


def _stream_completion(server, prompt: str) -> list[dict]:
    payload = {"model": server.model, "prompt": prompt, "max_tokens": OUTPUT_TOKENS,
               "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=payload,
                      timeout=60) as response:
        assert response.status_code == 200, response.read().decode(errors="replace")
        data = [line[len("data:"):].strip() for line in response.iter_lines()
                if line.startswith("data:")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


def test_llama_server_streams_the_prompt_count_of_the_tiny_tokenizer_plus_bos(
        llama_server, tokenizer_json):
    """The source of truth, without soaktop: the streamed usage is there, and it is the
    tokenizer.json's count of the prompt plus the BOS, the tokenizer's own template included."""
    from tokenizers import Tokenizer

    from soaktop.engine.load.prompts import make_prompts

    tok = Tokenizer.from_file(str(tokenizer_json))
    for prompt in (p.text for p in make_prompts(0, 3, 40)):
        chunks = _stream_completion(llama_server, prompt)
        usage = chunks[-1].get("usage")
        assert isinstance(usage, dict), chunks[-1]
        own = len(tok.encode(prompt, add_special_tokens=False).ids)
        assert own > 2 * 40  # byte-level: several tokens a pseudo-word
        assert usage["prompt_tokens"] == own + BOS
        assert usage["prompt_tokens"] == len(tok.encode(prompt).ids)  # BOS by the template
        assert usage["completion_tokens"] == OUTPUT_TOKENS
        assert chunks[-1]["timings"]["prompt_n"] <= usage["prompt_tokens"]


def _soaktop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soaktop.tui.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _run(server, tmp_path: Path, *extra: str) -> tuple[dict, str]:
    """A short headless run on the completions API, recorded; the summary's JSON (read back
    from the record) and the text summary the run printed."""
    record = tmp_path / "run.jsonl"
    proc = _soaktop(
        "run", "--headless", "--backend", "openai", "--api", "completions",
        "--url", server.url, "--model", server.model, "--concurrency", "2",
        "--duration", "5s", "--input-tokens", str(INPUT_TOKENS),
        "--output-tokens", str(OUTPUT_TOKENS), "--record", str(record), *extra)
    context = (f"soaktop exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n"
               f"{proc.stderr[-3000:]}\n--- server log\n{server.log_tail(2000)}")
    assert proc.returncode == 0, context
    summary = _soaktop("summary", str(record), "--json", timeout=60)
    assert summary.returncode == 0, summary.stderr
    result = json.loads(summary.stdout)
    assert result["requests_ok"] > 0, context
    # llama-server (cpp-httplib) closes idle keep-alive connections without a
    # ``Connection: close``; a request sent on one just then got no answer (a few % of
    # requests at this rate, plain httpx alike) until soaktop sent such requests again
    # (engine/backends/http.py stale_connection). No failure at all is expected now.
    assert not result["errors"], context
    return result, proc.stdout + proc.stderr


def test_with_the_tokenizer_the_server_counts_what_soaktop_asked(
        llama_server, tokenizer_json, tmp_path):
    result, printed = _run(llama_server, tmp_path, "--tokenizer", str(tokenizer_json))
    counted = result["input_tokens"]
    assert counted["asked"] == INPUT_TOKENS
    assert counted["server"] == pytest.approx(INPUT_TOKENS + BOS, abs=1e-9)
    assert "the server counted" not in printed


def test_without_the_tokenizer_the_summary_warns(llama_server, tmp_path):
    result, printed = _run(llama_server, tmp_path)
    counted = result["input_tokens"]
    assert counted["asked"] == INPUT_TOKENS  # pseudo-words
    assert counted["server"] > 2 * INPUT_TOKENS
    warned = [line for line in printed.splitlines() if "the server counted" in line]
    assert len(warned) == 1, printed[-3000:]
    assert f"vs {INPUT_TOKENS} a request" in warned[0]
