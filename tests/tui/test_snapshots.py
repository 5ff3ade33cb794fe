"""Snapshots of the live and replay screens at 80x24 and 120x40 (pytest-textual-snapshot),
fed from the committed sample record, paused at 6 s, so every run draws the same screen.
After a deliberate change of the layout: pytest tests/tui/test_snapshots.py --snapshot-update
and look at the SVGs it writes (tests/tui/__snapshots__/) before committing them."""

import pytest

from tests.tui.dashboard_apps import replay_app


async def settle(pilot) -> None:
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_live_screen(snap_compare, size):
    assert snap_compare(replay_app(kind="live"), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_replay_screen(snap_compare, size):
    assert snap_compare(replay_app(), terminal_size=size, run_before=settle)
