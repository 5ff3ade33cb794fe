"""``--workers``: the flag, its place in a rerun's line, and a dashboard over worker processes.

The engine's side (sharing, a lost worker, the record) is tests/engine/test_workers.py's; a
headless ``soaktop run --workers 2`` is run there too, end to end.
"""

import argparse

import pytest

from soaktop.engine.config import RunConfig
from soaktop.tui.cli import build_parser
from soaktop.tui.run_flags import config_from_args, run_command


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *args])


def test_workers_is_a_count_or_auto_and_a_rerun_line_keeps_the_count():
    assert config_from_args(parse("--workers", "3")).workers == 3
    assert config_from_args(parse("--workers", "auto")).workers is None
    assert config_from_args(parse()).workers is None  # auto unless asked
    config = RunConfig(backend="openai", url="http://10.0.0.7:8000", concurrency=256, workers=4)
    argv = run_command(config)
    assert argv[argv.index("--workers") + 1] == "4"
    assert config_from_args(build_parser().parse_args(argv)) == config


def test_a_wrong_worker_count_is_one_line(capsys):
    with pytest.raises(SystemExit):
        parse("--workers", "0")
    assert "--workers: must be at least 1 (got 0)" in capsys.readouterr().err


async def test_the_dashboard_steers_a_run_read_by_two_workers(tmp_path):
    """``soaktop run --workers 2`` on the dashboard: ``+`` raises the concurrency across both
    workers, the header counts every request in flight, and the record names both."""
    from soaktop.engine.events import RequestDone
    from soaktop.engine.factory import build_session
    from soaktop.engine.load.workers import start_process_helper
    from soaktop.engine.loopback import Schedule, spawn
    from soaktop.engine.records.format import RecordReader
    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import LiveFeed
    from soaktop.tui.widgets.header_bar import HeaderBar

    record = tmp_path / "w.jsonl"
    with spawn(Schedule(ttft_ms=10, itl_ms=10, tokens=20, model="m")) as url:
        config = RunConfig(backend="openai", url=url, model="m", concurrency=4,
                           output_tokens=20, workers=2, duration_s=60)

        async def start():
            return await build_session(config, record=record, steerable=False)

        start_process_helper()  # as the command line does before the screen is taken
        app = SoaktopApp(LiveFeed(start), fps=10, theme="dark")
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(400):
                session = app.feed.session
                if session is not None and session.started.is_set() and session.in_flight:
                    break
                await pilot.pause(0.02)
            await pilot.press("+")
            assert session.concurrency == 5
            await pilot.pause(1.0)
            assert session.in_flight == 5
            assert "concurrency 5, 5 in flight" in str(
                app.screen.query_one(HeaderBar).render())
            await pilot.press("q", "y")
            await pilot.pause(1.0)
    done = [e for e in RecordReader(record).events() if isinstance(e, RequestDone)]
    assert {d.worker_id for d in done} == {0, 1}
