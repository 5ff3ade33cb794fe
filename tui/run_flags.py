"""The `run` flags that set a :class:`~soaktop.engine.config.RunConfig`: one table, read both
ways.

:func:`config_from_args` makes the config a parsed `run` command line asks for, and
:func:`run_command` writes the `run` command line a config stands for (a rerun prints it).
Both read :data:`FLAGS`, so they cannot drift apart. Nothing here decides a default: a flag
left out leaves its field to the RunConfig, which resolves it.
"""

from __future__ import annotations

import argparse
import shlex

from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError

#: RunConfig field -> the `run` flag that sets it (``prompt_pool`` has none: always 256).
FLAGS: tuple[tuple[str, str], ...] = (
    ("backend", "--backend"), ("url", "--url"), ("model", "--model"), ("api", "--api"),
    ("device", "--device"), ("concurrency", "--concurrency"), ("rate", "--rate"),
    ("arrival", "--arrival"), ("max_inflight", "--max-inflight"), ("ramp", "--ramp"),
    ("slo", "--slo"), ("phase_s", "--phase"), ("duration_s", "--duration"),
    ("max_requests", "--requests"), ("warmup_requests", "--warmup"),
    ("input_tokens", "--input-tokens"), ("output_tokens", "--output-tokens"),
    ("seed", "--seed"), ("shared_prefix", "--shared-prefix"),
    ("connect_timeout_s", "--connect-timeout"),
    ("first_token_timeout_s", "--first-token-timeout"), ("token_timeout_s", "--token-timeout"),
    ("telemetry", "--telemetry"), ("telemetry_hz", "--telemetry-hz"),
    ("watch_pid", "--watch-pid"), ("ambient_c", "--ambient-c"), ("workers", "--workers"),
    ("ray", "--ray"), ("prompts", "--prompts"), ("unique_prefix", "--unique-prefix"),
    ("tokenizer", "--tokenizer"), ("keep_going", "--keep-going"),
    ("save_outputs", "--save-outputs"), ("trace", "--trace"),
    ("trace_speed", "--trace-speed"), ("turns", "--turns"), ("think_time", "--think-time"),
    ("stop_when", "--stop-when"), ("stop_window_s", "--stop-window"),
    ("on_saturation", "--on-saturation"),
)
_DURATIONS = ("phase_s", "duration_s", "connect_timeout_s", "first_token_timeout_s",
              "token_timeout_s", "stop_window_s")


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the parsed flags ask for; a flag not given (None) is left to its default.
    Commands with only some of the flags (``models``) get the rest as defaults."""
    given = {field: getattr(args, _dest(flag), None) for field, flag in FLAGS}
    if given["concurrency"] is not None and (given["rate"] is not None
                                             or given["trace"] is not None):
        # a config keeps a concurrency either way (the default), but an open loop never reads
        # it: asked for, it would be silently ignored
        raise ConfigError("--concurrency keeps N requests in flight; --rate and --trace plan "
                          "send times instead: leave --concurrency out (--max-inflight caps "
                          "how many are out)")
    return RunConfig(**{field: value for field, value in given.items() if value is not None})


def _text(field: str, value) -> str:
    if field == "telemetry":
        return ",".join(value) or "none"
    if field == "ramp":
        return ",".join(str(level) for level in value)
    if field in _DURATIONS:  # to the microsecond, never in exponent form
        return f"{value:f}".rstrip("0").rstrip(".") + "s"
    return str(value)


def run_command(config: RunConfig) -> list[str]:
    """The `run` arguments that ask for ``config``: every field it sets, defaults included,
    so the line means the same run whatever later versions make the defaults."""
    argv = ["run"]
    open_loop = config.rate is not None or config.trace is not None
    for field, flag in FLAGS:
        value = getattr(config, field)
        if field == "concurrency" and open_loop:  # not read by an open loop, and refused
            continue
        if isinstance(value, bool):  # --unique-prefix / --no-unique-prefix, --keep-going, ...
            argv.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif value is not None and (value != () or field == "telemetry"):
            argv += [flag, _text(field, value)]
    return argv


def shell_line(argv: list[str]) -> str:
    """``soaktop ARGS`` as a shell reads it (an SLO's ``<=`` quoted)."""
    return shlex.join(["soaktop", *argv])
