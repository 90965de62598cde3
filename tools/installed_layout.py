"""Lay the checkout out as `pip install .` installs it, for tools that read packages from disk.

The repository keeps the design card's folders (pipelines/, annotation/, benchmark/) beside
refcoco_edit/, and setup.cfg installs them as refcoco_edit.pipelines etc. Import analysers
(import-linter, grimp) walk a package's folder on disk, so they need that installed shape:

    python tools/installed_layout.py DEST     # DEST/refcoco_edit/{..., pipelines/, annotation/, benchmark/}
    python tools/installed_layout.py --lint   # run import-linter (setup.cfg [importlinter]) on it
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict:
    """Installed package name -> repository folder, from setup.cfg [options] package_dir."""
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    pairs = (line.split("=") for line in cp["options"]["package_dir"].strip().splitlines())
    return {k.strip(): REPO / v.strip() for k, v in pairs}


def lay_out(dest: Path) -> Path:
    """Copy the packages' .py files into ``dest`` in their installed places; returns ``dest``."""
    for package, folder in sorted(package_dirs().items()):
        target = dest.joinpath(*package.split("."))
        shutil.copytree(folder, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.yaml"))
    return dest


def lint(layout: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run import-linter with the contracts of setup.cfg over an installed layout (a fresh one
    of this checkout when ``layout`` is None); the finished process, output captured."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(layout) if layout is not None else lay_out(Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(root))
        return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                               str(REPO / "setup.cfg"), "--no-cache"], cwd=root, env=env,
                              capture_output=True, text=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--lint"]:
        done = lint()
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(lay_out(Path(sys.argv[1])))
