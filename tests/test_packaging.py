"""What `pip install .` ships, and that it lives in one namespace: ``soaktop``.

The repository keeps engine/, tui/ and themes/ at its top; the distribution exposes them only
as ``soaktop.engine``, ``soaktop.tui`` and ``soaktop.themes`` (setuptools' package-dir
mapping). PyPI has packages named ``tui`` and ``themes``: a soaktop that installed top-level
packages of those names would break them, or be broken by them.

The test suite runs from an editable install, which finds modules in the tree whatever the
package list says; a wheel holds only what the build config names (a package once went
missing that way). So these build the wheel from a copy of the tree and look inside it, then
install it into a bare virtual environment beside stub packages named ``tui`` and ``themes``.
"""

import base64
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui", "themes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"  # a copy: a build in the tree itself could pick up a stale build/
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(tree), "-w", str(tmp)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (built,) = tmp.glob("soaktop-*.whl")
    return built


def test_the_wheel_holds_every_module_under_soaktop(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"soaktop/{p.relative_to(ROOT).as_posix()}" for pkg in PACKAGES
                for p in (ROOT / pkg).rglob("*") if p.suffix in (".py", ".tcss")
                and "__pycache__" not in p.parts}
    assert len(expected) > 60
    assert expected - shipped == set()
    tops = {name.split("/")[0] for name in shipped if not name.startswith("soaktop-")}
    assert tops == {"soaktop"}, f"top-level names besides soaktop: {tops - {'soaktop'}}"


def _stub_wheel(directory: Path, name: str) -> Path:
    """A wheel holding one top-level package ``name`` that says it is the stub: built by hand
    (a wheel is a zip with three metadata files), so no build backend is fetched."""
    dist = f"stub_{name}"
    files = {
        f"{name}/__init__.py": f"STUB = {name!r}\n",
        f"{dist}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
        f"{dist}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                       "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_digest(text)},{len(text.encode())}"
              for path, text in files.items()]
    record.append(f"{dist}-1.0.dist-info/RECORD,,")
    files[f"{dist}-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = directory / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, text in files.items():
            z.writestr(name_in_zip, text)
    return path


def _digest(text: str) -> str:
    raw = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_installs_beside_packages_named_tui_and_themes(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    stubs = [_stub_wheel(tmp_path, "tui"), _stub_wheel(tmp_path, "themes")]
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", *map(str, stubs), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # soaktop's dependencies come from the test's own environment: a plain folder on the path
    # (no .pth files run from there, so the editable soaktop of the tree stays out)
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import tui, themes\n"
        "assert (tui.STUB, themes.STUB) == ('tui', 'themes'), 'a stub was overwritten'\n"
        "import soaktop.engine.session, soaktop.tui.cli, soaktop.themes\n"
        "assert soaktop.themes.STYLESHEET.is_file()\n"
        "assert 'site-packages' in soaktop.tui.cli.__file__, soaktop.tui.cli.__file__\n"
        "print('ok')\n"
    )
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    bare = subprocess.run([str(python), "-c", "import engine"], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": deps}, timeout=60)
    assert "No module named 'engine'" in bare.stderr


def test_the_editable_install_has_no_bare_engine(tmp_path):
    """The suite's own environment (an editable install) maps soaktop.engine to the tree's
    engine/, and outside the repository there is no ``engine`` to import."""
    code = ("import soaktop.engine\nprint(soaktop.engine.__file__)\n"
            "import importlib.util\nprint(importlib.util.find_spec('engine'))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    where, bare = run.stdout.split()
    assert Path(where) == ROOT / "engine" / "__init__.py"
    assert bare == "None"


def test_no_source_imports_a_bare_package():
    """The lint rule (ruff's banned-api, in pyproject.toml) over the whole tree: every import
    of our own code goes through ``soaktop.``."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_lint_rule_catches_a_bare_import(tmp_path):
    """The rule above can fail: a file that imports ``engine.events`` is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from engine.events import Phase\nimport tui\n\nprint(Phase, tui)\n")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251",
         "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert out.stdout.count("TID251") == 2, out.stdout
