"""Benchmark: the Ray executor vs the local executor on one machine (2 workers).

``run(quick=False) -> dict`` (``python -m perf --only executor``) builds the same demo dataset
(classical backend, the same config, ``--workers 2``) twice, from a clean workspace each time:

* ``baseline_s`` — ``--executor local``: a pool of 2 forked worker processes;
* ``value_s`` — ``--executor ray`` on a private local Ray instance with 2 CPUs (loopback only),
  already started: 2 actors (their start included), shards dispatched from a work queue;
* ``ray_start_s`` — starting that Ray instance (``ray.init``), measured apart: paid once per
  command without ``--ray-address``, not at all on a running cluster.

``ratio`` = value / baseline (lower is better; > 1 is Ray's overhead on a single machine, where
it only pays off with several nodes or GPU actors). Both builds must give the same export (checked).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

FULL = dict(num_images=24, shard_size=4)
QUICK = dict(num_images=8, shard_size=4)


def _export_bytes(workdir: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "export").glob("*.parquet"))}


def run(quick: bool = False) -> Dict[str, Any]:
    """Wall times of a local build and a Ray build (2 workers each) of the demo data."""
    try:
        import ray
    except ImportError:
        return {"skipped": "needs the ray package (pip install 'refcoco-edit[ray]')"}
    from refcoco_edit.build import BuildConfig, build
    from refcoco_edit.demo import write_demo
    from refcoco_edit.executors import init_private_ray

    if ray.is_initialized():
        return {"skipped": "Ray is already initialised in this process"}
    params = QUICK if quick else FULL
    root = Path(tempfile.mkdtemp(prefix="refcoco-edit-bench-executor-"))
    try:
        demo = root / "demo"
        write_demo(demo)

        def cfg(name: str, executor: str, **kw: Any) -> BuildConfig:
            return BuildConfig.of(out=str(root / name), refcoco=str(demo), images=str(demo / "images"), progress=False,
                               executor=executor, workers=2, **{**params, **kw})

        build(cfg("warm", "local", num_images=2), log=lambda s: None)  # imports and page cache, not measured
        t = time.perf_counter()
        local = build(cfg("local", "local"), log=lambda s: None)
        baseline = time.perf_counter() - t

        t = time.perf_counter()
        init_private_ray(2, object_store_memory=100 * 1024 * 1024, ray=ray)
        start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            on_ray = build(cfg("ray", "ray"), log=lambda s: None)
            value = time.perf_counter() - t
        finally:
            ray.shutdown()
        same = _export_bytes(local.workdir) == _export_bytes(on_ray.workdir)
        if not same:
            raise AssertionError("the Ray build's export differs from the local build's")
        rows = local.export["rows"]
        shards = (rows + params["shard_size"] - 1) // params["shard_size"]
        return {
            "name": "executor",
            "baseline": "build --executor local --workers 2 (forked process pool)",
            "baseline_s": round(baseline, 3),
            "value_s": round(value, 3),
            "ratio": round(value / baseline, 3) if baseline > 0 else None,
            "unit": "s/build",
            "better": "lower",
            "ray_start_s": round(start, 3),
            "ray_total_s": round(start + value, 3),
            "rows": rows,
            "images": params["num_images"],
            "shards_per_stage": shards,
            "same_export": same,
            "notes": f"demo build, {params['num_images']} images, {rows} samples; Ray start {start:.1f}s measured apart",
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
