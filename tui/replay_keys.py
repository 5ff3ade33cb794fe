"""Keys for a headless replay in a terminal: pause, seek, speed, without the dashboard.

Over SSH with no Textual screen, a replay is still steerable: the terminal is put in cbreak
mode (keys arrive one by one, unechoed; Ctrl-C still interrupts) for as long as the replay
plays, and restored however it ends. Nothing happens when stdin is not a terminal (a pipe,
a test, ``nohup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator

from soaktop.engine.records.replay import Replay

SEEK_NS = 10 * 10**9
HELP = ("keys: space pause/resume, left/right 10 s back/on, n/p next/previous phase or mark, "
        "+/- speed x10 / /10, q stop")

_ARROWS = {"\x1b[C": "right", "\x1b[D": "left"}


def _act(replay: Replay, key: str, say: Callable[[str], None]) -> bool:
    """Apply one key; False when it asks to stop."""
    at = replay.position_ns / 1e9
    if key == " ":
        replay.toggle_pause()
        say(f"paused at {at:.1f} s" if replay.paused else f"playing from {at:.1f} s")
    elif key in ("right", "l"):
        replay.seek(replay.position_ns + SEEK_NS)
        say(f"at {replay.position_ns / 1e9:.1f} s")
    elif key in ("left", "h"):
        replay.seek(replay.position_ns - SEEK_NS)
        say(f"at {replay.position_ns / 1e9:.1f} s")
    elif key == "n":
        stop = replay.next_stop()
        say("no later phase or mark" if stop is None else f"at {stop / 1e9:.1f} s")
    elif key == "p":
        say(f"at {replay.previous_stop() / 1e9:.1f} s")
    elif key in ("+", "="):
        replay.set_speed(min(replay.speed * 10, 10_000))
        say(f"speed x{replay.speed:g}")
    elif key == "-":
        replay.set_speed(max(replay.speed / 10, 0.01))
        say(f"speed x{replay.speed:g}")
    elif key == "q":
        replay.stop()
        return False
    return True


@contextlib.contextmanager
def key_control(replay: Replay, loop: asyncio.AbstractEventLoop) -> Iterator[bool]:
    """Steer ``replay`` from the keyboard while inside; yields whether keys are read."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def say(text: str) -> None:
        print(f"soaktop: {text}", file=sys.stderr, flush=True)

    def on_input() -> None:
        data = os.read(fd, 64).decode("utf-8", errors="replace")
        while data:
            key = next((seq for seq in _ARROWS if data.startswith(seq)), data[0])
            data = data[len(key):]
            if not _act(replay, _ARROWS.get(key, key), say):
                return

    tty.setcbreak(fd)
    loop.add_reader(fd, on_input)
    say(HELP)
    try:
        yield True
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
