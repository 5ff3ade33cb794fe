"""What `pip install .` ships: every module of engine/ and tui/.

The test suite runs from an editable install, which finds modules in the tree whatever the
package list says; a wheel holds only what the build config names. A package once went
missing that way (engine.telemetry), so this builds the wheel from a copy of the tree and
compares.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("engine", "tui"):
        shutil.copytree(ROOT / package, tree / package, ignore=ignore)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(tree), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("soaktop-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {p.relative_to(tree).as_posix() for pkg in ("engine", "tui")
                for p in (tree / pkg).rglob("*.py")}
    assert expected - shipped == set()
