"""engine/ must stay usable without the UI: nothing in it, or in the command line's headless
path, imports textual or rich.

One exception is outside our code and allowed by name: ``import httpx`` imports its own
command-line module, ``httpx._main``, which imports rich whenever click is installed (uvicorn
brings it). The test records which module triggered each UI import and fails on any other.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# every module of the engine (found, not listed, so a new one cannot be forgotten), and the
# command line's headless path; ``__main__`` modules would run their program when imported
MODULES = sorted(
    "soaktop.engine." + ".".join(p.relative_to(ROOT / "engine").with_suffix("").parts)
    for p in (ROOT / "engine").rglob("*.py") if p.stem != "__main__"
) + ["soaktop.tui.cli", "soaktop.tui.text"]
MODULES = [m.removesuffix(".__init__") for m in MODULES]
ALLOWED = {("rich", "httpx._main")}

PROBE = """
import sys

class Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in ('textual', 'rich') and top not in sys.modules:
            frame = sys._getframe(1)
            internal = ('importlib', '_frozen')
            while frame and frame.f_globals.get('__name__', '').startswith(internal):
                frame = frame.f_back
            print(top, frame.f_globals.get('__name__') if frame else '?')
        return None

sys.meta_path.insert(0, Watch())
"""


def test_engine_and_headless_cli_import_no_ui():
    code = PROBE + "".join(f"import {m}\n" for m in MODULES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imports = {tuple(line.split()) for line in out.stdout.splitlines()}
    assert imports <= ALLOWED, f"UI modules imported by: {sorted(imports - ALLOWED)}"


def test_the_probe_sees_a_ui_import():
    """The check above can fail: a module that imports rich is reported with its name."""
    code = PROBE + "import types, sys\nm = types.ModuleType('engine_fake')\n" \
        "exec('import rich.text', m.__dict__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["rich", "engine_fake"]


def test_no_engine_source_names_a_ui_package():
    """Complements the probe, which cannot see a second import of an already loaded module."""
    import ast

    root = ROOT
    offenders = []
    for path in [*(root / "engine").rglob("*.py"), root / "tui" / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("textual", "rich")]
    assert offenders == []
