"""engine/ must stay usable without the UI: importing it loads neither textual nor rich."""

import subprocess
import sys

MODULES = [
    "engine", "engine.events", "engine.stats", "engine.summary", "engine.live", "engine.record",
    "engine.session", "engine.load", "engine.headless", "engine.backends",
    "engine.backends.fake", "engine.backends.local", "engine.environment",
    "engine.backends.openai", "engine.backends.ollama", "engine.loopback", "engine.fidelity",
]


def test_engine_imports_no_textual_or_rich():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine pulled in UI modules: {out.stdout.strip()}"


def test_headless_cli_imports_no_textual():
    """A headless run must work on a GPU box that has only the engine's dependencies."""
    code = (
        "import sys\nimport tui.cli\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('textual','rich'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
