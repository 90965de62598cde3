"""`refcoco-edit score --executor ray` on the session's local Ray instance (tests/support/ray_instance.py):
editing runs on Ray actors, the driver's pass reuses their outputs. The results equal the local
executor's (samples.parquet, results.json, the cached output PNGs and markers, byte for byte),
failures are recorded per sample as locally, resume edits only what is missing, and an editor
that cannot load stops the run with its own error."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from refcoco_edit.benchmark.cli import add_score_parser  # noqa: E402
from refcoco_edit.benchmark.data import load_dataset  # noqa: E402
from refcoco_edit.benchmark.editors import Editor  # noqa: E402
from refcoco_edit.benchmark.harness import ScoreConfig, run_score  # noqa: E402
from refcoco_edit.build import BuildConfig, build  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    """The session's Ray; test editors travel to the actors by value (workers cannot import tests/)."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_local


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-score-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                             progress=False), log=lambda s: None).export_dir


def _score(export, out, model="identity", editor=None, **kw):
    kw.setdefault("plots", False)
    kw.setdefault("gallery", False)
    kw.setdefault("bootstrap", 100)
    kw.setdefault("chunk_size", 4)  # 12 samples: 3 chunks, shared by 2 actors
    if editor is None:
        kw.setdefault("batch_size", 4)  # a chunk is at least a batch (identity/oracle: 16)
    kw.setdefault("progress", False)
    return run_score(ScoreConfig(model=model, data=str(export), out=str(out), **kw), editor=editor,
                     log=lambda s: None)


def _outputs(out: Path):
    """Every cached file (PNG bytes and markers) of a results folder."""
    return {p.name: p.read_bytes() for p in sorted((out / "outputs").iterdir())}


def _assert_same_run(a: Path, b: Path) -> None:
    for name in ("samples.parquet", "results.json", "report.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert pq.read_table(a / "samples.parquet").num_rows == 12
    oa, ob = _outputs(a), _outputs(b)
    assert oa.keys() == ob.keys() and len(oa) >= 12
    for name in oa:
        assert oa[name] == ob[name], name


class Flaky(Editor):
    """Returns the source, except on chosen samples (``plan``: sample_id -> fault): raises, NaN,
    a wrong size. The plan is an instance attribute: it travels to the actors with the editor."""

    name = "flaky"
    batch_size = 3

    def __init__(self, plan: dict):
        super().__init__()
        self.plan = dict(plan)

    def edit(self, images, prompts, seeds, extras):
        outs = []
        for img, e in zip(images, extras):
            fault = self.plan.get(e["sample_id"])
            if fault == "crash":
                raise RuntimeError("CUDA out of memory (simulated)")
            if fault == "nan":
                outs.append(np.full(img.shape, np.nan))
            elif fault == "small":
                outs.append(np.zeros((img.shape[0] // 2, img.shape[1] // 2, 3), np.uint8))
            else:
                outs.append(np.array(img))
        return outs


class Unloadable(Editor):
    name = "unloadable"

    def load(self) -> None:
        raise InputError("--editor-arg model=/nowhere: no such model folder")

    def edit(self, images, prompts, seeds, extras):  # pragma: no cover - never reached
        return list(images)


@pytest.mark.parametrize("model", ["identity", "oracle"])
def test_ray_score_equals_local(export, tmp_path, model):
    local = _score(export, tmp_path / "local", model)
    on_ray = _score(export, tmp_path / "ray", model, executor="ray", workers=2)
    _assert_same_run(local.out, on_ray.out)
    t = on_ray.timing
    assert t["executor"] == "ray" and t["outputs_edited"] == 12 and t["outputs_reused"] == 0
    assert t["ray"]["edited"] == 12 and t["ray"]["chunks"] == 3 and t["ray"]["actors"] == 2
    assert "editor_load_s" not in t  # the driver never loaded the editor: every output came from Ray


def test_ray_failures_are_recorded_per_sample_as_locally(export, tmp_path):
    ids = [s.sample_id for s in load_dataset(export).samples]
    plan = {ids[0]: "crash", ids[4]: "nan", ids[9]: "small"}
    local = _score(export, tmp_path / "local", "flaky", editor=Flaky(plan))
    on_ray = _score(export, tmp_path / "ray", "flaky", editor=Flaky(plan), executor="ray", workers=2)
    _assert_same_run(local.out, on_ray.out)
    c = on_ray.results["counts"]
    assert c["failed"] == 3 and c["scored"] == 9
    assert c["failed_by_reason"] == {"editor_error": 1, "non_finite": 1, "wrong_size": 1}
    fails = {f["sample_id"]: f for f in on_ray.results["failures"]}
    assert fails[ids[0]]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert on_ray.timing["ray"]["failed"] == 3


def test_ray_resume_edits_only_what_is_missing(export, tmp_path):
    first = _score(export, tmp_path / "r", executor="ray", workers=2)
    outs = first.out / "outputs"
    ids = sorted(p.stem for p in outs.glob("*.json"))
    for sid in ids[5:7]:  # as if killed before these two were written
        (outs / f"{sid}.json").unlink()
        (outs / f"{sid}.png").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in outs.iterdir()}
    again = _score(export, tmp_path / "r", executor="ray", workers=2)
    assert again.timing["ray"]["edited"] == 2 and again.timing["ray"]["chunks"] == 1
    assert again.timing["outputs_edited"] == 2 and again.timing["outputs_reused"] == 10
    assert {p.name: p.stat().st_mtime_ns for p in outs.iterdir() if p.name in mtimes} == mtimes
    assert again.results == first.results
    done = _score(export, tmp_path / "r", executor="ray", workers=2)  # nothing left: Ray is not even asked
    assert done.timing["ray"] == {"workers": 2, "chunks": 0, "edited": 0, "failed": 0, "actors": 0}


def test_an_editor_that_cannot_load_stops_the_ray_run_with_its_error(export, tmp_path):
    with pytest.raises(InputError, match="no such model folder"):
        _score(export, tmp_path / "u", "unloadable", editor=Unloadable(), executor="ray", workers=2)
    assert not list((tmp_path / "u" / "outputs").glob("*.png"))


def test_score_cli_options_reach_the_ray_executor(export, tmp_path, capsys):
    ap = argparse.ArgumentParser()
    add_score_parser(ap.add_subparsers())
    args = ap.parse_args(["score", "--model", "identity", "--data", str(export), "--out", str(tmp_path / "c"),
                          "--executor", "ray", "--workers", "2", "--chunk-size", "6", "--batch-size", "6",
                          "--num-gpus-per-worker", "0",
                          "--no-plots", "--no-gallery", "--bootstrap", "50", "--no-progress"])
    assert (args.executor, args.workers, args.chunk_size, args.ray_address, args.num_gpus_per_worker) == \
        ("ray", 2, 6, None, 0.0)
    assert args.func(args) == 0
    assert "scored 12 of 12 samples" in capsys.readouterr().out
    timing = json.loads((tmp_path / "c" / "timing.json").read_text())
    assert timing["ray"]["chunks"] == 2 and timing["outputs_edited"] == 12
    with pytest.raises(SystemExit):
        ap.parse_args(["score", "--model", "identity", "--executor", "dask"])
    with pytest.raises(InputError, match="--num-gpus-per-worker must be >= 0"):
        _score(export, tmp_path / "g", executor="ray", num_gpus_per_worker=-1)
