"""The commands that read records, as a user runs them: summary --csv, replay, attach, rerun,
and a record cut by SIGKILL. Real processes; the embedded tiny model or a loopback server."""

import csv
import gzip
import io
import json
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from soaktop.engine.config import RunConfig
from soaktop.engine.events import Phase, SessionEnd, SessionStart
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.metrics.summary import summarise
from soaktop.engine.records.format import RecordReader
from soaktop.tui.cli import build_parser
from soaktop.tui.run_flags import config_from_args, run_command, shell_line
from tests.tui.test_cli import ENV, SOAKTOP, soaktop

STATUS = re.compile(r"^\[\s*\d+\.\ds\] in flight")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One real run, recorded compressed: (record path, its --json result, its status lines)."""
    record = tmp_path_factory.mktemp("run") / "run.jsonl.gz"
    run = soaktop("run", "--headless", "--duration", "5s", "--concurrency", "3", "--json",
                  "--record", str(record), "--status-every", "1", "--output-tokens", "24",
                  "--telemetry", "host")
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if STATUS.match(line)]
    return record, json.loads(run.stdout), lines


def test_summary_csv_holds_the_json_numbers(recorded):
    record, result, _ = recorded
    out = soaktop("summary", str(record), "--csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["scope"] for r in rows] == ["run"] + ["phase"] * len(result["phases"])
    run = rows[0]
    assert float(run["output_tokens_per_s"]) == result["output_tokens_per_s"]  # not rounded
    assert float(run["ttft_ms_p95"]) == result["ttft_ms"]["p95"]
    assert int(run["requests_ok"]) == result["requests_ok"]
    for a, b in (("input_lengths", "asked"), ("output_lengths", "received")):
        for q in ("p50", "p99", "mean"):  # the lengths sent and received, per request
            assert float(run[f"{a}_{b}_{q}"]) == result[a][b][q]
    measured = rows[-1]
    assert measured["warmup"] == "False" and int(measured["concurrency"]) == 3
    assert rows[1]["ttft_ms_p50"] == ""  # the warm-up phase has no measured requests


def test_replay_prints_the_live_status_lines_and_the_same_summary(recorded):
    record, result, live_lines = recorded
    out = soaktop("replay", str(record), "--speed", "max", "--status-every", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == result  # one statistics code path
    replayed = [line for line in out.stderr.splitlines() if STATUS.match(line)]
    assert [line[:10] for line in replayed] == [line[:10] for line in live_lines]
    # the live line is printed a moment after its tick and may count a request that ended
    # in that moment; nearly every line must match to the character all the same
    same = sum(a == b for a, b in zip(replayed, live_lines))
    assert same >= len(live_lines) - 1 and len(live_lines) >= 4


def test_replay_keeps_its_pace_and_starts_where_asked(recorded):
    record, result, _ = recorded
    t0 = time.monotonic()
    out = soaktop("replay", str(record), "--speed", "4", "--from", "2s", "--status-every", "1")
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    ticks = [line[:10] for line in out.stdout.splitlines() if STATUS.match(line)]
    assert ticks[0] == "[    3.0s]"  # nothing printed for the part skipped
    assert 0.7 <= took  # 3 s of record at x4, beside the start-up
    all_row = next(line for line in out.stdout.splitlines() if line.strip().startswith("all"))
    assert all_row.split()[1] == str(result["requests_ok"])  # the whole record, summarised


def _measured_ok(record) -> int:
    if not record.exists() or record.stat().st_size == 0:
        return 0
    summary = summarise(RecordReader(record).events())
    return summary.result().requests_ok


def test_a_record_cut_by_sigkill_at_concurrency_64_still_summarises(tmp_path):
    record = tmp_path / "killed.jsonl.gz"
    with spawn(Schedule(ttft_ms=20, itl_ms=10, tokens=64, model="loopback")) as url:
        proc = subprocess.Popen(
            [*SOAKTOP, "run", "--headless", "--backend", "openai", "--url", url,
             "--concurrency", "64", "--duration", "60s", "--record", str(record),
             "--telemetry", "host"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and _measured_ok(record) < 100:
                time.sleep(0.5)  # the record is read while it is written, as attach does
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    out = soaktop("summary", str(record), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["requests_ok"] >= 100
    assert result["ended"] == "cut_short"  # a code, with the time apart; the table words it
    assert 0 < result["ended_at_s"] < 60
    assert "Traceback" not in out.stderr
    replay = soaktop("replay", str(record), "--speed", "max")
    assert replay.returncode == 0 and "ended: cut short at" in replay.stdout


def test_attach_follows_a_run_to_its_end_and_agrees_with_the_record(tmp_path):
    record = tmp_path / "live.jsonl.gz"
    run = subprocess.Popen(
        [*SOAKTOP, "run", "--headless", "--duration", "6s", "--concurrency", "2",
         "--record", str(record), "--telemetry", "none", "--output-tokens", "24"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (record.exists() and record.stat().st_size):
        time.sleep(0.1)
    attach = soaktop("attach", str(record), "--json", "--status-every", "1", timeout=60)
    run.communicate(timeout=30)
    assert attach.returncode == 0, attach.stderr
    assert "following" in attach.stderr
    lines = [line for line in attach.stderr.splitlines() if STATUS.match(line)]
    assert lines and all("in flight 2/2" in line for line in lines)
    tokens_per_s = [float(re.search(r"\| ([\d,]+) tok/s", line).group(1).replace(",", ""))
                    for line in lines]
    assert max(tokens_per_s) > 0  # from the run's own once-a-second count, not zero
    # each figure is the run's own: the tokens of the record's last client_sample by then
    from soaktop.engine.events import ClientSample

    samples = [e for e in RecordReader(record).events() if isinstance(e, ClientSample)]
    rates = {round(s.tokens / (s.interval_ns / 1e9)) for s in samples}
    assert all(round(value) in rates for value in tokens_per_s if value)
    whole = json.loads(soaktop("summary", str(record), "--json").stdout)
    assert json.loads(attach.stdout) == whole and whole["ended"] == "completed"


def test_attach_and_replay_refuse_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    for command in ("attach", "replay"):
        out = soaktop(command, str(bad))
        assert out.returncode == 2 and "is not a soaktop record" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        missing = soaktop(command, str(tmp_path / "nope.jsonl.gz"))
        assert missing.returncode == 2 and "no such record" in missing.stderr
    speed = soaktop("replay", str(bad), "--speed", "0")
    assert speed.returncode == 2 and "must be above 0" in speed.stderr


@pytest.mark.parametrize("config", [
    RunConfig(),
    RunConfig(backend="openai", url="http://10.0.0.7:8000/v1", model="llama", api="chat",
              concurrency=8, warmup_requests=8, duration_s=120.5, input_tokens=512, seed=7,
              telemetry=("nvml", "prom=http://10.0.0.7:9400/metrics"), shared_prefix=64),
    RunConfig(backend="ollama", model="llama3.2", slo="ttft_p95<=2s,speed_p25>=30",
              phase_s=90.25, max_requests=500, first_token_timeout_s=0.5),
    RunConfig(ramp=(1, 2, 4), phase_s=30.0, telemetry_hz=10.0, ambient_c=-3.5, watch_pid=7),
    RunConfig(rate=12.5, arrival="poisson", max_inflight=64, duration_s=0.001),
    RunConfig(rate=12.5, stop_when="error_rate>5%,ttft_p95>30s", stop_window_s=12.5,
              on_saturation="stop"),
    RunConfig(trace="/data/trace.jsonl", trace_speed=2.5, max_inflight=8),
])
def test_the_run_line_a_config_stands_for_asks_for_that_config(config):
    """What a rerun prints is a `run` command line that, run, makes the same config: one table
    (tui/run_flags.py) reads the flags and writes them."""
    argv = run_command(config)
    assert config_from_args(build_parser().parse_args(argv)) == config
    assert shlex.split(shell_line(argv))[1:] == argv  # quoted for a shell (an SLO's <=)


@pytest.mark.parametrize("open_loop", [["--rate", "5"], ["--trace", "trace.jsonl"]])
def test_a_concurrency_beside_an_open_loop_is_refused_not_ignored(open_loop):
    from soaktop.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="leave --concurrency out"):
        config_from_args(build_parser().parse_args(["run", "--concurrency", "8", *open_loop]))
    config = config_from_args(build_parser().parse_args(["run", *open_loop]))
    assert "--concurrency" not in run_command(config)  # a rerun's line is not refused


def test_rerun_runs_the_same_workload_and_compares(recorded, tmp_path):
    record, result, _ = recorded
    new_record = tmp_path / "again.jsonl.gz"
    out = soaktop("rerun", str(record), "--record", str(new_record), "--json",
                  "--status-every", "1")
    assert out.returncode == 0, out.stderr
    said = next(line for line in out.stderr.splitlines() if "rerunning" in line)
    line = said.removeprefix(f"soaktop: rerunning {record} as: ")
    argv = shlex.split(line)[1:]  # the run it stands for, and where it records
    assert argv[-5:] == ["--record", str(new_record), "--status-every", "1s", "--json"]
    data = json.loads(out.stdout)
    assert data["ran_differently"] == []  # same machine, same settings
    assert data["run"]["requests_ok"] > 0
    metrics = {row["metric"] for row in data["compare"]}
    assert "TTFT p50 (ms)" in metrics
    old_header = json.loads(soaktop("summary", str(record), "--json").stdout)
    assert old_header["phases"][0]["concurrency"] == data["run"]["phases"][0]["concurrency"]
    first = json.loads(__import__("gzip").open(new_record, "rt").readline())
    assert first["config"]["output_tokens"] == 24 and first["config"]["duration_s"] == 5.0
    assert config_from_args(build_parser().parse_args(argv)).to_dict() == first["config"]


SAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "sample.jsonl"


def test_a_corrupt_middle_line_is_named_and_the_rest_summarised(tmp_path):
    lines = SAMPLE.read_text().splitlines(keepends=True)
    whole = json.loads(soaktop("summary", str(SAMPLE), "--json").stdout)
    middle = len(lines) // 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(lines[:middle]) + '{"type": "request_do\x00ne", ' + "\n"
                      + "".join(lines[middle + 1:]))
    out = soaktop("summary", str(broken), "--json")
    assert out.returncode == 0
    assert out.stderr == (f"soaktop: warning: {broken}: line {middle + 1}: unreadable "
                          f"(JSONDecodeError)\n")
    result = json.loads(out.stdout)
    lost = json.loads(lines[middle])
    expected = whole["requests_ok"] - (lost["type"] == "request_done" and not lost.get("warmup"))
    assert result["requests_ok"] == expected and result["ended"] == "completed"


def test_a_corrupt_compressed_block_loses_only_its_own_lines(tmp_path):
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    quarter = len(lines) // 4
    members = [gzip.compress(b"".join(lines[i:i + quarter]), mtime=0)
               for i in range(0, len(lines), quarter)]
    damaged = bytearray(members[1])
    damaged[len(damaged) // 2] ^= 0xFF
    record = tmp_path / "broken.jsonl.gz"
    record.write_bytes(members[0] + bytes(damaged) + b"".join(members[2:]))
    out = soaktop("summary", str(record), "--json")
    assert out.returncode == 0
    assert out.stderr.startswith(f"soaktop: warning: {record}: after line {quarter}: corrupt "
                                 "compressed block")
    assert len(out.stderr.splitlines()) == 1
    result = json.loads(out.stdout)
    assert 0 < result["requests_ok"] < json.loads(
        soaktop("summary", str(SAMPLE), "--json").stdout)["requests_ok"]
    assert result["ended"] == "completed"  # the blocks after the damage were read


def test_strings_from_a_record_never_reach_the_terminal_as_control_codes(tmp_path):
    from soaktop.engine.events import RequestDone
    from soaktop.engine.records.format import RecordWriter

    evil = "m\x1b]0;pwned\x07\x1b[2J"
    record = tmp_path / "evil.jsonl.gz"
    writer = RecordWriter(record)
    writer.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00",
                              {"backend": "openai", "model": evil}, {}, {"url": evil}))
    writer.write(Phase(0, 0, 1, evil, "openai", "start"))
    for i in range(3):
        writer.write(RequestDone((i + 1) * 10**8, 0, i, 0, "openai", evil, i * 10**8, 4,
                                 (1000, 2000), 3000, "error" if i else "length",
                                 error_class=evil if i else None, error_message=evil))
    writer.write(SessionEnd(10**9, "completed"))
    writer.close()
    outputs = [soaktop("summary", str(record)), soaktop("summary", str(record), "--json"),
               soaktop("replay", str(record), "--speed", "max", "--status-every", "0.2")]
    for out in outputs:
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout + out.stderr and "\x07" not in out.stdout + out.stderr
    assert "\\x1b[2J" in outputs[0].stdout  # shown, escaped, not obeyed
    assert "\\x1b]0;pwned" in outputs[2].stderr
    # the CSV is data: a file gets the name as recorded, a terminal an escaped one
    to_file = soaktop("summary", str(record), "--csv")
    assert to_file.returncode == 0 and f",{evil}," in to_file.stdout
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([*SOAKTOP, "summary", str(record), "--csv"], stdout=slave,
                            stderr=subprocess.PIPE, env=ENV)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0
    assert b"\x1b" not in shown and b"m\\x1b]0;pwned" in shown


def test_a_disk_that_fills_stops_recording_not_the_run(tmp_path):
    """A file-size limit makes the record's writes fail part-way (EFBIG: the same failed
    write a full disk gives, without needing one): the run, its status lines and its summary
    go on, the user is told once, and the record reads up to where the disk filled."""
    import resource

    record = tmp_path / "full.jsonl"  # plain: about 25 KB for this run

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    run = subprocess.run(
        [*SOAKTOP, "run", "--headless", "--duration", "6s", "--concurrency", "2",
         "--record", str(record), "--status-every", "1", "--json", "--telemetry", "host"],
        capture_output=True, text=True, env=ENV, timeout=120, preexec_fn=limit_file_size)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("recording stopped: cannot write") == 1
    assert "File too large" in run.stderr
    status = [line for line in run.stderr.splitlines() if STATUS.match(line)]
    assert len(status) >= 5  # the status lines went on to the end
    live = json.loads(run.stdout)
    assert live["ended"] == "completed" and live["requests_ok"] > 0
    assert record.stat().st_size <= 12_000
    out = soaktop("summary", str(record), "--json")
    assert out.returncode == 0
    kept = json.loads(out.stdout)
    assert kept["ended"] == "cut_short"
    assert 0 <= kept["requests_ok"] < live["requests_ok"]


def test_replay_in_a_terminal_pauses_seeks_and_quits_on_keys(recorded):
    import os
    import pty

    record, result, _ = recorded
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SOAKTOP, "replay", str(record), "--status-every", "1"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    os.close(slave)
    try:
        time.sleep(2.5)  # started, and a second or so into the record
        os.write(master, b" ")  # pause
        time.sleep(1.5)
        os.write(master, b"\x1b[C")  # right arrow: 10 s on (past the end: to the end)
        time.sleep(0.5)
        os.write(master, b"q")
        out, err = proc.communicate(timeout=20)
    finally:
        os.close(master)
        proc.kill()
    assert proc.returncode == 0, err
    assert "keys: space pause/resume" in err
    paused = re.search(r"soaktop: paused at (\d+\.\d) s", err)
    assert paused and 0.5 < float(paused.group(1)) < 4.5
    ticks = [float(line[1:8]) for line in out.splitlines() if STATUS.match(line)]
    # while paused, no status line was printed for later record times
    assert all(t <= float(paused.group(1)) + 1 for t in ticks)
    assert "ended: completed" in out  # the summary came out, the whole record read


def _run_in_terminal(args, keys, tmp_path, size=(100, 30), settle_s=25.0):
    """``soaktop ARGS`` in a pseudo-terminal of ``size``; ``keys`` is [(wait_for_text, bytes)]:
    each key is typed once the screen has shown the text. Returns (exit code, all output)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": str(size[0]), "LINES": str(size[1])}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*SOAKTOP, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=tmp_path, close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(text: bytes, timeout: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            seen += chunk

    try:
        for wait_for, key in keys:
            read_until(wait_for, settle_s)
            assert wait_for in seen, f"never saw {wait_for!r}"
            if key:
                os.write(master, key)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            read_until(b"\x00never", 0.2)  # keep draining: a full terminal blocks the app
        read_until(b"\x00never", 0.5)
        assert proc.poll() is not None, "soaktop did not exit"
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, seen.decode("utf-8", errors="replace")


def test_the_dashboard_in_a_terminal_steers_the_run_and_closes_the_record(tmp_path):
    """As a user in a terminal: curves within seconds, + raises
    concurrency to 3 (a phase in the record), q then y exits and closes the record; the
    replay of that record then shows the same dashboard."""
    code, out = _run_in_terminal(
        ["run", "--duration", "120s", "--concurrency", "2", "--record", "r.jsonl.gz",
         "--telemetry", "host"],
        [(b"on cpu (local)", b""), (b"00:04", b"+"), (b"concurrency 3", b""), (b"00:07", b"q"),
         (b"End the run?", b"y")], tmp_path)
    assert code == 0, out[-2000:]
    events = list(RecordReader(tmp_path / "r.jsonl.gz").events())
    phases = [(e.concurrency, e.reason) for e in events if isinstance(e, Phase)]
    assert (3, "key") in phases
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "interrupted"
    assert "ended: interrupted" in out  # the summary after the screen closed
    code, out = _run_in_terminal(["replay", "r.jsonl.gz", "--speed", "100"],
                                 [(b"END OF RECORD", b"q")], tmp_path)
    assert code == 0 and "soaktop replay" in out and "c3" in out


def test_without_a_terminal_run_falls_back_to_status_lines(tmp_path):
    out = soaktop("run", "--duration", "3s", "--concurrency", "2", "--status-every", "1",
                  "--no-record", "--telemetry", "none")
    assert out.returncode == 0, out.stderr
    assert sum(1 for line in out.stdout.splitlines() if STATUS.match(line)) >= 2
    assert "\x1b[" not in out.stdout  # no screen drawn into a pipe


def test_a_detached_run_outlives_its_terminal_and_stops_cleanly(tmp_path):
    import os

    record = tmp_path / "bg.jsonl.gz"
    with spawn(Schedule(ttft_ms=10, itl_ms=5, tokens=16, model="loopback")) as url:
        started = soaktop("run", "--detach", "--backend", "openai", "--url", url,
                          "--concurrency", "4", "--duration", "10m", "--record", str(record),
                          "--telemetry", "none")
        assert started.returncode == 0, started.stderr
        assert f"soaktop attach {record}" in started.stdout
        assert f"soaktop stop {record}" in started.stdout
        pid = int(Path(f"{record}.pid").read_text())
        assert os.getsid(pid) == pid  # a session of its own: no terminal, no SIGHUP from one
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _measured_ok(record) < 20:
            time.sleep(0.3)
        assert _measured_ok(record) >= 20  # it runs on after the command that started it
        stopped = soaktop("stop", str(record))
    assert stopped.returncode == 0, stopped.stderr
    assert "ended: interrupted" in stopped.stdout
    events = list(RecordReader(record).events())
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "interrupted"
    assert not Path(f"{record}.pid").exists()
    assert "record:" in Path(f"{record}.log").read_text()  # its status lines went to the log
    again = soaktop("stop", str(record))
    assert again.returncode == 2 and "no detached run is writing" in again.stderr


def test_a_dashboard_whose_run_ended_exits_when_its_terminal_goes_away(tmp_path):
    """SIGHUP after the run ended (the SSH session closed on a finished soak) must end the
    app, not leave it spinning with no terminal."""
    import os
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([*SOAKTOP, "run", "--duration", "2s", "--concurrency", "1",
                             "--no-record", "--telemetry", "none"],
                            stdin=slave, stdout=slave, stderr=slave,
                            env={**ENV, "TERM": "xterm-256color"}, cwd=tmp_path)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 60
    try:
        while b"ENDED" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        assert b"ENDED" in seen
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        os.close(master)


def test_the_collector_is_paused_for_a_read_on_the_main_thread_only():
    """A dashboard writes its report from a worker thread: the collector is the whole
    process's, so that read must leave it on under the live screen."""
    import gc
    import threading

    from soaktop.tui.record_commands import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    seen = []

    def read():
        with collector_paused():
            seen.append(gc.isenabled())

    worker = threading.Thread(target=read)
    worker.start()
    worker.join()
    assert seen == [True] and gc.isenabled()
