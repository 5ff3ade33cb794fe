"""Snapshots of the live and replay screens at 80x24, 100x30, 120x40, 160x45 and 240x60
(pytest-textual-snapshot), fed from the committed sample record, paused at 6 s, so every run
draws the same screen; the sample is 8 s long, so they show 1 s a column (``Z``), and one
shows the whole-run view. The sample has no GPU (the live and replay screens show the panel
with 0 GPUs); the GPU screens mix in deterministic samples of 1 and 8 GPUs, live and replay
alike, at 80x24, 100x30, 160x45 and 240x60: the sizes where the panel changes layout (one
GPU's curves one row each, then taller; eight GPUs' table without, then with, its header and
the SM clock's charts; the charts above taking the rows the table leaves). After a
deliberate change of the layout: pytest tests/tui/test_snapshots.py --snapshot-update and look
at the SVGs it writes (tests/tui/__snapshots__/) before committing them."""

import pytest

from tests.tui.dashboard_apps import replay_app

SIZES = [(80, 24), (100, 30), (120, 40), (160, 45), (240, 60)]
IDS = [f"{w}x{h}" for w, h in SIZES]


async def settle(pilot) -> None:
    await pilot.pause(0.3)


async def one_second_a_column(pilot) -> None:
    await pilot.press("Z")
    await settle(pilot)


async def whole_run(pilot) -> None:
    await pilot.press("z", "z")
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_live_screen(snap_compare, size):
    assert snap_compare(replay_app(kind="live"), terminal_size=size,
                        run_before=one_second_a_column)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_replay_screen(snap_compare, size):
    assert snap_compare(replay_app(), terminal_size=size, run_before=one_second_a_column)


def test_replay_whole_run(snap_compare):
    assert snap_compare(replay_app(at_s=8.0), terminal_size=(100, 30), run_before=whole_run)


GPU_SIZES = [(80, 24), (100, 30), (160, 45), (240, 60)]
GPU_CASES = [(gpus, size) for gpus in (1, 8) for size in GPU_SIZES]
GPU_IDS = [f"{n}gpu-{w}x{h}" for n, (w, h) in GPU_CASES]


@pytest.mark.parametrize(("gpus", "size"), GPU_CASES, ids=GPU_IDS)
def test_live_screen_with_gpus(snap_compare, gpus, size):
    assert snap_compare(replay_app(kind="live", gpus=gpus), terminal_size=size,
                        run_before=one_second_a_column)


@pytest.mark.parametrize(("gpus", "size"), GPU_CASES, ids=GPU_IDS)
def test_replay_screen_with_gpus(snap_compare, gpus, size):
    assert snap_compare(replay_app(gpus=gpus), terminal_size=size,
                        run_before=one_second_a_column)
