"""Shared fixtures: the synthetic demo data, written once per test session."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# `datasets` caches every Parquet folder a test loads (~200 MB a run) under ~/.cache: keep the
# tests' cache in a temp folder of their own, removed when the session ends
_HF_CACHE = tempfile.mkdtemp(prefix="refcoco-edit-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = _HF_CACHE
atexit.register(shutil.rmtree, _HF_CACHE, True)
# Some test modules share helpers with a module of another folder (``from test_referdiffusion import
# save_tiny_ip2p``): put every test folder on the path, so one file also runs alone.
for _sub in ("core", "pipelines", "annotation", "benchmark", "system"):
    if str(REPO / "tests" / _sub) not in sys.path:
        sys.path.append(str(REPO / "tests" / _sub))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The bundled demo data in the refer layout (root holds refcoco/, refcoco+/, refcocog/, images/)."""
    from refcoco_edit.demo import write_demo

    root = tmp_path_factory.mktemp("demo")
    write_demo(root)
    return root


def nan_eq(a: object, b: object) -> bool:
    """Deep equality where NaN equals NaN (metric values of samples a metric does not apply to)."""
    import math

    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_eq(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(nan_eq(x, y) for x, y in zip(a, b))
    return a == b


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m refcoco_edit ...` in a real subprocess."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "refcoco_edit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)


from support.no_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401 - only gpu tests may skip
from support.ray_instance import ray_local  # noqa: E402,F401 - one local Ray (loopback only) shared by the Ray test modules
from support.labelstudio import label_studio  # noqa: E402,F401 - one Label Studio server for the session (modules that import it themselves get their own)


# -- markers of the heavy groups (setup.cfg [tool:pytest] markers), so one area runs alone:
#    pytest tests/core                      the core, in seconds
#    pytest -m "not labelstudio and not ray" everything but the server-backed tests
_MODULE_MARKERS = {
    "llm": ("support.fake_openai",),
    "diffusion": ("support.tiny_models", "support.tiny_bench_models", "import torch"),
}
_FIXTURE_MARKERS = {"label_studio": "labelstudio", "ray_local": "ray"}


def pytest_collection_modifyitems(config, items):
    sources: dict = {}
    for item in items:
        path = str(getattr(item, "path", item.fspath))
        if path not in sources:
            try:
                sources[path] = Path(path).read_text(encoding="utf-8")
            except OSError:
                sources[path] = ""
        for marker, needles in _MODULE_MARKERS.items():
            if any(n in sources[path] for n in needles):
                item.add_marker(getattr(pytest.mark, marker))
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))
