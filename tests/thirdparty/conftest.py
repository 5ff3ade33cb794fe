"""A real third-party OpenAI-compatible server for the tests in this folder: llama.cpp.

soaktop's own loopback servers prove the numbers; this tier proves soaktop works against a
server somebody else wrote, with its own SSE framing, chunking and quirks. It runs
``llama-cpp-python[server]`` (llama.cpp built from source by pip) on a tiny random-weight GGUF
made by ``make_tiny_gguf.py``, so it needs no download at test time and no GPU.

Every test here carries the ``thirdparty`` marker (``-m thirdparty`` runs only them,
``-m 'not thirdparty'`` skips them). Without llama-cpp-python installed the tests are skipped
with the install command, except under CI (the ``CI`` environment variable set), where they
fail: the tier must not vanish silently from CI because an install step went missing.

A second server, llama.cpp's own C++ ``llama-server`` (``llama_server`` fixture), is built
from the same llama.cpp source on first use and cached (see ``llama_server.py``): it streams
the ``usage`` llama-cpp-python's server leaves out. Without a compiler and cmake it is skipped,
and under CI a missing tool or a failed build fails.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

MODEL_ALIAS = "tiny-llama"
STARTUP_TIMEOUT_S = 60.0

# Modules the server needs at run time: llama_cpp itself and its [server] extra, plus gguf for
# writing the model. Checked by name only, so a missing one costs no import of the others.
_REQUIRED_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                     "pydantic_settings", "gguf")
_INSTALL_HINT = "pip install -e '.[thirdparty]' (builds llama.cpp from source: minutes)"


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; registering here keeps the folder self-contained.
    config.addinivalue_line(
        "markers", "thirdparty: against a real third-party server (llama.cpp) the tests start"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, so mark only this folder's.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.thirdparty)


@dataclass(frozen=True)
class LlamaCppServer:
    """A running ``llama_cpp.server``: its base URL (no ``/v1``) and the model name it serves."""

    url: str
    model: str
    log_path: Path

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        return _tail(self.log_path, n_chars)


def _missing_modules() -> list[str]:
    return [name for name in _REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n_chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError as exc:
        return f"(no server log: {exc})"


def _wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path,
                      path: str = "/v1/models", name: str = "llama_cpp.server") -> None:
    """Poll ``GET path`` until the server answers 200, it exits, or the timeout passes."""
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"{name} exited with code {proc.returncode} before serving; "
                f"its output ends:\n{_tail(log_path, 4000)}",
                pytrace=False,
            )
        try:
            response = httpx.get(f"{url}{path}", timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    pytest.fail(
        f"{name} did not answer GET {url}{path} within {STARTUP_TIMEOUT_S:.0f} s "
        f"(last: {last_error}); its output ends:\n{_tail(log_path, 4000)}",
        pytrace=False,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """Start llama.cpp's OpenAI-compatible server on a tiny GGUF; stop it after the session."""
    missing = _missing_modules()
    if missing:
        reason = (f"llama-cpp-python server not installed (missing {', '.join(missing)}): "
                  f"{_INSTALL_HINT}")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the thirdparty tier must run: {reason}", pytrace=False)
        pytest.skip(reason)

    # pytest puts this folder (no __init__.py) on sys.path to import this conftest.
    from make_tiny_gguf import write_tiny_gguf

    workdir = tmp_path_factory.mktemp("llama_cpp")
    model_path = write_tiny_gguf(workdir / "tiny-llama.gguf", seed=0)
    log_path = workdir / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        # The synthetic prompts are ~3 tokens a word (128 words by default) plus the output;
        # 2048 leaves room, and the tiny model's KV cache at that length is still < 1 MB.
        "--n_ctx", "2048",
        # One thread: the tiny model needs no more, and the other core stays with soaktop.
        "--n_threads", "1",
        # llama-cpp-python serves one request at a time behind a lock (it has no parallel
        # slots), and by default a newly arrived request *interrupts* the one streaming: it
        # gets a premature [DONE]. A load test keeps several requests in flight, so that
        # would cut nearly every stream short; queued requests must wait their turn instead.
        "--interrupt_requests", "False",
        "--verbose", "False",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        _wait_until_ready(proc, url, log_path)
        yield LlamaCppServer(url=url, model=MODEL_ALIAS, log_path=log_path)
    finally:
        _stop(proc)


@dataclass(frozen=True)
class LlamaServer:
    """A running C++ ``llama-server``: its base URL (no ``/v1``), the model name it serves,
    the GGUF it serves (for the tokenizer built from the same vocabulary) and its log."""

    url: str
    model: str
    model_path: Path
    log_path: Path

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        return _tail(self.log_path, n_chars)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the thirdparty tier must run: {reason}", pytrace=False)
    pytest.skip(reason)


def _llama_server_binary() -> Path:
    """The binary to run: ``$SOAKTOP_LLAMA_SERVER``, or the cached build, built if missing."""
    from llama_server import (
        BINARY_ENV,
        BuildError,
        ensure_built,
        missing_tools,
        source_version,
    )

    given = os.environ.get(BINARY_ENV)
    if given:
        if not Path(given).is_file():
            pytest.fail(f"{BINARY_ENV}={given}: no such file", pytrace=False)
        return Path(given)
    version = source_version()
    if version is None or _missing_modules():
        _skip_or_fail(f"llama-server is built from llama-cpp-python's source, which is not "
                      f"installed: {_INSTALL_HINT}")
    tools = missing_tools()
    if tools:
        _skip_or_fail(f"building llama-server needs {', '.join(tools)} on PATH")
    try:
        return ensure_built(version)
    except BuildError as exc:
        pytest.fail(f"llama-server build: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """Start llama.cpp's C++ ``llama-server`` on the tiny GGUF; stop it after the session.
    The first use on a machine builds the server (minutes; see ``llama_server.py``)."""
    binary = _llama_server_binary()
    from make_tiny_gguf import write_tiny_gguf

    workdir = tmp_path_factory.mktemp("llama_server")
    model_path = write_tiny_gguf(workdir / "tiny-llama.gguf", seed=0)
    log_path = workdir / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(binary), "--model", str(model_path), "--alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        # 4 slots of 1024 tokens each: room for the prompts here and what soaktop keeps in
        # flight; one thread, as for llama-cpp-python's server above.
        "--ctx-size", "4096", "--parallel", "4", "--threads", "1",
        "--no-webui", "--no-warmup",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        # /health is 503 while the model loads, 200 once it serves; /v1/models answers sooner
        _wait_until_ready(proc, url, log_path, path="/health", name="llama-server")
        yield LlamaServer(url=url, model=MODEL_ALIAS, model_path=model_path, log_path=log_path)
    finally:
        _stop(proc)
