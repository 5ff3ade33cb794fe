"""``--ray``: the workers as Ray actors on a cluster's nodes (soaktop.engine.load.ray_workers).

The tier marked ``ray`` (``pytest -m ray``; Ray from ``pip install -e '.[cluster]'``) starts a
cluster of two Ray nodes on this machine (``ray.cluster_utils.Cluster``, one CPU each), runs a
session across them against the loopback server and holds it to the bar of one process: TTFT
and ITL within 1 ms of the wire at p50, p90 and p99, with both nodes' workers in the record.

Nodes on one machine share its clock, so the correction of a worker's clock is proven with a
shift injected into one worker (every stamp it gives reads 250 ms ahead): its estimated offset
must land within its stated uncertainty of the shift, and the numbers must still meet the bar
(uncorrected, that worker's send stamps alone would put TTFT 250 ms off the wire's).

The checks that need no Ray (it missing, a bad address) run in every tier.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soaktop.engine.backends.http import Timeouts
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import RequestDone, SessionStart, WorkerClock
from soaktop.engine.load import ray_workers
from soaktop.engine.load import worker_process as wp
from soaktop.engine.load.ray_workers import RayPool, connect, shifted
from soaktop.engine.loopback import Schedule, spawn
from soaktop.engine.metrics.fidelity import QUANTILES, measure

HAVE_RAY = importlib.util.find_spec("ray") is not None
RAY = [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed "
                                           "(pip install -e '.[cluster]')")]
SHIFT_NS = 250_000_000  # worker 1's clock reads this far ahead of the host's


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine, this process their driver."""
    import ray
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 80 * 2**20})
    nodes.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    ray.init(address=nodes.address, log_to_driver=False, logging_level="error")
    nodes.wait_for_nodes()
    print(f"2-node Ray cluster up in {time.perf_counter() - started:.1f} s")
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def _options(url: str) -> dict:
    return {"url": url, "model": "loopback", "timeouts": Timeouts(first_token_s=30)}


def _ray(test):
    """The ray tier's marks: ``ray``, and skipped without Ray."""
    for mark in RAY:
        test = mark(test)
    return test


@_ray
def test_each_workers_clock_offset_lands_within_its_stated_uncertainty(cluster):
    """Worker 0's clock reads 250 ms ahead of the session's and worker 1's 3 s behind (one
    worker a node, each taking its node's one CPU): each estimate, at the start and again
    later, is within its uncertainty of the truth, and the uncertainty is small (half the
    shortest round trip of 16)."""
    shifts = (SHIFT_NS, -3_000_000_000)

    async def run(url: str) -> list[tuple[int, int, str, int, int]]:
        pool = RayPool("openai", _options(url), 2, clock_shifts_ns=shifts)
        pool.clock_every_s = 0.3
        await pool.start()
        try:
            await asyncio.sleep(0.8)  # two more rounds of estimates
            return list(pool.clock_estimates)
        finally:
            await pool.close()

    with spawn(Schedule(ttft_ms=5, itl_ms=5, tokens=4, model="loopback")) as url:
        estimates = asyncio.run(run(url))
    assert sorted(e[1] for e in estimates[:2]) == [0, 1]  # everyone's, at the start
    assert len(estimates) >= 4
    for _t, worker, _host, offset, uncertainty in estimates:
        assert abs(offset - shifts[worker]) <= uncertainty, (worker, offset, uncertainty)
        assert 0 < uncertainty < 5_000_000  # ±5 ms at worst, on a busy 2-core box


@_ray
def test_a_session_across_two_ray_nodes_is_within_1ms_of_the_wire_and_records_both(cluster):
    """The done bar: two nodes, one worker on each (one with its clock 250 ms ahead), a
    session against the loopback: TTFT and ITL within 1 ms of the wire at p50/p90/p99, both
    workers' requests and hosts in the record, each clock's offset within its uncertainty."""
    events: list = []
    made: list[RayPool] = []

    def pool(options: dict) -> RayPool:
        made.append(RayPool("openai", options, 2, clock_shifts_ns=(0, SHIFT_NS)))
        return made[0]

    f = measure(concurrency=8, tokens_per_s=400, duration_s=5.0, tokens=16, workers=2,
                pool=pool, keep_all=events.append)
    for metric in ("ttft_ms", "itl_ms"):
        for q in QUANTILES:
            assert abs(f.error_ms(metric, q)) < 1.0, (metric, q, f)
    done = [e for e in events if isinstance(e, RequestDone) and not e.warmup]
    assert {d.worker_id for d in done} == {0, 1}
    failed = [(d.finish_reason, d.error_class) for d in done if not d.ok]
    assert set(failed) <= {("cancelled", None)}, failed  # those the end of the run cut off
    header = next(e for e in events if isinstance(e, SessionStart))
    placed = header.backend["ray_workers"]
    assert [w["worker_id"] for w in placed] == [0, 1]
    assert len({w["node_id"] for w in placed}) == 2  # one worker on each node
    assert all(w["host"] and w["ip"] for w in placed)
    clocks = [e for e in events if isinstance(e, WorkerClock)]
    assert sorted(c.worker_id for c in clocks) == [0, 1]  # the start's, recorded at t_ns 0
    for c in clocks:
        assert c.t_ns == 0 and c.host
        assert abs(c.offset_ns - (0, SHIFT_NS)[c.worker_id]) <= c.uncertainty_ns


@_ray
def test_the_command_line_runs_on_a_cluster_and_its_record_names_both_nodes(cluster, tmp_path):
    """``soaktop run --ray ADDRESS``, headless, in a process of its own: one worker per node
    by default, the header's config keeps the address (a rerun runs there again) and the
    record holds both workers' requests and clocks."""
    from soaktop.engine.records.format import RecordReader

    record = tmp_path / "r.jsonl"
    with spawn(Schedule(ttft_ms=10, itl_ms=10, tokens=8, model="loopback")) as url:
        result = subprocess.run(
            [sys.executable, "-m", "soaktop.tui.cli", "run", "--backend", "openai", "--url", url,
             "--ray", cluster.address, "--concurrency", "4", "--duration", "3s",
             "--output-tokens", "8", "--telemetry", "none", "--headless", "--record",
             str(record)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    reader = RecordReader(record)
    events = list(reader.events())
    config = reader.header.config
    assert config["ray"] == cluster.address and config["workers"] == 2
    assert {e.worker_id for e in events if isinstance(e, RequestDone)} == {0, 1}
    assert sorted(e.worker_id for e in events if isinstance(e, WorkerClock)) == [0, 1]
    summary = subprocess.run([sys.executable, "-m", "soaktop.tui.cli", "summary", str(record),
                              "--json"], capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr  # a record with worker_clock lines reads


def test_stamps_move_by_the_offset_and_nothing_else_does():
    items = [(wp.SENT, 1, 100), (wp.ARRIVED, 1, 150, 2, False),
             (wp.END, 1, "length", None, None, 170), (wp.HEALTH, {"x": 1}),
             (wp.ERROR, 2, "http_500", "boom", False, None, None)]
    moved = shifted(items, -50)
    assert moved == [(wp.SENT, 1, 50), (wp.ARRIVED, 1, 100, 2, False),
                     (wp.END, 1, "length", None, None, 120), (wp.HEALTH, {"x": 1}),
                     (wp.ERROR, 2, "http_500", "boom", False, None, None)]
    assert shifted(items, 0) is items
    # an end that carries its output text (a request that wanted it) keeps it as it was
    ended = (wp.END, 3, "stop", (1, 2), {"usage": 3}, 900, ("answer", "thought"))
    assert shifted([ended], 100) == [(*ended[:5], 1000, ("answer", "thought"))]


def test_a_request_keeps_the_offset_it_was_sent_with_when_a_new_estimate_comes():
    """A new estimate mid-request moves none of its latencies: every stamp of a request is
    moved by the offset in force at its send; a later request takes the new one."""
    from soaktop.engine.load.ray_workers import _Actor
    from soaktop.engine.load.workers import _Flight

    proc = _Actor(0, actor=None)
    proc.flights = {1: _Flight(), 2: _Flight()}
    proc.offset_ns = 1000
    first = RayPool._on_session_clock(proc, [(wp.SENT, 1, 5000)])
    proc.offset_ns = 1300  # the next minute's estimate
    later = RayPool._on_session_clock(proc, [
        (wp.ARRIVED, 1, 6000, 1, False), (wp.SENT, 2, 6100),
        (wp.END, 1, "length", None, None, 7000), (wp.ARRIVED, 9, 1, 1, False)])
    assert first == [(wp.SENT, 1, 4000)]
    assert later == [(wp.ARRIVED, 1, 5000, 1, False), (wp.SENT, 2, 4800),
                     (wp.END, 1, "length", None, None, 6000)]  # request 9: cancelled here


def test_each_clock_estimate_is_recorded_once_from_the_session_origin_and_then_let_go():
    """The session takes the estimates as ``worker_clock`` events, stamped from its origin
    (one before it, the start's, at 0); each once, and the pool keeps none it has given
    (an estimate a minute per worker must not pile up over a long run)."""
    pool = RayPool("openai", _options("http://127.0.0.1:9"), 2)
    pool.clock_estimates += [(1_000, 0, "a", 5, 1), (3_000, 1, "b", -7, 2)]
    assert pool.events(2_000) == [WorkerClock(0, 0, "a", 5, 1), WorkerClock(1_000, 1, "b", -7, 2)]
    assert pool.events(2_000) == [] and pool.clock_estimates == []
    pool.clock_estimates.append((62_000, 0, "a", 6, 1))
    assert pool.events(2_000) == [WorkerClock(60_000, 0, "a", 6, 1)]


def test_commands_that_arrive_out_of_order_are_applied_in_the_order_sent():
    """An async actor may run one caller's calls out of order: a CANCEL must never pass its
    GO. Each list of commands is numbered and waits for the lists before it."""
    from soaktop.engine.load.ray_workers import _Worker

    seen: list[tuple] = []
    worker = _Worker()
    worker.worker = type("W", (), {"command": staticmethod(seen.append)})()
    asyncio.run(worker.post(1, [(wp.CANCEL, 7)]))
    assert seen == []  # its turn has not come
    asyncio.run(worker.post(0, [(wp.GO, 7, "m", 8, "hi", False)]))
    asyncio.run(worker.post(2, [(wp.STOP,)]))
    assert seen == [(wp.GO, 7, "m", 8, "hi", False), (wp.CANCEL, 7), (wp.STOP,)]


@_ray
def test_the_api_key_reaches_the_actors_in_a_call_and_no_file_of_the_cluster(cluster):
    """The options (the API key among them) go in the actor's start call, in memory: not in
    its constructor, a runtime environment or a command line, and nowhere in the files of the
    cluster's session (its logs, every process's)."""
    import ray

    key = "sk-soaktop-ray-SECRET-7f3e"

    async def run(url: str) -> None:
        pool = RayPool("openai", {**_options(url), "api_key": key}, 2)
        await pool.start()
        await pool.close()

    with spawn(Schedule(ttft_ms=5, itl_ms=5, tokens=4, model="loopback")) as url:
        asyncio.run(run(url))
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    files = [f for f in session.rglob("*") if f.is_file() and not f.is_socket()]
    assert any(f.suffix in (".out", ".err", ".log") for f in files)  # the logs were looked at
    assert [f for f in files if key.encode() in f.read_bytes()] == []


def test_without_ray_the_flag_is_one_line_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(ConfigError, match=r"install soaktop\[cluster\]"):
        connect("auto")


def test_a_dead_address_is_one_line_within_seconds_not_a_traceback(tmp_path):
    if not HAVE_RAY:
        pytest.skip("Ray is not installed")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "soaktop.tui.cli", "run", "--backend", "openai", "--url",
         "http://127.0.0.1:9", "--model", "m", "--ray", "127.0.0.1:1", "--duration", "1s",
         "--telemetry", "none", "--headless"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.perf_counter() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Ray cluster answers at 127.0.0.1:1" in lines[0], lines
    assert "Traceback" not in result.stderr


def test_ray_is_for_the_http_backends_and_a_rerun_carries_it():
    from soaktop.tui.run_flags import run_command

    with pytest.raises(ConfigError, match="--ray"):
        RunConfig(ray="auto")  # the local engine
    config = RunConfig(backend="openai", url="http://x:1", ray="head:6379", workers=4)
    argv = run_command(config)
    assert argv[argv.index("--ray") + 1] == "head:6379"
    assert RunConfig.from_dict(config.to_dict()).ray == "head:6379"


def test_ray_is_imported_only_for_the_flag():
    code = ("import sys; import soaktop.engine.factory, soaktop.engine.session, "
            "soaktop.tui.cli; assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert ray_workers.INSTALL.startswith("--ray")
