"""Pure drawing: numbers in, characters out. No Textual here, so each is tested on its own.

The time axis, the throttle strip and number formatting; the charts themselves are drawn by
:mod:`soaktop.tui.widgets.plot`, which (unlike Textual's Sparkline) leaves a gap where there
is no data instead of drawing it as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

GAP = " "

#: Clock-event reasons drawn on the throttle strip, the most severe first: one letter each.
STRIP_CODES = (
    ("hw_thermal", "T"), ("sw_thermal", "T"), ("hw_power_brake", "B"), ("hw_slowdown", "S"),
    ("sw_power_cap", "P"), ("sync_boost", "Y"), ("display_clocks", "D"),
)
STRIP_LEGEND = "T thermal  B power brake  S HW slowdown  P power cap  . none"


def axis(width: int, phases: Sequence[tuple[int, str]], marks: Sequence[int] = ()) -> str:
    """A time-axis row: ``┃`` and a label where a phase began, ``*`` at a mark. A label goes
    right of its tick, or left of it where the row ends first (the newest phase is on the
    right: its label must not be cut to nothing); a later phase's label covers an earlier's."""
    row = ["─"] * width
    for column in marks:
        if 0 <= column < width:
            row[column] = "*"
    for column, label in phases:
        if 0 <= column < width:
            row[column] = "┃"
            if column + 1 + len(label) <= width or column < len(label):
                start = column + 1
                label = label[: max(0, width - start)]
            else:
                start = column - len(label)
            for i, ch in enumerate(label):
                row[start + i] = ch
    return "".join(row)


def throttle_strip(reasons: Sequence[tuple[str, ...] | None]) -> str:
    """One character per second: the most severe active clock-event reason, ``.`` for none,
    a blank where there was no sample."""
    out = []
    for active in reasons:
        if active is None:
            out.append(GAP)
            continue
        code = next((c for name, c in STRIP_CODES if name in active), ".")
        out.append(code)
    return "".join(out)


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    """``n/a`` for a missing value: never a 0 that was not measured."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def clock(seconds: float | None) -> str:
    """``1:02:03`` / ``02:03``."""
    if seconds is None:
        return "--:--"
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
