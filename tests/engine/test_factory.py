"""The engine makes a run from a RunConfig: the defaults, the backend, credentials kept out of
the session's config and record, the record's file name."""

import dataclasses
import gzip

import pytest

from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.factory import build_session, make_backend, record_file
from soaktop.engine.loopback import LoopbackServer, Schedule


def test_defaults_that_depend_on_other_fields_are_resolved_when_the_config_is_made():
    assert (RunConfig().model, RunConfig().concurrency) == ("tiny", 4)
    assert RunConfig(ramp=(2, 4, 8)).concurrency == 2  # a ramp starts at its first step
    assert RunConfig(slo="ttft_p95<=2s").concurrency == 1  # a search doubles from 1
    assert RunConfig(slo="ttft_p95<=2s", concurrency=8).concurrency == 8
    assert RunConfig(backend="openai").model is None  # the server's to say: see build_session
    with pytest.raises(ConfigError, match="--ramp starts at 2: leave --concurrency out"):
        RunConfig(ramp=(2, 4), concurrency=3)


def test_a_recorded_config_reads_back_as_the_config_that_ran():
    config = RunConfig(ramp=(1, 2), telemetry=("host",), duration_s=30.0)
    recorded = config.to_dict()
    assert RunConfig.from_dict(recorded) == dataclasses.replace(config, warmup_requests=1)
    assert RunConfig.from_dict({**recorded, "from_a_newer_soaktop": 1}).ramp == (1, 2)
    with pytest.raises(ConfigError, match="not one soaktop can run"):
        RunConfig.from_dict({**recorded, "input_tokens": "many"})


def test_the_backend_is_the_one_asked_for(monkeypatch):
    with pytest.raises(ConfigError, match="--url is for --backend openai or ollama"):
        make_backend(RunConfig(url="http://127.0.0.1:8000"))
    with pytest.raises(ConfigError, match="--backend openai needs --url"):
        make_backend(RunConfig(backend="openai"))
    with pytest.raises(ConfigError, match="cannot be run against"):
        make_backend(RunConfig(backend="fake"))
    assert make_backend(RunConfig(backend="ollama")).url == "http://127.0.0.1:11434"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    config = RunConfig(backend="openai", url="http://127.0.0.1:8000")
    assert make_backend(config)._api_key == "sk-from-the-environment"
    assert make_backend(config, api_key="sk-given")._api_key == "sk-given"


def test_the_record_file_is_the_one_named_or_a_new_name_in_a_folder(tmp_path):
    assert record_file(None, "tiny") is None
    assert record_file(tmp_path / "run.jsonl", "tiny") == tmp_path / "run.jsonl"
    made = record_file(tmp_path, "llama/3.2")
    assert made.parent == tmp_path and made.name.endswith("_llama-3.2.jsonl.gz")
    assert record_file(tmp_path / "new", "tiny").parent == tmp_path / "new"  # no suffix: a folder
    with pytest.raises(ConfigError, match="a record ends in .jsonl.gz"):
        record_file(tmp_path / "run.json", "tiny")


async def test_the_session_asks_the_server_for_a_model_and_keeps_no_credential(tmp_path):
    said = []
    schedule = Schedule(ttft_ms=2, itl_ms=1, tokens=4, model="served-first")
    async with LoopbackServer(schedule) as server:
        where = server.url.removeprefix("http://")
        config = RunConfig(
            backend="openai", url=f"http://alice:pw-s3cret@{where}", concurrency=2,
            max_requests=4, output_tokens=4,
            telemetry=("prom=http://bob:prom-s3cret@127.0.0.1:9/metrics?token=t-s3cret",))
        session = await build_session(config, api_key="sk-s3cret", record=tmp_path,
                                      say=said.append)
        await session.run()
    # (a deep tmp_path also puts the control socket elsewhere, and the run says where)
    assert [line for line in said if not line.startswith("control socket:")] == [
        "model served-first (the first the server lists)"]
    assert not any("s3cret" in line for line in said)
    assert session.config.model == "served-first"
    assert session.config.url == server.url
    assert session.config.telemetry == ("prom=http://127.0.0.1:9/metrics",)
    assert session.record_path.parent == tmp_path
    with gzip.open(session.record_path, "rt") as f:
        record = f.read()
    assert '"request_done"' in record  # it ran, and was recorded
    for secret in ("alice", "bob", "s3cret"):
        assert secret not in record
