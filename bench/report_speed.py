"""How long ``soaktop report`` takes on a 1-million-token record, and how big its page is (the
target: under 10 s on a 2-core machine; the page under 3 MB).

The record is bench/long_record.py's synthetic soak (the shape of a real one at concurrency 64:
32-token requests, 8 GPUs and the host sampled at 4 Hz), long enough for ``--tokens`` output
tokens; it is written once and kept (``--keep``). The command is run as a user runs it, in a
process of its own (start-up, reading, drawing and writing the page all counted), ``--repeat``
times; the median is printed, with the largest peak memory of a run and the page's size.

    python bench/report_speed.py [--tokens 1000000] [--keep /tmp/report_1m.jsonl.gz]
                                 [--repeat 3] [--images]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
TOKENS_PER_S = 3545.0  # long_record.py's default pace


def make_record(path: Path, tokens: int) -> None:
    minutes = tokens / TOKENS_PER_S / 60
    subprocess.run([sys.executable, str(HERE / "long_record.py"), "--minutes", f"{minutes:.3f}",
                    "--keep", str(path), "--skip-replay", "--skip-attach", "--repeat", "1"],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the record here and keep it (reused if it exists)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", action="store_true", help="also time --png and --svg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = args.keep or Path(tmp) / "record.jsonl.gz"
        if not record.exists():
            started = time.perf_counter()
            make_record(record, args.tokens)
            print(f"wrote {record} ({record.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - started:.0f} s")
        page = Path(tmp) / "report.html"
        command = [sys.executable, "-m", "soaktop.tui.cli", "report", str(record), "-o", str(page)]
        if args.images:
            command += ["--png", str(Path(tmp) / "png"), "--svg", str(Path(tmp) / "svg")]
        times, peaks_kib = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            # this child's own peak (RUSAGE_CHILDREN would also count long_record.py's)
            _, status, usage = os.wait4(child.pid, 0)
            times.append(time.perf_counter() - started)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"soaktop report failed: {' '.join(command)}")
            peaks_kib.append(usage.ru_maxrss)
        peak_mib = max(peaks_kib) / 1024
        size = page.stat().st_size
        median = statistics.median(times)
        print(f"soaktop report of {args.tokens:,} tokens"
              f"{' (with --png and --svg)' if args.images else ''}: {median:.2f} s median of "
              f"{args.repeat} ({', '.join(f'{t:.2f}' for t in times)}); peak RSS "
              f"{peak_mib:.0f} MiB; page {size / 1e6:.2f} MB")
        print(f"target under 10 s: {'met' if median < 10 else 'MISSED'}; "
              f"page under 3 MB: {'met' if size < 3e6 else 'MISSED'}")


if __name__ == "__main__":
    main()
