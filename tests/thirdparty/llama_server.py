"""llama.cpp's own C++ ``llama-server``, built once from source and cached, for the tests here.

Why a second llama.cpp server: llama-cpp-python's server streams no ``usage`` (see
``test_llama_cpp.py``), so against it soaktop cannot learn the server's count of the prompt
tokens. The upstream ``llama-server`` does: with ``stream_options.include_usage`` its last
streamed chunk carries ``usage.prompt_tokens`` (and, on ``/v1/completions``, always does), and
``timings`` beside it. That count is what ``input_tokens.server`` is tested against.

Where the source comes from: the llama.cpp tree vendored inside the llama-cpp-python sdist of
the version installed (``pip download``, served from pip's cache after the install), so the
C++ server is the same llama.cpp the Python tier runs. Only the ``llama-server`` target is
built: CPU only, Release, ``GGML_NATIVE=OFF`` (a cached binary stays valid on another CPU of the
same family), no curl, no OpenSSL, no web UI assets (which would be downloaded), static
libraries so the cache holds one file. The binary is kept at
``~/.cache/soaktop-llama-server/<version>-<flags hash>/llama-server`` (``$XDG_CACHE_HOME`` is
honoured), like pip's wheel cache: a machine builds it once; a change of version or of the
flags below builds a new one. ``SOAKTOP_LLAMA_SERVER=/path/to/llama-server`` uses a binary
built elsewhere instead.

Build it ahead of a test run with ``python tests/thirdparty/llama_server.py build`` (the
session fixture in conftest builds it otherwise, on first use).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BINARY_ENV = "SOAKTOP_LLAMA_SERVER"
BUILD_TIMEOUT_S = 3600.0

#: The smallest CPU build of the server: every flag keeps a target, a download or a CPU
#: dependency out of it.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_LLAMAFILE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)


class BuildError(Exception):
    """The server could not be built; the message says which step and ends with its output."""


def source_version() -> str | None:
    """The installed llama-cpp-python version, whose vendored llama.cpp is built; None if
    it is not installed."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def cached_binary(version: str) -> Path:
    """Where the build of ``version`` with :data:`CMAKE_FLAGS` is kept."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    flags = hashlib.sha256(" ".join(CMAKE_FLAGS).encode()).hexdigest()[:8]
    return root / "soaktop-llama-server" / f"{version}-{flags}" / "llama-server"


def missing_tools() -> list[str]:
    """The build tools not on PATH (a C/C++ compiler and cmake)."""
    return [tool for tool in ("cmake", "cc", "c++") if shutil.which(tool) is None]


def _run(step: str, command: list[str], cwd: Path, log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{step} ran past {BUILD_TIMEOUT_S:.0f} s; log {log}") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"{step} failed (exit {proc.returncode}); its output ends:\n{tail}")


def build(version: str, dest: Path, jobs: int | None = None) -> Path:
    """Download the sdist of llama-cpp-python ``version``, build its vendored ``llama-server``
    and install it at ``dest``; the build tree is removed after. Runs under ``nice`` so a
    machine's other work stays responsive."""
    jobs = jobs or os.cpu_count() or 1
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / "build.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="build-") as tmp:
        work = Path(tmp)
        _run("pip download", [sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                              "--no-deps", "--dest", str(work),
                              f"llama-cpp-python=={version}"], work, log)
        sdists = list(work.glob("llama_cpp_python-*.tar.gz"))
        if len(sdists) != 1:
            raise BuildError(f"pip download left {sdists or 'no sdist'} in {work}")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(work, members=members, filter="data")
        source, tree = work / prefix, work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run("cmake configure", [*nice, "cmake", "-S", str(source), "-B", str(tree),
                                 *generator, *CMAKE_FLAGS], work, log)
        _run("cmake build", [*nice, "cmake", "--build", str(tree), "--target", "llama-server",
                             "--parallel", str(jobs)], work, log)
        built = tree / "bin" / "llama-server"
        if not built.is_file():
            raise BuildError(f"the build made no {built}")
        staged = dest.with_suffix(".tmp")
        shutil.copy2(built, staged)
        os.replace(staged, dest)  # a binary at dest is always a whole one
    return dest


def ensure_built(version: str) -> Path:
    """The cached binary for ``version``, built first if there is none. A file lock makes a
    second session wait for the first one's build instead of building it again."""
    dest = cached_binary(version)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_file():
            build(version, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "path"),
                        help="build: build the cached binary if missing; path: print its path")
    args = parser.parse_args(argv)
    version = source_version()
    if version is None:
        print("llama-cpp-python is not installed: pip install -e '.[thirdparty]'",
              file=sys.stderr)
        return 1
    if args.command == "path":
        print(cached_binary(version))
        return 0
    start = time.monotonic()
    try:
        path = ensure_built(version)
    except BuildError as exc:
        print(f"llama-server build: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
