"""A rerun from a record: the config the session ran with, and its recorded changes made again
at their times by a plan driven like the others."""

import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import Phase, PhaseReason, SessionEnd, SessionStart
from soaktop.engine.load.plans import Ramp, run_with_plan
from soaktop.engine.load.rerun import AsRecorded, recorded_changes, rerun_config
from soaktop.engine.session import Session

S = 10**9
CONFIG = {"backend": "openai", "url": "http://10.0.0.7:8000", "model": "llama",
          "api": "chat", "device": "auto", "concurrency": 8, "duration_s": None,
          "max_requests": None, "warmup_requests": 8, "input_tokens": 512,
          "output_tokens": 256, "seed": 7, "prompt_pool": 256, "connect_timeout_s": 10.0,
          "first_token_timeout_s": 120.0, "token_timeout_s": 60.0,
          "telemetry": ["nvml", "prom=http://10.0.0.7:9400/metrics"], "telemetry_hz": 4.0,
          "watch_pid": 4242, "ambient_c": 22.0}


def record(config=CONFIG, end="interrupted"):
    return [SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config, {}, {}),
            Phase(0, 0, 8, "llama", "openai", "start", True),
            Phase(2 * S, 1, 8, "llama", "openai", "warm-up done"),
            Phase(60 * S, 2, 16, "llama", "openai", "key"),
            Phase(90 * S, 3, 16, "llama-2", "openai", "command"),
            SessionEnd(120 * S, end)]


def test_the_rerun_config_is_the_recorded_one_less_the_facts_of_that_day():
    config = rerun_config(record())
    assert (config.backend, config.url, config.model, config.api) == (
        "openai", "http://10.0.0.7:8000", "llama", "chat")
    assert (config.concurrency, config.warmup, config.input_tokens, config.output_tokens,
            config.seed) == (8, 8, 512, 256, 7)
    assert config.telemetry == ("nvml", "prom=http://10.0.0.7:9400/metrics")
    assert config.duration_s == 120.0  # stopped by hand after 120 s: run as long
    assert config.watch_pid is None and config.ambient_c is None
    # asked for 30 minutes, stopped by hand after 2: the rerun runs 2 minutes too
    assert rerun_config(record({**CONFIG, "duration_s": 1800.0})).duration_s == 120.0
    # one that ended by itself ran as asked
    assert rerun_config(record({**CONFIG, "duration_s": 1800.0}, "completed")).duration_s \
        == 1800.0


def test_only_the_changes_made_during_the_run_are_made_again():
    changes = recorded_changes(record())
    assert [(p.t_ns, p.concurrency, p.model) for p in changes] == [
        (60 * S, 16, "llama"), (90 * S, 16, "llama-2")]


@pytest.mark.parametrize("events, message", [
    ([], "no header"),
    (record({**CONFIG, "backend": "fake"}), "backend 'fake' cannot be rerun"),
])
def test_a_record_that_cannot_be_rerun_says_why(events, message):
    from soaktop.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        rerun_config(events)


async def test_recorded_changes_are_made_at_their_times_beside_the_configs_plan():
    """A pause, a resume at a new level and a model switch, replayed while a ramp steps."""
    config = RunConfig(backend="fake", model="fake", warmup_requests=1, output_tokens=4,
                       ramp=(1, 2), phase_s=0.6, duration_s=5)

    def phase(t_s, concurrency, model="fake"):
        return Phase(int(t_s * S), 0, concurrency, model, "fake", "key")

    changes = [phase(0.2, 0), phase(0.4, 3), phase(0.5, 3, "other")]
    events = []
    session = Session(config, FakeBackend(ttft_s=0.005, itl_s=0.002),
                      listeners=(events.append,))
    await run_with_plan(session, AsRecorded(changes, alongside=Ramp(config.ramp, config.phase_s)))
    made = [p for p in events if isinstance(p, Phase) and p.reason == PhaseReason.RERUN]
    assert [(p.concurrency, p.model) for p in made] == [(0, "fake"), (3, "fake"), (3, "other")]
    for again, recorded in zip(made, changes):  # at its time (a loaded machine: a bit after)
        assert recorded.t_ns <= again.t_ns < recorded.t_ns + 0.1 * S
    assert any(isinstance(p, Phase) and p.reason == PhaseReason.RAMP for p in events)
    assert events[-1].reason == "completed" and events[-1].t_ns < 2 * S  # the ramp ended it
