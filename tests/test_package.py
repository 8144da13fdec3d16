"""Package conventions: `python -m seqmodel`, one source for the version, py.typed in the wheel."""

import importlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import seqmodel

PACKAGE = pathlib.Path(seqmodel.__file__).parent
ROOT = PACKAGE.parent


def run_module(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "seqmodel", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_python_dash_m_runs_the_command_line():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "train" in result.stdout


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    source = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = source.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) == seqmodel.__version__
    try:
        installed = importlib.metadata.version("seqmodel")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqmodel is not installed (pip install -e .), so it has no metadata to compare")
    assert seqmodel.__version__ == installed


def test_the_wheel_ships_py_typed_and_the_version(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this project (needs >= 77, "
                    "as pyproject.toml says; the dev extra installs it)")
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "seqmodel",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("seqmodel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "seqmodel/py.typed" in names and "seqmodel/__main__.py" in names
    assert wheel.name.startswith(f"seqmodel-{seqmodel.__version__}-")
