"""`soaktop calibrate --workers`: each worker count's p99 errors side by side, and a trusted rate
for each, so a client box can be sized before a soak. A real process against a real loopback."""

import os
import subprocess
import sys

import pytest

from soaktop.engine.metrics.fidelity import Fidelity
from soaktop.tui.calibrate_text import processes_note, trusted_line, workers_header, workers_row

SOAKTOP = [sys.executable, "-m", "soaktop.tui.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def soaktop(*args, timeout=120):
    return subprocess.run([*SOAKTOP, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def test_calibrate_puts_one_and_two_workers_side_by_side_with_a_trusted_rate_each():
    out = soaktop("calibrate", "--concurrency", "8", "--rates", "300,400", "--duration", "4s",
                  "--workers", "1,2", timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "1 loopback process" in lines[0]  # the loopback's size is said up front
    assert lines[1].split() == ["asked", "|", "1", "worker", "|", "2", "workers"]
    rows = [line.split("|") for line in lines[3:5]]
    assert [float(r[0].replace(",", "")) for r in rows] == [300, 400]
    for row in rows:
        assert len(row) == 3  # the rate asked, then one cell per worker count
        for cell in row[1:]:
            got, ttft_p99, itl_p99, bound, unit = cell.split()
            assert 0.5 * float(row[0].replace(",", "")) < float(got.replace(",", ""))
            float(ttft_p99), float(itl_p99), float(bound)  # errors in ms, seconds flagged
            assert unit == "s"  # (how small the errors are is test_http_fidelity's bar)
    trusted = lines[5]
    assert trusted.startswith("trusted to 1 ms: 1 worker ") and ", 2 workers " in trusted


@pytest.mark.parametrize("workers, message", [
    ("two", "--workers: not a count or a list of counts: 'two'"),
    ("1,x", "--workers: not a count or a list of counts: '1,x'"),
    ("0", "--workers needs counts of at least 1"),
    ("1,-2", "--workers needs counts of at least 1"),
])
def test_bad_workers_is_one_line_and_exit_2(workers, message):
    bad = soaktop("calibrate", "--workers", workers, timeout=30)
    assert bad.returncode == 2
    assert bad.stdout == ""  # refused before anything runs
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"soaktop: error: {message}"), bad.stderr


def test_the_side_by_side_table_and_its_trusted_line():
    def f(rate, ttft_p99, itl_p99, bound=0.0):
        q = {50: (1.0, 1.0), 90: (1.0, 1.0)}
        return Fidelity(64, 100, rate, {**q, 99: (ttft_p99, 0.0)}, {**q, 99: (itl_p99, 0.0)},
                        client_bound_s=bound)

    head, names = workers_header([1, 2])
    assert head.split("|")[1].strip() == "1 worker" and head.split("|")[2].strip() == "2 workers"
    row = workers_row(6000, [f(5691, 0.331, 0.13), f(5736, -0.002, -0.015, 2.0)])
    assert [c.split() for c in row.split("|")] == [
        ["6,000"], ["5,691", "+0.331", "+0.130", "0", "s"], ["5,736", "-0.002", "-0.015", "2", "s"]]
    assert len(names) == len(row)  # the columns line up under their names
    assert trusted_line({1: 5691.0, 2: None}) == (
        "trusted to 1 ms: 1 worker 5,691 tok/s, 2 workers none")


def test_the_header_says_how_many_loopback_processes_served_each_rate():
    assert processes_note({1000: 1, 4000: 1}) == "1 loopback process"
    assert processes_note({12000: 3}) == "3 loopback processes"
    assert processes_note({1000: 1, 4000: 1, 6000: 2, 8000: 2, 12000: 3}) == (
        "loopback processes: 1 at 1,000-4,000, 2 at 6,000-8,000, 3 at 12,000 tok/s")
