"""Trace replay (--trace): sends at the trace's own times (compressed by --trace-speed), shared
hash_ids as shared prompt prefixes in what the server receives, and the trace file in the
record as a prompt file is."""

import json

import numpy as np
import pytest

from soaktop.engine.backends.http import request_uuid
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import EndReason, Phase, RequestDone, SessionStart
from soaktop.engine.load.rerun import rerun_config
from soaktop.engine.load.traces import BLOCK_TOKENS, read_trace
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.loopback.process import spawn
from soaktop.engine.session import Session
from soaktop.tui.run_flags import run_command


def write_trace(tmp_path, rows, name="trace.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -- the file ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, says", [
    ("", "holds no requests"),
    ('{"timestamp": 0, "input_length": 3}\nnot json\n', "trace.jsonl line 2: not JSON"),
    ('{"input_length": 3}\n', "line 1: 'timestamp' must be milliseconds"),
    ('{"timestamp": 0}\n', "line 1: 'input_length' is needed"),
    ('{"timestamp": 0, "input_length": 0}\n', "line 1: 'input_length' must be a whole"),
    ('{"timestamp": 0, "input_length": 2, "hash_ids": [1, "a"]}\n', "line 1: 'hash_ids'"),
    ('{"timestamp": 5, "input_length": 2}\n\n{"timestamp": 4, "input_length": 2}\n',
     "line 3: timestamp 4 ms is before the line above's"),
])
def test_a_bad_trace_is_one_line_naming_the_line(tmp_path, text, says):
    path = tmp_path / "trace.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_trace(path)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_missing_trace_is_one_line(tmp_path):
    from soaktop.engine.load.workloads import Workload

    with pytest.raises(ConfigError, match=r"^trace .*none.jsonl not found$"):
        Workload(RunConfig(backend="fake", model="m", trace=str(tmp_path / "none.jsonl")))


@pytest.mark.parametrize("config, says", [
    ({"trace": "t.jsonl", "rate": 3.0}, "sets its own arrival times"),
    ({"trace": "t.jsonl", "prompts": "p.txt"}, "leave --prompts"),
    ({"trace_speed": 2.0}, "applies to --trace"),
    ({"trace": "t.jsonl", "trace_speed": 0.0}, "above 0"),
    ({"trace": "t.jsonl", "turns": 3}, "cannot be combined yet"),
])
def test_flags_that_do_not_go_with_a_trace_are_one_line(config, says):
    with pytest.raises(ConfigError, match=says):
        RunConfig(backend="fake", model="m", **config)


def test_a_trace_run_has_no_warm_up_by_default_and_its_command_line_says_it():
    config = RunConfig(backend="fake", model="m", trace="/t.jsonl", trace_speed=2.5)
    assert config.warmup == 0
    argv = run_command(config)
    assert argv[argv.index("--trace") + 1] == "/t.jsonl"
    assert argv[argv.index("--trace-speed") + 1] == "2.5"


def test_the_record_keeps_the_trace_file_and_a_rerun_checks_it(tmp_path):
    path = write_trace(tmp_path, [{"timestamp": 0, "input_length": 3, "output_length": 2}])
    from soaktop.engine.load.workloads import Workload

    config = RunConfig(backend="openai", url="http://h:1", model="m", trace=path,
                       trace_speed=3.0)
    workload = Workload(config).describe()
    assert workload["trace_file"]["name"] == "trace.jsonl"
    assert workload["trace_file"]["size"] == (tmp_path / "trace.jsonl").stat().st_size
    assert len(workload["trace_file"]["sha256"]) == 64 and workload["trace_speed"] == 3.0
    header = SessionStart(0, 1, "", config.to_dict(), {}, {}, workload)
    assert rerun_config([header]).trace == path
    (tmp_path / "trace.jsonl").write_text('{"timestamp": 0, "input_length": 4}\n')
    with pytest.raises(ConfigError, match="trace .* has changed"):
        rerun_config([header])


# -- against the loopback server -----------------------------------------------------------


async def test_shared_hash_ids_are_shared_prefixes_in_what_the_server_receives(tmp_path):
    rows = [  # Mooncake's format, as is
        {"timestamp": 0, "input_length": 1100, "output_length": 2, "hash_ids": [1, 2, 3]},
        {"timestamp": 1, "input_length": 1300, "output_length": 2, "hash_ids": [1, 2, 4]},
        {"timestamp": 2, "input_length": 700, "output_length": 2, "hash_ids": [5, 6]},
        {"timestamp": 3, "input_length": 400, "output_length": 2, "hash_ids": [1]},
        {"timestamp": 4, "input_length": 30, "output_length": 2},
        {"timestamp": 5, "input_length": 30, "output_length": 2},
    ]
    path = write_trace(tmp_path, rows)
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=4)) as server:
        backend = OpenAIBackend(server.url, model="loopback", api="completions")
        config = RunConfig(backend="openai", url=server.url, model="loopback", api="completions",
                           trace=path)
        done = []
        session = Session(config, backend, listeners=(done.append,))
        end = await session.run()
        by_id = {e.request_id: e for e in server.emissions()}
    assert end.reason == EndReason.COMPLETED  # the trace ran out
    words = [by_id[request_uuid(backend.run_id, i)].prompt.split() for i in range(len(rows))]
    assert [len(w) for w in words] == [r["input_length"] for r in rows]
    assert [by_id[request_uuid(backend.run_id, i)].max_tokens for i in range(6)] == [2] * 6

    def shared(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    assert shared(words[0], words[1]) == 1024  # [1, 2] in common: two 512-token blocks
    assert shared(words[0], words[3]) == 400  # [1], cut to its length
    assert words[3] == words[0][:400]
    assert shared(words[0], words[2]) < 5  # nothing named alike: nothing alike but chance
    assert shared(words[4], words[5]) == 0  # no hash_ids: a unique prefix each
    assert sum(isinstance(e, RequestDone) and e.ok for e in done) == len(rows)


def test_with_a_tokenizer_a_block_is_exactly_512_tokens(tmp_path, tokenizer_path):
    from tokenizers import Tokenizer

    from soaktop.engine.load.workloads import Workload

    tok = Tokenizer.from_file(tokenizer_path + "/tokenizer.json")
    path = write_trace(tmp_path, [
        {"timestamp": 0, "input_length": 600, "hash_ids": [7, 8]},
        {"timestamp": 1, "input_length": 512, "hash_ids": [7]}])
    w = Workload(RunConfig(backend="fake", model="m", trace=path, tokenizer=tokenizer_path))
    block = w.prompt(1)
    assert BLOCK_TOKENS == 512  # Mooncake's
    assert len(tok.encode(block.text, add_special_tokens=False).ids) == 512
    assert w.prompt(0).text.startswith(block.text + " ")
    assert len(w.prompt(0).token_ids) == 600


async def test_a_traces_sends_land_at_its_timestamps(tmp_path):
    """1,000 requests, 8 s of trace at 2x speed: each is due exactly at its timestamp / 2
    from the start (the record's sent_ns, in an open loop), and how late it went out (the
    HTTP client's stamp of its last byte) is counted in its latency, never hidden. How late
    sends land is a speed figure of the machine: bench/trace_timing.py measures it."""
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 8000, 1000)).round(3)
    rows = [{"timestamp": float(t), "input_length": 8, "output_length": 2} for t in times]
    path = write_trace(tmp_path, rows)
    events = []
    with spawn(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as url:
        config = RunConfig(backend="openai", url=url, model="loopback", trace=path,
                           trace_speed=2.0, telemetry=())
        session = Session(config, OpenAIBackend(url, model="loopback"),
                          listeners=(events.append,))
        end = await session.run()
    done = sorted((e for e in events if isinstance(e, RequestDone)), key=lambda e: e.request_id)
    assert end.reason == EndReason.COMPLETED and len(done) == 1000
    assert all(e.ok for e in done)
    due = np.array([e.sent_ns for e in done])
    planned = np.round((times - times[0]) * 1e6 / 2.0)
    assert np.max(np.abs((due - due[0]) - planned)) <= 1  # ns: the schedule itself
    phase = next(e for e in events if isinstance(e, Phase))
    assert phase.rate == pytest.approx(1000 / ((times[-1] - times[0]) / 2000))
    late = np.array([e.queued_us for e in done])
    assert (late >= 0).all() and late.any()  # each send's lateness, kept with the request
    # the latencies run from the planned time: a send's lateness is inside its TTFT
    ttft_us = np.array([e.arrivals_us[0] for e in done])
    assert (ttft_us >= late).all()


async def test_worker_processes_replay_a_trace_too(tmp_path):
    from soaktop.engine.factory import build_session

    path = write_trace(tmp_path, [{"timestamp": 10 * i, "input_length": 600,
                                   "output_length": 2, "hash_ids": [4, 5]} for i in range(8)])
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as server:
        config = RunConfig(backend="openai", url=server.url, model="loopback", trace=path,
                           api="completions", workers=2, telemetry=())
        session = await build_session(config, steerable=False)
        end = await session.run()
        prompts = [e.prompt for e in server.emissions() if e.prompt]
    assert end.reason == EndReason.COMPLETED and len(prompts) == 8
    assert len(set(prompts)) == 1 and len(prompts[0].split()) == 600  # same blocks, same text


async def test_a_pause_holds_a_traces_times_and_the_rest_come_that_much_later():
    import asyncio
    import time

    from soaktop.engine.load.loops import PREPARE_NS, OpenLoop

    origin = time.perf_counter_ns()
    launched = []

    def now():
        return time.perf_counter_ns() - origin

    async def nothing():
        pass

    def launch(due):
        launched.append((due, now()))
        return nothing()

    loop = OpenLoop(1.0, launch, now, dues=[0, 100_000_000, 200_000_000])
    run = asyncio.ensure_future(loop.run())
    await asyncio.sleep(0.05)
    loop.set_target(0)  # paused 50 ms in, for 150 ms
    await asyncio.sleep(0.15)
    loop.set_target(1.0)
    await asyncio.wait_for(run, 2)
    dues = [d for d, _ in launched]
    assert len(dues) == 3
    held = dues[1] - 100_000_000 - dues[0]
    assert 140_000_000 < held < 180_000_000  # the pause, give or take the loop's wake-ups
    assert dues[2] - dues[1] == 100_000_000  # the trace's own gap, kept
    # each started to be prepared, never sooner (the request then waits for its time)
    assert all(sent >= due - PREPARE_NS for due, sent in launched)


async def test_a_trace_run_refuses_a_rate_or_concurrency_but_pauses(tmp_path):
    import asyncio

    from soaktop.engine.backends.fake import FakeBackend

    path = write_trace(tmp_path, [{"timestamp": 100 * i, "input_length": 3, "output_length": 2}
                                  for i in range(6)])
    events = []
    session = Session(RunConfig(backend="fake", model="m", trace=path),
                      FakeBackend(ttft_s=0.001, itl_s=0.001), listeners=(events.append,))
    run = asyncio.ensure_future(session.run())
    await session.started.wait()
    with pytest.raises(ConfigError, match="trace"):
        session.set_rate(5.0)
    with pytest.raises(ConfigError):
        session.set_concurrency(3)
    session.pause()
    assert session.paused and session.target_rate == pytest.approx(6 / 0.5)
    session.resume()
    end = await asyncio.wait_for(run, 5)
    assert end.reason == EndReason.COMPLETED
    assert sum(isinstance(e, RequestDone) for e in events) == 6
    assert [p.rate for p in events if isinstance(p, Phase)] == [12.0, 0.0, 12.0]


def test_a_trace_lines_own_prompt_or_messages_are_sent_as_they_are(tmp_path):
    from soaktop.engine.load.workloads import Workload

    chat = [{"role": "system", "content": "terse"}, {"role": "user", "content": "why?"}]
    path = write_trace(tmp_path, [
        {"timestamp": 0, "prompt": "hello there", "output_length": 7},
        {"timestamp": 0, "messages": chat},  # the same millisecond: both due at once
        {"timestamp": 2.5, "input_length": 9}])
    w = Workload(RunConfig(backend="fake", model="m", trace=path, output_tokens=11,
                           unique_prefix=False))
    assert w.prompt(0).text == "hello there" and w.max_tokens(0) == 7
    assert w.prompt(1).messages == tuple(chat) and w.max_tokens(1) == 11
    assert len(w.prompt(2).text.split()) == 9
    assert list(w.trace.due_offsets_ns()) == [0, 0, 2_500_000]
