"""The ``soaktop`` command: argument parsing and the edge where errors become one line.

Textual is imported only when a screen is opened, so headless runs start fast and work where
textual is not installed (a GPU box that only has the engine's dependencies).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import __version__, backends
from engine.backends.http import Timeouts, strip_credentials
from engine.backends.ollama import DEFAULT_URL as OLLAMA_URL
from engine.config import RunConfig, parse_duration, parse_telemetry
from engine.errors import SoaktopError
from engine.events import Phase, SessionStart, TelemetryStatus
from engine.headless import status_line, summary_csv, summary_table
from engine.live import LiveSnapshot, LiveStats
from engine.record import RecordReader, default_path
from engine.replay import Replay, Timeline
from engine.session import Session
from engine.summary import SessionSummary
from engine.telemetry import build_sources
from engine.telemetry.live import describe_status

DEFAULT_SESSIONS_DIR = Path("sessions")


def _int_at_least(lowest: int):
    """An argparse type: a whole number no smaller than ``lowest``, or a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest} (got {value})")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except SoaktopError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _telemetry(text: str) -> tuple[str, ...]:
    try:
        return parse_telemetry(text)
    except SoaktopError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 100 (got {text})")
    return value


def _speed(text: str) -> float:
    if text == "max":
        return float("inf")
    try:
        value = float(text.removeprefix("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a speed: {text!r} (use e.g. 10 or max)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (got {text})")
    return value


def _add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=backends.USER_KINDS, default="local",
                   help="local: the embedded PyTorch engine; openai: any OpenAI-compatible "
                   "server (vLLM, SGLang, TGI, llama.cpp, LM Studio); ollama")
    p.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8000 (ollama default: "
                   "http://127.0.0.1:11434)")
    p.add_argument("--api-key", help="bearer token for --backend openai (default: the "
                   "OPENAI_API_KEY environment variable); never recorded or shown")
    p.add_argument("--connect-timeout", type=_duration, default=10.0, metavar="DURATION")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    _add_backend_arguments(p)
    p.add_argument("--model", default=None, help="local: a preset (tiny, gpt2-small, "
                   "llama-1b; default tiny); servers: a served model (default: the first one "
                   "the server lists)")
    p.add_argument("--api", default=None, help="openai: chat (default) or completions; "
                   "ollama: generate (default) or chat")
    p.add_argument("--first-token-timeout", type=_duration, default=120.0, metavar="DURATION")
    p.add_argument("--token-timeout", type=_duration, default=60.0, metavar="DURATION",
                   help="longest silence allowed between two tokens")
    p.add_argument("--device", default="auto", help="local engine device: auto, cpu, cuda, "
                   "cuda:N (auto: CUDA when present)")
    p.add_argument("--concurrency", type=_positive_int, default=4,
                   help="requests kept in flight (closed loop)")
    p.add_argument("--duration", type=_duration, default=None,
                   help="run time, warm-up included (e.g. 20s, 30m); default: until Ctrl-C")
    p.add_argument("--requests", type=_positive_int, default=None,
                   help="stop after this many measured requests")
    p.add_argument("--warmup", type=_non_negative_int, default=None,
                   help="warm-up requests left out of the statistics (default: concurrency)")
    p.add_argument("--input-tokens", type=_positive_int, default=128)
    p.add_argument("--output-tokens", type=_positive_int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts and weights")
    p.add_argument("--telemetry", type=_telemetry, default=("nvml", "host"), metavar="SOURCES",
                   help="comma-separated: nvml (GPUs here), host (CPU, memory), prom=URL (a "
                   "DCGM exporter or a vLLM/SGLang /metrics, once per URL), or none "
                   "(default: nvml,host)")
    p.add_argument("--telemetry-hz", type=_hz, default=4.0, metavar="HZ",
                   help="samples per second of nvml and host (default 4; prom at most 1)")
    p.add_argument("--ambient-c", type=float, default=None, metavar="CELSIUS",
                   help="the room or inlet temperature, kept in the record (thermal results "
                   "depend on it)")
    p.add_argument("--watch-pid", type=_positive_int, default=None, metavar="PID",
                   help="the server process to watch: its CPU, memory and GPU memory")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--record", type=Path, default=DEFAULT_SESSIONS_DIR,
                       help="record file (.jsonl.gz compressed, .jsonl plain), or folder for "
                       "one (default: ./sessions/)")
    group.add_argument("--no-record", action="store_true", help="keep no record")
    _add_output_arguments(p)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true",
                   help="status lines instead of the dashboard (the only mode for now)")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object on stdout")
    p.add_argument("--status-every", type=_duration, default=5.0,
                   help="seconds between status lines (default 5; in a replay, seconds of "
                   "the record)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage text is one --help away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="soaktop", description="top for LLM inference soak tests")
    parser.add_argument("--version", action="version", version=f"soaktop {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_run_arguments(sub.add_parser("run", help="drive load and watch it (the default)"))
    summary = sub.add_parser("summary", help="statistics of a session record")
    summary.add_argument("path", type=Path)
    form = summary.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object on stdout")
    form.add_argument("--csv", action="store_true", help="CSV on stdout: the run, then each "
                      "phase, one row each")
    replay = sub.add_parser("replay", help="a session record played again, with its timing")
    replay.add_argument("path", type=Path)
    replay.add_argument("--speed", type=_speed, default=1.0, help="times the original pace "
                        "(e.g. 10, 100), or max: as fast as it can be read (default 1)")
    replay.add_argument("--from", dest="start", type=_duration, default=None,
                        metavar="TIME", help="start this far into the record (e.g. 5m)")
    _add_output_arguments(replay)
    attach = sub.add_parser("attach", help="follow a record another soaktop is still writing "
                            "(the way back into a soak after an SSH drop)")
    attach.add_argument("path", type=Path)
    _add_output_arguments(attach)
    rerun = sub.add_parser("rerun", help="the same workload again, here: a new record, then "
                           "the two compared")
    rerun.add_argument("path", type=Path)
    rerun.add_argument("--api-key", help="bearer token, if the server needs one (default: "
                       "$OPENAI_API_KEY); records never keep it")
    group = rerun.add_mutually_exclusive_group()
    group.add_argument("--record", type=Path, default=DEFAULT_SESSIONS_DIR,
                       help="record file, or folder for one (default: ./sessions/)")
    group.add_argument("--no-record", action="store_true", help="keep no record")
    _add_output_arguments(rerun)
    compare = sub.add_parser("compare", help="two session records side by side, with whether "
                             "each difference is beyond noise")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_backend_arguments(sub.add_parser("models", help="models a backend can serve"))
    return parser


def _make_backend(args: argparse.Namespace) -> backends.Backend:
    """The backend the flags ask for. The API key goes to the backend and nowhere else."""
    if args.backend == "local":
        if args.url:
            raise SoaktopError("--url is for --backend openai or ollama, not local")
        model = getattr(args, "model", None) or "tiny"
        return backends.create("local", model=model, device=getattr(args, "device", "auto"),
                               seed=getattr(args, "seed", 0))
    url = args.url or (OLLAMA_URL if args.backend == "ollama" else None)
    if not url:
        raise SoaktopError(f"--backend {args.backend} needs --url (the server's base URL)")
    timeouts = Timeouts(
        connect_s=args.connect_timeout,
        first_token_s=getattr(args, "first_token_timeout", 120.0),
        between_tokens_s=getattr(args, "token_timeout", 60.0),
    )
    options = {"url": url, "model": getattr(args, "model", None), "timeouts": timeouts}
    if getattr(args, "api", None):
        options["api"] = args.api
    if args.backend == "openai":
        options["api_key"] = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    return backends.create(args.backend, **options)


def _record_path(args: argparse.Namespace) -> Path | None:
    if args.no_record:
        return None
    path: Path = args.record
    if path.name.endswith((".jsonl", ".jsonl.gz")) and not path.is_dir():
        return path
    return default_path(path, datetime.now(), socket.gethostname(), args.model)


async def _run(args: argparse.Namespace) -> SessionSummary:
    backend = _make_backend(args)
    if args.backend != "local" and not args.model:
        served = await backend.models()
        if not served:
            raise SoaktopError(f"{strip_credentials(args.url or '')} serves no model")
        args.model = backend.model = served[0]  # the header then describes this one
        print(f"soaktop: model {args.model} (the first the server lists)", file=sys.stderr)
    args.model = args.model or "tiny"
    config = RunConfig(
        backend=args.backend,
        model=args.model,
        device=args.device,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_requests=args.requests,
        warmup_requests=args.warmup,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        seed=args.seed,
        url=strip_credentials(backend.url) if args.backend != "local" else None,
        api=getattr(backend, "api", None),
        connect_timeout_s=args.connect_timeout,
        first_token_timeout_s=args.first_token_timeout,
        token_timeout_s=args.token_timeout,
        telemetry=tuple(
            f"prom={strip_credentials(e[5:])}" if e.startswith("prom=") else e
            for e in args.telemetry
        ),
        telemetry_hz=args.telemetry_hz,
        watch_pid=args.watch_pid,
        ambient_c=args.ambient_c,
    )
    summary, live = SessionSummary(), LiveStats()

    def say_telemetry(status: TelemetryStatus) -> None:  # availability, as it changes
        print(f"soaktop: telemetry: {describe_status(status)}", file=sys.stderr, flush=True)

    live.telemetry.on_status = say_telemetry
    sources = build_sources(args.telemetry, args.watch_pid, local_engine=args.backend == "local")
    session = Session(config, backend, _record_path(args), listeners=(summary.add, live.add),
                      sources=sources)
    out = sys.stderr if args.json else sys.stdout
    loop = asyncio.get_running_loop()

    def interrupt(signum: int) -> None:
        session.stop("interrupted")
        loop.remove_signal_handler(signum)  # a second Ctrl-C stops at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)

    async def report() -> None:
        await session.started.wait()  # the model may take a while to load
        where = session.record_path if session.record_path else "not recorded"
        facts = backend.describe()
        target = facts.get("device") or facts.get("url") or args.backend
        print(f"soaktop: running {args.model} on {target}; record: {where}",
              file=sys.stderr, flush=True)
        warned = False
        every_ns = int(args.status_every * 1e9)
        tick = every_ns
        while True:  # on the session clock's multiples, where a replay prints them too
            await asyncio.sleep(max(0.0, (tick - session.now_ns()) / 1e9))
            print(status_line(live.snapshot(tick), session.in_flight, session.concurrency),
                  file=out, flush=True)
            tick += every_ns
            if session.recorder and session.recorder.error and not warned:
                print(f"soaktop: {session.recorder.error}", file=sys.stderr, flush=True)
                warned = True

    async def follow_schedule() -> None:  # a rerun's recorded changes, at their times
        await session.started.wait()
        for t_ns, concurrency, model in getattr(args, "schedule", ()):
            await asyncio.sleep(max(0.0, (t_ns - session.now_ns()) / 1e9))
            session.switch_model(model, reason="rerun: as recorded")
            session.set_concurrency(concurrency, reason="rerun: as recorded")

    if args.backend == "local":
        print(f"soaktop: loading local model {args.model} ...", file=sys.stderr, flush=True)
    helpers = [asyncio.ensure_future(report()), asyncio.ensure_future(follow_schedule())]
    try:
        await session.run()
    finally:
        for helper in helpers:
            helper.cancel()
    if session.recorder and session.recorder.error:
        print(f"soaktop: {session.recorder.error}", file=sys.stderr)
    if session.failure:
        _print_summary(summary.result(), args.json)  # what it saw, then the reason, and exit 2
        raise SoaktopError(session.failure)
    return summary


def _print_summary(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(summary_table(result))


def _read_events(path: Path) -> list[Any]:
    """Every usable event of a record; each skipped line is one warning on stderr."""
    reader = RecordReader(path)
    events = list(reader.events())
    for warning in reader.warnings:
        print(f"soaktop: warning: {path}: {warning}", file=sys.stderr)
    return events


def _summarise(events: list[Any]) -> SessionSummary:
    summary = SessionSummary()
    for event in events:
        summary.add(event)
    return summary


def _summary(args: argparse.Namespace) -> None:
    result = _summarise(_read_events(args.path)).result()
    if args.csv:
        print(summary_csv(result), end="")
    else:
        _print_summary(result, args.json)


def _describe_header(header: Any) -> str:
    """``llama-1b on cuda:0 (local), recorded 2026-11-23T09:05:07+01:00``"""
    if not isinstance(header, SessionStart):
        return "no header"
    config, backend = header.config, header.backend
    target = backend.get("device") or backend.get("url") or config.get("backend")
    return (f"{config.get('model')} on {target} ({config.get('backend')}), "
            f"recorded {header.wall_start}")


def _replay(args: argparse.Namespace) -> dict[str, Any]:
    """Plays the record to the statistics and status lines a live run feeds: same code."""
    events = _read_events(args.path)
    timeline = Timeline(events)
    summary, live = SessionSummary(), LiveStats()
    out = sys.stderr if args.json else sys.stdout

    def status(t_ns: int) -> None:
        concurrency = live.phase.concurrency if live.phase else 0
        print(status_line(live.snapshot(t_ns), timeline.in_flight(t_ns), concurrency),
              file=out, flush=True)

    full_speed = args.speed == float("inf")
    print(f"soaktop: replaying {args.path}: {_describe_header(events[0])}; "
          f"{timeline.end_ns / 1e9:.1f} s at {'full speed' if full_speed else f'x{args.speed:g}'}",
          file=sys.stderr, flush=True)
    replay = Replay(timeline, [summary.add, live.add], speed=1.0 if full_speed else args.speed,
                    ticks_ns=int(args.status_every * 1e9), on_tick=status)
    if args.start is not None:
        replay.seek(int(args.start * 1e9))
    if full_speed:
        replay.advance_to(timeline.end_ns)
    else:
        async def play() -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, replay.stop)
            await replay.run()

        asyncio.run(play())
    return summary.result()


def _client_view(live: LiveStats, now_ns: int) -> tuple[LiveSnapshot, int]:
    """A run seen through its record: tokens/s and requests in flight come from its latest
    ClientSample, since a request's tokens reach a record only when the request ends."""
    snap = live.snapshot(now_ns)
    client = live.client
    if client is None:
        return snap, 0
    rate = client.tokens / (client.interval_ns / 1e9) if client.interval_ns > 0 else 0.0
    return dataclasses.replace(snap, tokens_per_s=rate), client.in_flight


STALE_S = 10.0  # no new line for this long: say the writer may be gone


async def _attach(args: argparse.Namespace) -> dict[str, Any]:
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
                print(f"soaktop: following {args.path}: {_describe_header(event)} "
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
            snap, in_flight = _client_view(live, latest_ns)
            concurrency = live.phase.concurrency if live.phase else 0
            print(status_line(snap, in_flight, concurrency), file=out, flush=True)
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
)


def rerun_arguments(events: list[Any]) -> tuple[list[str], list[tuple[int, int, str]]]:
    """The ``run`` command line that repeats a recorded session, and its recorded changes.

    The workload is the record's: backend, URL, model, lengths, seed (so the same prompts),
    warm-up, timeouts, telemetry, and its length (the recorded duration, or how long it ran
    when it was stopped by hand). Concurrency and model changes made during the run come back
    as a schedule of (time, concurrency, model), applied at the same times. Not carried: the
    API key (never recorded), a watched PID and the ambient temperature (facts of that day).
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
    duration = config.get("duration_s")
    if duration is None and config.get("max_requests") is None:
        duration = max(getattr(e, "t_ns", 0) for e in events) / 1e9  # until it was stopped
    if duration is not None:
        argv += ["--duration", f"{max(duration, 0.001):.3f}s"]
    schedule = [(e.t_ns, e.concurrency, e.model) for e in events
                if isinstance(e, Phase) and e.reason not in ("start", "warm-up done")]
    return argv, schedule


def _rerun(args: argparse.Namespace) -> None:
    from engine.compare import compare, differences

    events = _read_events(args.path)
    argv, schedule = rerun_arguments(events)
    argv += ["--no-record"] if args.no_record else ["--record", str(args.record)]
    argv += ["--status-every", str(args.status_every), *(["--json"] if args.json else [])]
    print(f"soaktop: rerunning {args.path} as: soaktop {' '.join(argv)}", file=sys.stderr,
          flush=True)
    if args.api_key:
        argv += ["--api-key", args.api_key]
    run_args = build_parser().parse_args(argv)
    run_args.schedule = schedule
    new = asyncio.run(_run(run_args))
    original = _summarise(events)
    rows, diffs = compare(original, new), differences(original, new)
    if args.json:
        print(json.dumps({"run": new.result(), "ran_differently": diffs,
                          "compare": [dataclasses.asdict(r) for r in rows]}, indent=2))
        return
    print(summary_table(new.result()))
    print()
    _print_comparison(f"{args.path} (recorded)", "this rerun", rows, diffs, as_json=False)


def _print_comparison(a_name: str, b_name: str, rows: list, diffs: list[str],
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


def _compare(args: argparse.Namespace) -> None:
    from engine.compare import compare, differences

    a, b = _summarise(_read_events(args.a)), _summarise(_read_events(args.b))
    _print_comparison(str(args.a), str(args.b), compare(a, b), differences(a, b), args.json)


def _models(args: argparse.Namespace) -> None:
    for name in asyncio.run(_make_backend(args).models()):
        print(name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]  # `soaktop` alone runs the embedded default
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            _print_summary(asyncio.run(_run(args)).result(), args.json)
        elif args.command == "summary":
            _summary(args)
        elif args.command == "replay":
            _print_summary(_replay(args), args.json)
        elif args.command == "attach":
            _print_summary(asyncio.run(_attach(args)), args.json)
        elif args.command == "rerun":
            _rerun(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "models":
            _models(args)
    except SoaktopError as exc:
        print(f"soaktop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soaktop: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
