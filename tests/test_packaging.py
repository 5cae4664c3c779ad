"""The wheel is what users install: the package data is inside it, nothing from tests/, and it runs
from outside the checkout. Offline: the wheel is built without build isolation and installed without
dependencies into a fresh venv, which sees this interpreter's packages through a `.pth` file."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llm1bit.figures.common import MODERN_PAIRS
from llm1bit.hardware import BUILTIN_HW, HW_DIR
from llm1bit.models import CONFIG_DIR

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "llm1bit"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        LLM1BIT_CACHE_DIR=str(tmp / "cache"),
        MPLCONFIGDIR=str(tmp / "mpl"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def _run(cmd: list, tmp: Path, cwd: Path | None = None) -> str:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(tmp), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"{cmd}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def wheel(tmp) -> Path:
    """The wheel, built from a copy of the sources (tests/ included, to show it stays out)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("llm1bit", "tests"):
        shutil.copytree(PROJECT / name, src / name, ignore=skip)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist, src], tmp)  # fmt: skip
    (whl,) = dist.glob("llm1bit-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh(tmp, wheel) -> Path:
    """A fresh venv (no pip) holding only the wheel; dependencies come from this interpreter's site-packages."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
          wheel], tmp)  # fmt: skip
    query = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(_run([python, "-c", query], tmp).strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # Plain path lines: the checkout's editable-install hook (an `import` line in a .pth there) stays off.
    (purelib / "_llm1bit_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return venv


@pytest.fixture(scope="module")
def outside(tmp) -> Path:
    """A working directory outside the checkout."""
    cwd = tmp / "work"
    cwd.mkdir()
    assert PROJECT not in cwd.resolve().parents
    return cwd


def test_wheel_holds_the_package_data_and_nothing_from_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(CONFIG_DIR.glob("*.json"))
    assert {p.stem for p in configs} >= {name for name, _ in MODERN_PAIRS}
    expected = {f"llm1bit/hw_configs/{hw}.cfg" for hw in BUILTIN_HW}
    expected |= {f"llm1bit/configs/{p.name}" for p in configs}
    expected |= {"llm1bit/configs/README.md", "llm1bit/py.typed"}
    # every data file in the package folder (energy tables, ...), not only those named here
    data = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    expected |= {f"llm1bit/{p.relative_to(PACKAGE).as_posix()}" for p in data if "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"llm1bit", wheel.name.split("-py3")[0] + ".dist-info"}, top


def test_top_level_hw_configs_is_the_package_folder():
    """One copy of each .cfg: the repository's hw_configs/ is a relative link to the package data."""
    link = PROJECT / "hw_configs"
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
    assert link.resolve() == HW_DIR.resolve() == (PACKAGE / "hw_configs").resolve()
    assert sorted(p.name for p in link.iterdir()) == sorted(f"{hw}.cfg" for hw in BUILTIN_HW)


def test_library_reads_nothing_from_tests():
    """No string of the library's code (docstrings aside) names the tests/ folder."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value.replace("\\", "/")
                if text.strip("/") == "tests" or "tests/" in text:
                    offenders.append(f"{path.relative_to(PROJECT)}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders


def test_installed_wheel_runs_outside_the_checkout(fresh, outside, tmp):
    python = fresh / "bin" / "python"
    where = Path(_run([python, "-c", "import llm1bit; print(llm1bit.__file__)"], tmp, outside).strip())
    assert fresh.resolve() in where.resolve().parents, where
    assert PROJECT not in where.resolve().parents

    out = _run([python, "-m", "llm1bit.cli", "simulate", "--model", "opt-6.7b", "--hw", "cloud",
                "--backend", "analytic", "--json", "--cache-dir", tmp / "cache"], tmp, outside)  # fmt: skip
    split = json.loads(out)
    assert split["model"] == "opt-6.7b" and split["hw"] == "cloud"
    assert 0.5 < split["fraction"]["cycles"] < 1

    figs = tmp / "figs"
    _run([python, "-m", "llm1bit.cli", "figures", "--only", "fig13", "--out", figs,
          "--cache-dir", tmp / "cache"], tmp, outside)  # fmt: skip
    for ext in ("png", "pdf", "csv"):
        assert (figs / f"fig13-modern-vs-paper.{ext}").stat().st_size > 0
    rows = csv.reader(io.StringIO((figs / "fig13-modern-vs-paper.csv").read_text()))
    assert {name for name, _ in MODERN_PAIRS} <= {cell for row in rows for cell in row}
    assert not list(outside.iterdir()), "nothing is written into the working directory"
