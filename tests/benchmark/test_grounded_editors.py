"""The grounding -> SAM -> editing baselines (``grounded-inpaint``, ``grounded-pbe``,
``grounded-blended``): the instruction parser, tiny random grounders (OWLv2, CLIPSeg, Grounding
DINO), a tiny SAM and tiny diffusion back-ends, all saved to disk and loaded back through the
editors' own ``load()`` (the path of ``--editor-arg grounder=PATH``). A fixed box (``boxes:FILE``)
proves that stages 2-3 edit inside that box only; ``score`` runs end to end and reports
``mask_iou``. No network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from refcoco_edit.benchmark.editors import EditFailure, get_editor
from refcoco_edit.benchmark.editors.base import EditOutput
from refcoco_edit.benchmark.editors.phrases import parse_instruction, strip_article
from refcoco_edit.errors import InputError
from support.tiny_bench_models import tiny_bench

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("segment_anything")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
FAST = {"steps": 2, "resolution": 32, "device": "cpu"}
BOX = (20, 12, 48, 34)  # x0, y0, x1, y1 in the 50x70 test image


def _image(h=50, w=70, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((10, 10, 1), np.uint8))[:h, :w])


@pytest.fixture(scope="module")
def boxes_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("boxes") / "boxes.json"
    p.write_text(json.dumps({"a": list(BOX), "b": [3, 4, 20, 30]}))
    return p


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("exemplars")
    ex = np.zeros((24, 24, 4), np.uint8)
    ex[4:20, 6:18] = (30, 30, 30, 255)
    ex[8:12, 8:16, :3] = 240
    Image.fromarray(ex).save(d / "panda.png")
    return d


def _args(model_kind, grounder, **kw):
    return {**FAST, "model": str(tiny_bench(model_kind)), "grounder": str(grounder),
            "sam_checkpoint": str(tiny_bench("sam")), **kw}


# ----------------------------------------------------------------------------------------------
# stage 0: the referring phrase from the prompt alone
# ----------------------------------------------------------------------------------------------


def test_parser_reads_every_template_and_free_text():
    from refcoco_edit.prompts import TEMPLATES, compose

    exprs = ["man in red", "the dog on the left", "woman with a hat", "guy on right"]
    targets = {"replace": ["a giraffe"], "remove": ["remove"], "attribute": ["red", "wooden", "glass"]}
    n = 0
    for tid, t in TEMPLATES.items():
        for e in exprs:
            for tg in targets[t.edit_type]:
                if not t.accepts(tg):
                    continue
                p = compose(t.edit_type, e, tg, np.random.default_rng(0), template_id=tid)
                got = parse_instruction(p.text)
                ref = p.text[p.referring_span[0]:p.referring_span[1]]
                assert strip_article(got.referring).lower() == strip_article(ref).lower(), (p.text, got)
                assert got.kind == t.edit_type, (p.text, got)
                if t.edit_type == "replace":
                    assert got.edit == p.text[p.edit_span[0]:p.edit_span[1]]
                n += 1
    assert n > 150
    assert parse_instruction("Please paint the car in blue!") == \
        parse_instruction("Please paint the car in blue!")  # deterministic
    got = parse_instruction("Please paint the car in blue!")
    assert (got.referring, got.edit, got.kind) == ("the car", "blue", "attribute")
    got = parse_instruction("make the cow a horse instead")
    assert (got.referring, got.edit, got.kind) == ("the cow", "a horse", "replace")
    got = parse_instruction("zebra -> horse")  # not an instruction it knows: the whole sentence
    assert (got.referring, got.kind, got.rule) == ("zebra -> horse", "unknown", "none")


# ----------------------------------------------------------------------------------------------
# stages 2-3 with a fixed box
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,model", [("grounded-inpaint", "sd-inpaint"), ("grounded-blended", "sd"),
                                        ("grounded-pbe", "pbe")])
def test_fixed_box_edits_inside_that_box_only(name, model, boxes_file, exemplars):
    extra = {"exemplar_dir": str(exemplars)} if name == "grounded-pbe" else {}
    e = get_editor(name, _args(model, f"boxes:{boxes_file}", box_margin=0.0, **extra))
    assert e.protocol == frozenset() and e.returns_mask
    e.ensure_loaded()
    img = _image()
    prompt = "Replace the dog on the left with a panda."
    (a,) = e.edit([img], [prompt], [1], [{"sample_id": "a"}])
    assert isinstance(a, EditOutput) and a.image.shape == img.shape and a.image.dtype == np.uint8
    x0, y0, x1, y1 = BOX
    inside = np.zeros(img.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(a.image[~inside], img[~inside])  # nothing outside the box moved, bit for bit
    assert not np.array_equal(a.image[inside], img[inside])  # and it edited inside it
    m = np.asarray(a.mask, bool)
    assert m.shape == img.shape[:2] and m.any() and not m[~inside].any()  # SAM's mask, clipped to the box
    (b,) = e.edit([img], [prompt], [1], [{"sample_id": "a"}])
    assert np.array_equal(a.image, b.image)  # seeded
    (c,) = e.edit([img], [prompt], [2], [{"sample_id": "a"}])
    assert not np.array_equal(a.image, c.image)  # it really denoises: the seed's noise matters
    # a sample the box file does not know is a per-sample failure, not a crash
    (d,) = e.edit([img], [prompt], [1], [{"sample_id": "zzz"}])
    assert isinstance(d, EditFailure) and "no box" in d.message


def test_without_sam_the_box_is_the_mask(boxes_file):
    e = get_editor("grounded-inpaint", _args("sd-inpaint", f"boxes:{boxes_file}", sam_checkpoint="none", box_margin=0.0,
                                             dilate_px=0))
    e.ensure_loaded()
    img = _image()
    (a,) = e.edit([img], ["remove the dog"], [1], [{"sample_id": "a"}])
    x0, y0, x1, y1 = BOX
    want = np.zeros(img.shape[:2], bool)
    want[y0:y1, x0:x1] = True
    assert np.array_equal(np.asarray(a.mask, bool), want)
    assert e.describe()["stages"]["segmentation"].startswith("none")


def test_pbe_fails_per_sample_without_exemplar_or_replacement(boxes_file, exemplars):
    e = get_editor("grounded-pbe", _args("pbe", f"boxes:{boxes_file}", exemplar_dir=str(exemplars)))
    e.ensure_loaded()
    img = _image()
    outs = e.edit([img, img, img], ["replace the dog with a unicorn", "remove the dog", "replace the dog with a panda"],
                  [1, 1, 1], [{"sample_id": "a"}] * 3)
    assert isinstance(outs[0], EditFailure) and "no exemplar of 'a unicorn'" in outs[0].message
    assert isinstance(outs[1], EditFailure) and "replacements" in outs[1].message
    assert isinstance(outs[2], EditOutput)


# ----------------------------------------------------------------------------------------------
# stage 1: real (tiny, random) grounding models through grounder=PATH
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grounder", ["owlv2", "clipseg", "grounding-dino"])
def test_grounders_load_and_edit_in_a_batch(grounder):
    e = get_editor("grounded-inpaint", _args("sd-inpaint", tiny_bench(grounder)))
    e.ensure_loaded()
    assert e._grounder.describe()["model_type"] == grounder
    img, img2 = _image(), _image(41, 29, seed=5)
    prompts = ["replace the cow on the left with a panda", "make the dog red"]
    outs = e.edit([img, img2], prompts, [1, 3], [{"sample_id": "a"}, {"sample_id": "b"}])
    for o, src in zip(outs, (img, img2)):
        assert isinstance(o, EditOutput) and o.image.shape == src.shape
        m = np.asarray(o.mask, bool)
        assert m.any() and m.shape == src.shape[:2]
        changed = (o.image != src).any(axis=2)
        assert changed.any()
        from refcoco_edit.pipelines.masks import dilate

        assert not (changed & ~dilate(m, e.config["dilate_px"])).any()  # edits stay in the dilated found mask
    (alone,) = e.edit([img], prompts[:1], [1], [{"sample_id": "a"}])
    # a batch gives each sample what it gets alone: the same box and mask, the same seeded noise (up to
    # one grey level of float rounding between batched and single convolutions)
    assert np.array_equal(alone.mask, outs[0].mask)
    assert np.abs(alone.image.astype(int) - outs[0].image.astype(int)).max() <= 1


def test_phrase_modes_and_protocol(boxes_file):
    assert get_editor("grounded-inpaint").protocol == frozenset()
    span = get_editor("grounded-inpaint", {"phrase": "span"})
    assert span.protocol == {"referring_phrase"}
    assert span.describe()["grounding_protocol"]["phrase"] == "span"
    assert get_editor("grounded-sam-pbe").name == "grounded-pbe"  # an alias
    with pytest.raises(InputError, match="phrase must be"):
        get_editor("grounded-inpaint", {"phrase": "spans"})
    with pytest.raises(InputError, match="bad editor options"):
        get_editor("grounded-inpaint", {"exemplar_dir": "x"})  # a PbE option


def test_missing_or_wrong_models_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="sam_checkpoint=auto"):
        get_editor("grounded-inpaint", _args("sd-inpaint", tiny_bench("owlv2"), sam_checkpoint="auto")).ensure_loaded()
    with pytest.raises(InputError, match="model_type is 'clip'"):
        get_editor("grounded-inpaint", _args("sd-inpaint", tiny_bench("clip"))).ensure_loaded()
    with pytest.raises(InputError, match="no such file or folder"):
        get_editor("grounded-inpaint", _args("sd-inpaint", tmp_path / "nope")).ensure_loaded()
    with pytest.raises(InputError, match="boxes"):
        get_editor("grounded-inpaint", _args("sd-inpaint", f"boxes:{tmp_path / 'none.json'}")).ensure_loaded()
    with pytest.raises(InputError, match="exemplar_dir"):
        get_editor("grounded-pbe", _args("pbe", tiny_bench("owlv2"))).ensure_loaded()


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    from refcoco_edit.build import BuildConfig, build

    out = tmp_path_factory.mktemp("ge-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=2,
                             progress=False), log=lambda s: None).export_dir


def test_score_cli_reports_mask_iou(export, tmp_path):
    out = tmp_path / "grounded"
    args = []
    for k, v in _args("sd-inpaint", tiny_bench("owlv2")).items():
        args += ["--editor-arg", f"{k}={v}"]
    r = run_cli("score", "--model", "grounded-inpaint", *args, "--data", str(export), "--out", str(out), "--limit", "3",
                "--metrics", "referring,l2_bg", "--no-plots", "--bootstrap", "20", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    from refcoco_edit.benchmark.report import validate_results

    validate_results(res)
    assert res["counts"]["scored"] == 3 and res["counts"]["failed"] == 0
    ed = res["editor"]
    assert ed["name"] == "grounded-inpaint" and ed["protocol"] == [] and ed["returns_mask"]
    assert ed["grounding_protocol"]["phrase"] == "parse"
    iou = res["metrics"]["mask_iou"]
    assert iou["n"] == 3 and 0.0 <= iou["mean"] <= 1.0
    assert res["metrics"]["l2_bg"]["mean"] >= 0.0
    assert "Mask-IoU" in (out / "report.md").read_text()
