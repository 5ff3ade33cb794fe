"""A loopback LLM server with a schedule you set and faults on demand.

It is the source of truth for soaktop's own numbers: it emits tokens on a known schedule and
records, per request, when each content chunk was actually handed to the socket
(:class:`Emission`), on the same monotonic clock a client on this machine reads. A client's
TTFT and ITL can then be checked against what went over the wire, not against a plan. It is
also the misbehaving server for error-handling tests, and what ``soaktop calibrate`` runs.

It speaks, over HTTP/1.1 with keep-alive:

- ``POST /v1/chat/completions`` and ``POST /v1/completions`` (SSE when ``stream: true``, with
  ``stream_options.include_usage``, ``max_tokens``/``max_completion_tokens``); ``GET /v1/models``,
  ``GET /version`` (as vLLM: ``{"version": "loopback-<soaktop version>"}``);
- ``POST /api/generate`` and ``POST /api/chat`` (NDJSON, ``options.num_predict``, the server's
  durations on the ``done`` line); ``GET /api/tags``, ``GET /api/version``, ``POST /api/show``;
- ``GET /_loopback/emissions``: the truth for every generation request finished since the last
  call, then forgotten;
- ``GET /metrics`` with ``gpus=`` (``--gpus N``): N simulated GPUs as an NVIDIA DCGM exporter
  serves them, warming with the tokens this server sends, one of them running hot enough to
  throttle (:mod:`soaktop.engine.loopback.dcgm`).

Every response carries ``Server: soaktop-loopback``.

Faults (every ``fault_every``-th generation request, counted from 1, after the first
``fault_after``: a server that degrades on cue):

==================  ===========================================================================
``reset``           three content chunks, then the connection is reset (RST)
``stall_first``     status and headers, then nothing for an hour
``stall_mid``       three content chunks, then nothing for an hour
``http_500``        500 with an error body
``http_404``        404, model not found (OpenAI error body, or Ollama's)
``http_429``        429 with ``Retry-After: 1`` and an error body
``malformed_json``  ``data: {not json`` after three content chunks, then the rest
``malformed_sse``   a garbage line that is not ``field: value`` after three chunks, then the rest
``no_done``         the stream ends cleanly without ``data: [DONE]`` (Ollama: no ``done`` line)
``non_utf8``        a chunk whose JSON string holds the bytes ``\\xff\\xfe``, then the rest
``error_in_stream`` HTTP 200, two content chunks, an error event, end of stream and connection
``refuse_usage``    400 for a request with ``stream_options``; others are served normally
``finish_error``    the last content chunk's finish reason is ``error``: a failure inside a 200
``html_200``        a proxy's login page instead: 200, ``text/html``, not a stream
``redirect_302``    302 to ``/login?next=...`` (a proxy's login page), ``text/html``
``hang_up``         the connection is closed (FIN) with the request read and nothing answered
``close_idle``      ``hang_up``, only for a request on a kept-alive connection that already
                    carried a generation request (llama.cpp's server closing idle ones)
==================  ===========================================================================

Status faults (``http_*``, ``refuse_usage``, ``html_200``, ``redirect_302``) and
``hang_up``/``close_idle`` apply to any generation request; the others to streaming ones.
In-process::

    async with LoopbackServer(Schedule(ttft_ms=50, itl_ms=20)) as server:
        ...  # talk to server.url; then server.emissions()

As a process (what timing tests use, so client and server do not share a GIL)::

    python -m soaktop.engine.loopback --port 0 --ttft-ms 50 --itl-ms 20 [--fault reset --fault-every
    5 --fault-after 100] [--max-active 4] [--gpus 8 --gpu-tau-s 120]

``--max-active N`` (``max_active=``) answers at most N generation requests at once and queues
the rest, each schedule starting when it gets a place: a fixed service rate, N over one
request's length, so an open loop asking more than that saturates it on cue.

or ``with spawn(Schedule(...)) as url: ...`` (``spawn_process`` when the test needs the process,
to kill it; ``port=`` to start one again where a killed one listened).

With ``--processes P`` (``spawn(..., processes=P)``), P server processes accept on the one
port (``SO_REUSEPORT``), so the server is not the bottleneck at high rates; emissions and the
simulated GPUs' load are those of all of them (:mod:`soaktop.engine.loopback.shared`).
Faults then count each process's requests.
"""

from soaktop.engine.loopback.dcgm import GpuModel, SimulatedGpus
from soaktop.engine.loopback.process import (
    READY,
    LoopbackProcess,
    processes_for,
    spawn,
    spawn_process,
)
from soaktop.engine.loopback.schedule import Emission, Schedule
from soaktop.engine.loopback.server import FAULTS, LoopbackServer

__all__ = [
    "FAULTS", "READY", "Emission", "GpuModel", "LoopbackProcess", "LoopbackServer", "Schedule",
    "SimulatedGpus", "processes_for", "spawn", "spawn_process",
]
