"""What a newcomer meets around the code: the repository ignores what the README's commands write,
the test command cleans up after itself, and nothing skips from it but the gpu tests."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from conftest import REPO


def test_readme_outputs_are_ignored_by_git(tmp_path):
    lines = (REPO / ".gitignore").read_text().split()
    for folder in ("/refcoco-edit-work/", "/results/"):
        assert folder in lines
    if (REPO / ".git").exists():  # a checkout (not an sdist): git itself agrees
        r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "refcoco-edit-work/export/x.parquet",
                            "results/identity/results.json"], capture_output=True, text=True)
        assert r.returncode == 0 and len(r.stdout.split()) == 2, r.stdout + r.stderr


def test_tests_give_their_temp_space_back(request):
    assert request.config.getini("tmp_path_retention_policy") == "failed"
    assert int(request.config.getini("tmp_path_retention_count")) == 1
    cache = Path(os.environ["HF_DATASETS_CACHE"])  # the datasets cache of this session: a temp folder
    assert cache.is_relative_to(Path(tempfile.gettempdir())) and cache.exists()
    import datasets

    assert Path(datasets.config.HF_DATASETS_CACHE) == cache


def test_a_skip_outside_the_gpu_marker_fails(tmp_path):
    (tmp_path / "setup.cfg").write_text("[tool:pytest]\nmarkers =\n    gpu: needs CUDA\n")
    (tmp_path / "conftest.py").write_text("from support.no_skips import pytest_make_collect_report, "
                                          "pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_one.py").write_text(textwrap.dedent("""
        import pytest

        def test_missing_package():
            pytest.importorskip("no_such_package_refcoco_edit")

        @pytest.mark.gpu
        def test_needs_cuda():
            pytest.skip("no CUDA device")

        @pytest.mark.xfail(reason="known")
        def test_known_failure():
            assert False

        def test_passes():
            pass
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    env.pop("REFCOCO_EDIT_ALLOW_SKIPS", None)

    def pytest_run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)

    r = pytest_run()
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in r.stdout, r.stdout
    assert "skipped outside the `gpu` marker (could not import 'no_such_package_refcoco_edit'" in r.stdout
    # a whole module skipped at collection stops the run, naming the module
    (tmp_path / "test_module_skip.py").write_text("import pytest\npytest.importorskip('no_such_module_xyz')\n")
    r = pytest_run()
    assert r.returncode == 2 and "ERROR test_module_skip.py - skipped outside the `gpu` marker" in r.stdout, r.stdout
    env["REFCOCO_EDIT_ALLOW_SKIPS"] = "1"  # a partial install, on purpose
    r = pytest_run()
    assert r.returncode == 0 and "1 passed, 3 skipped, 1 xfailed" in r.stdout, r.stdout
