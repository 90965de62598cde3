"""The ReferDiffusion configs ship with the package: inside a wheel built from this checkout, and
reachable by name (``--config 3_rem_rcl`` / ``builtin:3_rem_rcl``) from an installed copy, while
``--config configs/referdiffusion/1_finetune.yaml`` keeps working from a checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

NAMES = ["1_finetune", "2_rem", "3_rem_rcl", "4_selfsup"]


def test_names_resolve_to_the_shipped_files(monkeypatch, tmp_path):
    from benchmark.referdiffusion import configs
    from benchmark.referdiffusion.train import load_config, main

    assert configs.names() == NAMES
    for n in NAMES:
        for form in (n, f"{n}.yaml", f"builtin:{n}", f"builtin:{n}.yaml"):
            assert configs.resolve(form) == configs.path(n)
            assert configs.path(n).parent == Path(configs.__file__).resolve().parent
    cfg = load_config("3_rem_rcl", ["--lr", "1e-4"])
    assert cfg.loss["rcl"] == 0.1 and cfg.model["use_rem"] is True and cfg.lr == 1e-4
    assert load_config("builtin:4_selfsup").stage == "stage1"
    assert load_config("1_finetune").model == {"use_rem": False}
    # from a checkout, the documented paths still work (links to the package's files)
    monkeypatch.chdir(REPO)
    for n in NAMES:
        f = Path("configs/referdiffusion") / f"{n}.yaml"
        assert load_config(str(f)) == load_config(n)
    # a file of the same name in the working folder wins over nothing: only paths that exist are files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("lr: 0.5\n")
    assert load_config("mine.yaml").lr == 0.5
    for bad in ("nope", "builtin:nope", "builtin:../setup", "sub/3_rem_rcl.yaml"):
        with pytest.raises(ValueError, match="shipped"):
            load_config(bad)
    assert main(["--config", "no_such_config"]) == 2


def _copy_project(dst: Path) -> Path:
    """The files a build reads (no build/ or egg-info written into the shared checkout)."""
    src = dst / "src"
    src.mkdir()
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    for pkg in ("refcoco_edit", "pipelines", "annotation", "benchmark"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def test_a_wheel_ships_the_configs_and_an_installed_copy_finds_them(tmp_path):
    src = _copy_project(tmp_path)
    wheels = tmp_path / "wheels"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = wheels.glob("refcoco_edit-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    for n in NAMES:
        assert f"benchmark/referdiffusion/configs/{n}.yaml" in names, sorted(x for x in names if "referdiffusion" in x)
    assert "benchmark/referdiffusion/configs/__init__.py" in names

    # an installed copy (no checkout in sight) resolves the names to its own files
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(whl)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import benchmark.referdiffusion.train as t, benchmark.referdiffusion.configs as c; "
            "cfg = t.load_config('builtin:3_rem_rcl'); "
            "print(c.path('3_rem_rcl')); print(cfg.output_dir); print(t.main(['--config', 'nope']))")
    run_env = dict(env, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=run_env)
    assert r.returncode == 0, r.stderr[-2000:]
    path, out_dir, rc = r.stdout.split()
    assert Path(path).is_relative_to(target) and out_dir == "runs/referdiffusion/3_rem_rcl" and rc == "2"
