"""What `pip install .` puts on a machine: one import name (`refcoco_edit`), every package of the
checkout under it, the shipped ReferDiffusion configs, and a working `refcoco-edit build` from an
installed copy with no checkout in sight."""
from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from installed_layout import package_dirs  # noqa: E402  (setup.cfg's package_dir, read in one place)

# repository folder -> installed package (setup.cfg [options] package_dir)
FOLDERS = {"refcoco_edit": "refcoco_edit", "pipelines": "refcoco_edit.pipelines",
           "annotation": "refcoco_edit.annotation", "benchmark": "refcoco_edit.benchmark"}
CONFIG_NAMES = ["1_finetune", "2_rem", "3_rem_rcl", "4_selfsup"]


def _setup_cfg() -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    return cp


def test_setup_cfg_lists_every_package_of_the_checkout():
    cp = _setup_cfg()
    listed = set(cp["options"]["packages"].split())
    assert {folder.name: pkg for pkg, folder in package_dirs().items()} == FOLDERS
    found = set()
    for folder, pkg in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((pkg, *rel)))
    assert found == listed, f"missing from setup.cfg: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def _python_files():
    for folder in (*FOLDERS, "tests", "perf", "tools"):
        yield from (REPO / folder).rglob("*.py")


def test_no_code_imports_the_repository_folders_by_their_bare_names():
    bad = []
    for f in _python_files():
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{f.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0] in ("pipelines", "annotation", "benchmark")]
    assert not bad, "import them as refcoco_edit.<name>: " + "; ".join(bad)


def _copy_project(dst: Path) -> Path:
    """The files a build reads (no build/ or egg-info written into the shared checkout)."""
    src = dst / "src"
    src.mkdir()
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel file, folder it was installed into with `pip install --target`)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_project(tmp)
    wheels = tmp / "wheels"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = wheels.glob("refcoco_edit-*.whl")
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(whl)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return whl, target


def _run_installed(target: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Python with the installed copy first on the path, from a folder with no checkout."""
    env = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_wheel_has_one_top_level_name_and_ships_the_configs(installed):
    whl, _ = installed
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"refcoco_edit"}
    for n in CONFIG_NAMES:
        assert f"refcoco_edit/benchmark/referdiffusion/configs/{n}.yaml" in names
    for module in ("pipelines/classical.py", "annotation/push.py", "benchmark/harness.py", "benchmark/metrics/base.py"):
        assert f"refcoco_edit/{module}" in names


def test_an_installed_copy_has_no_bare_names_and_builds(installed, tmp_path):
    _, target = installed
    for bare in ("pipelines", "benchmark", "annotation"):
        r = _run_installed(target, tmp_path, "-c", f"import {bare}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (bare, r.stdout, r.stderr[-500:])
    r = _run_installed(target, tmp_path, "-c", "import refcoco_edit.pipelines.base as b, refcoco_edit.benchmark.harness as h; "
                                                "print(b.__file__); print(h.__file__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(Path(p).is_relative_to(target) for p in r.stdout.split())
    r = _run_installed(target, tmp_path, "-m", "refcoco_edit", "build", "--out", "w", "--num-images", "3", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "w" / "export").glob("*.parquet"))


def test_an_installed_copy_finds_the_shipped_configs(installed, tmp_path):
    _, target = installed
    code = ("import refcoco_edit.benchmark.referdiffusion.train as t, refcoco_edit.benchmark.referdiffusion.configs as c; "
            "cfg = t.load_config('builtin:3_rem_rcl'); "
            "print(c.path('3_rem_rcl')); print(cfg.output_dir); print(t.main(['--config', 'nope']))")
    r = _run_installed(target, tmp_path, "-c", code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    path, out_dir, rc = r.stdout.split()
    assert Path(path).is_relative_to(target) and out_dir == "runs/referdiffusion/3_rem_rcl" and rc == "2"
