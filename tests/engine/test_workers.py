"""``--workers N``: a run's streams read in worker processes, the session kept in this one.

Against the loopback server in a process of its own, as a user's run would be: the closed loop
keeps its concurrency across workers (the server's own record of what it had open says so),
every request names the worker that read it, a worker killed mid-run costs its requests in
flight (``worker_lost``) and one line, and the run goes on on the others. The fidelity of the
workers' stamps is tests/engine/test_http_fidelity.py's, run with 1 and 2 workers.
"""

import asyncio
import gzip
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, RequestSent, StreamEnd
from soaktop.engine.config import RunConfig
from soaktop.engine.events import ClientSample, Mark, RequestDone, SessionEnd, TokensArrived
from soaktop.engine.factory import build_session
from soaktop.engine.load.workers import (
    WorkerPool,
    auto_workers,
    resolve_workers,
    worst_health,
)
from soaktop.engine.loopback import Emission, Schedule, spawn
from soaktop.engine.metrics.client_health import HealthFigures
from soaktop.engine.records.format import RecordReader


def openai(**fields) -> RunConfig:
    return RunConfig(backend="openai", url="http://127.0.0.1:9", **fields)


# -- the rule and the arithmetic -------------------------------------------------------------
def test_auto_gives_one_process_to_small_loads_and_one_worker_per_64_streams_above():
    assert auto_workers(openai(concurrency=1), cores=64) == 1
    assert auto_workers(openai(concurrency=64), cores=64) == 1
    assert auto_workers(openai(concurrency=65), cores=64) == 2
    assert auto_workers(openai(concurrency=256), cores=64) == 4
    assert auto_workers(openai(concurrency=1024), cores=16) == 15  # one core for the session
    assert auto_workers(openai(concurrency=1024), cores=2) == 1  # a 2-core box: never more
    assert auto_workers(openai(ramp=(8, 64, 512)), cores=64) == 8  # a ramp's peak decides
    # open loop: tokens/s asked, rate x output tokens
    assert auto_workers(openai(rate=10.0, output_tokens=128), cores=64) == 1
    assert auto_workers(openai(rate=100.0, output_tokens=128), cores=64) == 4
    assert auto_workers(RunConfig(concurrency=512), cores=64) == 1  # the local engine
    assert auto_workers(RunConfig(backend="ollama", concurrency=512), cores=64) == 8


def test_an_asked_count_is_kept_and_only_http_backends_get_workers():
    assert resolve_workers(openai(concurrency=4, workers=3)) == (3, None)
    assert resolve_workers(openai(concurrency=4, workers=1)) == (1, None)
    n, line = resolve_workers(RunConfig(workers=2))
    assert n == 1 and line == ("--workers applies to openai and ollama; the local backend "
                               "runs in this process")
    from soaktop.engine.errors import ConfigError
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        openai(workers=0)


def test_the_worst_process_decides_a_seconds_health():
    main = HealthFigures(300, 800, 40.0, 35.0, None, None)
    a = HealthFigures(200, None, 70.0, 65.0, 400, 9000)
    b = HealthFigures(1500, None, 95.0, 92.0, 2500, 1800)
    merged = worst_health(main, [a, b])
    assert merged == HealthFigures(1500, 800, 205.0, 92.0, 2500, 1800)
    assert worst_health(main, []) is main


class _Talker:
    """A backend whose every arrival carries its text, as an HTTP backend's does whether or
    not the text is wanted: a thought, then an answer in two pieces."""

    async def stream(self, request):
        yield RequestSent(1)
        yield Arrival(2, 1, "hm", reasoning=True)
        yield Arrival(3, 1, "Hello ")
        yield Arrival(4, 2, "world")
        yield StreamEnd("stop")


def test_a_worker_sends_the_output_text_once_at_the_end_and_only_when_asked():
    """The text crosses the pipe in the END item, (answer, reasoning), for a request whose GO
    asked for it; never with each arrival, and not at all for one that did not ask."""
    from soaktop.engine.load import worker_process as wp
    from soaktop.engine.metrics.client_health import ClientHealth

    async def items(want_text: bool) -> list[tuple]:
        sent: list[tuple] = []
        worker = wp._Worker(sent.extend, _Talker(), ClientHealth())
        worker.command((wp.GO, 7, "m", 8, "hi", want_text, None))
        await worker.tasks[7]
        worker.out.flush()
        return sent

    asked, unasked = asyncio.run(items(True)), asyncio.run(items(False))
    for sent in (asked, unasked):  # arrivals carry their stamps and counts, never text
        assert [i for i in sent if i[0] == wp.ARRIVED] == [
            (wp.ARRIVED, 7, 2, 1, True), (wp.ARRIVED, 7, 3, 1, False),
            (wp.ARRIVED, 7, 4, 2, False)]
    (end,) = [i for i in asked if i[0] == wp.END]
    assert end[:3] == (wp.END, 7, "stop") and end[6] == ("Hello world", "hm")
    (end,) = [i for i in unasked if i[0] == wp.END]
    assert end[:3] == (wp.END, 7, "stop") and end[6] is None


class _Failing(_Talker):
    """Says a thought and half an answer, then the server fails."""

    async def stream(self, request):
        from soaktop.engine.errors import BackendError

        yield RequestSent(1)
        yield Arrival(2, 1, "hm", reasoning=True)
        yield Arrival(3, 1, "Hello ")
        raise BackendError("the stream broke off", "stream_truncated")


def test_a_failed_request_hands_its_text_so_far_to_the_main_where_it_was_wanted():
    """--save-outputs keeps a failed request's partial text; from a worker it crosses in the
    ERROR item, and the pool raises it with the error (it was lost before: saved as '')."""
    from soaktop.engine.errors import BackendError
    from soaktop.engine.load import worker_process as wp
    from soaktop.engine.load.workers import Pool
    from soaktop.engine.metrics.client_health import ClientHealth

    async def error_item(want_text: bool) -> tuple:
        sent: list[tuple] = []
        worker = wp._Worker(sent.extend, _Failing(), ClientHealth())
        worker.command((wp.GO, 7, "m", 8, "hi", want_text, None))
        await worker.tasks[7]
        worker.out.flush()
        (error,) = [i for i in sent if i[0] == wp.ERROR]
        return error

    asked = asyncio.run(error_item(True))
    assert asked[2] == "stream_truncated" and asked[6] == ("Hello ", "hm")
    assert asyncio.run(error_item(False))[6] is None

    async def raised() -> BackendError:
        class _Proc:  # one live worker whose flight already holds the ERROR item
            alive, flights = True, {}

            def post(self, message):
                self.flights[7].items.append(asked)

        pool = Pool.__new__(Pool)
        pool._procs = [_Proc()]
        request = GenerationRequest(7, Prompt(7, (), "hi"), 8, "m", want_text=True)
        with pytest.raises(BackendError) as caught:
            async for _ in pool.stream(request):
                pass
        return caught.value

    error = asyncio.run(raised())
    assert error.error_class == "stream_truncated" and error.output == ("Hello ", "hm")


# -- against the loopback ----------------------------------------------------------------------
def emissions(url: str) -> list[Emission]:
    answer = httpx.get(f"{url}/_loopback/emissions", timeout=10)
    return [Emission.from_dict(e) for e in answer.json()]


async def run_session(config: RunConfig, during=None, record: Path | None = None):
    """Run ``config`` through the factory, as the command line does; ``during(session)`` runs
    beside it. Returns the session, its events and the lines it said."""
    events, said = [], []
    session = await build_session(config, record=record, listeners=(events.append,),
                                  say=said.append, steerable=False)
    side = None
    if during is not None:
        async def beside():
            await session.started.wait()
            await during(session)
        side = asyncio.ensure_future(beside())
    await session.run()
    if side is not None:
        await side
    return session, events, said


def test_a_closed_loop_keeps_its_concurrency_in_flight_across_workers():
    """The server's own view: at every instant of the steady state it had C streams open
    (a request counts from when its body was read to its last chunk), as many as with one
    process; and the client's once-a-second samples say C too."""
    concurrency = 16
    schedule = Schedule(ttft_ms=20, itl_ms=10, jitter_ms=2, tokens=40, model="m")
    config = openai(model="m", concurrency=concurrency, duration_s=4.0, output_tokens=40,
                    input_tokens=16, workers=2)
    with spawn(schedule) as url:
        session, events, _ = asyncio.run(run_session(
            replace(config, url=url)))
        served = emissions(url)
    done = [e for e in events if isinstance(e, RequestDone)]
    assert {d.worker_id for d in done} == {0, 1}
    mine = [e for e in served if e.chunks_ns]
    starts = np.array([e.received_ns for e in mine])
    ends = np.array([e.chunks_ns[-1] for e in mine])
    t0, t1 = session.origin_ns + 1_000_000_000, session.origin_ns + 3_500_000_000
    instants = np.linspace(t0, t1, 2000)
    open_streams = np.array([np.sum((starts <= t) & (ends >= t)) for t in instants])
    # Between a stream's last chunk and its successor's body there is a round trip through
    # both processes, and fixed lengths end the streams in waves, refilled one send per loop
    # iteration: a slot stands empty a few ms of each ~0.42 s request. Measured on 2 busy
    # cores, one process and two workers alike: 15.7 to 15.9 open on average out of 16.
    assert np.median(open_streams) == concurrency, open_streams
    assert open_streams.max() <= concurrency
    assert open_streams.mean() >= concurrency - 0.5, open_streams
    samples = [e for e in events if isinstance(e, ClientSample)]
    assert samples and all(s.in_flight == concurrency for s in samples[1:])
    # a request ends when its worker saw it end, not a pipe's hop later: E2E as the wire's
    from soaktop.engine.backends.http import request_uuid

    wire = {e.request_id: e for e in mine}
    late_ms = [(session.origin_ns + d.sent_ns + d.end_us * 1000
                - wire[request_uuid(session.backend.run_id, d.request_id)].chunks_ns[-1]) / 1e6
               for d in done if d.ok]
    assert 0 <= np.median(late_ms) < 1.0, np.percentile(late_ms, [0, 50, 90])


def test_a_record_of_two_workers_holds_both_and_summarises_as_the_live_run(tmp_path):
    """Through the command line, headless: ``--workers 2`` runs, the live ``--json`` and
    ``soaktop summary --json`` of its record agree, and the record names both workers (the
    header keeps the count, so a rerun asks for the same)."""
    import subprocess
    import sys

    record = tmp_path / "two.jsonl"
    soaktop = [sys.executable, "-m", "soaktop.tui.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    schedule = Schedule(ttft_ms=10, itl_ms=5, jitter_ms=1, tokens=24, model="m")
    with spawn(schedule) as url:
        run = subprocess.run(
            [*soaktop, "run", "--workers", "2", "--backend", "openai", "--url", url,
             "--concurrency", "8", "--duration", "4s", "--output-tokens", "24", "--json",
             "--record", str(record), "--telemetry", "none", "--status-every", "1"],
            capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    live = json.loads(run.stdout)
    again = subprocess.run([*soaktop, "summary", str(record), "--json"], capture_output=True,
                           text=True, timeout=60, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == live
    assert live["requests_ok"] > 20 and live["requests_failed"] == 0
    reader = RecordReader(record)
    events = list(reader.events())
    assert reader.header.config["workers"] == 2
    done = [e for e in events if isinstance(e, RequestDone)]
    per_worker = [sum(d.worker_id == w for d in done) for w in (0, 1)]
    assert min(per_worker) > 0.3 * len(done), per_worker  # least in flight: shared evenly
    assert len(done) == sum(per_worker)
    # each second keeps each worker's own health beside the worst process's
    samples = [e for e in events if isinstance(e, ClientSample)]
    per_second = [sorted(w["worker_id"] for w in s.workers) for s in samples[1:]]
    assert per_second and all(ids == [0, 1] for ids in per_second), per_second
    for sample in samples[1:]:
        assert sample.loop_cpu_percent >= max(w["loop_cpu_percent"] for w in sample.workers)
        assert all(w["read_lag_p99_us"] is not None for w in sample.workers)  # it reads


def test_a_worker_killed_mid_run_costs_its_requests_and_one_line_and_the_run_goes_on(
        tmp_path):
    """The drill: SIGKILL one worker 1.5 s into a 4 s run. It is said once and marked in
    the record; the requests it had in flight fail as ``worker_lost`` (and name it); the
    other worker takes the whole concurrency, and the run completes."""
    concurrency = 8
    schedule = Schedule(ttft_ms=10, itl_ms=10, jitter_ms=1, tokens=30, model="m")
    killed = {}

    async def kill_one(session):
        await asyncio.sleep(1.5)
        pid = session.backend.pids()[1]
        killed["t_ns"] = session.now_ns()
        os.kill(pid, signal.SIGKILL)

    with spawn(schedule) as url:
        config = RunConfig(backend="openai", url=url, model="m", concurrency=concurrency,
                           duration_s=4.0, output_tokens=30, input_tokens=16, workers=2)
        session, events, said = asyncio.run(run_session(
            config, during=kill_one, record=tmp_path / "drill.jsonl.gz"))
    assert isinstance(session.backend, WorkerPool)
    lost_lines = [line for line in said if "lost" in line]
    assert len(lost_lines) == 1, said
    assert "worker 1" in lost_lines[0] and "worker_lost" in lost_lines[0]
    done = [e for e in events if isinstance(e, RequestDone)]
    lost = [d for d in done if d.error_class == "worker_lost"]
    assert 1 <= len(lost) <= concurrency
    assert all(d.worker_id == 1 and d.t_ns >= killed["t_ns"] for d in lost)
    assert not [d for d in done if d.error_class not in (None, "worker_lost")]
    after = [d for d in done if d.ok and d.sent_ns > killed["t_ns"] + 500_000_000]
    assert len(after) >= concurrency and {d.worker_id for d in after} == {0}
    samples = [e for e in events if isinstance(e, ClientSample) and e.t_ns > killed["t_ns"]]
    assert samples and samples[-1].in_flight == concurrency  # refilled on worker 0
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "completed"
    with gzip.open(session.record_path, "rt") as f:
        marks = [json.loads(line) for line in f if '"mark"' in line]
    assert [m["note"] for m in marks] == lost_lines
    assert [e for e in events if isinstance(e, Mark)][0].note == lost_lines[0]
    # tokens of the live view name their worker too
    assert {e.worker_id for e in events if isinstance(e, TokensArrived)} == {0, 1}


def test_the_api_key_reaches_the_workers_through_their_pipes_never_their_command_lines():
    schedule = Schedule(ttft_ms=2, itl_ms=1, tokens=4, model="m")

    async def look(url):
        pool = WorkerPool("openai", {"url": url, "model": "m", "api_key": "sk-s3cret"}, 2)
        await pool.start()
        try:
            lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pool.pids()]
            environs = [Path(f"/proc/{pid}/environ").read_bytes() for pid in pool.pids()]
        finally:
            await pool.close()
        return lines, environs

    with spawn(schedule) as url:
        lines, environs = asyncio.run(look(url))
    assert len(lines) == 2 and all(lines)
    assert not any(b"s3cret" in text for text in lines + environs)


def test_no_worker_left_ends_the_run_as_failed():
    schedule = Schedule(ttft_ms=5, itl_ms=5, tokens=200, model="m")

    async def kill_all(session):
        await asyncio.sleep(0.5)
        for pid in session.backend.pids():
            os.kill(pid, signal.SIGKILL)

    with spawn(schedule) as url:
        config = RunConfig(backend="openai", url=url, model="m", concurrency=4,
                           duration_s=20.0, output_tokens=200, input_tokens=16, workers=2)
        session, events, said = asyncio.run(run_session(config, during=kill_all))
    assert events[-1].reason == "failed" and events[-1].t_ns < 10e9
    assert "no worker is left" in session.failure
    assert sum("lost" in line for line in said) == 2


def test_the_session_steers_workers_as_it_steers_one_process():
    """An open loop, a model switch, a pause, a resume and a stop, all decided in the session:
    the phases are as with one process, each request goes out under its phase's model, none
    is sent while paused, and the requests in flight at the stop are recorded as cancelled.
    Then the workers are gone."""
    schedule = Schedule(ttft_ms=5, itl_ms=20, jitter_ms=1, tokens=30, model="m")
    times = {}

    async def steer(session):
        times["pids"] = session.backend.pids()
        await asyncio.sleep(1.0)
        session.switch_model("other")
        await asyncio.sleep(0.5)
        session.pause()
        times["paused"] = session.now_ns()
        await asyncio.sleep(0.7)
        times["resumed"] = session.now_ns()
        session.resume()
        await asyncio.sleep(0.8)
        session.stop()

    with spawn(schedule) as url:
        config = RunConfig(backend="openai", url=url, model="m", rate=30.0, output_tokens=30,
                           input_tokens=16, workers=2, warmup_requests=0)
        session, events, _ = asyncio.run(run_session(config, during=steer))
    phases = [e for e in events if type(e).__name__ == "Phase"]
    assert [p.reason for p in phases] == ["start", "command", "paused", "resumed"]
    assert [p.model for p in phases] == ["m", "other", "other", "other"]
    assert [p.rate for p in phases] == [30.0, 30.0, 0.0, 30.0]
    done = [e for e in events if isinstance(e, RequestDone)]
    assert {d.worker_id for d in done} == {0, 1}
    for d in done:
        assert d.model == phases[d.phase_id].model
    sent_while_paused = [d for d in done
                         if times["paused"] + 50e6 < d.sent_ns < times["resumed"] - 50e6]
    assert not sent_while_paused
    cancelled = [d for d in done if d.finish_reason == "cancelled"]
    assert cancelled and all(d.error_class is None for d in cancelled)
    assert not [d for d in done if d.error_class is not None]
    ends = [e for e in events if isinstance(e, SessionEnd)]
    assert events[-1].reason == "interrupted", (ends, phases, times)
    for pid in times["pids"]:  # stopped, waited for and reaped
        assert not Path(f"/proc/{pid}").exists(), "a worker was left behind"


def test_a_retry_after_from_a_worker_holds_every_worker():
    """A 429 read in one worker holds new sends in the session, for all of them: after each
    429 (Retry-After: 1) nothing goes out for about a second."""
    schedule = Schedule(ttft_ms=2, itl_ms=2, tokens=8, model="m")
    with spawn(schedule, fault="http_429", fault_every=12) as url:
        config = RunConfig(backend="openai", url=url, model="m", concurrency=4,
                           duration_s=3.0, output_tokens=8, input_tokens=16, workers=2,
                           warmup_requests=0)
        session, events, _ = asyncio.run(run_session(config))
    done = [e for e in events if isinstance(e, RequestDone)]
    refused = [d for d in done if d.error_class == "http_429"]
    assert refused and {d.error_class for d in done} <= {None, "http_429"}
    first = min(d.t_ns for d in refused)
    held = [d for d in done if first < d.sent_ns < first + 900_000_000]
    assert not held, [(d.sent_ns - first) / 1e6 for d in held]


def test_a_hung_worker_is_killed_and_lost_and_the_run_goes_on():
    """A worker stopped (SIGSTOP) says nothing more, and its requests' timeouts run in it:
    after ``SILENT_S`` without a word it is killed, its requests fail as ``worker_lost``
    and the run goes on on the other."""
    schedule = Schedule(ttft_ms=10, itl_ms=10, jitter_ms=1, tokens=30, model="m")
    stopped = {}

    async def stop_one(session):
        session.backend.SILENT_S = 1.5
        await asyncio.sleep(1.0)
        stopped["t_ns"] = session.now_ns()
        os.kill(session.backend.pids()[1], signal.SIGSTOP)

    with spawn(schedule) as url:
        config = RunConfig(backend="openai", url=url, model="m", concurrency=4,
                           duration_s=5.0, output_tokens=30, input_tokens=16, workers=2)
        session, events, said = asyncio.run(run_session(config, during=stop_one))
    lost_lines = [line for line in said if "lost" in line]
    assert len(lost_lines) == 1 and "said nothing for 1.5 s" in lost_lines[0], said
    done = [e for e in events if isinstance(e, RequestDone)]
    lost = [d for d in done if d.error_class == "worker_lost"]
    assert lost and all(d.worker_id == 1 for d in lost)
    assert all(d.t_ns - stopped["t_ns"] > 1.4e9 for d in lost)  # not before its silence
    after = [d for d in done if d.ok and d.sent_ns > max(x.t_ns for x in lost)]
    assert len(after) >= 4 and {d.worker_id for d in after} == {0}
    assert events[-1].reason == "completed"
