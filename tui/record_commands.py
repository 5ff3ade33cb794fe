"""The commands that read records: summary, replay, attach, compare and rerun.

Each reads a record with :class:`~soaktop.engine.records.format.RecordReader` and feeds the same
statistics a live run feeds (:class:`~soaktop.engine.metrics.summary.SessionSummary`,
:class:`~soaktop.engine.metrics.live.LiveStats`), so a replayed or followed run shows the numbers
and status lines the live one showed. Unusable lines are warnings on stderr, one line each; the rest
of the record is still used.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from soaktop.engine import backends
from soaktop.engine.errors import SoaktopError
from soaktop.engine.events import Phase, SessionEnd, SessionStart
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.summary import SessionSummary, summarise
from soaktop.engine.records.format import RecordReader
from soaktop.engine.records.replay import Replay, Timeline
from soaktop.tui.replay_keys import key_control
from soaktop.tui.text import status_line, summary_csv, summary_table, terminal_safe


def print_summary(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(summary_table(result))


def read_events(path: Path) -> list[Any]:
    """Every usable event of a record; each skipped line is one warning on stderr."""
    reader = RecordReader(path)
    events = list(reader.events())
    for warning in reader.warnings:
        print(f"soaktop: warning: {path}: {warning}", file=sys.stderr)
    return events


def summary(args: argparse.Namespace) -> None:
    result = summarise(read_events(args.path)).result()
    if args.csv:
        print(summary_csv(result), end="")
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


def replay(args: argparse.Namespace) -> dict[str, Any]:
    """Plays the record to the statistics and status lines a live run feeds: same code."""
    events = read_events(args.path)
    timeline = Timeline(events)
    summary, live = SessionSummary(), LiveStats()
    out = sys.stderr if args.json else sys.stdout

    def status(t_ns: int) -> None:
        concurrency = live.phase.concurrency if live.phase else 0
        print(status_line(live.snapshot(t_ns), timeline.in_flight(t_ns), concurrency,
                          live.client_bound_at(t_ns), live.phase.rate if live.phase else None),
              file=out, flush=True)

    def reset() -> None:  # a seek back: the record is fed again from the start
        nonlocal summary, live
        summary, live = SessionSummary(), LiveStats()
        replay.listeners = [summary.add, live.add]

    full_speed = args.speed == float("inf")
    print(f"soaktop: replaying {args.path}: {describe_header(events[0])}; "
          f"{timeline.end_ns / 1e9:.1f} s at {'full speed' if full_speed else f'x{args.speed:g}'}",
          file=sys.stderr, flush=True)
    replay = Replay(timeline, [summary.add, live.add], speed=1.0 if full_speed else args.speed,
                    on_reset=reset, ticks_ns=int(args.status_every * 1e9), on_tick=status)
    if args.start is not None:
        replay.seek(int(args.start * 1e9))
    if full_speed:
        replay.advance_to(timeline.end_ns)
    else:
        async def play() -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, replay.stop)
            with key_control(replay, loop):
                await replay.run()

        asyncio.run(play())
    return summary.result()


STALE_S = 10.0  # no new line for this long: say the writer may be gone


async def attach(args: argparse.Namespace) -> dict[str, Any]:
    """Follows a record being written: status lines until its session_end, then the summary."""
    reader = RecordReader(args.path)
    summary, live = SessionSummary(), LiveStats()
    out = sys.stderr if args.json else sys.stdout
    latest_ns = 0

    async def follow() -> None:
        nonlocal latest_ns
        async for event in reader.follow():
            summary.add(event)
            live.add(event)
            latest_ns = max(latest_ns, getattr(event, "t_ns", 0))
            if isinstance(event, SessionStart):
                print(f"soaktop: following {args.path}: {describe_header(event)} "
                      f"(Ctrl-C stops following, not the run)", file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(follow())
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    seen_ns, seen_at, stale_said = -1, loop.time(), False
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=args.status_every)
            if task.done():
                break
            snap = live.client_snapshot(latest_ns)
            in_flight = live.client.in_flight if live.client else 0
            concurrency = live.phase.concurrency if live.phase else 0
            print(status_line(snap, in_flight, concurrency, live.client_bound,
                              live.phase.rate if live.phase else None), file=out, flush=True)
            if latest_ns != seen_ns:
                seen_ns, seen_at, stale_said = latest_ns, loop.time(), False
            elif loop.time() - seen_at > STALE_S and not stale_said:
                print(f"soaktop: nothing new in {args.path} for {STALE_S:.0f} s: its writer "
                      f"may have died (a killed run leaves no session_end)",
                      file=sys.stderr, flush=True)
                stale_said = True
        await task  # a RecordError (no such file, not a record) surfaces here
    except asyncio.CancelledError:
        print("soaktop: stopped following; the run goes on", file=sys.stderr)
    for warning in reader.warnings:
        print(f"soaktop: warning: {args.path}: {warning}", file=sys.stderr)
    return summary.result()


_RERUN_FLAGS = (  # RunConfig field -> the `run` flag that sets it
    ("backend", "--backend"), ("url", "--url"), ("model", "--model"), ("api", "--api"),
    ("device", "--device"), ("concurrency", "--concurrency"), ("max_requests", "--requests"),
    ("warmup_requests", "--warmup"), ("input_tokens", "--input-tokens"),
    ("output_tokens", "--output-tokens"), ("seed", "--seed"),
    ("connect_timeout_s", "--connect-timeout"),
    ("first_token_timeout_s", "--first-token-timeout"),
    ("token_timeout_s", "--token-timeout"), ("telemetry_hz", "--telemetry-hz"),
    ("slo", "--slo"), ("phase_s", "--phase"), ("shared_prefix", "--shared-prefix"),
    ("rate", "--rate"), ("arrival", "--arrival"), ("max_inflight", "--max-inflight"),
)
PLAN_REASONS = ("start", "warm-up done", "ramp", "slo search")  # phases a rerun re-creates


def rerun_arguments(events: list[Any]) -> tuple[list[str], list[tuple[int, int, str]]]:
    """The ``run`` command line that repeats a recorded session, and its recorded changes.

    The workload is the record's: backend, URL, model, lengths, seed (so the same prompts),
    warm-up, timeouts, telemetry, and its length (the recorded duration, or how long it ran
    when it was stopped by hand). Concurrency and model changes made during the run come back
    as a schedule of (time, concurrency, model), applied at the same times, one phase each.
    Not carried: the API key (never recorded), a watched PID and the ambient temperature
    (facts of that day).
    """
    header = events[0] if events and isinstance(events[0], SessionStart) else None
    if header is None:
        raise SoaktopError("the record has no header to rerun from")
    config = header.config
    if config.get("backend") not in backends.USER_KINDS:
        raise SoaktopError(f"a session on backend {config.get('backend')!r} cannot be rerun "
                           "from the command line")
    argv = ["run"]
    for key, flag in _RERUN_FLAGS:
        if config.get(key) is not None:
            argv += [flag, str(config[key])]
    argv += ["--telemetry", ",".join(config.get("telemetry") or []) or "none"]
    if config.get("ramp"):
        argv += ["--ramp", ",".join(str(level) for level in config["ramp"])]
    duration = config.get("duration_s")
    ran_s = max(getattr(e, "t_ns", 0) for e in events) / 1e9
    stopped_by_hand = isinstance(events[-1], SessionEnd) and events[-1].reason == "interrupted"
    if stopped_by_hand or (duration is None and config.get("max_requests") is None):
        duration = ran_s  # as long as it actually ran
    if duration is not None:
        argv += ["--duration", f"{max(duration, 0.001):.3f}s"]
    schedule = [(e.t_ns, e.concurrency, e.model) for e in events
                if isinstance(e, Phase) and e.reason not in PLAN_REASONS]
    return argv, schedule


def rerun(args: argparse.Namespace, parser: argparse.ArgumentParser,
          run: Callable[[argparse.Namespace], Awaitable[SessionSummary]]) -> None:
    """Runs the recorded workload with ``run`` (the `run` command's own code) and compares."""
    from soaktop.engine.metrics.compare import compare, differences

    events = read_events(args.path)
    argv, schedule = rerun_arguments(events)
    argv += ["--no-record"] if args.no_record else ["--record", str(args.record)]
    argv += ["--status-every", str(args.status_every), *(["--json"] if args.json else [])]
    print(f"soaktop: rerunning {args.path} as: soaktop {' '.join(argv)}", file=sys.stderr,
          flush=True)
    if args.api_key:
        argv += ["--api-key", args.api_key]
    run_args = parser.parse_args(argv)
    run_args.schedule = schedule
    new = asyncio.run(run(run_args))
    original = summarise(events)
    rows, diffs = compare(original, new), differences(original, new)
    if args.json:
        print(json.dumps({"run": new.result(), "ran_differently": diffs,
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
    print_comparison(str(args.a), str(args.b), compare(a, b), differences(a, b), args.json)
