"""How soon ``soaktop attach`` on a long record shows the whole run, and how soon its detail.

The record is bench/long_record.py's synthetic 30-minute soak (concurrency 64, about 199,000
requests, 8 GPUs and the host at 4 Hz, a client sample a second; about 30 MB), made once and
reused with ``--keep``. Each tree's dashboard runs in a process of its own, headless (Textual's
``App.run_test``, 160x50, 4 frames a second as ``attach`` runs), and is timed from the moment
the process was started (imports included: what a user waits for after pressing Enter):

- *whole run*: the screen is switched to the whole-run view as soon as it is up (the action
  ``z`` runs, twice; not a pilot's key press, which waits until the screen is idle) and the
  time is when the tokens/s chart as drawn (its braille rows, what reaches the terminal) has
  a dot in every column from the run's first second to its last client sample;
- *full detail*: when the TTFT chart as drawn covers the same columns;
- *summary*: when the run's end has been read (the summary panel replaces the panels below).

The drawn rows are polled every 20 ms from a task on the app's loop, so a figure is late by a
frame at most; a tree whose loop is blocked while it reads (the old one) is seen as soon as
the loop is free again. ``--baseline DIR`` times another copy of soaktop beside this one (a
folder holding a ``soaktop`` package, e.g. ``git archive HEAD engine tui themes`` unpacked
under ``DIR/soaktop``), alternating the two, on the same record in the same run.

    python bench/attach_view.py [--keep PATH] [--baseline DIR] [--repeat 3] [--minutes 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_record import write_record  # noqa: E402 - bench/ is not a package

# The child: one dashboard, timed. argv: record, the run's last client second, launch time.
CHILD = r'''
import asyncio, json, sys, time
from pathlib import Path
record, last_s, launched = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
from soaktop.tui.app import SoaktopApp
from soaktop.tui.feeds import AttachFeed
from soaktop.tui.screens.dashboard import ZOOMS
from soaktop.tui.widgets.series import ChartPanel

BLANKS = {" ", "\u2800"}

def covered(chart, window) -> bool:
    """Every column from second 1's to the last client second's has a dot drawn."""
    if window is None or not chart.rows:
        return False
    first, last = 1 // window.step_s, last_s // window.step_s
    texts = ["".join(text for text, _ in runs) for runs in chart.rows]
    if any(len(t) <= last for t in texts):
        return False
    return all(any(t[c] not in BLANKS for t in texts) for c in range(first, last + 1))

async def main():
    app = SoaktopApp(AttachFeed(record), fps=4, theme="dark")
    seen = {"app": time.time() - launched}
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        screen.action_zoom(1)  # what z does, twice: the whole run (a pilot's press would
        screen.action_zoom(1)  # wait for the screen to be idle, which a busy read delays)
        windows = {}
        original = ChartPanel.show
        def show(self, window, now):  # note the window each chart was last drawn with
            windows[self.id] = window
            original(self, window, now)
        ChartPanel.show = show
        tokens = screen.query_one("#chart-tokens", ChartPanel)
        ttft = screen.query_one("#chart-ttft", ChartPanel)
        deadline = time.time() + 300
        while time.time() < deadline and len(seen) < 4:
            now = time.time() - launched
            w = windows.get("chart-tokens")
            whole = w is not None and ZOOMS[screen.zoom] == 0 and w.start_s == 0
            if "whole" not in seen and whole and covered(tokens, w):
                seen["whole"] = now
            if "detail" not in seen and whole and covered(ttft, windows.get("chart-ttft")):
                seen["detail"] = now
            if "summary" not in seen and app.feed.ended:
                seen["summary"] = now
            await asyncio.sleep(0.02)
        await pilot.press("q")
    print(json.dumps(seen))

asyncio.run(main())
'''


def last_client_second(path: Path) -> int:
    from soaktop.engine.events import ClientSample
    from soaktop.engine.records.skim import without_requests

    return max(e.t_ns // 10**9 for e in without_requests(path) if isinstance(e, ClientSample))


def time_tree(path: Path, last_s: int, pythonpath: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    launched = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(last_s), repr(launched)],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"the dashboard failed ({out.returncode}): {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=None,
                        help="the record: made here if missing, reused if there")
    parser.add_argument("--baseline", default=None,
                        help="a folder holding another soaktop package: its figures beside")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tree (median)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--tokens-per-s", type=float, default=3545.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hz", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "soak.jsonl.gz"
        if not path.exists():
            shape = write_record(path, args)
            print(f"wrote {path}: {shape['requests']:,} requests, {shape['events']:,} events, "
                  f"{path.stat().st_size / 1e6:.1f} MB")
        last_s = last_client_second(path)
        trees = [("this tree", None)]
        if args.baseline:
            trees.insert(0, ("baseline", args.baseline))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
        for _ in range(args.repeat):  # alternate the trees: noise hits both alike
            for name, pythonpath in trees:
                runs[name].append(time_tree(path, last_s, pythonpath))
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, the run's last client "
              f"second {last_s}; seconds from the command's start (median of {args.repeat})")
        for label, key in (("app up", "app"), ("whole run drawn", "whole"),
                           ("full detail drawn", "detail"), ("summary (end read)", "summary")):
            cells = []
            for name, _ in trees:
                values = [r[key] for r in runs[name] if key in r]
                cells.append(f"{name} {np.median(values):6.2f} s" if values
                             else f"{name}   never")
            print(f"{label:>20}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
