"""`soaktop run --save-outputs` and `soaktop outputs RECORD`: the saved texts printed, escaped
(model output is untrusted: a terminal must never obey an escape in it), one request's with
--request, and every mistake one line."""

import asyncio
import json
import time

import pytest

from soaktop.engine.backends.base import Arrival, StreamEnd
from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.loopback.wire import words
from soaktop.engine.session import Session
from soaktop.tui.cli import main
from tests.tui.test_cli import soaktop

HOSTILE = "red \x1b[31mALERT\x1b[0m and a title \x1b]0;owned\x07 bell\x07 tab\tend"


class Hostile(FakeBackend):
    """A model whose output is request-numbered and carries terminal escapes."""

    async def stream(self, request):
        await asyncio.sleep(0)
        yield Arrival(time.perf_counter_ns(), 1, f"request {request.request_id}: ")
        yield Arrival(time.perf_counter_ns(), 1, HOSTILE)
        yield StreamEnd("stop")


@pytest.fixture
def saved_record(tmp_path):
    record = tmp_path / "run.jsonl.gz"
    cfg = RunConfig(backend="fake", model="fake", concurrency=2, max_requests=5,
                    warmup_requests=0, save_outputs=True)
    asyncio.run(Session(cfg, Hostile(), record_path=record).run())
    return record


def outputs(capsys, *args):
    code = main(["outputs", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_outputs_print_escaped_never_as_terminal_codes(saved_record, capsys):
    code, out, err = outputs(capsys, saved_record)
    assert code == 0 and err == ""
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("\\x1b[31mALERT\\x1b[0m") == 5
    assert out.count("\\x1b]0;owned\\x07 bell\\x07 tab\tend") == 5  # a tab stays a tab
    heads = sorted(line for line in out.splitlines() if line.startswith("--- request"))
    assert heads == [f"--- request {i} ---" for i in range(5)]  # in the order they ended


def test_request_n_selects_one_output(saved_record, capsys):
    code, out, _ = outputs(capsys, saved_record, "--request", 3)
    assert code == 0
    assert out.splitlines()[0] == "--- request 3 ---"
    assert out.splitlines()[1].startswith("request 3: red \\x1b[31m")
    assert len(out.splitlines()) == 2


def test_json_lines_are_as_saved_and_escaped_by_json(saved_record, capsys):
    code, out, _ = outputs(capsys, saved_record, "--request", 1, "--json")
    assert code == 0 and "\x1b" not in out
    assert json.loads(out) == {"request_id": 1, "text": "request 1: " + HOSTILE,
                               "worker_id": 0, "reasoning": ""}


def test_a_cut_side_file_prints_what_it_holds_and_says_so(saved_record, capsys):
    side = saved_record.with_name("run.outputs.jsonl.gz")
    data = side.read_bytes()
    side.write_bytes(data[: len(data) * 2 // 3])  # a kill mid-write
    code, out, err = outputs(capsys, saved_record)
    assert code == 0
    assert "cut short" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_empty_side_file_says_it_holds_no_outputs(saved_record, capsys):
    saved_record.with_name("run.outputs.jsonl.gz").write_bytes(b"")  # killed before a write
    code, out, err = outputs(capsys, saved_record)
    assert code == 0 and out == ""
    assert err.strip() == "soaktop: no outputs in " + str(
        saved_record.with_name("run.outputs.jsonl.gz"))


@pytest.mark.parametrize("case, message", [
    ("not saved", "the run was not made with --save-outputs"),
    ("no record", "no such record"),
    ("side file gone", "is missing"),
    ("no such request", "no output of request 99"),
])
def test_mistakes_are_one_line(tmp_path, saved_record, capsys, case, message):
    args = [saved_record]
    if case == "not saved":
        plain = tmp_path / "plain.jsonl"
        cfg = RunConfig(backend="fake", model="fake", concurrency=1, max_requests=2)
        asyncio.run(Session(cfg, FakeBackend(ttft_s=0, itl_s=0), record_path=plain).run())
        args = [plain]
    elif case == "no record":
        args = [tmp_path / "nothing.jsonl.gz"]
    elif case == "side file gone":
        saved_record.with_name("run.outputs.jsonl.gz").unlink()
    else:
        args += ["--request", 99]
    code, out, err = outputs(capsys, *args)
    assert code == 2
    assert err.startswith("soaktop: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_save_outputs_without_a_record_is_one_line(capsys):
    code = main(["run", "--save-outputs", "--no-record", "--headless", "--duration", "1s"])
    err = capsys.readouterr().err
    assert code == 2 and "--save-outputs writes beside the record" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_saves_the_servers_text_and_outputs_prints_it(tmp_path):
    record = tmp_path / "r.jsonl.gz"
    with spawn(Schedule(ttft_ms=1, itl_ms=0, tokens=8, model="loopback")) as url:
        run = soaktop("run", "--headless", "--backend", "openai", "--url", url,
                      "--concurrency", "2", "--requests", "4", "--warmup", "0",
                      "--output-tokens", "7", "--save-outputs", "--record", str(record),
                      "--telemetry", "none")
    assert run.returncode == 0, run.stderr
    shown = soaktop("outputs", str(record), "--request", "2")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"--- request 2 ---\n{words(0, 7)}\n"
