"""A rerun: a recorded session's workload again, with the changes made during it.

:func:`rerun_config` is the record header's config, as that session ran it (backend, URL,
model, lengths, seed and so the same prompts, warm-up, timeouts, telemetry, a ramp or an SLO),
lasting as long as it lasted when it was stopped by hand. Not carried: the watched PID and the
ambient temperature, facts of that day (and the API key, which no record holds).

:class:`AsRecorded` is a plan like those of :mod:`soaktop.engine.load.plans`, driven the same
way (``run_with_plan``): it makes each recorded change again at the same time on the session
clock, one phase each: a concurrency or rate, a model (the backend readies it first, as the
dashboard's model switch does), a pause or a resume. The phases a session or a plan makes by
itself (its start, the end of warm-up, ramp and SLO search steps) are not among the changes:
the rerun's own session and plan make them again, so a ramp's steps are not made twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from soaktop.engine import backends
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import EndReason, Phase, PhaseReason, SessionEnd, SessionStart

#: Why a session or its plan begins a phase by itself; any other reason was a change to repeat.
PLANNED = (PhaseReason.START, PhaseReason.WARMUP_DONE, PhaseReason.RAMP, PhaseReason.SLO_SEARCH)


def rerun_config(events: Sequence[Any]) -> RunConfig:
    """The config that runs the recorded session ``events`` again.

    Its length is the recorded duration, or how long the session ran when it was stopped by
    hand or had neither a duration nor a request count (to the millisecond).
    """
    header = events[0] if events and isinstance(events[0], SessionStart) else None
    if header is None:
        raise ConfigError("the record has no header to rerun from")
    config = header.config
    if config.get("backend") not in backends.USER_KINDS:
        raise ConfigError(f"a session on backend {config.get('backend')!r} cannot be rerun")
    duration = config.get("duration_s")
    last = events[-1]
    stopped_by_hand = isinstance(last, SessionEnd) and last.reason == EndReason.INTERRUPTED
    if stopped_by_hand or (duration is None and config.get("max_requests") is None):
        duration = max(getattr(e, "t_ns", 0) for e in events) / 1e9  # as long as it ran
    if duration is not None:
        duration = round(max(duration, 0.001), 3)
    _check_prompt_file(config.get("prompts"), header.workload or {})
    _check_prompt_file(config.get("trace"), header.workload or {}, "trace_file", "trace")
    return RunConfig.from_dict({**config, "duration_s": duration, "watch_pid": None,
                                "ambient_c": None})


def _check_prompt_file(path: str | None, workload: dict[str, Any], key: str = "prompt_file",
                       what: str = "prompt file") -> None:
    """A run from a prompt file (or a trace: ``key`` its workload entry) reruns from the
    same file: there, with the same sha256."""
    if not path:
        return
    from soaktop.engine.load.workloads import file_sha256

    recorded = (workload.get(key) or {}).get("sha256")
    found = file_sha256(path)
    if found is None:
        raise ConfigError(f"the run's {what} {path} is not there to rerun from")
    if recorded and found != recorded:
        raise ConfigError(f"the {what} {path} has changed since the run "
                          f"(sha256 {found[:12]}, recorded {recorded[:12]})")


def recorded_changes(events: Sequence[Any]) -> tuple[Phase, ...]:
    """The phases begun by a change during the run (a key, a command, a pause), in order."""
    return tuple(e for e in events if isinstance(e, Phase) and e.reason not in PLANNED)


class AsRecorded:
    """Makes ``changes`` again at their recorded times, beside the plan the config asks for
    (``alongside``: a ramp or an SLO search, or None). Ends when both are done; the session's
    own end conditions (the recorded duration) end the run."""

    reason = PhaseReason.RERUN

    def __init__(self, changes: Sequence[Phase], alongside: Any = None) -> None:
        self.changes, self.alongside = tuple(changes), alongside

    async def run(self, session) -> None:
        if self.alongside is None:
            await self._follow(session)
        else:
            await asyncio.gather(self._follow(session), self.alongside.run(session))

    async def _follow(self, session) -> None:
        await session.started.wait()
        for phase in self.changes:
            await asyncio.sleep(max(0.0, (phase.t_ns - session.now_ns()) / 1e9))
            await self.apply(session, phase)

    async def apply(self, session, phase: Phase) -> None:
        """Bring ``session`` to the shape ``phase`` recorded."""
        open_loop = session.config.rate is not None
        level = phase.rate if open_loop else phase.concurrency
        if not level:  # nothing new sent: a pause
            session.pause(self.reason)
            return
        if phase.model != session.model:
            await session.backend.prepare(phase.model)  # the local engine builds it first
        if open_loop:  # the session has no command for a model and a rate at once
            session.change(model=phase.model, reason=self.reason)
            session.set_rate(level, reason=self.reason)
        else:
            session.change(concurrency=level, model=phase.model, reason=self.reason)
        session.resume(self.reason)  # when paused: the level just set, in one phase
