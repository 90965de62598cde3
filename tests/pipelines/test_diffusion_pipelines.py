"""Diffusion ground-truth pipelines with tiny random models saved to disk and loaded back through
the user's path (``--pbe-model PATH`` ...): they really denoise (the output depends on seed and
prompt/exemplar), change the inside of M_e and keep the outside byte-equal; SAM; model-kind
checks; `refcoco-edit build --backend diffusion` end to end, bad inputs, exit 2 on bad models."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.tiny_models import tiny  # noqa: E402  (sets HF_HUB_OFFLINE before any hub import)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("segment_anything")

from conftest import REPO, run_cli  # noqa: E402
from refcoco_edit.pipelines.base import EditRequest, PipelineError, get_pipeline  # noqa: E402
from refcoco_edit.pipelines.masks import (SamBoxSegmenter, SamCheckpointError, box_mask, crop_window, dilate, grow_box,  # noqa: E402
                             load_sam, mask_box, replacement_edit_mask)
from refcoco_edit.models import ModelError, ModelUnavailable, Runtime, check_model, load_diffusers  # noqa: E402
from refcoco_edit import rle  # noqa: E402
from refcoco_edit.build import BuildConfig, build  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402
from refcoco_edit.export import load_export  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
RT = Runtime(device="cpu", batch_size=4)
FAST = dict(num_inference_steps=3, resolution=64)
H, W = 96, 128

gpu = pytest.mark.gpu


def _scene(seed: int = 0):
    """A smooth two-tone background with one shaded ellipse (the source object)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.dstack([90 + 60 * yy / H, 140 + 40 * np.sin(xx / 9.0), 80 + 30 * xx / W])
    img += rng.normal(0, 4, img.shape)
    mask = ((xx - 64) / 22) ** 2 + ((yy - 50) / 16) ** 2 <= 1
    img[mask] = np.array([200, 60, 50]) * (0.7 + 0.3 * (yy[mask] / H))[:, None]
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _exemplar(colour=(40, 80, 220), h: int = 30, w: int = 22) -> np.ndarray:
    a = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    a[((xx - w / 2) / (w / 2 - 1)) ** 2 + ((yy - h / 2) / (h / 2 - 1)) ** 2 <= 1] = 255
    rgb = np.zeros((h, w, 3), np.uint8) + np.array(colour, np.uint8)
    return np.dstack([rgb, a])


def _request(edit_type: str, seed: int = 1, target: str = "giraffe", exemplar=None, image=None, mask=None) -> EditRequest:
    img, m = _scene()
    img = img if image is None else image
    m = m if mask is None else mask
    return EditRequest(sample_id="s", edit_type=edit_type, image=img, mask=m, bbox=[42, 34, 45, 33],
                       prompt=f"edit: {target}", edit_phrase=target, edit_target=target, seed=seed, category="cow",
                       exemplar=exemplar)


def _pipe(name: str, **kw):
    model = {"pbe-replace": "pbe", "bld-replace": "sd", "bld-attribute": "sd", "sd-inpaint-remove": "sd-inpaint"}[name]
    if kw.get("backbone") == "inpaint":
        model = "sd-inpaint"
    return get_pipeline(name, model=str(tiny(model)), runtime=RT, **FAST, **kw)


CASES = {
    # name: (pipeline kwargs, edit type, two requests that differ only in their "prompt")
    "pbe-replace": ({}, "replace", lambda s: _request("replace", s, exemplar=_exemplar()),
                    lambda s: _request("replace", s, exemplar=_exemplar((230, 230, 30)))),
    "bld-replace": ({}, "replace", lambda s: _request("replace", s, "giraffe"), lambda s: _request("replace", s, "robot")),
    "bld-replace-inpaint": ({"backbone": "inpaint"}, "replace", lambda s: _request("replace", s, "giraffe"),
                            lambda s: _request("replace", s, "robot")),
    "bld-attribute": ({}, "attribute", lambda s: _request("attribute", s, "blue"), lambda s: _request("attribute", s, "wooden")),
    "sd-inpaint-remove": ({}, "remove", lambda s: _request("remove", s, ""), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_denoises_and_keeps_the_outside_exact(case):
    kw, edit_type, make, make_other = CASES[case]
    name = case.replace("-inpaint", "") if case.startswith("bld-replace") else case
    pipe = _pipe(name, **kw)
    a, b, a2 = pipe.generate_batch([make(1), make(2), make(1)])
    src, mask = _scene()
    for out in (a, b):
        assert out.image.shape == src.shape and out.image.dtype == np.uint8
        me = out.edit_mask
        assert np.array_equal(out.image[~me], src[~me])  # byte-equal outside M_e
        assert np.abs(out.image[me].astype(int) - src[me]).mean() > 5  # really changed inside
        assert not (mask & ~me).any()  # the source object lies inside M_e
        assert out.params["seed"] in (1, 2) and out.params["num_inference_steps"] == 3
        json.dumps(out.params)
    assert not np.array_equal(a.image, b.image)  # depends on the seed
    assert np.abs(a.image.astype(int) - a2.image).max() <= 1  # same seed: same result (batch position aside)
    (again,) = pipe.generate_batch([make(1)])
    (again2,) = pipe.generate_batch([make(1)])
    assert np.array_equal(again.image, again2.image)  # deterministic run to run
    if make_other is not None:
        (other,) = pipe.generate_batch([make_other(1)])
        assert not np.array_equal(other.image, again.image)  # depends on the prompt / exemplar
    else:  # removal: the negative prompt names the removed category
        req = make(1)
        req.category = "bird"
        (other,) = pipe.generate_batch([req])
        assert not np.array_equal(other.image, again.image)
        assert "bird" in other.params["negative_prompt"]


def test_replacement_region_is_a_grown_box_not_the_silhouette():
    pipe = _pipe("bld-replace")
    (out,) = pipe.generate_batch([_request("replace", 3)])
    _, mask = _scene()
    region = grow_box(mask_box(mask), 0.15, mask.shape, min_px=2)
    assert out.params["region_box"] == list(region)
    assert out.params["mask_method"] == "diff"
    # the box corners outside the ellipse were free to change: M_e covers them
    assert out.edit_mask[region[1] + 1, region[0] + 1] and out.edit_mask[region[3] - 2, region[2] - 2]
    assert not out.edit_mask[~dilate(box_mask(region, mask.shape), out.params["dilate_px"])].any()


def test_pbe_keeps_the_exemplar_and_rejects_bad_ones():
    pipe = _pipe("pbe-replace")
    ex = _exemplar()
    (out,) = pipe.generate_batch([_request("replace", 1, exemplar=ex)])
    assert out.exemplar is not None and np.array_equal(out.exemplar, ex)
    empty = ex.copy()
    empty[..., 3] = 0
    res = pipe.generate_batch([_request("replace", 1, exemplar=None), _request("replace", 2, exemplar=empty),
                               _request("replace", 3, exemplar=ex), _request("replace", 4, exemplar=ex, mask=np.zeros((H, W), bool))])
    assert [getattr(r, "reason", None) for r in res] == ["no_exemplar", "no_exemplar", None, "empty_mask"]
    assert isinstance(res[0], PipelineError)
    with pytest.raises(PipelineError, match="does not do 'remove'"):
        pipe([_request("remove", 1, exemplar=ex)])


def test_bld_refinement_and_strength_run():
    base = _pipe("bld-attribute")
    (plain,) = base.generate_batch([_request("attribute", 5, "red")])
    (refined,) = _pipe("bld-attribute", refine_steps=2).generate_batch([_request("attribute", 5, "red")])
    src, _ = _scene()
    assert not np.array_equal(plain.image, refined.image)
    assert np.array_equal(refined.image[~refined.edit_mask], src[~refined.edit_mask])
    (weak,) = _pipe("bld-attribute", strength=0.5).generate_batch([_request("attribute", 5, "red")])
    assert weak.params["strength"] == 0.5 and not np.array_equal(weak.image, plain.image)
    with pytest.raises(ValueError, match="strength"):
        _pipe("bld-attribute", strength=0.0)


# -- models: kinds, the Paint-by-Example naming, hub policy -----------------------------------------
def test_model_kinds_are_checked_from_their_configs(tmp_path):
    assert check_model(str(tiny("sd")), "sd", "--sd-model")[1]["unet_in_channels"] == 4
    assert check_model(str(tiny("sd-inpaint")), "sd-inpaint", "--inpaint-model")[1]["unet_in_channels"] == 9
    assert check_model(str(tiny("pbe")), "pbe", "--pbe-model")[1]["class_name"] == "PaintByExamplePipeline"
    with pytest.raises(ModelError, match="4 input channels, not 9"):
        check_model(str(tiny("sd")), "sd-inpaint", "--inpaint-model")
    with pytest.raises(ModelError, match="9 input channels, not 4"):
        check_model(str(tiny("sd-inpaint")), "sd", "--sd-model")
    with pytest.raises(ModelError, match="no image_encoder"):
        check_model(str(tiny("sd-inpaint")), "pbe", "--pbe-model")
    with pytest.raises(ModelError, match="Paint-by-Example"):
        check_model(str(tiny("pbe")), "sd-inpaint", "--inpaint-model")
    with pytest.raises(ModelError, match="no model_index.json"):
        check_model(str(tiny("clip")), "sd", "--sd-model")
    with pytest.raises(ModelError, match="no such file or folder"):
        check_model(str(tmp_path / "missing"), "sd", "--sd-model")
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        check_model("nobody-here/not-a-model", "sd", "--sd-model")


def test_pbe_checkpoints_load_whatever_their_encoder_is_called(tmp_path):
    index = json.loads((tiny("pbe") / "model_index.json").read_text())
    assert index["image_encoder"] == ["paint_by_example", "PaintByExampleImageEncoder"]  # as the hub repo
    old = tmp_path / "pbe-old"
    shutil.copytree(tiny("pbe"), old)
    index["image_encoder"] = ["diffusers", "PaintByExampleImageEncoder"]  # saved without the alias
    (old / "model_index.json").write_text(json.dumps(index))
    a = load_diffusers(str(tiny("pbe")), "pbe", RT)
    b = load_diffusers(str(old), "pbe", RT)
    assert type(a.image_encoder).__name__ == type(b.image_encoder).__name__ == "PaintByExampleImageEncoder"
    pa = dict(a.image_encoder.named_parameters())
    assert all(torch.equal(p, pa[k]) for k, p in b.image_encoder.named_parameters())


def test_loading_the_wrong_kind_is_a_model_error():
    with pytest.raises(ModelError, match="--pbe-model"):
        load_diffusers(str(tiny("sd")), "pbe", RT, "--pbe-model")
    if not torch.cuda.is_available():  # (on a CUDA machine there is nothing to refuse)
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_diffusers(str(tiny("sd")), "sd", Runtime(device="cuda"))


# -- SAM ---------------------------------------------------------------------------------------------
def test_sam_loads_safely_and_segments_a_box(tmp_path):
    ckpt = tiny("sam")
    seg = SamBoxSegmenter.from_checkpoint(ckpt, "vit_h")  # the JSON beside it names the tiny architecture
    img, mask = _scene()
    m = seg.segment(img, (40, 30, 90, 70))
    assert m.shape == (H, W) and m.dtype == bool
    bare = tmp_path / "sam_bare.pth"
    shutil.copy(ckpt, bare)  # no architecture file: --sam-type decides, and vit_b does not fit
    with pytest.raises(SamCheckpointError, match="does not fit --sam-type vit_b"):
        load_sam(bare, "vit_b")
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil.write_bytes(pickle.dumps({"image_encoder.x": Boom()}, protocol=2))
    with pytest.raises(SamCheckpointError, match="cannot be read safely"):
        load_sam(evil, "vit_b")
    notsam = tmp_path / "notsam.pth"
    torch.save({"weight": torch.zeros(2)}, str(notsam))
    with pytest.raises(SamCheckpointError, match="not a segment-anything checkpoint"):
        load_sam(notsam, "vit_b")


def test_replacement_mask_uses_sam_inside_the_region():
    src, mask = _scene()
    region = box_mask(grow_box(mask_box(mask), 0.15, mask.shape), mask.shape)
    new = np.zeros_like(mask)
    new[10:90, 60:70] = True  # sticks out of the region: cut to it
    me, method = replacement_edit_mask(mask, region, new_object=new, dilate_px=2)
    assert method == "sam" and not (me & ~dilate(region, 2)).any() and me[40, 65]
    me2, method2 = replacement_edit_mask(mask, region, src, src, new_object=np.zeros_like(mask), dilate_px=2)
    assert method2 == "source" and np.array_equal(me2, dilate(mask, 2))
    pipe = _pipe("pbe-replace", sam=SamBoxSegmenter.from_checkpoint(tiny("sam")))
    (out,) = pipe.generate_batch([_request("replace", 1, exemplar=_exemplar())])
    assert out.params["mask_method"] in ("sam", "diff") and out.params["sam"] == "vit_h"
    assert np.array_equal(out.image[~out.edit_mask], src[~out.edit_mask])


def test_crop_window_is_square_inside_the_image():
    assert crop_window((10, 10, 30, 20), (100, 200), 1.5) == (5, 0, 35, 30)
    x0, y0, x1, y1 = crop_window((180, 80, 200, 100), (100, 200), 2.0)
    assert (x1, y1) == (200, 100) and x1 - x0 == y1 - y0 == 40
    assert crop_window((0, 0, 200, 100), (100, 200), 1.5) == (0, 0, 200, 100)


# -- the build ----------------------------------------------------------------------------------------
def _exemplar_dir(root: Path) -> Path:
    """A --exemplar-dir with an RGBA exemplar for every replace target the demo can draw."""
    from refcoco_edit.vocab import COCO_CATEGORIES, IMAGINATIVE_TARGETS

    d = root / "exemplars"
    d.mkdir()
    names = list(COCO_CATEGORIES.values()) + [t.split(" ", 1)[1] for t in IMAGINATIVE_TARGETS]
    for i, n in enumerate(names):
        Image.fromarray(_exemplar((37 * i % 255, 90, 255 - 37 * i % 255))).save(d / f"{n}.png")
    return d


def _model_flags():
    return ["--pbe-model", str(tiny("pbe")), "--sd-model", str(tiny("sd")), "--inpaint-model", str(tiny("sd-inpaint")),
            "--sam-checkpoint", str(tiny("sam")), "--clip-model", str(tiny("clip"))]


def _img(struct):
    return np.asarray(Image.open(io.BytesIO(struct["bytes"])).convert("RGB"))


@pytest.fixture(scope="module")
def diffusion_build(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    w = root / "w"
    proc = run_cli("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
                   "--backend", "diffusion", "--num-images", "4", "--num-candidates", "2", "--num-inference-steps", "2",
                   "--resolution", "64", "--exemplar-dir", str(_exemplar_dir(root)), "--no-progress", *_model_flags(),
                   env=OFFLINE, timeout=600)
    return w, proc


def test_build_backend_diffusion_end_to_end(diffusion_build):
    w, proc = diffusion_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    rows = load_export(w / "export").to_pylist()
    assert len(rows) == 8 and {r["edit_type"] for r in rows} == {"replace", "remove", "attribute"}
    expected = {"replace": {"pbe-replace", "bld-replace"}, "remove": {"sd-inpaint-remove"}, "attribute": {"bld-attribute"}}
    for r in rows:
        src, ref = _img(r["source_image"]), _img(r["reference_image"])
        me = rle.decode(r["edit_mask"])
        assert np.array_equal(src[~me], ref[~me]), r["sample_id"]  # every reference: exact outside M_e
        assert np.abs(src[me].astype(int) - ref[me]).max() > 20
        assert rle.decode(r["source_mask"])[~me].sum() == 0
        cands = r["candidates"]
        assert {c["pipeline"] for c in cands} == expected[r["edit_type"]]
        assert len(cands) == 2 * len(expected[r["edit_type"]])  # --num-candidates 2 per pipeline
        assert len({c["seed"] for c in cands}) == len(cands)
        scores = [json.loads(c["filter_scores"]) for c in cands]
        for s in scores:
            assert "bg_change" in s and "passed" in s and s["clip_model"] == str(tiny("clip"))
            assert ("removed_prob" in s) if r["edit_type"] == "remove" else ("clip_directional" in s)
        from refcoco_edit.pipelines.filters import is_marked, rank_candidates

        assert all(s["others_n"] >= 1 and "others_damaged" in s for s in scores)  # the audit, every backend
        pool = [i for i, s in enumerate(scores) if not is_marked(s)] or list(range(len(scores)))  # clean ones first
        best = cands[pool[rank_candidates([scores[i] for i in pool])]]
        assert best["image"]["bytes"] == r["reference_image"]["bytes"] and best["edit_mask"] == r["edit_mask"]
        for c in cands:
            p = json.loads(c["params"])
            assert p["num_inference_steps"] == 2 and p["resolution"] == 64 and p["seed"] == c["seed"]
        if r["edit_type"] == "replace":
            ex = Image.open(io.BytesIO(r["exemplar_image"]["bytes"]))
            assert ex.mode == "RGBA"
            assert all(json.loads(c["params"])["sam"] == "vit_h" for c in cands)
    card = (w / "export" / "README.md").read_text()
    assert "`diffusion`" in card and "pbe-replace" in card


def test_reference_based_view_adds_reversed_removals(diffusion_build, tmp_path):
    """Twice-repainted triplets: after = the real photo, before = the build's repaint of the object
    region (removal -> add, replacement -> reversed replace), exemplar = the real object on a
    weight-free repainted backdrop (``refcoco_edit.repaint``)."""
    w, proc = diffusion_build
    assert proc.returncode == 0
    rows = load_export(w / "export").to_pylist()
    out = tmp_path / "rb"
    p = run_cli("export", "--workdir", str(w), "--out", str(out), "--view", "reference-based")
    assert p.returncode == 0, p.stderr
    import pyarrow as pa
    import pyarrow.parquet as pq

    rb = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))]).to_pylist()
    removals = [r for r in rows if r["edit_type"] == "remove"]
    adds = [r for r in rb if r["edit_type"] == "add"]
    assert len(adds) == len(removals) > 0
    assert len(rb) == len(adds) + sum(1 for r in rows if r["edit_type"] == "replace")
    by_ref = {(r["ref_id"], r["category"]): r for r in removals}
    for a in adds:
        rem = by_ref[(a["ref_id"], a["category"])]
        assert a["source_image"]["bytes"] == rem["reference_image"]["bytes"]  # before = removal output
        assert a["reference_image"]["bytes"] == rem["source_image"]["bytes"]  # after = the original
        assert a["prompt"].startswith("add ") and a["category"] in a["prompt"]
        assert a["prompt"][a["edit_span"][0]:a["edit_span"][1]] == a["prompt"]
        assert a["prompt_source"] == "reversed-removal" and a["sample_id"] != rem["sample_id"]
        rep = json.loads(a["repaint"])
        assert rep["before"]["pipeline"] in [c["pipeline"] for c in rem["candidates"]]
        assert rep["exemplar"]["repainter"] == "backdrop"
        ex = np.asarray(Image.open(io.BytesIO(a["exemplar_image"]["bytes"])))
        assert ex.ndim == 3 and ex.shape[2] == 3 and rle.decode(a["exemplar_mask"]).shape == ex.shape[:2]


def test_build_quarantines_bad_images_on_the_diffusion_path(tmp_path):
    from support.make_bad_corpus import make_bad_corpus

    corpus = make_bad_corpus(tmp_path / "bad")
    cfg = BuildConfig.of(out=str(tmp_path / "w"), refcoco=corpus["root"], images=corpus["images_dir"], backend="diffusion",
                      num_images=None, num_inference_steps=1, resolution=32, progress=False, shard_size=64,
                      pipelines=["sd-inpaint-remove", "bld-attribute"], edit_types=["remove", "attribute"],
                      sd_model=str(tiny("sd")), inpaint_model=str(tiny("sd-inpaint")), clip_model="none",
                      sam_checkpoint="none", batch_size=8)
    res = build(cfg, log=lambda s: None)
    q = res.quarantine.get("generate", {})
    for case in ("truncated_jpeg", "missing_image"):
        reason = corpus["cases"][case]["expected_reason"]
        assert q.get(reason, 0) >= 1, (case, q)
    import pyarrow.parquet as pq

    bad_ids = {corpus["cases"][c]["image_id"] for c in ("truncated_jpeg", "missing_image")}
    rows = load_export(res.export_dir).to_pylist()
    assert rows and not any(r["image_id"] in bad_ids for r in rows)
    quarantined = [r for f in sorted((tmp_path / "w" / "quarantine").glob("generate-*.parquet"))
                   for r in pq.read_table(f).to_pylist()]
    assert {r["reason"] for r in quarantined} <= {"corrupt_image", "missing_image"}
    for r in rows:
        src, ref = _img(r["source_image"]), _img(r["reference_image"])
        me = rle.decode(r["edit_mask"])
        assert np.array_equal(src[~me], ref[~me])


def _one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refcoco-edit: error:"), proc.stderr
    return lines[0]


def test_missing_or_wrong_kind_model_exits_2_before_any_shard(demo_dir, tmp_path):
    base = ["build", "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), "--backend", "diffusion",
            "--num-images", "2", "--clip-model", "none", "--sam-checkpoint", "none"]
    flags = _model_flags()[:6]
    w = tmp_path / "w1"
    line = _one_line_exit_2(run_cli(*base, "--out", str(w), *flags[:4], "--inpaint-model", str(tmp_path / "nope"), env=OFFLINE))
    assert "--inpaint-model" in line and "no such file" in line
    assert not (w / "select").exists()  # nothing ran
    w = tmp_path / "w2"
    line = _one_line_exit_2(run_cli(*base, "--out", str(w), "--pbe-model", str(tiny("sd")), *flags[2:], env=OFFLINE))
    assert "--pbe-model" in line and "Paint-by-Example" in line
    assert not (w / "select").exists()
    line = _one_line_exit_2(run_cli(*base, "--out", str(tmp_path / "w3"), *flags, "--pbe-model", "nobody/none", env=OFFLINE))
    assert "not in the local Hugging Face cache" in line
    line = _one_line_exit_2(run_cli(*base, "--out", str(tmp_path / "w4"), *flags, "--pipelines", "pbe-replce", env=OFFLINE))
    assert "pbe-replce" in line


def test_a_sam_checkpoint_of_the_wrong_type_stops_the_build(demo_dir, tmp_path):
    bare = tmp_path / "sam_bare.pth"
    shutil.copy(tiny("sam"), bare)
    cfg = BuildConfig.of(out=str(tmp_path / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"), backend="diffusion",
                      num_images=2, progress=False, pipelines=["bld-replace"], edit_types=["replace"],
                      sd_model=str(tiny("sd")), clip_model="none", sam_checkpoint=str(bare), sam_type="vit_l")
    with pytest.raises(InputError, match="does not fit --sam-type vit_l"):
        build(cfg, log=lambda s: None)
    assert not (tmp_path / "w" / "select").exists()
    cfg.sam_checkpoint = str(tmp_path / "absent.pth")
    with pytest.raises(InputError, match="no such file"):
        build(cfg, log=lambda s: None)


def test_help_and_imports_never_import_torch():
    code = ("import sys, refcoco_edit, refcoco_edit.pipelines.base, refcoco_edit.models, refcoco_edit.pipelines.diffusion, refcoco_edit.pipelines.windows, refcoco_edit.pipelines.masks, refcoco_edit.pipelines.filters, "
            "refcoco_edit.pipelines.paint_by_example, refcoco_edit.pipelines.blended_latent, refcoco_edit.pipelines.inpaint, refcoco_edit.build, refcoco_edit.cli\n"
            "from refcoco_edit.cli import main\n"
            "try:\n    main(['build', '--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'segment_anything') if m in sys.modules]\n"
            "assert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert "--pbe-model" in p.stdout and "--sam-type" in p.stdout and "--local-files-only" in p.stdout


@gpu
def test_fp16_batched_pipeline_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rt = Runtime(device="cuda", dtype="fp16", batch_size=4)
    pipe = get_pipeline("bld-attribute", model=str(tiny("sd")), runtime=rt, **FAST)
    outs = pipe.generate_batch([_request("attribute", s, "red") for s in range(4)])
    src, _ = _scene()
    for o in outs:
        assert np.array_equal(o.image[~o.edit_mask], src[~o.edit_mask])
