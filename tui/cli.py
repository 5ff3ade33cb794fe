"""The ``soaktop`` command: argument parsing and the edge where errors become one line.

The command line decides nothing about a run: the `run` flags become a RunConfig
(:mod:`soaktop.tui.run_flags`), and :mod:`soaktop.engine.factory` makes the session from it
(defaults, credentials kept out of the record, the record's name), so a headless run, the
dashboard and a rerun start a run the same way.

Textual is imported only when a screen is opened, so headless runs start fast and work where
textual is not installed (a GPU box that only has the engine's dependencies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from soaktop.engine import __version__, backends
from soaktop.engine.config import RunConfig, parse_duration, parse_telemetry
from soaktop.engine.errors import ConfigError, RunStopped, SoaktopError
from soaktop.engine.events import EndReason, Phase, TelemetryStatus
from soaktop.engine.factory import build_session, make_backend, names_a_file, record_file
from soaktop.engine.load.plans import parse_ramp, parse_slo, plan_for, run_with_plan
from soaktop.engine.load.rerun import AsRecorded
from soaktop.engine.load.workers import resolve_workers, start_process_helper
from soaktop.engine.metrics.live import LiveStats
from soaktop.engine.metrics.summary import SessionSummary, summarise
from soaktop.engine.session import Session
from soaktop.tui import record_commands
from soaktop.tui.record_commands import print_summary
from soaktop.tui.run_flags import config_from_args
from soaktop.tui.telemetry_text import describe_status
from soaktop.tui.text import terminal_safe
from soaktop.tui.ticker import StatusTicker

DEFAULT_SESSIONS_DIR = Path("sessions")
THEME_NAMES = ("dark", "light", "high-contrast", "monochrome")  # themes/; no Textual import


def _number(kind: type, lowest: float, highest: float = float("inf"),
            above: bool = False):
    """An argparse type: an ``int`` or ``float`` of at least ``lowest`` (above it, with
    ``above``) and at most ``highest``, or a one-line error saying which bound it broke."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        too_low = value <= lowest if above else value < lowest
        if too_low or value > highest:
            bound = f"above {lowest:g}" if above else f"at least {lowest:g}"
            if highest != float("inf"):
                bound += f" and at most {highest:g}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text})")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)


def _workers(text: str) -> int | None:
    """``--workers``: a count, or ``auto`` (None: the engine's rule decides)."""
    if text == "auto":
        return None
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of processes, or auto (got {text!r})") from None
    return _positive_int(text)


def _file_path(text: str) -> str:
    """A file's absolute path, so a rerun from another folder finds it."""
    return str(Path(text).expanduser().absolute())


def _lengths(text: str) -> int | str:
    """--input-tokens / --output-tokens: N, MEAN:SD, MIN-MAX or LEN:WEIGHT,... (imported when
    given: the workloads module is not needed to start)."""
    from soaktop.engine.load.workloads import normalise_lengths

    return normalise_lengths(text)


def _think_time(text: str) -> float | str:
    from soaktop.engine.load.conversations import parse_think_time

    return parse_think_time(text).text()


def _argument(parse):
    """An argparse type from an engine parser: its SoaktopError is argparse's one line."""

    def wrapped(text: str):
        try:
            return parse(text)
        except SoaktopError as exc:
            # argparse names the flag itself: an engine message that names it too ("--think-
            # time: cannot read ...", as a config from a record needs) would say it twice
            raise argparse.ArgumentTypeError(re.sub(r"^--[a-z-]+: ", "", str(exc))) from None

    return wrapped


def _checked_slo(text: str) -> str:
    parse_slo(text)  # raises on a term it cannot read; the record keeps the text as given
    return text


_duration = _argument(parse_duration)
_telemetry = _argument(parse_telemetry)
_ramp = _argument(parse_ramp)
_slo = _argument(_checked_slo)


def _checked_stop_when(text: str) -> str:
    from soaktop.engine.load.stop_conditions import parse_stop_when

    parse_stop_when(text)  # one line naming a term it cannot read; the record keeps the text
    return text


_stop_when = _argument(_checked_stop_when)


_hz = _number(float, 0, 100, above=True)
_fps = _number(float, 0, 30, above=True)
_positive_float = _number(float, 0, above=True)


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
    p.add_argument("--backend", choices=backends.USER_KINDS, default=None,
                   help="local (default): the embedded PyTorch engine; openai: any "
                   "OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, LM Studio); ollama")
    p.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8000 (ollama default: "
                   "http://127.0.0.1:11434)")
    p.add_argument("--api-key", help="bearer token for --backend openai (default: the "
                   "OPENAI_API_KEY environment variable); never recorded or shown")
    p.add_argument("--connect-timeout", type=_duration, default=None, metavar="DURATION",
                   help="default 10s")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    _add_backend_arguments(p)
    p.add_argument("--model", default=None, help="local: a preset (tiny, gpt2-small, "
                   "llama-1b; default tiny); servers: a served model (default: the first one "
                   "the server lists)")
    p.add_argument("--api", default=None, help="openai: chat (default) or completions; "
                   "ollama: generate (default) or chat")
    p.add_argument("--first-token-timeout", type=_duration, default=None, metavar="DURATION",
                   help="default 2m")
    p.add_argument("--token-timeout", type=_duration, default=None, metavar="DURATION",
                   help="longest silence allowed between two tokens (default 1m)")
    p.add_argument("--device", default=None, help="local engine device: auto (default: CUDA "
                   "when present), cpu, cuda, cuda:N")
    p.add_argument("--concurrency", type=_positive_int, default=None,
                   help="requests kept in flight (closed loop; default 4; an SLO search "
                   "starts here, default 1)")
    plan = p.add_mutually_exclusive_group()
    plan.add_argument("--ramp", type=_ramp, default=None, metavar="LEVELS",
                      help="step through these concurrencies, --phase each (e.g. 1,2,4,8,16); "
                      "a table per step, with a plateau flag")
    plan.add_argument("--slo", type=_slo, default=None, metavar="SLO",
                      help="find the highest concurrency that meets it, e.g. "
                      "'ttft_p95<=2s,speed_p25>=30' (doubling, then bisecting; a phase a step)")
    p.add_argument("--phase", type=_duration, default=None, metavar="DURATION",
                   help="length of one ramp or SLO step (default 2m)")
    p.add_argument("--slo-max", type=_positive_int, default=1024, metavar="N",
                   help="the highest concurrency an SLO search tries (default 1024)")
    p.add_argument("--rate", type=_positive_float, default=None, metavar="R",
                   help="open loop: R requests a second (instead of a concurrency); latency "
                   "counts from each request's planned time")
    p.add_argument("--arrival", choices=("constant", "poisson"), default=None,
                   help="open loop: evenly spaced arrivals (default), or Poisson (seeded)")
    p.add_argument("--max-inflight", type=_positive_int, default=None, metavar="N",
                   help="open loop: at most N requests out; a due request waits for a slot, "
                   "and the wait counts in its latency (reported apart as queue_ms)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="openai, ollama: read the streams in N processes (1: in this one); "
                   "default auto: 1 below 64 streams (or 4,000 tokens/s asked), else one per "
                   "64 streams, at most the usable cores less one")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="openai, ollama: the workers as Ray actors on the nodes of the Ray "
                   "cluster at ADDRESS (auto: the one running here); --workers per cluster, "
                   "default one per node (needs soaktop[cluster])")
    p.add_argument("--duration", type=_duration, default=None,
                   help="run time, warm-up included (e.g. 20s, 30m); default: until Ctrl-C")
    p.add_argument("--requests", type=_positive_int, default=None,
                   help="stop after this many measured requests")
    p.add_argument("--warmup", type=_non_negative_int, default=None,
                   help="warm-up requests left out of the statistics (default: concurrency)")
    p.add_argument("--input-tokens", type=_argument(_lengths), default=None,
                   metavar="LENGTH", help="prompt length: N, MEAN:SD (normal), MIN-MAX "
                   "(uniform) or LEN:WEIGHT,... (buckets, e.g. 128:3,1024:1); default 128")
    p.add_argument("--output-tokens", type=_argument(_lengths), default=None,
                   metavar="LENGTH", help="output length, as --input-tokens; default 128")
    p.add_argument("--prompts", type=_file_path, default=None, metavar="FILE",
                   help="send this file's prompts (JSON Lines with prompt or messages and "
                   "optional output_tokens, ShareGPT JSON, or text: one a line) in a seeded "
                   "order, cycled")
    p.add_argument("--unique-prefix", action=argparse.BooleanOptionalAction, default=None,
                   help="start every prompt with words of its own, so no prefix cache serves "
                   "it (default); --no-unique-prefix sends prompts as they are")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="a local tokenizer.json (or a folder with one): synthetic prompts of "
                   "exact token length (needs soaktop[tokenizer]; never downloads)")
    p.add_argument("--trace", type=_file_path, default=None, metavar="FILE",
                   help="replay a timestamped trace open loop at its own times (JSON Lines: "
                   "timestamp ms, input_length, output_length; Mooncake's hash_ids read as "
                   "shared 512-token prefix blocks); the run ends with the trace")
    p.add_argument("--trace-speed", type=_positive_float, default=None, metavar="X",
                   help="replay the trace X times as fast (2: every gap halved; default 1)")
    p.add_argument("--turns", type=_positive_int, default=None, metavar="N",
                   help="conversations of N turns, each sent with the history so far (the "
                   "server's replies included); the concurrency counts conversations")
    p.add_argument("--think-time", type=_argument(_think_time), default=None,
                   metavar="SECONDS", help="pause before each later turn: S, MEAN:SD (normal) "
                   "or MIN-MAX (uniform); default 0")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the synthetic prompts and weights (default 0)")
    p.add_argument("--save-outputs", action=argparse.BooleanOptionalAction, default=None,
                   help="write each request's output text to a side file beside the record "
                   "(RECORD.outputs.jsonl.gz; read it with soaktop outputs RECORD)")
    p.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=None,
                   help="run on when every request fails the same way from the start "
                   "(by default such a run stops, says why in one line and exits 2)")
    p.add_argument("--stop-when", type=_stop_when, default=None, metavar="TERMS",
                   help="end the run when a term holds over the last --stop-window, e.g. "
                   "'error_rate>5%%,ttft_p95>30s' (the --slo metrics); the summary, then one "
                   "line naming the term and its value, exit 3")
    p.add_argument("--stop-window", type=_duration, default=None, metavar="DURATION",
                   help="the sliding window --stop-when and saturation are judged over "
                   "(default 30s)")
    p.add_argument("--on-saturation", choices=("stop", "warn"), default=None,
                   help="open loop: when the server stops keeping up with --rate (owed "
                   "requests rising, completions flat): warn (default: a mark and a line) "
                   "or stop (exit 3)")
    p.add_argument("--prometheus-port", type=_positive_int, default=None, metavar="PORT",
                   help="serve live metrics (TTFT/ITL/E2E histograms, tokens/s, in flight, "
                   "errors by class, GPU figures) for Prometheus on this port, all interfaces")
    p.add_argument("--shared-prefix", type=_non_negative_int, default=None, metavar="TOKENS",
                   help="words every prompt starts with (a system prompt); default 0: every "
                   "prompt unique from its first word, so no prefix cache serves it")
    p.add_argument("--telemetry", type=_telemetry, default=("nvml", "host"), metavar="SOURCES",
                   help="comma-separated: nvml (GPUs here), host (CPU, memory), prom=URL (a "
                   "DCGM exporter or a vLLM/SGLang /metrics, once per URL), or none "
                   "(default: nvml,host)")
    p.add_argument("--telemetry-hz", type=_hz, default=None, metavar="HZ",
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
    p.add_argument("--detach", action="store_true",
                   help="run in the background, immune to the terminal or SSH session going "
                   "away; prints the record path and how to attach or stop it")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true",
                   help="status lines instead of the dashboard (also when stdout is not a "
                   "terminal)")
    p.add_argument("--fps", type=_fps, default=4.0,
                   help="dashboard redraws per second (default 4; lower costs less over SSH)")
    p.add_argument("--theme", choices=THEME_NAMES, default=None,
                   help="dashboard theme (default dark; monochrome when NO_COLOR is set)")
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
    outputs = sub.add_parser("outputs", help="the output texts a run made with --save-outputs "
                             "saved, escaped for the terminal")
    outputs.add_argument("path", type=Path, help="the record")
    outputs.add_argument("--request", type=_non_negative_int, default=None, metavar="N",
                         help="only request N's output")
    outputs.add_argument("--json", action="store_true", help="one JSON object a line, as saved")
    compare = sub.add_parser("compare", help="two session records side by side, with whether "
                             "each difference is beyond noise")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.add_argument("--json", action="store_true", help="one JSON object on stdout")
    from soaktop.tui.report.command import add_arguments as add_report_arguments

    add_report_arguments(sub.add_parser(
        "report", help="a record (or several, overlaid) drawn as one self-contained HTML page, "
        "and with --png/--svg as images"))
    calibrate = sub.add_parser(
        "calibrate", help="how far to trust this machine as a client: soaktop's own TTFT/ITL "
        "error against a loopback server with a known schedule, at rising token rates")
    calibrate.add_argument("--concurrency", type=_positive_int, default=64)
    calibrate.add_argument("--rates", default="1000,2000,3000,4000,6000,8000",
                           help="total tokens/s to pace the server for (default "
                           "1000,2000,3000,4000,6000,8000)")
    calibrate.add_argument("--duration", type=_duration, default=10.0, metavar="DURATION",
                           help="per rate (default 10s)")
    calibrate.add_argument("--workers", default="1", metavar="N|LIST",
                           help="read the streams in 1..N worker processes (or a list, e.g. "
                           "1,2,4) and print each count's errors side by side (default 1)")
    stop = sub.add_parser("stop", help="end a detached run cleanly (its record is closed)")
    stop.add_argument("path", type=Path, help="the record the detached run writes")
    _add_ctl_arguments(sub.add_parser(
        "ctl", help="steer a running session through its control socket (one command)"))
    _add_backend_arguments(sub.add_parser("models", help="models a backend can serve"))
    return parser


def _add_ctl_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="the record the running session writes")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--concurrency", type=_positive_int, metavar="N",
                      help="closed loop: keep N requests in flight (a new phase)")
    what.add_argument("--rate", type=_positive_float, metavar="R",
                      help="open loop: R requests a second (a new phase)")
    what.add_argument("--pause", action="store_true",
                      help="send nothing new (a phase at concurrency 0)")
    what.add_argument("--resume", action="store_true", help="load again as before the pause")
    what.add_argument("--mark", metavar="TEXT", help="drop a mark with this text")
    what.add_argument("--model", metavar="NAME",
                      help="send new requests to this model (a new phase; in-flight ones finish)")
    what.add_argument("--models", action="store_true",
                      help="the models the run's backend serves, one a line")
    what.add_argument("--stop", action="store_true",
                      help="end the run; returns once its record is closed")
    what.add_argument("--status", action="store_true", help="what the run's load is now")


def _record_target(args: argparse.Namespace) -> Path | None:
    """``--record``'s file or folder, checked at once; None with ``--no-record``."""
    if args.no_record:
        if getattr(args, "save_outputs", False):
            raise ConfigError("--save-outputs writes beside the record: leave out --no-record")
        return None
    names_a_file(args.record)  # a wrong name is one line before anything starts
    return args.record


def _say(text: str) -> None:
    print(f"soaktop: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def collector_frozen() -> Iterator[None]:
    """The garbage collector with everything alive now frozen, until the context is left: a
    live run's ``Session(while_running=...)``, entered once the backend has started.

    Everything alive then (a model, torch, the whole import graph) moves out of the
    collector's sight for the run: otherwise a full collection mid-run walks it all and stalls
    the loop for ~100 ms (measured: chunks then wait in the socket and are read together
    under the last one's stamp). Only objects made during the run are scanned.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _run(config: RunConfig, *, record: Path | None, api_key: str | None = None,
               status_every: float = 5.0, as_json: bool = False, plan_limit: int = 1024,
               prometheus_port: int | None = None,
               changes: tuple[Phase, ...] = ()) -> SessionSummary:
    """The headless run: status lines every ``status_every`` seconds, then the summary.
    ``changes``: a rerun's recorded changes, made again at their times."""
    summary, live = SessionSummary(), LiveStats()

    def say_telemetry(status: TelemetryStatus) -> None:  # availability, as it changes
        _say(f"telemetry: {terminal_safe(describe_status(status))}")

    live.telemetry.on_status = say_telemetry
    exporter = _exporter(prometheus_port)
    session = await build_session(
        config, api_key=api_key, record=record, say=_say,
        listeners=(summary.add, live.add, *((exporter.add,) if exporter else ())),
        while_running=collector_frozen)
    if config.backend == "local":  # the model is built when the session starts; a mistake
        _say(f"loading local model {config.model} ...")  # in the config was said before
    loop = asyncio.get_running_loop()

    def interrupt(signum: int) -> None:
        session.stop(EndReason.INTERRUPTED)
        loop.remove_signal_handler(signum)  # a second Ctrl-C stops at once

    # SIGHUP: the terminal or SSH session went away; end as for Ctrl-C, the record closed
    # (a run that must outlive its terminal is started with --detach)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, interrupt, signum)

    said = []

    def say_recording_stopped() -> None:  # once, as soon as it is known; the run goes on
        if session.recorder and session.recorder.error and not said:
            print(f"soaktop: {session.recorder.error}", file=sys.stderr, flush=True)
            said.append(True)

    ticker = StatusTicker.for_session(session, live, sys.stderr if as_json else sys.stdout,
                                      status_every, after_each=say_recording_stopped)

    async def report() -> None:
        await session.started.wait()  # the model may take a while to load
        where = session.record_path if session.record_path else "not recorded"
        facts = session.backend.describe()
        target = facts.get("device") or facts.get("url") or config.backend
        _say(terminal_safe(f"running {session.model} on {target}; record: {where}"))
        await ticker.follow(session.now_ns)  # on the session clock, where a replay ticks too

    plan = plan_for(session.config, summary.phase, limit=plan_limit)
    if changes:
        plan = AsRecorded(changes, alongside=plan)
    reporting = asyncio.ensure_future(report())
    try:
        await run_with_plan(session, plan)
    finally:
        reporting.cancel()
        _forget_own_pid(session.record_path)
    if exporter is not None:
        exporter.close()
    say_recording_stopped()
    _say_outputs_lost(session)
    if session.failure:
        print_summary(summary.result(), as_json)  # what it saw, then the reason, and exit 2
        raise SoaktopError(session.failure)
    if session.stopped_by:  # a --stop-when term or over-saturation: the summary, then exit 3
        print_summary(summary.result(), as_json)
        raise RunStopped(session.stopped_by)
    return summary


def _say_outputs_lost(session: Session) -> None:
    """Where ``--save-outputs`` could not save every output, one line each why."""
    outputs = session.outputs
    if outputs is not None and outputs.error:
        _say(outputs.error)
    if outputs is not None and outputs.lost:
        _say(f"{outputs.lost} outputs not saved: the disk could not keep up with them")


def _forget_own_pid(record: Path | None) -> None:
    """A detached run that ends by itself (its duration, ``ctl --stop``) removes the
    ``RECORD.pid`` its launcher wrote, when that file names this process: no PID is left
    behind for a later process to reuse and ``soaktop stop`` to mistake for the run."""
    if record is None:
        return
    pid_file = Path(f"{record}.pid")
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file.read_text().strip()) == os.getpid():
            pid_file.unlink()


def _exporter(port: int | None):
    """The Prometheus exporter ``--prometheus-port`` asks for, serving; or None."""
    if port is None:
        return None
    from soaktop.engine.metrics.exporter import PrometheusExporter

    exporter = PrometheusExporter()
    exporter.serve(port)
    _say(f"Prometheus metrics on http://0.0.0.0:{port}/metrics")
    return exporter


def _use_dashboard(args: argparse.Namespace) -> bool:
    """The dashboard unless --headless, --json, or stdout is not a terminal (a pipe, a log)."""
    return not (args.headless or args.json) and sys.stdout.isatty()


def _dashboard(feed, args: argparse.Namespace, models=None):
    """Run ``feed`` on the dashboard until quit; Textual is imported only here."""
    from soaktop.tui.app import SoaktopApp

    app = SoaktopApp(feed, fps=args.fps, theme=args.theme, models=models)
    app.run()
    if app.error:
        raise SoaktopError(app.error)
    return feed


def _run_dashboard(args: argparse.Namespace) -> SessionSummary:
    from soaktop.tui.feeds import LiveFeed

    config = config_from_args(args)  # a mistake is one line here, before the screen opens
    record = _record_target(args)
    if resolve_workers(config)[0] > 1:  # started while stderr is still the terminal's
        start_process_helper()
    exporter = _exporter(args.prometheus_port)
    extra = (exporter.add,) if exporter is not None else ()

    async def start_session() -> Session:
        return await build_session(config, api_key=args.api_key, record=record,
                                   listeners=extra, while_running=collector_frozen)

    feed = LiveFeed(start_session, plan_limit=args.slo_max)

    async def models() -> list[str]:
        return await feed.session.backend.models()

    try:
        _dashboard(feed, args, models)
    finally:
        if exporter is not None:
            exporter.close()
    session = feed.session
    if session is not None and session.recorder is not None and session.recorder.error:
        _say(session.recorder.error)
    if session is not None:
        _say_outputs_lost(session)
    if session is not None and session.failure:
        print_summary(feed.summary.result(), False)
        raise SoaktopError(session.failure)
    if session is not None and session.record_path:
        _say(f"record: {session.record_path}")
    if session is not None and session.stopped_by:
        print_summary(feed.summary.result(), False)
        raise RunStopped(session.stopped_by)
    return feed.summary


def _replay_dashboard(args: argparse.Namespace) -> SessionSummary:
    from soaktop.tui.feeds import ReplayFeed

    events = record_commands.read_events(args.path)
    feed = ReplayFeed(events, speed=min(args.speed, 1000.0), path=args.path)
    if args.start is not None:
        feed.replay.seek(int(args.start * 1e9))
    _dashboard(feed, args)
    return summarise(events)  # the whole record's, wherever q was pressed


def _detach(args: argparse.Namespace, argv: list[str]) -> None:
    """Start the same run as a background process in a session of its own (no terminal, so
    no SIGHUP when the SSH session drops), its output in ``RECORD.log``, its PID in
    ``RECORD.pid`` for ``soaktop stop``; print where everything is and return at once."""
    if args.no_record:
        raise SoaktopError("a detached run needs a record (it is how you get back to it)")
    config = config_from_args(args)  # a mistake is one line here, not in the background log
    path = record_file(args.record, config.model or config.backend)
    if path.exists():
        raise SoaktopError(f"record {path} already exists; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    log = Path(f"{path}.log")
    child = [sys.executable, "-m", "soaktop.tui.cli", *[a for a in argv if a != "--detach"],
             "--headless", "--record", str(path)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(child, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    Path(f"{path}.pid").write_text(f"{proc.pid}\n")
    print(f"soaktop: running in the background as PID {proc.pid}\n"
          f"  record:  {path}\n  log:     {log}\n"
          f"  follow:  soaktop attach {path}\n  steer:   soaktop ctl {path} --concurrency N\n"
          f"  stop:    soaktop stop {path}")


def _stop(args: argparse.Namespace) -> None:
    """SIGTERM to the detached run writing ``args.path``, once sure it is that run; then wait
    until it has closed its record and print the record's summary."""
    import psutil

    pid_file = Path(f"{args.path}.pid")
    if not pid_file.exists():
        raise SoaktopError(f"no detached run is writing {args.path} (no {pid_file})")
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        command = " ".join(proc.cmdline())
    except (ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
        pid_file.unlink(missing_ok=True)
        raise SoaktopError(f"the run writing {args.path} is no longer running; "
                           f"see soaktop summary {args.path}") from None
    except psutil.AccessDenied:
        raise SoaktopError(f"not allowed to see process {pid}") from None
    if str(args.path) not in command and str(args.path.resolve()) not in command:
        raise SoaktopError(f"process {pid} is not the soaktop writing {args.path}")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except psutil.TimeoutExpired:
        raise SoaktopError(f"process {pid} did not stop within 60 s") from None
    pid_file.unlink(missing_ok=True)
    _say(f"stopped process {pid}; its record is closed: {args.path}")
    record_commands.summary(argparse.Namespace(path=args.path, json=False, csv=False))


def _ctl(args: argparse.Namespace) -> None:
    """One command to the session writing ``args.path``, over its control socket; its reply
    in one line. A refusal, or a run that cannot be reached, is a SoaktopError (exit 2)."""
    from soaktop.engine import control

    if args.concurrency is not None:
        request = {"cmd": "concurrency", "value": args.concurrency}
    elif args.rate is not None:
        request = {"cmd": "rate", "value": args.rate}
    elif args.mark is not None:
        request = {"cmd": "mark", "text": args.mark}
    elif args.model is not None:
        request = {"cmd": "model", "name": args.model}
    else:
        request = {"cmd": next(c for c in ("pause", "resume", "stop", "status", "models")
                               if getattr(args, c))}
    if not args.path.exists() and not control.socket_path(args.path).exists():
        raise SoaktopError(f"no such record: {args.path}")
    reply = asyncio.run(control.send(args.path, request))
    if not reply.ok:
        raise SoaktopError(reply.text)
    if args.models:  # one a line, for a script to read; the server's names, escaped
        for name in reply.models:
            print(terminal_safe(name))
        return
    print(terminal_safe(reply.text))


def _worker_counts(text: str) -> list[int]:
    """``--workers`` of calibrate: ``N`` is 1..N, ``1,2,4`` those counts (sorted, once each)."""
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SoaktopError(f"--workers: not a count or a list of counts: {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise SoaktopError("--workers needs counts of at least 1, e.g. 4 or 1,2,4")
    if len(numbers) == 1 and "," not in text:
        return list(range(1, numbers[0] + 1))
    return sorted(set(numbers))


def _calibrate(args: argparse.Namespace) -> None:
    """soaktop against a loopback server that records when each chunk left: its error at
    p50/p90/p99, rate by rate, then the highest rate it can be trusted to within 1 ms. With
    several worker counts, their p99 errors side by side and a trusted rate for each, so a
    client box can be sized before a soak."""
    from soaktop.engine.loopback import processes_for
    from soaktop.engine.metrics import fidelity
    from soaktop.tui.calibrate_text import (
        calibration_header,
        calibration_row,
        processes_note,
        trusted_line,
        workers_header,
        workers_row,
    )

    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        raise SoaktopError(f"--rates: not numbers: {args.rates!r}") from None
    if not rates or min(rates) <= 0:
        raise SoaktopError("--rates needs token rates above 0, e.g. 1000,3000")
    counts = _worker_counts(args.workers)
    side_by_side = counts != [1]
    print(f"soaktop calibrate: {args.concurrency} streams against "
          f"{processes_note({r: processes_for(r) for r in rates})}, "
          f"{args.duration:g} s per rate; error = soaktop - wire, in ms"
          + (" at p99; client-bound in s" if side_by_side else ""))
    print("\n".join(workers_header(counts)) if side_by_side else calibration_header(),
          flush=True)
    results: dict[int, list[fidelity.Fidelity]] = {n: [] for n in counts}
    for rate in rates:
        # two waves of warm-up are left out, then enough requests to compare: at least two
        # more request lifetimes (a request of 64 tokens lasts concurrency * 64 / rate s)
        lifetime_s = args.concurrency * 64 / rate
        duration = max(args.duration, 4.5 * lifetime_s)
        for n in counts:
            try:
                with collector_frozen():  # its session runs in this process, as a live run's
                    results[n].append(fidelity.measure(args.concurrency, rate,
                                                       duration_s=duration, workers=n))
            except RuntimeError as exc:  # nothing complete to compare: too short for the rate
                raise SoaktopError(f"at {rate:g} tokens/s: {exc}; give a longer --duration"
                                   ) from None
        print(workers_row(rate, [results[n][-1] for n in counts]) if side_by_side
              else calibration_row(results[1][-1]), flush=True)
    if side_by_side:
        print(trusted_line({n: fidelity.trusted_rate(results[n]) for n in counts}))
    else:
        best = fidelity.trusted_rate(results[1])
        print("p99 error under 1 ms at none of these rates: this client adds more than 1 ms"
              if best is None else
              f"highest rate with TTFT and ITL p99 error under 1 ms: {best:,.0f} tokens/s")
    flagged = [f for n in counts for f in results[n] if f.client_bound_s]
    if flagged:
        print("client-bound (its own check) at: " + ", ".join(
            f"{f.tokens_per_s:,.0f} tokens/s"
            + (f" with {f.workers} worker{'s' if f.workers > 1 else ''}" if side_by_side
               else "") + f" ({f.client_bound_s:.0f} s)" for f in flagged))


def _models(args: argparse.Namespace) -> None:
    for name in asyncio.run(make_backend(config_from_args(args), args.api_key).models()):
        print(terminal_safe(name))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]  # `soaktop` alone runs the embedded default
    args = parser.parse_args(argv)
    try:
        if args.command == "run" and args.detach:
            _detach(args, argv)
        elif args.command == "stop":
            _stop(args)
        elif args.command == "ctl":
            _ctl(args)
        elif args.command == "calibrate":
            _calibrate(args)
        elif args.command == "run" and _use_dashboard(args):
            print_summary(_run_dashboard(args).result(), False)
        elif args.command == "run":
            print_summary(asyncio.run(_run(
                config_from_args(args), record=_record_target(args), api_key=args.api_key,
                status_every=args.status_every, as_json=args.json, plan_limit=args.slo_max,
                prometheus_port=args.prometheus_port)).result(), args.json)
        elif args.command == "summary":
            record_commands.summary(args)
        elif args.command == "replay" and _use_dashboard(args):
            print_summary(_replay_dashboard(args).result(), False)
        elif args.command == "replay":
            print_summary(record_commands.replay(args), args.json)
        elif args.command == "attach" and _use_dashboard(args):
            from soaktop.tui.feeds import AttachFeed

            print_summary(_dashboard(AttachFeed(args.path), args).summary.result(), False)
        elif args.command == "attach":
            print_summary(asyncio.run(record_commands.attach(args)), args.json)
        elif args.command == "rerun":
            record_commands.rerun(args, _run)
        elif args.command == "compare":
            record_commands.compare_records(args)
        elif args.command == "report":
            from soaktop.tui.report.command import report

            report(args)
        elif args.command == "outputs":
            record_commands.outputs(args)
        elif args.command == "models":
            _models(args)
    except RunStopped as exc:  # the run was judged, not soaktop wrong: its own status
        print(f"soaktop: stopped: {terminal_safe(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except SoaktopError as exc:
        print(f"soaktop: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soaktop: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
