"""engine/ must stay usable without the UI: nothing in it, or in the command line's headless
path, imports textual or rich. And engine/ returns data, never text for a terminal: no
module of it imports soaktop.tui, escapes or writes ANSI sequences, prints, or asks the
terminal its size (the loopback server's own command line excepted).

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


#: The one program inside engine/ that talks to a terminal: the loopback server's command
#: line, whose stdout line is a protocol its parent reads (see soaktop.engine.loopback.process).
_PROGRAMS = {"loopback/process.py", "loopback/__main__.py"}
_UI_PACKAGES = ("textual", "rich", "tui", "soaktop.tui")
_TERMINAL_CALLS = {"print", "isatty", "get_terminal_size"}
_ESCAPES = ("\x1b", "\x9b")  # ESC and CSI: what every ANSI sequence starts with


def _terminal_offences(source: str, where: str, program: bool = False) -> list[str]:
    """What in ``source`` formats for a terminal: a UI import, ``terminal_safe``, an ANSI
    escape, or (outside a program's own command line) writing to the terminal or asking it
    its size."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [f"{where}: imports {n}" for n in names
                  if any(n == p or n.startswith(p + ".") for p in _UI_PACKAGES)]
        name = (node.id if isinstance(node, ast.Name) else node.attr
                if isinstance(node, ast.Attribute) else node.name
                if isinstance(node, (ast.FunctionDef, ast.alias)) else None)
        if name == "terminal_safe":
            found.append(f"{where}: terminal_safe")
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
            if any(e in text for e in _ESCAPES):
                found.append(f"{where}: an ANSI escape in {text[:20]!r}")
        if not program and (name in _TERMINAL_CALLS or (
                isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
                and isinstance(node.value, ast.Name) and node.value.id == "sys")):
            found.append(f"{where}: {name} (writes to, or asks, the terminal)")
    return found


def test_nothing_in_the_engine_formats_for_a_terminal():
    """engine/ returns data; soaktop.tui turns it into text for a screen (docs/design.md)."""
    offences = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        where = path.relative_to(ROOT / "engine").as_posix()
        offences += _terminal_offences(path.read_text(), where, program=where in _PROGRAMS)
    assert offences == []


def test_the_terminal_check_sees_each_kind_of_offence():
    cases = {
        "from soaktop.tui.text import summary_table": "imports soaktop.tui.text",
        "import soaktop.tui": "imports soaktop.tui",
        "def terminal_safe(text): return text": "terminal_safe",
        "x = clean.terminal_safe(y)": "terminal_safe",
        "RED = '\\x1b[31m'": "an ANSI escape",
        "RED = b'\\x9b31m'": "an ANSI escape",
        "print('hello')": "print",
        "import sys\nsys.stderr.write('x')": "stderr",
        "import shutil\nshutil.get_terminal_size()": "get_terminal_size",
    }
    for source, expected in cases.items():
        found = _terminal_offences(source, "m.py")
        assert len(found) == 1 and expected in found[0], (source, found)
    assert _terminal_offences("print('ready')", "p.py", program=True) == []
    assert _terminal_offences("text = 'tui is a word; stdout too'", "m.py") == []
