"""The sample record committed under sessions/: made by a real run, and still readable by
every command that reads records (a schema change that breaks old records fails here)."""

from pathlib import Path

from soaktop.engine.config import RunConfig
from soaktop.engine.events import (
    SCHEMA_VERSION,
    ClientSample,
    HostSample,
    RequestDone,
    SessionEnd,
    SessionStart,
    TelemetryStatus,
)
from soaktop.engine.load.rerun import rerun_config
from soaktop.engine.metrics.summary import SessionSummary, summarise
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.replay import Replay, Timeline

SAMPLE = Path(__file__).resolve().parent.parent / "sessions" / "sample.jsonl"


def _events():
    reader = RecordReader(SAMPLE)
    events = list(reader.events())
    assert reader.warnings == []
    return events


def test_the_sample_is_a_whole_record_of_a_real_run():
    events = _events()
    header, end = events[0], events[-1]
    assert isinstance(header, SessionStart) and header.schema_version == SCHEMA_VERSION
    assert isinstance(end, SessionEnd) and end.reason == "completed"
    assert header.backend["kind"] == "local" and header.environment["torch"]
    RunConfig(**header.config)  # the config it keeps is one this soaktop accepts
    kinds = {type(e) for e in events}
    assert {RequestDone, HostSample, ClientSample, TelemetryStatus} <= kinds
    done = [e for e in events if isinstance(e, RequestDone) and e.ok and not e.warmup]
    assert len(done) >= 20 and all(len(e.arrivals_us) == 48 for e in done)


def test_the_sample_summarises_replays_and_reruns():
    events = _events()
    summary = summarise(events)
    replayed = SessionSummary()
    timeline = Timeline(events)
    Replay(timeline, [replayed.add]).advance_to(timeline.end_ns)
    assert replayed.result() == summary.result()
    assert summary.result().requests_ok >= 20
    config = rerun_config(events)
    assert (config.model, config.concurrency, config.output_tokens, config.duration_s) == (
        "tiny", 2, 48, 8.0)
