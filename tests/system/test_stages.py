"""The build's stage modules and the pipelines' self-description (no torch, no weights).

* every registered pipeline describes itself consistently (models, build settings, resources,
  its own parameters), and is built from the build settings without a name switch;
* a pipeline's own section reaches its constructor (classical parameters included), and a
  misspelt parameter is an ``InputError`` with a close match;
* a new pipeline is one class plus its registry lines: the up-front model checks and the generate
  stage pick it up;
* the core modules never import the stage modules (the CLI layer);
* a candidate with the pixels of an earlier one of its sample is re-drawn with another seed, and
  after ``MAX_REDRAWS`` re-draws left out with a recorded reason (the sample keeps the others).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError
from refcoco_edit.pipelines import base
from refcoco_edit.pipelines.base import RESOURCES, GTPipeline, ModelNeed, PipelineOutput
from refcoco_edit.stages.backend import Backend, diffusion_models
from refcoco_edit.stages.generate import MAX_REDRAWS

REPO = Path(__file__).resolve().parents[2]
ALL = sorted({n for backend in base.BACKENDS.values() for names in backend.values() for n in names})
FIELDS = set(BuildConfig().flat())
FAKE = {"runtime": lambda: "RUNTIME", "sam": lambda: "SAM"}


@pytest.mark.parametrize("name", ALL)
def test_every_pipeline_describes_itself(name):
    from refcoco_edit.models import KINDS

    cls = base.PIPELINES.get(name)
    init = set(list(inspect.signature(cls.__init__).parameters)[1:])
    settings = BuildConfig().flat()
    for backbone in ("sd", "inpaint"):
        for need in cls.model_needs({**settings, "bld_backbone": backbone}):
            assert need.param in init and need.setting in FIELDS and need.kind in KINDS, need
    assert set(cls.build_settings) <= init and set(cls.build_settings.values()) <= FIELDS
    assert set(cls.uses) <= set(RESOURCES) and set(cls.uses) <= init
    params = cls.parameters()
    assert set(params) <= init and not set(params) & set(RESOURCES)
    assert not {m.param for m in cls.models} & set(params)


def test_diffusion_pipelines_are_built_from_the_build_settings():
    cfg = BuildConfig.of(backend="diffusion", pbe_model="P", sd_model="S", inpaint_model="I", num_inference_steps=7,
                      resolution=64, context=2.0, region_growth=0.2, bld_refine_steps=3)
    b = Backend(cfg)
    b.runtime, b.sam = FAKE["runtime"], FAKE["sam"]  # no torch: the resources are stand-ins
    pbe, bld_r, bld_a, rm = (b.pipeline(n) for n in ("pbe-replace", "bld-replace", "bld-attribute", "sd-inpaint-remove"))
    assert (pbe.model, bld_r.model, bld_a.model, rm.model) == ("P", "S", "S", "I")
    assert all(p.num_inference_steps == 7 and p.resolution == 64 and p.context == 2.0 and p.runtime == "RUNTIME"
               for p in (pbe, bld_r, bld_a, rm))
    assert (pbe.guidance_scale, bld_r.guidance_scale, rm.guidance_scale) == (5.0, 7.5, 7.5)  # None: the defaults
    assert pbe.region_growth == bld_r.region_growth == 0.2 and bld_r.refine_steps == 3 and bld_r.backbone == "sd"
    assert (pbe.sam, bld_r.sam, bld_a.sam) == ("SAM", "SAM", None)  # only the replacements segment new objects
    inpaint = Backend(dataclasses.replace(cfg, bld_backbone="inpaint", guidance_scale=3.0))
    inpaint.runtime, inpaint.sam = FAKE["runtime"], FAKE["sam"]
    bld = inpaint.pipeline("bld-replace")
    assert (bld.model, bld.backbone, bld.model_kind, bld.guidance_scale) == ("I", "inpaint", "sd-inpaint", 3.0)


def test_the_up_front_model_list_follows_the_pipelines():
    cfg = BuildConfig.of(backend="diffusion")
    assert diffusion_models(cfg) == [(cfg.pbe_model, "pbe", "--pbe-model"), (cfg.sd_model, "sd", "--sd-model"),
                                     (cfg.inpaint_model, "sd-inpaint", "--inpaint-model")]
    one = dataclasses.replace(cfg, bld_backbone="inpaint", pipelines=["bld-replace", "bld-attribute"])
    assert diffusion_models(one) == [(cfg.inpaint_model, "sd-inpaint", "--inpaint-model")]


def test_a_pipeline_section_reaches_the_constructor():
    b = Backend(BuildConfig(), params={"classical-remove": {"radius": 7, "noise": 0.0}})
    assert base.PIPELINES.get("classical-remove").parameters()["radius"] == 5
    assert b.pipeline("classical-remove").params["radius"] == 7 and b.pipeline("classical-remove").params["noise"] == 0.0
    assert Backend(BuildConfig()).pipeline("classical-remove").params["radius"] == 5  # no section: the defaults
    bad = Backend(BuildConfig(), params={"classical-replace": {"harmonise": 0.5}})
    with pytest.raises(InputError, match="unknown parameter 'harmonise'; did you mean 'harmonize'"):
        bad.pipeline("classical-replace")


class ShadeRemove(GTPipeline):
    """A toy CPU pipeline: the referred object becomes a flat grey (one class, no build edits)."""

    name = "toy-remove"
    edit_types = ("remove",)
    models = (ModelNeed("model", "inpaint_model", "sd-inpaint"),)  # declared, for the up-front list

    def __init__(self, model: str = "", shade: int = 40) -> None:
        self.model, self.shade = model, int(shade)

    def generate(self, request):
        self.check_inputs(request)
        out = request.image.copy()
        out[request.mask] = self.shade
        out[request.mask & (request.image == self.shade).all(axis=2)] = self.shade + 1
        return PipelineOutput(out, request.mask.copy(), {"shade": self.shade})


def test_a_new_pipeline_is_one_class_plus_its_registry_lines(monkeypatch, tmp_path, demo_dir):
    monkeypatch.setattr(base.PIPELINES, "_entries", {**base.PIPELINES.entries, "toy-remove": ShadeRemove})
    monkeypatch.setattr(base.PIPELINES, "_loaded", {})
    monkeypatch.setitem(base.BACKENDS["diffusion"], "remove", ["toy-remove"])
    cfg = BuildConfig.of(backend="diffusion", edit_types=["remove"], inpaint_model="my/inpaint")
    assert diffusion_models(cfg) == [("my/inpaint", "sd-inpaint", "--inpaint-model")]
    assert Backend(cfg).pipeline("toy-remove").model == "my/inpaint"
    # the generate stage runs it like any other (the classical backend, so no models are checked)
    monkeypatch.setitem(base.BACKENDS["classical"], "remove", ["toy-remove"])
    res = build(BuildConfig.of(out=str(tmp_path / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                            num_images=2, edit_types=["remove"], progress=False, inpaint_model="m"), log=lambda s: None)
    rows = res.workdir.joinpath("generate")
    import pyarrow.parquet as pq

    table = pq.read_table(next(rows.glob("shard-*.parquet")))
    assert table.num_rows > 0
    assert {c["pipeline"] for cands in table.column("candidates").to_pylist() for c in cands} == {"toy-remove"}


def test_core_modules_never_import_the_stages():
    core = [p for p in (REPO / "refcoco_edit").glob("*.py") if p.name not in ("build.py", "cli.py")]
    pattern = re.compile(r"^\s*(from|import)\s+(\.stages|refcoco_edit\.stages|\.build\b|refcoco_edit\.build\b)", re.M)
    bad = [p.name for p in core if pattern.search(p.read_text(encoding="utf-8"))]
    assert not bad, bad


class FlatRemove(GTPipeline):
    """A toy removal that ignores its seed: the object becomes one grey, the same one for the first
    ``same_for`` calls of each sample, then another grey per call (variations that collide)."""

    name = "toy-flat"
    edit_types = ("remove",)

    def __init__(self, same_for: int = 10 ** 9) -> None:
        self.same_for = int(same_for)
        self.calls: dict = {}

    def generate(self, request):
        self.check_inputs(request)
        k = self.calls[request.sample_id] = self.calls.get(request.sample_id, -1) + 1
        shade = 60 if k < self.same_for else 60 + 20 * (k - self.same_for + 1)
        out = request.image.copy()
        out[request.mask] = shade
        out[request.mask & (request.image == shade).all(axis=2)] = shade + 1
        return PipelineOutput(out, request.mask.copy(), {"call": k})


def _flat_build(monkeypatch, tmp_path, demo_dir, same_for: int):
    monkeypatch.setattr(base.PIPELINES, "_entries", {**base.PIPELINES.entries, "toy-flat": FlatRemove})
    monkeypatch.setattr(base.PIPELINES, "_loaded", {})
    monkeypatch.setitem(base.BACKENDS["classical"], "remove", ["toy-flat"])
    res = build(BuildConfig.of(out=str(tmp_path / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                               num_images=1, edit_types=["remove"], num_candidates=3, progress=False,
                               pipeline_params={"toy-flat": {"same_for": same_for}}), log=lambda s: None)
    from refcoco_edit.export import load_export

    return res, load_export(res.export_dir).to_pylist()


@pytest.mark.parametrize("rounds", [1, MAX_REDRAWS])
def test_duplicate_candidates_are_redrawn_with_other_seeds(monkeypatch, tmp_path, demo_dir, rounds):
    """Candidates 1 and 2 collide with candidate 0 until their ``rounds``-th re-draw."""
    from refcoco_edit.seeds import derive_seed

    same_for = 3 + 2 * (rounds - 1)  # the first draws, then the re-draws of both duplicates before the last
    res, rows = _flat_build(monkeypatch, tmp_path, demo_dir, same_for=same_for)
    assert rows and res.candidate_failures == {}
    for r in rows:
        cands = r["candidates"]
        params = [json.loads(c["params"]) for c in cands]
        assert [p["call"] for p in params] == [0, same_for, same_for + 1]
        assert [p.get("redraws", 0) for p in params] == [0, rounds, rounds]
        assert [c["seed"] for c in cands] == [derive_seed(0, r["sample_id"], "toy-flat", 0)] + [
            derive_seed(0, r["sample_id"], "toy-flat", c, "redraw", rounds) for c in (1, 2)]


def test_duplicates_left_after_every_redraw_are_left_out_with_a_reason(monkeypatch, tmp_path, demo_dir):
    # the same pixels through the last re-draw (one more round would give other ones)
    res, rows = _flat_build(monkeypatch, tmp_path, demo_dir, same_for=3 + 2 * MAX_REDRAWS)
    assert rows and res.quarantine == {}  # the samples stay, with their one distinct candidate
    assert all(len(r["candidates"]) == 1 and r["reference_candidate"] == 0 for r in rows)
    assert res.candidate_failures == {"toy-flat/duplicate_candidate": 2 * len(rows)}
    stats = json.loads(res.workdir.joinpath("generate", "shard-00000.stats.json").read_text())
    assert stats["candidate_failures"] == {"toy-flat/duplicate_candidate": 2 * len(rows)}
