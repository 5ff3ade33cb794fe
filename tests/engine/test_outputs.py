"""Saved outputs (``--save-outputs``): against the loopback server, whose text is known, the side
file holds for each request exactly what the server sent it; off, nothing is written or held;
the writer's memory is bounded whatever the run's length."""

import gzip
import json
import threading
import time
import zlib

import pytest

from soaktop.engine.backends.base import Arrival, GenerationRequest
from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.backends.http import request_uuid
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import RecordError
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.loopback.wire import words
from soaktop.engine.records import outputs as outputs_module
from soaktop.engine.records.format import FLUSH_INTERVAL_S, RecordReader
from soaktop.engine.records.outputs import OutputReader, OutputWriter, outputs_path
from soaktop.engine.session import Session


def saved(path):
    reader = OutputReader(path)
    return {o.request_id: o for o in reader.outputs()}, reader.warnings


async def run_loopback(tmp_path, schedule, requests=30, record="run.jsonl.gz", **config):
    async with LoopbackServer(schedule) as server:
        backend = OpenAIBackend(server.url, model="loopback")
        cfg = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=4,
                        max_requests=requests, warmup_requests=2, **config)
        session = Session(cfg, backend, record_path=tmp_path / record)
        await session.run()
        by_id = {e.request_id: e for e in server.emissions()}
    sent = {i: by_id[request_uuid(backend.run_id, i)] for i in range(requests + 2)}
    return session, sent


async def test_each_saved_output_is_what_the_server_sent_that_request(tmp_path):
    # output lengths drawn per request: every request's text differs from its neighbours'
    session, sent = await run_loopback(tmp_path, Schedule(ttft_ms=1, itl_ms=0, chunk_tokens=2),
                                       output_tokens="3-40", seed=7, save_outputs=True)
    side = tmp_path / "run.outputs.jsonl.gz"
    header = next(RecordReader(tmp_path / "run.jsonl.gz").events())
    assert header.workload["outputs_file"] == side.name
    assert header.config["save_outputs"] is True
    texts, warnings = saved(side)
    assert warnings == []
    assert sorted(texts) == sorted(sent)  # every request, warm-up included, once
    lengths = set()
    for rid, emission in sent.items():
        n = sum(emission.chunk_tokens)
        lengths.add(n)
        assert texts[rid].text == words(0, n), rid
        assert texts[rid].reasoning == "" and texts[rid].worker_id == 0
    assert len(lengths) > 5
    assert session.outputs.lost == 0


async def test_a_reasoning_models_thinking_is_saved_apart_from_its_answer(tmp_path):
    _, sent = await run_loopback(tmp_path, Schedule(ttft_ms=1, itl_ms=0, reasoning_tokens=3),
                                 requests=6, output_tokens=9, save_outputs=True)
    texts, _ = saved(tmp_path / "run.outputs.jsonl.gz")
    for rid in sent:
        assert texts[rid].reasoning == words(0, 3)
        assert texts[rid].text == words(3, 6)


async def test_off_by_default_no_side_file_and_no_text_asked_for(tmp_path):
    asked = []

    class Spy(FakeBackend):
        def stream(self, request: GenerationRequest):
            asked.append(request.want_text)
            return super().stream(request)

    cfg = RunConfig(backend="fake", model="fake", concurrency=2, max_requests=6)
    await Session(cfg, Spy(ttft_s=0, itl_s=0), record_path=tmp_path / "r.jsonl.gz").run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl.gz"]
    header = next(RecordReader(tmp_path / "r.jsonl.gz").events())
    assert "outputs_file" not in header.workload and header.config["save_outputs"] is False
    assert asked and not any(asked)
    # and the fake backend makes no text for a request that does not want it
    items = [i async for i in FakeBackend(ttft_s=0, itl_s=0).stream(
        GenerationRequest(0, None, 3, "fake"))]
    assert [i.text for i in items if isinstance(i, Arrival)] == ["", "", ""]


async def test_worker_processes_send_each_output_back(tmp_path):
    from soaktop.engine.factory import build_session

    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0)) as server:
        config = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=4,
                           max_requests=16, warmup_requests=0, workers=2, telemetry=(),
                           output_tokens="2-30", seed=3, save_outputs=True)
        session = await build_session(config, record=tmp_path / "w.jsonl.gz", steerable=False)
        await session.run()
        by_id = {e.request_id: e for e in server.emissions()}
        run_id = session.backend.run_id
    texts, _ = saved(tmp_path / "w.outputs.jsonl.gz")
    assert len(texts) == 16
    for rid, output in texts.items():
        assert output.text == words(0, sum(by_id[request_uuid(run_id, rid)].chunk_tokens))
    assert {o.worker_id for o in texts.values()} == {0, 1}


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_request_cut_off_mid_stream_keeps_the_text_it_got(tmp_path, workers):
    """A stream reset after three chunks fails its request; what it said before is saved,
    from a worker process as from soaktop's own (a worker's text crosses in its error)."""
    from soaktop.engine.factory import build_session

    schedule = Schedule(ttft_ms=1, itl_ms=0)
    async with LoopbackServer(schedule, fault="reset", fault_every=3) as server:
        config = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=3,
                           max_requests=12, warmup_requests=0, workers=workers, telemetry=(),
                           output_tokens=20, save_outputs=True)
        session = await build_session(config, record=tmp_path / "c.jsonl.gz", steerable=False)
        await session.run()
    texts, _ = saved(tmp_path / "c.outputs.jsonl.gz")
    failed = [e.request_id for e in RecordReader(tmp_path / "c.jsonl.gz").events()
              if type(e).__name__ == "RequestDone" and e.error_class is not None]
    assert len(texts) == 12 and len(failed) >= 3
    for rid in failed:  # three chunks of a token each, then the reset
        assert texts[rid].text == words(0, 3), rid


def test_the_side_file_is_named_beside_the_record(tmp_path):
    assert outputs_path(tmp_path / "a.jsonl.gz") == tmp_path / "a.outputs.jsonl.gz"
    assert outputs_path(tmp_path / "a.jsonl") == tmp_path / "a.outputs.jsonl.gz"


def test_outputs_are_written_as_they_come_not_at_the_end(tmp_path):
    writer = OutputWriter(tmp_path / "o.jsonl.gz")
    try:
        writer.add(5, 0, "first")
        writer.add(6, 2, "second", "thought")
        time.sleep(FLUSH_INTERVAL_S * 3)
        lines = [json.loads(x) for x in gzip.decompress(
            (tmp_path / "o.jsonl.gz").read_bytes()).splitlines()]
        assert lines == [{"request_id": 5, "text": "first"},
                         {"request_id": 6, "worker_id": 2, "text": "second",
                          "reasoning": "thought"}]
    finally:
        writer.close()


def test_the_writer_holds_at_most_its_bound_when_the_disk_cannot_keep_up(tmp_path,
                                                                          monkeypatch):
    gate = threading.Event()
    real = outputs_module.gzip.compress

    def stalled(data, *args, **kwargs):  # a disk that takes its time
        gate.wait()
        return real(data, *args, **kwargs)

    monkeypatch.setattr(outputs_module.gzip, "compress", stalled)
    writer = OutputWriter(tmp_path / "o.jsonl.gz", max_pending_chars=50_000)
    text = "y" * 1000
    for rid in range(500):  # 500,000 characters offered, ten times the bound
        writer.add(rid, 0, text)
    assert writer.peak_pending_chars <= 50_000
    assert writer.peak_pending_chars >= 49_000  # it did fill up to the bound
    assert writer.lost == 450
    gate.set()
    writer.close()
    texts, _ = saved(tmp_path / "o.jsonl.gz")
    assert sorted(texts) == list(range(50))  # the first 50, then the disk was full


def test_text_written_leaves_the_bound_so_later_outputs_are_kept(tmp_path):
    writer = OutputWriter(tmp_path / "o.jsonl.gz", max_pending_chars=5000)
    try:
        for rid in range(4):
            writer.add(rid, 0, "x" * 1000)
        time.sleep(FLUSH_INTERVAL_S * 3)  # written: the 4000 characters no longer wait
        for rid in range(4, 8):
            writer.add(rid, 0, "x" * 1000)
        assert writer.lost == 0
    finally:
        writer.close()
    assert sorted(saved(tmp_path / "o.jsonl.gz")[0]) == list(range(8))


def gzip_members(data):
    count = 0
    while data:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        inflater.decompress(data)
        data = inflater.unused_data
        count += 1
    return count


def test_a_batch_is_written_early_once_it_holds_batch_chars(tmp_path):
    path = tmp_path / "o.jsonl.gz"
    writer = OutputWriter(path)
    half = outputs_module.BATCH_CHARS // 2 + 1
    for rid in range(4):  # all within one flush interval: only their size splits them
        writer.add(rid, 0, "z" * half)
    writer.close()
    assert gzip_members(path.read_bytes()) == 2  # two of them fill a batch
    assert sorted(saved(path)[0]) == list(range(4))


def test_a_file_cut_by_a_kill_gives_its_whole_lines_and_says_it_was_cut(tmp_path):
    path = tmp_path / "o.jsonl.gz"
    writer = OutputWriter(path)
    for rid in range(3):
        writer.add(rid, 0, f"text {rid}")
        time.sleep(FLUSH_INTERVAL_S * 2)  # one gzip member each
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the last member cut
    texts, warnings = saved(path)
    assert [t.text for t in texts.values()][:2] == ["text 0", "text 1"]
    assert any("cut short" in w for w in warnings)


def test_a_missing_side_file_is_one_line(tmp_path):
    with pytest.raises(RecordError, match="no outputs file"):
        list(OutputReader(tmp_path / "none.outputs.jsonl.gz").outputs())
