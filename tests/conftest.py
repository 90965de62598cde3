"""Shared fixtures: the synthetic demo data, written once per test session."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (setup.cfg addopts: -n auto) the workers share the cores: give each worker
# (and the subprocesses it starts) its share of BLAS/OpenMP threads instead of every one of them
# starting a thread per core. A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

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


def _wants_label_studio_early(config) -> bool:
    """Start Label Studio as the run begins (``support.labelstudio.EarlyStart``) when this is the
    main process of a run that will likely need it: the whole suite or a folder holding Label
    Studio tests, not deselected by ``-m``, not a collect-only run. A single file or ``-k`` run starts it on first use."""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("REFCOCO_EDIT_LS_EARLY", "1") == "0":
        return False
    markexpr = config.option.markexpr or ""
    if config.option.collectonly or config.option.keyword or "labelstudio" in markexpr or "slow" in markexpr:
        return False
    tests = Path(__file__).resolve().parent
    args = [Path(a.split("::")[0]).resolve() for a in config.args] or [tests]
    return any(a.is_dir() and (a in (tests, tests / "annotation", tests / "system") or a in tests.parents) for a in args)


def pytest_configure(config):
    if _wants_label_studio_early(config):
        from support.labelstudio import EarlyStart

        def say(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

        config._refcoco_edit_ls_early = EarlyStart(log=say)


def pytest_unconfigure(config):
    early = getattr(config, "_refcoco_edit_ls_early", None)
    if early is not None:
        early.close()


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg addopts): one worker per core plus one, at most 4. The suite waits on
    subprocesses, servers and disk much of the time: on a 2-core machine 3 workers ran the whole
    suite in 8m08s against 8m50s for 2 (same machine, same hour); past 4, each worker's own copy
    of the session fixtures costs more than it saves."""
    return max(2, min(4, (os.cpu_count() or 1) + 1))


def _xdist_group(item) -> str:
    """Which xdist worker queue a test joins (``--dist loadgroup``): every test of a module runs
    on one worker, so its module-scoped fixtures (demo builds, tiny models) are built once; all
    tests that use the session's Label Studio server share one worker (one server, one install),
    and so do the Ray tests (one local Ray instance)."""
    names = getattr(item, "fixturenames", ())
    if "label_studio" in names:
        return "labelstudio"
    if "ray_local" in names:
        return "ray"
    return item.nodeid.split("::")[0]


_DURATIONS = Path(__file__).resolve().parent / "support" / "data" / "test_durations.json"


SLOW_QUEUE_S = 20  # a module (or the Label Studio / Ray queue) that took this long is `slow`


def _recorded_durations() -> dict:
    try:
        return json.loads(_DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def _longest_queues_first(items, queues: dict, recorded: dict) -> None:
    """Reorder ``items`` (in place) so the queues that took longest in the recorded run
    (``tools/test_durations.py``) reach the workers first and no long queue starts last, while
    the tests of one queue keep their order (some build on the previous one's state). A queue not
    in the record (a new module) counts as an average one. ``queues``: item -> its queue."""
    default = sorted(recorded.values())[len(recorded) // 2] if recorded else 0
    items.sort(key=lambda it: -recorded.get(queues[it], default))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    sources: dict = {}
    queues: dict = {}
    recorded = _recorded_durations()
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
        queues[item] = _xdist_group(item)
        item.add_marker(pytest.mark.xdist_group(queues[item]))
        if recorded.get(queues[item], 0) >= SLOW_QUEUE_S:
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _longest_queues_first(items, queues, recorded)
