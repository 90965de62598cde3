"""`build --backend diffusion` on Ray actors (tiny random models saved to disk and loaded by each
actor through the user's path) equals the local build, cell by cell: every pipeline, candidate,
filter score and the chosen reference. Both sides run torch with one thread (the actors reserve
one CPU each, so Ray gives them OMP_NUM_THREADS=1), on the same shards (a shard's requests are
batched the same way in either process)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.tiny_models import tiny  # noqa: E402  (sets HF_HUB_OFFLINE before any hub import)

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("segment_anything")

from refcoco_edit.build import BuildConfig, build  # noqa: E402
from test_ray_executor import _assert_same  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_local


def _cfg(demo_dir: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), progress=False,
                       backend="diffusion", num_images=2, shard_size=2, num_candidates=1, num_inference_steps=2,
                       resolution=64, device="cpu", pbe_model=str(tiny("pbe")), sd_model=str(tiny("sd")),
                       inpaint_model=str(tiny("sd-inpaint")), sam_checkpoint=str(tiny("sam")),
                       clip_model=str(tiny("clip")), **kw)


def test_ray_diffusion_build_equals_local_cell_by_cell(demo_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors
    try:
        local = build(_cfg(demo_dir, tmp_path / "local"), log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    on_ray = build(_cfg(demo_dir, tmp_path / "ray", executor="ray", workers=2), log=lambda s: None)
    assert local.export["rows"] == on_ray.export["rows"] >= 3
    assert on_ray.counts == local.counts and on_ray.quarantine == local.quarantine
    _assert_same(local.workdir, on_ray.workdir)
    # the diffusion pipelines really ran (not a classical fallback)
    from refcoco_edit.export import load_export

    pipes = {c["pipeline"] for r in load_export(on_ray.export_dir).to_pylist() for c in r["candidates"]}
    assert pipes & {"pbe-replace", "bld-replace", "bld-attribute", "sd-inpaint-remove"}, pipes
