"""soaktop's themes: dark, light, high-contrast, and monochrome (chosen when NO_COLOR is set).

Widgets use colours only through theme variables (``$primary``, ``$warning``, ``$error``,
``$success``, ``$text-muted``...), so a theme is nothing but these definitions and no theme
needs code of its own. ``soaktop.tcss`` beside this file is the app's stylesheet.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("soaktop.tcss")

THEMES: dict[str, Theme] = {
    "dark": Theme(
        name="soaktop-dark", primary="#4EA1FF", secondary="#A68BFF", accent="#4EA1FF",
        warning="#F5A623", error="#FF5C5C", success="#3DDC84", foreground="#D8DEE9",
        background="#0F1115", surface="#161A21", panel="#1F2430", dark=True,
    ),
    "light": Theme(
        name="soaktop-light", primary="#0B5FD3", secondary="#6B45D9", accent="#0B5FD3",
        warning="#B35C00", error="#C62828", success="#1B7F3B", foreground="#1B1F24",
        background="#FAFAFA", surface="#F0F2F5", panel="#E3E7ED", dark=False,
    ),
    "high-contrast": Theme(
        name="soaktop-high-contrast", primary="#FFFF00", secondary="#00FFFF", accent="#FFFF00",
        warning="#FFA500", error="#FF3030", success="#00FF00", foreground="#FFFFFF",
        background="#000000", surface="#000000", panel="#202020", dark=True,
    ),
    "monochrome": Theme(
        name="soaktop-monochrome", primary="#FFFFFF", secondary="#FFFFFF", accent="#FFFFFF",
        warning="#FFFFFF", error="#FFFFFF", success="#FFFFFF", foreground="#FFFFFF",
        background="#000000", surface="#000000", panel="#000000", dark=True,
    ),
}
ORDER = tuple(THEMES)  # what `t` cycles through


def default_theme(environ: Mapping[str, str] = os.environ) -> str:
    """``monochrome`` where NO_COLOR is set (https://no-color.org), else ``dark``."""
    return "monochrome" if environ.get("NO_COLOR") else "dark"


def next_theme(current: str) -> str:
    return ORDER[(ORDER.index(current) + 1) % len(ORDER)] if current in ORDER else ORDER[0]
