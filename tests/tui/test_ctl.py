"""Steering a run from outside it: `soaktop ctl` as a user runs it against a detached run
(real processes, a loopback server), and the attach dashboard's keys (a pilot, with a real
session on the fake backend in the same event loop). Local sockets only; each wait bounded."""

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

from soaktop.engine import control
from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import Mark, Phase, SessionEnd
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.records.format import RecordReader
from soaktop.engine.session import Session
from tests.tui.test_cli import soaktop


def events_of(record: Path, *kinds) -> list:
    return [e for e in RecordReader(record).events() if isinstance(e, kinds)]


def one_line_error(result, says: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("soaktop: error: ") and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_ctl_steers_a_detached_run_and_stops_it(tmp_path):
    record = tmp_path / "bg.jsonl.gz"
    with spawn(Schedule(ttft_ms=10, itl_ms=5, tokens=16, model="loopback")) as url:
        started = soaktop("run", "--detach", "--backend", "openai", "--url", url,
                          "--concurrency", "2", "--duration", "10m", "--record", str(record),
                          "--telemetry", "none")
        assert started.returncode == 0, started.stderr
        assert f"soaktop ctl {record}" in started.stdout
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not control.socket_path(record).exists():
            time.sleep(0.1)
        try:
            status = soaktop("ctl", str(record), "--status")
            assert status.returncode == 0, status.stderr
            assert status.stdout.startswith("running for ") and "concurrency 2" in status.stdout
            steps = [(["--concurrency", "6"], "concurrency 2 -> 6"),
                     (["--mark", "fans at 100%"], "'fans at 100%' marked at"),
                     (["--pause"], "paused at"), (["--resume"], "resumed at concurrency 6")]
            for flags, says in steps:
                done = soaktop("ctl", str(record), *flags)
                assert done.returncode == 0 and done.stdout.startswith(says), done
                assert len(done.stdout.splitlines()) == 1
            one_line_error(soaktop("ctl", str(record), "--rate", "5"), "keeps a concurrency")
            one_line_error(soaktop("ctl", str(record), "--resume"), "not paused")
            listed = soaktop("ctl", str(record), "--models")
            assert listed.returncode == 0 and listed.stdout == "loopback\n", listed
            one_line_error(soaktop("ctl", str(record), "--model", "gpt-9"),
                           "'gpt-9' is not among the 1 models")
            pid_file = Path(f"{record}.pid")
            assert pid_file.exists()
            stopped = soaktop("ctl", str(record), "--stop")
            # a run that ends by itself takes its PID file with it (none left for `stop`)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and pid_file.exists():
                time.sleep(0.05)
            assert not pid_file.exists()
        finally:  # whatever failed above, the background run does not outlive the test
            soaktop("stop", str(record))
    assert stopped.returncode == 0, stopped.stderr
    assert "the record is closed" in stopped.stdout
    events = list(RecordReader(record).events())
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "interrupted"
    phases = [(p.concurrency, str(p.reason)) for p in events if isinstance(p, Phase)]
    assert phases[-3:] == [(6, "command"), (0, "paused"), (6, "resumed")]
    assert [m.note for m in events if isinstance(m, Mark)] == ["fans at 100%"]
    assert not control.socket_path(record).exists()  # removed when the run ended
    one_line_error(soaktop("ctl", str(record), "--status"), "no control socket for")


def test_ctl_reports_a_stale_or_missing_socket_in_one_line(tmp_path):
    record = tmp_path / "dead.jsonl.gz"
    one_line_error(soaktop("ctl", str(record), "--pause"), "no such record")
    record.write_bytes(b"")
    one_line_error(soaktop("ctl", str(record), "--pause"), "no control socket for")
    stale = socket.socket(socket.AF_UNIX)  # what a run killed with -9 leaves behind
    stale.bind(os.fspath(control.socket_path(record)))
    stale.close()
    one_line_error(soaktop("ctl", str(record), "--stop"), "stale control socket")


def test_ctl_needs_one_command(tmp_path):
    for flags in ([], ["--pause", "--resume"], ["--concurrency", "0"]):
        result = soaktop("ctl", str(tmp_path / "r.jsonl"), *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the attach dashboard's keys ---------------------------------------------------------

class TwoModels(FakeBackend):
    async def models(self) -> list[str]:
        return ["fake", "fake-large", "fake-xl"]


@contextlib.asynccontextmanager
async def steerable_run(record: Path):
    """A session on the fake backend (serving three models) writing ``record``, with its
    control socket, in this event loop; stopped when the block ends if nothing stopped it."""
    config = RunConfig(backend="fake", model="fake", concurrency=2, duration_s=30.0,
                       output_tokens=8, warmup_requests=0, telemetry=())
    session = Session(config, TwoModels(ttft_s=0.005, itl_s=0.002), record_path=record)
    control.serve_while_running(session)
    run = asyncio.ensure_future(session.run())
    await asyncio.wait_for(session.started.wait(), 10)
    try:
        yield session
    finally:
        session.stop()
        await asyncio.wait_for(run, 10)


async def until(pilot, condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await pilot.pause(0.05)
    return condition()


def notes(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_the_attach_screen_steers_the_run_and_q_leaves_it_going(tmp_path):
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed

    record = tmp_path / "run.jsonl"
    async with steerable_run(record) as session:
        app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
        async with app.run_test(size=(100, 30)) as pilot:
            assert await until(pilot, lambda: app.feed.header is not None)
            await pilot.press("plus")
            assert await until(pilot, lambda: session.target_concurrency == 3)
            await pilot.press("space")
            await pilot.press("p")
            assert await until(pilot, lambda: session.paused)
            assert await until(pilot, lambda: "concurrency 2 -> 3" in notes(app))
            assert any(n.startswith("'mark 1' marked at") for n in notes(app))
            await pilot.press("q")  # the viewer leaves at once; the run does not
        assert app.return_value is app.feed
        await asyncio.sleep(0.1)
        assert not session.ended
    phases = [(p.concurrency, str(p.reason)) for p in events_of(record, Phase)]
    assert phases[:3] == [(2, "start"), (3, "key"), (0, "key: paused")]
    assert [m.note for m in events_of(record, Mark)] == ["mark 1"]


async def test_the_attach_screen_switches_the_runs_model_from_its_own_list(tmp_path):
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed
    from soaktop.tui.screens.modals import ModelPicker

    record = tmp_path / "run.jsonl"
    async with steerable_run(record) as session:
        app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
        async with app.run_test(size=(100, 30)) as pilot:
            assert await until(pilot, lambda: app.feed.header is not None)
            await pilot.press("m")
            assert await until(pilot, lambda: isinstance(app.screen, ModelPicker))
            assert app.screen.models == ["fake", "fake-large", "fake-xl"]
            await pilot.press("down", "down", "enter")  # the list opens on the first
            assert await until(pilot, lambda: session.model == "fake-xl")
            assert await until(pilot, lambda: "model fake -> fake-xl" in notes(app))
            await pilot.press("q")
        assert not session.ended
    assert [(p.model, str(p.reason)) for p in events_of(record, Phase)] == [
        ("fake", "start"), ("fake-xl", "key")]


async def test_the_attach_screen_stops_the_run_only_after_asking(tmp_path):
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed
    from soaktop.tui.screens.modals import ConfirmQuit

    record = tmp_path / "run.jsonl"
    async with steerable_run(record) as session:
        app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("s")
            assert await until(pilot, lambda: isinstance(app.screen, ConfirmQuit))
            await pilot.press("n")
            await pilot.pause(0.2)
            assert not session.ended
            await pilot.press("s")
            assert await until(pilot, lambda: isinstance(app.screen, ConfirmQuit))
            await pilot.press("y")
            assert await until(pilot, lambda: session.ended)
            assert await until(pilot, lambda: app.feed.summary.end is not None)
            await pilot.press("q")
    assert events_of(record, SessionEnd)[0].reason == "interrupted"


async def test_a_record_without_a_socket_says_it_cannot_be_steered(tmp_path):
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import AttachFeed
    from tests.tui.dashboard_apps import SAMPLE

    record = tmp_path / "old.jsonl"
    lines = SAMPLE.read_text().splitlines(keepends=True)
    record.write_text("".join(lines[: len(lines) // 2]))  # a run still going elsewhere
    app = SoaktopApp(AttachFeed(record), fps=10, theme="dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("plus")
        assert await until(pilot, lambda: notes(app))
        assert len(notes(app)) == 1
        assert notes(app)[0].startswith("this run cannot be steered from here: no control "
                                        "socket for")
        await pilot.press("q")
