"""The commands that read records: summary, replay, attach, compare, rerun and outputs.

Each reads a record with :class:`~soaktop.engine.records.format.RecordReader` and feeds the same
statistics a live run feeds (:class:`~soaktop.engine.metrics.summary.SessionSummary`,
:class:`~soaktop.engine.metrics.live.LiveStats`), so a replayed or followed run shows the numbers
and status lines the live one showed. Unusable lines are warnings on stderr, one line each; the rest
of the record is still used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from soaktop.engine.errors import RecordError
from soaktop.engine.events import SessionStart
from soaktop.engine.load.rerun import recorded_changes, rerun_config
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.results import RunSummary
from soaktop.engine.metrics.summary import SessionSummary, summarise
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.outputs import OutputReader
from soaktop.engine.records.replay import Replay, Timeline
from soaktop.tui.replay_keys import key_control
from soaktop.tui.run_flags import run_command, shell_line
from soaktop.tui.text import (
    difference_lines,
    summary_csv,
    summary_document,
    summary_table,
    terminal_safe,
)
from soaktop.tui.ticker import StatusTicker


def print_summary(result: RunSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary_document(result), indent=2))
    else:
        print(summary_table(result))


def read_events(path: Path, raw_requests: bool = False) -> list[Any]:
    """Every usable event of a record; each skipped line is one warning on stderr.
    ``raw_requests``: ``request_done`` lines as their dicts (see ``RecordReader.events``)."""
    reader = RecordReader(path)
    events = list(reader.events(raw_requests=raw_requests))
    for warning in reader.warnings:
        print(f"soaktop: warning: {path}: {warning}", file=sys.stderr)
    return events


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The garbage collector off while a record is read through.

    Reading makes millions of short-lived containers (a dict and a list a line) and no
    reference cycles; the collector's full passes over the whole import graph they trigger
    cost a 30-minute soak's ``summary`` 0.2 s for nothing (measured). Memory still goes back
    as each line is dropped (reference counting).

    Only on the main thread (a command's own read): the collector is the whole process's,
    and a dashboard writing its report from a worker thread must not switch it off under the
    live screen for as long as the read takes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def summary(args: argparse.Namespace) -> None:
    # streamed, not read into a list first: a long soak's events take ~2 KB each as objects
    # (a 30-minute one held 700 MB), the summary a few floats a request; request_done lines
    # are taken as they were read (raw_requests), never made into events
    reader = RecordReader(args.path)
    with collector_paused():
        result = summarise(reader.events(raw_requests=True)).result()
    for warning in reader.warnings:
        print(f"soaktop: warning: {args.path}: {warning}", file=sys.stderr)
    if args.csv:  # data for a file; escaped only where it would reach a terminal
        text = summary_csv(result)
        print(terminal_safe(text) if sys.stdout.isatty() else text, end="")
    else:
        print_summary(result, args.json)


def describe_header(header: Any) -> str:
    """``llama-1b on cuda:0 (local), recorded 2026-11-23T09:05:07+01:00``"""
    if not isinstance(header, SessionStart):
        return "no header"
    config, backend = header.config, header.backend
    target = backend.get("device") or backend.get("url") or config.get("backend")
    return terminal_safe(f"{config.get('model')} on {target} ({config.get('backend')}), "
                         f"recorded {header.wall_start}")


def replay(args: argparse.Namespace) -> RunSummary:
    """Plays the record to the statistics and status lines a live run feeds: same code.

    Its ``request_done`` lines stay the dicts they were read as (the summary and the live
    statistics take them so): a 30-minute soak's 200,000 events are never made.
    """
    with collector_paused():  # millions of containers, no cycles (see collector_paused)
        events = read_events(args.path, raw_requests=True)
        timeline = Timeline(events)
    summary, live = SessionSummary(), LiveStats()
    ticker = StatusTicker.for_replay(lambda: live, timeline.in_flight,
                                     sys.stderr if args.json else sys.stdout, args.status_every)

    def reset() -> None:  # a seek back: the record is fed again from the start
        nonlocal summary, live
        summary, live = SessionSummary(), LiveStats()
        replay.listeners = [summary.add, live.add]

    full_speed = args.speed == float("inf")
    print(f"soaktop: replaying {args.path}: {describe_header(events[0])}; "
          f"{timeline.end_ns / 1e9:.1f} s at {'full speed' if full_speed else f'x{args.speed:g}'}",
          file=sys.stderr, flush=True)
    replay = Replay(timeline, [summary.add, live.add], speed=1.0 if full_speed else args.speed,
                    on_reset=reset, ticks_ns=ticker.every_ns, on_tick=ticker.tick)
    if args.start is not None:
        replay.seek(int(args.start * 1e9))
    if full_speed:
        with collector_paused():
            replay.advance_to(timeline.end_ns)
    else:
        async def play() -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, replay.stop)
            with key_control(replay, loop):
                await replay.run()

        asyncio.run(play())
    result = summary.result()
    _left_for_exit(events, timeline, replay)
    return result


def _left_for_exit(*objects: Any) -> None:
    """Leave ``objects`` to the end of the process instead of freeing them one by one.

    A replay holds the whole record: a 30-minute soak's 265,000 events, 200,000 lists of
    offsets and the arrays of its 6.4 M tokens. Freeing them object by object costs 0.7 s
    (measured), for memory the process hands back as a whole a moment later when it exits.
    So they are parked in a cycle that the garbage collector is told to leave alone
    (``gc.freeze``): nothing frees them before the exit, and the exit does not walk them.
    Only for the command line's last act; a caller that goes on would keep the memory.
    """
    parked: list[Any] = [*objects]
    parked.append(parked)
    gc.freeze()


STALE_S = 10.0  # no new line for this long: say the writer may be gone


async def attach(args: argparse.Namespace) -> RunSummary:
    """Follows a record being written: status lines until its session_end, then the summary."""
    reader = RecordReader(args.path)
    summary, live = SessionSummary(), LiveStats()
    latest_ns = 0

    async def follow() -> None:
        nonlocal latest_ns
        # request_done lines stay the dicts they were read as (the summary and the live
        # statistics take them): catching up on a long record makes none of its 100,000s
        # of request events
        async for event in reader.follow(raw_requests=True):
            summary.add(event)
            live.add(event)
            t_ns = event["t_ns"] if type(event) is dict else getattr(event, "t_ns", 0)
            latest_ns = max(latest_ns, t_ns)
            if isinstance(event, SessionStart):
                print(f"soaktop: following {args.path}: {describe_header(event)} "
                      f"(Ctrl-C stops following, not the run)", file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    seen_ns, seen_at, stale_said = -1, loop.time(), False

    def say_if_stale() -> None:  # once per silence, after the status line that shows it
        nonlocal seen_ns, seen_at, stale_said
        if latest_ns != seen_ns:
            seen_ns, seen_at, stale_said = latest_ns, loop.time(), False
        elif loop.time() - seen_at > STALE_S and not stale_said:
            print(f"soaktop: nothing new in {args.path} for {STALE_S:.0f} s: its writer "
                  f"may have died (a killed run leaves no session_end)",
                  file=sys.stderr, flush=True)
            stale_said = True

    ticker = StatusTicker.for_writer(live, lambda: latest_ns,
                                     sys.stderr if args.json else sys.stdout,
                                     args.status_every, after_each=say_if_stale)
    task = asyncio.ensure_future(follow())
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    started = loop.time()
    ticking = asyncio.ensure_future(ticker.follow(lambda: int((loop.time() - started) * 1e9)))
    try:
        await task  # a RecordError (no such file, not a record) surfaces here
    except asyncio.CancelledError:
        print("soaktop: stopped following; the run goes on", file=sys.stderr)
    finally:
        ticking.cancel()
    for warning in reader.warnings:
        print(f"soaktop: warning: {args.path}: {warning}", file=sys.stderr)
    return summary.result()


def rerun(args: argparse.Namespace, run: Callable[..., Awaitable[SessionSummary]]) -> None:
    """Runs the recorded workload with ``run`` (the `run` command's own code) and compares.

    The config is the record's (:func:`~soaktop.engine.load.rerun.rerun_config`); from this
    command come only where the new record goes, the API key (no record holds one) and how
    the run is shown. The `run` command line it stands for is printed first.
    """
    from soaktop.engine.metrics.compare import compare, differences

    events = read_events(args.path)
    config, changes = rerun_config(events), recorded_changes(events)
    record = None if args.no_record else args.record
    argv = [*run_command(config), *(["--record", str(record)] if record else ["--no-record"]),
            "--status-every", f"{args.status_every:g}s", *(["--json"] if args.json else [])]
    also = f", then the changes made during it at their times ({len(changes)})" if changes else ""
    print(terminal_safe(f"soaktop: rerunning {args.path} as: {shell_line(argv)}{also}"),
          file=sys.stderr, flush=True)
    new = asyncio.run(run(config, record=record, api_key=args.api_key,
                          status_every=args.status_every, as_json=args.json, changes=changes))
    original = summarise(events)
    rows, diffs = compare(original, new), difference_lines(differences(original, new))
    if args.json:
        print(json.dumps({"run": summary_document(new.result()), "ran_differently": diffs,
                          "compare": [dataclasses.asdict(r) for r in rows]}, indent=2))
        return
    print(summary_table(new.result()))
    print()
    print_comparison(f"{args.path} (recorded)", "this rerun", rows, diffs, as_json=False)


def print_comparison(a_name: str, b_name: str, rows: list, diffs: list[str],
                      as_json: bool) -> None:
    if as_json:
        print(json.dumps({"a": a_name, "b": b_name, "ran_differently": diffs,
                          "metrics": [dataclasses.asdict(row) for row in rows]}, indent=2))
        return
    print(f"A: {a_name}\nB: {b_name}")
    print(f"{'metric':<26}{'A':>12}{'B':>12}{'B/A':>8}  difference")
    for r in rows:
        a_text = "n/a" if r.a is None else f"{r.a:,.3g}" if abs(r.a) < 1 else f"{r.a:,.1f}"
        b_text = "n/a" if r.b is None else f"{r.b:,.3g}" if abs(r.b) < 1 else f"{r.b:,.1f}"
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        detail = r.verdict + (f" (p={r.p_value:.2g})" if r.p_value is not None else "")
        print(f"{r.metric:<26}{a_text:>12}{b_text:>12}{ratio:>8}  {detail}")
    for line in diffs:
        print(f"ran differently: {line}")


def compare_records(args: argparse.Namespace) -> None:
    from soaktop.engine.metrics.compare import compare, differences

    a, b = summarise(read_events(args.a)), summarise(read_events(args.b))
    print_comparison(str(args.a), str(args.b), compare(a, b),
                     difference_lines(differences(a, b)), args.json)


def outputs(args: argparse.Namespace) -> None:
    """Prints the output texts a run made with ``--save-outputs`` saved beside its record
    (soaktop.engine.records.outputs), all of them or request ``--request N``'s.

    Model output is untrusted: every control character but newline and tab is written as a
    visible escape (``\\x1b``), never sent to the terminal to obey. ``--json`` prints each
    saved line as JSON instead (JSON escapes them too). A side file cut by a kill prints what
    it holds and says, on stderr, that it was cut.
    """
    header = next(RecordReader(args.path).events(), None)  # the header: it names the file
    name = (header.workload or {}).get("outputs_file") if header is not None else None
    if not name:
        raise RecordError(f"{args.path}: the run was not made with --save-outputs, so no "
                          f"outputs were saved")
    if not isinstance(name, str) or Path(name).name != name:  # only ever a file beside it
        raise RecordError(f"{args.path}: its header names no usable outputs file")
    path = args.path.with_name(name)
    if not path.is_file():
        raise RecordError(f"the outputs file {path} that {args.path} names is missing")
    reader = OutputReader(path)
    found = False
    try:
        for output in reader.outputs():
            if args.request is not None and output.request_id != args.request:
                continue
            found = True
            if args.json:
                print(json.dumps(dataclasses.asdict(output)))
                continue
            worker = f" (worker {output.worker_id})" if output.worker_id else ""
            print(f"--- request {output.request_id}{worker} ---")
            if output.reasoning:
                print(f"[reasoning] {terminal_safe(output.reasoning)}")
            print(terminal_safe(output.text))
    finally:
        for warning in reader.warnings:
            print(f"soaktop: warning: {terminal_safe(str(path))}: {warning}", file=sys.stderr)
    if args.request is not None and not found:
        raise RecordError(f"no output of request {args.request} in {path}")
    if not found and not reader.warnings:  # a run killed before its first write: not a
        # mistake, but never silence (a cut or garbled file's warnings already said why)
        print(f"soaktop: no outputs in {terminal_safe(str(path))}", file=sys.stderr)
