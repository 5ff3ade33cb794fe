"""The `soaktop` command as a user runs it: a real process, the embedded tiny model on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from soaktop.engine.events import HostSample, TelemetryStatus
from soaktop.engine.records.format import RecordReader

SOAKTOP = [sys.executable, "-m", "soaktop.tui.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def soaktop(*args, timeout=120):
    return subprocess.run([*SOAKTOP, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def test_headless_json_run_and_its_record_summarise_identically(tmp_path):
    record = tmp_path / "run.jsonl"
    run = soaktop("run", "--headless", "--duration", "6s", "--concurrency", "4", "--json",
                  "--record", str(record), "--status-every", "1", "--output-tokens", "32",
                  "--ambient-c", "23.5")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # stdout is exactly one JSON object
    header = json.loads(record.read_text().splitlines()[0])
    assert header["config"]["ambient_c"] == 23.5
    assert header["config"]["telemetry"] == ["nvml", "host"]
    assert "available" in header["environment"]["nvidia"]
    for key in ("requests_ok", "requests_failed", "output_tokens", "duration_s",
                "output_tokens_per_s", "phases"):
        assert key in result
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(result[key]) == {"p50", "p90", "p95", "p99", "mean"}
    assert result["requests_ok"] > 0 and result["requests_failed"] == 0
    assert result["ended"] == "completed"
    # plausible, not just present: the whole run is shorter than the 6 s asked for (warm-up
    # excluded), every latency is positive and ordered, tokens/s agrees with its parts
    assert 0 < result["duration_s"] < 6.0
    assert result["output_tokens_per_s"] == pytest.approx(
        result["output_tokens"] / result["duration_s"])
    ttft = result["ttft_ms"]
    assert 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"]
    assert result["phases"][0]["concurrency"] == 4
    # status lines went to stderr, so stdout stayed parseable
    assert "tok/s" in run.stderr and "TTFT p50" in run.stderr
    again = soaktop("summary", str(record), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == result


def test_ctrl_c_ends_the_run_and_closes_the_record(tmp_path):
    record = tmp_path / "run.jsonl"
    proc = subprocess.Popen([*SOAKTOP, "run", "--record", str(record), "--concurrency", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until requests are being recorded
        if record.exists() and '"request_done"' in record.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    last = json.loads(record.read_text().splitlines()[-1])
    assert last["type"] == "session_end" and last["reason"] == "interrupted"
    assert "ended: interrupted" in out  # the summary table was still printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--concurrency", "0"], "must be at least 1"),
        (["run", "--duration", "5q"], "cannot read duration"),
        (["run", "--model", "gpt-17", "--no-record"], "gpt-17"),
        (["run", "--device", "cuda", "--no-record"], "CUDA"),
        (["summary", "/nonexistent/run.jsonl"], "no such record"),
        (["run", "--telemetry", "nvml,gpu"], "unknown telemetry source 'gpu'"),
        (["run", "--telemetry", "prom=node7:9400"], "must start with http:// or https://"),
        (["run", "--telemetry", "prom=http://node7:abc/metrics"], "is not a valid URL"),
        (["run", "--backend", "openai", "--url", "http://localhost:abc"], "is not a valid URL"),
        (["models", "--backend", "openai", "--url", "http://[::1"], "is not a valid URL"),
        (["models", "--backend", "openai", "--url", "http://:8000"], "names no host"),
        (["run", "--telemetry-hz", "0"], "must be above 0"),
        (["run", "--ambient-c", "300", "--no-record"], "not plausible"),
        (["run", "--record", "run.json", "--duration", "1s"], "a record ends in .jsonl.gz"),
        (["run", "--max-inflight", "4", "--no-record"], "give --rate too"),
        (["run", "--arrival", "poisson", "--no-record"], "give --rate too"),
        (["run", "--ramp", "2,4", "--concurrency", "3", "--no-record"], "--ramp starts at 2"),
        (["run", "--backend", "openai", "--no-record"], "needs --url"),
        (["run", "--url", "http://127.0.0.1:8000", "--no-record"], "--url is for --backend"),
        (["run", "--detach", "--record", "run.json"], "a record ends in .jsonl.gz"),
        (["run", "--prompts", "/nonexistent/p.jsonl", "--no-record"], "not found"),
        (["run", "--tokenizer", "/nonexistent", "--no-record"], "no tokenizer.json"),
        (["run", "--trace", "/nonexistent/t.jsonl", "--no-record"],
         "trace /nonexistent/t.jsonl not found"),
        (["run", "--trace-speed", "0"], "must be above 0"),
        (["run", "--trace-speed", "2", "--no-record"], "--trace-speed applies to --trace"),
        (["run", "--turns", "0"], "must be at least 1"),
        # the flag named once (the engine's message names it too, for a record's config)
        (["run", "--think-time", "soon"], "argument --think-time: cannot read 'soon'"),
        (["run", "--rate", "5", "--concurrency", "8", "--no-record"],
         "leave --concurrency out"),
        (["run", "--think-time", "2", "--no-record"], "give --turns too"),
        (["run", "--input-tokens", "5:x"], "cannot read '5:x'"),
        (["run", "--output-tokens", "10-5"], "MIN-MAX needs 1 <= MIN <= MAX"),
        (["run", "--workers", "0"], "must be at least 1"),
        (["run", "--save-outputs", "--no-record"], "--save-outputs writes beside the record"),
        (["outputs", "/nonexistent/run.jsonl.gz"], "no such record"),
        (["outputs", "sessions/sample.jsonl"], "not made with --save-outputs"),
        (["run", "--stop-when", "error_rate>5%,ttft_p95=>3s"],
         "cannot read --stop-when term 'ttft_p95=>3s'"),
        (["run", "--stop-when", "errors>5%"], "unknown --stop-when metric 'errors'"),
        (["run", "--stop-window", "0s", "--no-record"], "--stop-window must be above 0"),
        (["run", "--on-saturation", "stop", "--no-record"], "watches an open loop"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message):
    result = soaktop(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # "loading ..." may precede it


def test_a_missing_prompt_file_is_said_before_the_model_loads():
    result = soaktop("run", "--prompts", "/nonexistent/p.jsonl", "--no-record",
                     "--duration", "1s", "--headless")
    assert result.returncode == 2
    assert result.stderr == "soaktop: error: prompt file /nonexistent/p.jsonl not found\n"


def test_models_lists_the_presets():
    result = soaktop("models")
    assert result.returncode == 0
    assert {"tiny", "gpt2-small", "llama-1b"} <= set(result.stdout.split())


def test_a_wrong_model_on_a_server_is_one_line_and_exit_2():
    from soaktop.engine.loopback import Schedule, spawn

    with spawn(Schedule(ttft_ms=5, itl_ms=2, tokens=8), fault="http_404") as url:
        result = soaktop("run", "--backend", "openai", "--url", url, "--model", "nope",
                         "--duration", "20s", "--no-record", "--json")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("soaktop: error: every request was refused") and "404" in last
    assert json.loads(result.stdout)["ended"] == "failed"  # the summary still came out


def test_a_prompt_too_long_for_the_local_model_is_one_line_and_exit_2():
    result = soaktop("run", "--input-tokens", "3000", "--duration", "20s", "--no-record")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("soaktop: error: every request was refused")
    assert "prompt of 3000 tokens does not fit the 2048-token cache" in last


def test_headless_run_without_a_gpu_says_so_and_samples_the_host(tmp_path):
    """The issue's done-when, on this GPU-less machine: host samples at the set rate, and a
    plain line that no GPU is present."""
    record = tmp_path / "r.jsonl"
    out = soaktop("run", "--headless", "--duration", "3s", "--concurrency", "1",
                  "--telemetry-hz", "10", "--record", str(record))
    assert out.returncode == 0, out.stderr
    events = list(RecordReader(record).events())
    statuses = {e.source: e for e in events if isinstance(e, TelemetryStatus)}
    if statuses["nvml"].available:
        pytest.skip("this machine has an NVIDIA GPU")
    assert "soaktop: telemetry: nvml: unavailable: no NVIDIA GPU found" in out.stderr
    assert not statuses["nvml"].available
    host = np.array([e.t_ns for e in events if isinstance(e, HostSample)])
    assert 24 <= host.size <= 31  # 10 Hz over the 3 s run (the clock starts after loading)
    assert np.median(np.diff(host)) / 1e6 == pytest.approx(100, abs=10)


def test_remote_gpus_and_a_serving_engine_through_prometheus(tmp_path):
    """--telemetry prom=URL end to end: a DCGM exporter whose energy counters rise at 700 W
    and 70 W of wall time (what its power readings say, 698.5 W and 71.8 W), and a vLLM
    /metrics, both served on 127.0.0.1."""
    import re
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    data = Path(__file__).parent.parent / "engine" / "data"
    dcgm = (data / "dcgm_exporter.txt").read_text()
    vllm = (data / "vllm_metrics.txt").read_text()
    start = time.monotonic()

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            elapsed = time.monotonic() - start
            if self.path == "/dcgm":
                # per second of wall time: energy in mJ, time power-capped in ns (GPU 0 capped
                # a quarter of the time, GPU 1 never)
                rate = {("TOTAL_ENERGY_CONSUMPTION", "0"): 700_000,
                        ("TOTAL_ENERGY_CONSUMPTION", "1"): 70_000,
                        ("POWER_VIOLATION", "0"): 250_000_000, ("POWER_VIOLATION", "1"): 0}
                body = re.sub(
                    r'(DCGM_FI_DEV_(TOTAL_ENERGY_CONSUMPTION|POWER_VIOLATION)\{gpu="(\d)".*\})'
                    r' (\d+)',
                    lambda m: f"{m.group(1)} "
                              f"{int(m.group(4)) + int(elapsed * rate[m.group(2), m.group(3)])}",
                    dcgm)
            else:
                body = vllm
            payload = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        run = soaktop("run", "--headless", "--duration", "5s", "--concurrency", "2", "--json",
                      "--no-record", "--status-every", "2",
                      "--telemetry", f"host,prom={base}/dcgm,prom={base}/vllm")
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result["gpus"]) == {"gpu-node-07/0", "gpu-node-07/1"}
    assert result["gpus"]["gpu-node-07/0"]["power_w"]["mean"] == pytest.approx(700, rel=0.05)
    assert result["gpus"]["gpu-node-07/0"]["energy_from"] == "counter"
    assert result["gpus"]["gpu-node-07/1"]["energy_from"] == "counter"
    assert result["power_w"] == pytest.approx(770, rel=0.05)
    assert result["energy_j_per_token"] == pytest.approx(
        result["power_w"] * result["duration_s"] / result["output_tokens"])
    capped = {k: g["clock_event_fraction"]["sw_power_cap"] for k, g in result["gpus"].items()}
    assert capped["gpu-node-07/0"] == pytest.approx(0.25, rel=0.05)
    assert capped["gpu-node-07/1"] == 0.0
    assert result["gpus"]["gpu-node-07/0"]["clock_events_from"] == "counters"
    (server_key,) = result["servers"]
    assert "vllm" in server_key and "Llama-3.1-8B-Instruct" in server_key
    assert result["servers"][server_key]["kv_cache_usage"]["mean"] == pytest.approx(0.6418)
    assert "vllm running 24 waiting" in run.stderr  # beside the client's view, live
    assert "gpu-node-07 GPU0 67C (margin" not in run.stderr  # DCGM gives no slowdown threshold
    assert "gpu-node-07 GPU0 67C 1755 MHz 699/700 W throttled: sw_power_cap,sw_thermal" \
        in run.stderr


def write_record(path, ttft_ms, model):
    """A record of requests with the given TTFTs (20 tokens each, 10 ms apart)."""
    from soaktop.engine.events import Phase, RequestDone, SessionEnd, SessionStart
    from soaktop.engine.records.format import RecordWriter

    writer = RecordWriter(path)
    writer.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00",
                              {"backend": "fake", "model": model}, {}, {}))
    writer.write(Phase(0, 0, 4, model, "fake", "start"))
    for i, ttft in enumerate(ttft_ms):
        offsets = tuple(int(ttft * 1000) + 10_000 * k for k in range(20))
        sent = i * 50_000_000
        writer.write(RequestDone(sent + offsets[-1] * 1000, 0, i, 0, "fake", model, sent, 8,
                                 offsets, offsets[-1], "length"))
    writer.write(SessionEnd(len(ttft_ms) * 50_000_000 + 10**9, "completed"))
    writer.close()


def test_compare_two_records(tmp_path):
    import re

    rng = np.random.default_rng(3)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_record(a, rng.normal(50, 5, 200), "m1")
    write_record(b, rng.normal(75, 5, 200), "m2")
    out = soaktop("compare", str(a), str(b))
    assert out.returncode == 0, out.stderr
    ttft = next(line for line in out.stdout.splitlines() if line.startswith("TTFT p50"))
    assert re.search(r"1\.(4[89]|5[012])x  beyond noise \(p=", ttft)
    assert "ran differently: model: 'm1' vs 'm2'" in out.stdout
    data = json.loads(soaktop("compare", str(a), str(b), "--json").stdout)
    row = next(r for r in data["metrics"] if r["metric"] == "TTFT p50 (ms)")
    assert row["ratio"] == pytest.approx(1.5, rel=0.03) and row["p_value"] < 1e-10
    missing = soaktop("compare", str(a), str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such record" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_calibrate_prints_its_error_table_and_the_rate_it_can_be_trusted_to():
    out = soaktop("calibrate", "--concurrency", "8", "--rates", "400", "--duration", "5s",
                  timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:4] == ["got", "tok/s", "reqs", "TTFT"]
    row = lines[2].split()
    assert 300 < float(row[0].replace(",", "")) < 420  # the rate it was paced for
    errors = [float(x) for x in row[2:8]]
    assert abs(errors[0]) < 2.0  # TTFT p50: soaktop and the wire agree within 2 ms
    worst_p99 = max(abs(errors[2]), abs(errors[5]))  # TTFT p99, ITL p99
    assert lines[3] == (f"highest rate with TTFT and ITL p99 error under 1 ms: {row[0]} "
                        "tokens/s" if worst_p99 < 1 else
                        "p99 error under 1 ms at none of these rates: this client adds more "
                        "than 1 ms")
    bad = soaktop("calibrate", "--rates", "fast")
    assert bad.returncode == 2 and "--rates: not numbers" in bad.stderr


def test_a_wrong_record_name_is_said_before_the_model_loads():
    result = soaktop("run", "--record", "run.json", "--duration", "1s")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "soaktop: error: --record run.json: a record ends in .jsonl.gz (compressed) or .jsonl "
        "(plain); give one of those, or a folder"]


def test_a_stop_condition_ends_the_run_with_exit_3_and_the_summary_names_it(tmp_path):
    """A server that fails every request after its 40th: the run stops on its --stop-when
    term within the 1 s window (not its 30 s), prints the summary with the reason and the
    term's measured value, says it in one last line, and exits 3; the record's summary says
    the same."""
    from soaktop.engine.loopback import Schedule, spawn

    record = tmp_path / "run.jsonl"
    with spawn(Schedule(ttft_ms=5, itl_ms=2, tokens=8), fault="http_500",
               fault_after=40) as url:
        result = soaktop("run", "--backend", "openai", "--url", url, "--concurrency", "4",
                         "--warmup", "0", "--duration", "30s", "--record", str(record),
                         "--json", "--stop-when", "ttft_p99>20s,error_rate>20%",
                         "--stop-window", "1s")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("soaktop: stopped: error_rate>20%: ") and "over the last 1 s" in last
    summary = json.loads(result.stdout)
    assert summary["ended"] == "stop_condition" and summary["ended_at_s"] < 15
    assert summary["ended_explanation"] == last.removeprefix("soaktop: stopped: ")
    assert summary["requests_ok"] >= 36 and summary["requests_failed"] >= 2
    text = soaktop("summary", str(record))
    assert text.returncode == 0  # reading a record is no run: its ending is no exit status
    assert f"ended: stop_condition: {summary['ended_explanation']}" in text.stdout

