"""The identity metrics of the reference-based track (``ref_dino``, ``ref_clip_i``, ``ref_clip_t``,
``obj_dino``, ``obj_clip_i``) against independent computations, and the editors' ordering on the demo's reference-based export.

The references call the transformers models directly (``CLIPModel.forward`` with the saved
``CLIPProcessor``, ``ViTModel`` with its processor) on object views cut by hand here with other
numpy code (``np.pad`` for the square), and take cosines in numpy. The models are the tiny random
ones of ``support.tiny_bench_models``, saved to disk and loaded back through ``--clip-model PATH``
/ ``--dino-model PATH`` (``ModelMetrics.load``). Nothing touches the network.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
import pytest

from refcoco_edit.benchmark.editors.base import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.benchmark.metrics import FAMILIES, METRICS, plan, select_metrics
from refcoco_edit.benchmark.metrics.identity import GREY, NAMES, edited_region, object_view
from refcoco_edit.benchmark.metrics.model_based import ModelMetrics, ModelSample
from support.tiny_bench_models import tiny_bench

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IDENTITY = list(NAMES)  # ref_dino, ref_clip_i, ref_clip_t, obj_dino, obj_clip_i


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def models() -> Dict[str, str]:
    return {"clip_model": str(tiny_bench("clip")), "dino_model": str(tiny_bench("dino"))}


@pytest.fixture(scope="module")
def mm(models):
    return ModelMetrics(IDENTITY, models, device="cpu", batch_size=3).load()


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def ref_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tight box of the mask, grey (128) outside it, padded to a centred square with np.pad."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = image[y0:y1, x0:x1].astype(np.int32)
    crop[~mask[y0:y1, x0:x1]] = 128
    h, w = crop.shape[:2]
    d = abs(h - w)
    pad = ((d // 2, d - d // 2), (0, 0)) if w > h else ((0, 0), (d // 2, d - d // 2))
    return np.pad(crop, pad + ((0, 0),), constant_values=128).astype(np.uint8)


def ref_cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class RefModels:
    """CLIPModel.forward + CLIPProcessor and ViTModel + its processor, straight from the folders."""

    def __init__(self, models: Dict[str, str]):
        from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

        self.clip = CLIPModel.from_pretrained(models["clip_model"], local_files_only=True).eval()
        self.proc = CLIPProcessor.from_pretrained(models["clip_model"], local_files_only=True)
        self.vit = ViTModel.from_pretrained(models["dino_model"], local_files_only=True, add_pooling_layer=False).eval()
        self.vproc = AutoImageProcessor.from_pretrained(models["dino_model"], local_files_only=True)

    def clip_pair(self, image: np.ndarray, text: str):
        inp = self.proc(text=[text], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            o = self.clip(**inp)
        return o.image_embeds[0].double().numpy(), o.text_embeds[0].double().numpy()

    def clip_image(self, image: np.ndarray) -> np.ndarray:
        return self.clip_pair(image, "x")[0]

    def dino(self, image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.vit(**self.vproc(images=[image], return_tensors="pt")).last_hidden_state[0, 0].double().numpy()


def _samples() -> List[ModelSample]:
    """Three hand-made reference-based samples (exemplars of their own sizes) and one without."""
    rng = np.random.default_rng(5)
    out = []
    for k, ((h, w), (eh, ew)) in enumerate([((70, 90), (48, 60)), ((64, 64), (40, 40)), ((60, 80), (50, 30))]):
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        me = np.zeros((h, w), bool)
        me[8 + k:40, 12:60 - 3 * k] = True
        me[45, 20] = True  # a stray pixel: the box is the tight box of all of M_e
        o = src.copy()
        o[me] = rng.integers(0, 256, (int(me.sum()), 3), dtype=np.uint8)
        ex = rng.integers(0, 256, (eh, ew, 3), dtype=np.uint8)
        exm = np.zeros((eh, ew), bool)
        exm[5:eh - 4 - 2 * k, 3 + k:ew - 6] = True  # not square: the padding matters
        after = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # the after photo: the obj_* anchor
        out.append(ModelSample(output=o, source=src, edit_mask=me, exemplar=ex, exemplar_mask=exm, reference=after,
                               prompt=["replace the donut with a bowl", "add a vase", "add a red cup"][k],
                               edit_phrase=["with a bowl", "add a vase", "add a red cup"][k]))
    s = out[0]
    out.append(ModelSample(output=s.output, source=s.source, edit_mask=s.edit_mask, prompt=s.prompt,
                           edit_phrase=s.edit_phrase))  # an rie sample: no exemplar -> NaN
    return out


# ----------------------------------------------------------------------------------------------
# views and values vs the references
# ----------------------------------------------------------------------------------------------


def test_object_view_is_the_masked_box_padded_square():
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    m = np.zeros((6, 8), bool)
    m[1:3, 2:7] = True
    m[2, 2] = False
    v = object_view(img, m)
    assert v.shape == (5, 5, 3) and v.dtype == np.uint8
    np.testing.assert_array_equal(v, ref_view(img, m))
    assert (v[0] == GREY).all() and (v[3:] == GREY).all()  # 2 rows of object, padded to 5: 1 above, 2 below
    np.testing.assert_array_equal(v[1, :], img[1, 2:7])
    assert (v[2, 0] == GREY).all()  # inside the box, outside the mask
    assert object_view(img, np.zeros((6, 8), bool)) is None
    with pytest.raises(ValueError, match="mask is"):
        object_view(img, np.ones((5, 8), bool))


def test_edited_region_prefers_the_editors_mask():
    me = np.zeros((4, 4), bool)
    me[0, 0] = True
    levels = np.zeros((4, 4), np.uint8)
    levels[2:, 2:] = 200
    levels[1, 1] = 127  # p < 0.5
    np.testing.assert_array_equal(edited_region(me, levels), levels >= 128)
    np.testing.assert_array_equal(edited_region(me, levels / 255.0), levels >= 128)
    np.testing.assert_array_equal(edited_region(me, None), me)
    np.testing.assert_array_equal(edited_region(me, np.zeros((4, 4), np.uint8)), me)  # an empty mask: M_e


def test_identity_metrics_match_direct_model_calls(mm, models):
    ref = RefModels(models)
    samples = _samples()
    got = mm.compute(samples)
    for s, g in zip(samples[:3], got):
        ed, rf = ref_view(s.output, s.edit_mask), ref_view(s.exemplar, s.exemplar_mask)
        assert ed.shape[0] == ed.shape[1] and rf.shape[0] == rf.shape[1]
        assert g["ref_dino"] == pytest.approx(ref_cos(ref.dino(ed), ref.dino(rf)), abs=1e-6)
        assert g["ref_clip_i"] == pytest.approx(ref_cos(ref.clip_image(ed), ref.clip_image(rf)), abs=1e-6)
        i, t = ref.clip_pair(s.output, s.edit_phrase)
        assert g["ref_clip_t"] == pytest.approx(ref_cos(i, t), abs=1e-6)  # a cosine, like clip_t (not x100)
        gt = ref_view(s.reference, s.edit_mask)  # the after photo in M_e
        assert g["obj_dino"] == pytest.approx(ref_cos(ref.dino(ed), ref.dino(gt)), abs=1e-6)
        assert g["obj_clip_i"] == pytest.approx(ref_cos(ref.clip_image(ed), ref.clip_image(gt)), abs=1e-6)
        # the view is what is scored: unpadded or unmasked crops give other numbers
        ys, xs = np.nonzero(s.edit_mask)
        plain = s.output[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert g["ref_dino"] != pytest.approx(ref_cos(ref.dino(plain), ref.dino(rf)), abs=1e-6)
    assert all(math.isnan(v) for v in got[3].values())  # no exemplar: not applicable


def test_the_editors_mask_is_the_edited_region(mm, models):
    ref = RefModels(models)
    s = _samples()[0]
    pred = np.zeros(s.edit_mask.shape, np.uint8)
    pred[20:50, 30:80] = 255  # the editor says the object is elsewhere
    got = mm.compute([ModelSample(output=s.output, source=s.source, edit_mask=s.edit_mask, exemplar=s.exemplar,
                                  exemplar_mask=s.exemplar_mask, pred_mask=pred, edit_phrase=s.edit_phrase,
                                  reference=s.reference)])[0]
    ed, rf = ref_view(s.output, pred >= 128), ref_view(s.exemplar, s.exemplar_mask)
    assert got["ref_dino"] == pytest.approx(ref_cos(ref.dino(ed), ref.dino(rf)), abs=1e-6)
    assert got["ref_clip_i"] == pytest.approx(ref_cos(ref.clip_image(ed), ref.clip_image(rf)), abs=1e-6)
    # obj_*: M_e on both sides whatever the editor returns (no mask can choose what is compared)
    ed, gt = ref_view(s.output, s.edit_mask), ref_view(s.reference, s.edit_mask)
    assert got["obj_dino"] == pytest.approx(ref_cos(ref.dino(ed), ref.dino(gt)), abs=1e-6)


def test_batching_does_not_change_values(models):
    samples = _samples()
    a = ModelMetrics(IDENTITY, models, device="cpu", batch_size=1).compute(samples)
    b = ModelMetrics(IDENTITY, models, device="cpu", batch_size=8).compute(samples[::-1])[::-1]
    for x, y in zip(a, b):
        for n in IDENTITY:
            assert (math.isnan(x[n]) and math.isnan(y[n])) or y[n] == pytest.approx(x[n], rel=1e-5, abs=1e-5)


def test_registry_family_and_plan():
    assert FAMILIES["identity"] == ("ref_dino", "ref_clip_i", "ref_clip_t", "obj_dino", "obj_clip_i")
    assert select_metrics(["identity"]) == list(FAMILIES["identity"])
    assert all(METRICS[n].higher_is_better for n in IDENTITY)
    ok, skipped = plan(IDENTITY, {"clip_model": "c"}, view="reference-based")
    assert ok == ["ref_clip_i", "ref_clip_t", "obj_clip_i"]
    assert skipped == {"ref_dino": "needs --dino-model", "obj_dino": "needs --dino-model"}
    ok, skipped = plan(IDENTITY + ["l2_bg"], {"clip_model": "c", "dino_model": "d"}, view="rie")
    assert ok == ["l2_bg"]
    assert skipped["ref_dino"] == "needs a reference-based export (each sample's exemplar); this data is the rie view"
    assert set(skipped) == set(IDENTITY)


# ----------------------------------------------------------------------------------------------
# acceptance: the editors' ordering on the demo's reference-based export
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    """The demo built on 8 images (its rie export) and its reference-based export (10 triplets)."""
    from refcoco_edit.build import BuildConfig, build
    from refcoco_edit.export import export_workspace

    out = tmp_path_factory.mktemp("identity-build")
    res = build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=8,
                               progress=False), log=lambda s: None)
    rb = out / "reference-based"
    export_workspace(res.workdir, out=rb, view="reference-based")
    return {"rie": res.export_dir, "rb": rb}


class WrongReferenceEditor(Editor):
    """copy-paste with the *wrong* reference: the exemplar of another triplet of the same data --
    the next one by sample_id (cyclically) whose category differs (in the synthetic demo two
    objects of one category are near copies, so a same-category exemplar would not be a wrong
    identity) -- scaled into the box of M_e exactly as ``copy-paste`` does."""

    name = "wrong-reference"
    protocol = frozenset({"reference_object", "gt_mask"})
    batch_size = 16

    def __init__(self, data: str) -> None:
        super().__init__(data=data)
        self.data = data

    def load(self) -> None:
        from refcoco_edit.benchmark.data import decode_sample, load_dataset

        samples = sorted(load_dataset(self.data).samples, key=lambda s: s.sample_id)
        self.wrong: Dict[str, Any] = {}
        for k, s in enumerate(samples):
            other = next(samples[(k + j) % len(samples)] for j in range(1, len(samples))
                         if samples[(k + j) % len(samples)].category != s.category)
            d = decode_sample(other)
            self.wrong[s.sample_id] = (d.exemplar, d.exemplar_mask)

    def edit(self, images, prompts, seeds, extras):
        from refcoco_edit.benchmark.editors.copy_paste import paste_object

        out = []
        for img, e in zip(images, extras):
            ex, exm = self.wrong[e["sample_id"]]
            ys, xs = np.nonzero(e["gt_mask"])
            out.append(paste_object(img, ex, exm, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))[0])
        return out


@pytest.fixture(scope="module")
def runs(built, models, tmp_path_factory):
    """oracle, identity, copy-paste and wrong-reference scored on the reference-based export with
    the identity family and MagicBrush's dino / clip_i (one loaded ModelMetrics for all four)."""
    names = IDENTITY + ["dino", "clip_i"]
    shared = ModelMetrics(names, models, device="cpu", batch_size=16).load()
    out = tmp_path_factory.mktemp("identity-runs")
    res = {}
    for model in ("oracle", "identity", "copy-paste", "wrong"):
        editor = WrongReferenceEditor(str(built["rb"])) if model == "wrong" else None
        r = run_score(ScoreConfig(model=model, data=str(built["rb"]), out=str(out / model), plots=False, gallery=False,
                                  bootstrap=20, device="cpu", metrics=["identity", "dino", "clip_i"], **models),
                      editor=editor, log=lambda s: None, model_metrics=shared)
        res[model] = r
    return res


def _per_sample(run, name: str) -> Dict[str, float]:
    return {rec["sample_id"]: rec["metrics"][name] for rec in run.records if rec["status"] == "ok"}


def test_acceptance_ordering_on_the_reference_based_demo(runs):
    """The exemplar-anchored pair (ref_dino, ref_clip_i, FreeEdit's and DreamBench's definition) on
    the demo's 10 reference-based triplets with tiny random DINO / CLIP (seeded; the same orderings hold for other seeds and model sizes, and on
    the full demo's 62 triplets, see the report of issue 23).

    "oracle at the maximum, identity at the minimum" is a per-sample *ordering among the editors*,
    not the absolute maximum 1.0: the exemplar is the real object warped (scale, rotation, mirror
    flip) onto a synthetic backdrop and M_e holds some real surrounding, so the oracle's cosine
    stays below 1 (asserted). Per sample, on ref_dino and ref_clip_i:

    * oracle > identity and copy-paste > identity in the mean and on at least 80% of samples (full
      demo: 58-62 of 62; random encoders can tie a replaced object of similar colours with the
      real one on a sample: since the classical replacement blends its paste, 9 of the test's 10);
    * the wrong reference (another category's exemplar pasted the copy-paste way) is below
      copy-paste and below the oracle in the mean and on at least 80% of samples: random-weight
      encoders see colour and layout, not category, so a wrong object of similar colours can
      tie on a sample (measured on 62 triplets x 3 seeds: copy-paste > wrong on 60-62, oracle >
      wrong on 57-60); identity is the lowest mean of all four (per sample, identity and wrong
      are two wrong identities with no order between them).

    What does *not* hold, and is asserted so that it is not hidden: copy-paste is not between the
    oracle and identity -- it scores *above* the oracle in the mean (and on 51 to 58 of the full
    demo's 62 triplets, 3 model seeds). The identity metrics compare with the exemplar, and copy-paste reproduces the
    exemplar's own pixels (same pose, same flip), while the real after image shows the object in
    its original pose with its real surrounding inside M_e. A copy of the reference is what an
    exemplar-similarity metric rewards most (DreamBench's known blind spot); copy-paste's failure
    is visible against the after image instead, where the oracle is 1 and copy-paste is not
    (MagicBrush's dino / clip_i, asserted below, and the object-anchored obj_dino / obj_clip_i,
    where the issue's ordering holds as written: the next test). ref_clip_t is left out of the ordering: with a
    random text tower it carries no meaning; it is checked against the direct computation above.
    """
    editors = ("oracle", "identity", "copy-paste", "wrong")
    for r in runs.values():
        assert r.results["counts"]["scored"] == 10 and not r.results["not_computed"]
    for name in ("ref_dino", "ref_clip_i"):
        v = {m: _per_sample(runs[m], name) for m in editors}
        ids = sorted(v["oracle"])
        a = {m: np.array([v[m][i] for i in ids]) for m in editors}
        mean = {m: float(a[m].mean()) for m in editors}
        for hi in ("oracle", "copy-paste"):
            assert mean[hi] > mean["identity"] and (a[hi] > a["identity"]).sum() >= 0.8 * len(ids), (name, hi)
        assert mean["wrong"] < mean["copy-paste"] and (a["wrong"] < a["copy-paste"]).sum() >= 0.8 * len(ids), name
        assert mean["wrong"] < mean["oracle"] and (a["wrong"] < a["oracle"]).sum() >= 0.8 * len(ids), name
        assert mean["identity"] == min(mean.values()), (name, mean)
        assert a["oracle"].max() < 1.0  # the exemplar is a warped copy: the oracle is not at cos = 1
        assert mean["copy-paste"] > mean["oracle"], (name, mean)  # the documented blind spot, see above
        # the harness's mean is the mean of these per-sample values
        assert runs["oracle"].results["metrics"][name]["mean"] == pytest.approx(mean["oracle"])
    for name in ("dino", "clip_i"):  # against the after image: the oracle is 1, copy-paste below on every sample
        cp, orc = _per_sample(runs["copy-paste"], name), _per_sample(runs["oracle"], name)
        assert all(orc[i] == pytest.approx(1.0) and cp[i] < orc[i] - 1e-6 for i in orc), name


def test_acceptance_ordering_on_the_object_anchored_identity(runs):
    """The issue's acceptance as written, on the ground-truth-anchored identity metrics (obj_dino,
    obj_clip_i: the output against the after photo's real object, both in M_e):

    * the oracle at the maximum, cos = 1, on every sample; copy-paste strictly below it on every
      sample (it pastes the warped exemplar over the before image's remains);
    * identity (the before image) below copy-paste and the wrong reference below copy-paste, in the
      mean and on at least 80% of samples, identity the lowest mean. Random-weight encoders see
      colour and layout, not category, so a replaced object of similar shape and colour can tie
      with the paste on a sample: on the full demo's 62 triplets x 3 model seeds, identity <
      copy-paste held on 56-61, wrong < copy-paste on 55-59, oracle = 1 and copy-paste < oracle
      on 62 of 62 (issue 23's note).
    """
    editors = ("oracle", "identity", "copy-paste", "wrong")
    for name in ("obj_dino", "obj_clip_i"):
        v = {m: _per_sample(runs[m], name) for m in editors}
        ids = sorted(v["oracle"])
        assert len(ids) == 10
        a = {m: np.array([v[m][i] for i in ids]) for m in editors}
        mean = {m: float(a[m].mean()) for m in editors}
        np.testing.assert_allclose(a["oracle"], 1.0, rtol=0, atol=1e-6)  # the maximum, on every sample
        assert (a["copy-paste"] < a["oracle"] - 1e-6).all(), name
        for low in ("identity", "wrong"):
            assert mean[low] < mean["copy-paste"] and (a[low] < a["copy-paste"]).sum() >= 0.8 * len(ids), (name, low)
        assert mean["identity"] == min(mean.values()), (name, mean)


def test_results_json_records_the_identity_protocol(runs):
    from refcoco_edit.benchmark.report import validate_results

    r = runs["copy-paste"].results
    validate_results(r)
    assert r["metrics"]["ref_dino"]["family"] == "identity"
    rules = r["config"]["model_metrics"]["rules"]
    assert "tight box" in rules["identity_edited_view"] and f"({GREY}, {GREY}, {GREY})" in rules["identity_edited_view"]
    assert "exemplar_mask" in rules["identity_reference_view"] and "padded to a square" in rules["identity_reference_view"]
    assert "not x100" in rules["ref_clip_t"]
    assert "M_e" in rules["identity_object_view"] and "never the editor's mask" in rules["identity_object_view"]
    assert set(r["config"]["model_details"]) == {"clip_model", "dino_model"}
    md = (runs["copy-paste"].out / "report.md").read_text()
    assert "Identity (reference-based track" in md and "Ref-DINO" in md and "Obj-DINO" in md


def test_identity_family_is_skipped_on_rie_data(built, models, tmp_path):
    r = run_score(ScoreConfig(model="identity", data=str(built["rie"]), out=str(tmp_path / "rie"), plots=False,
                              gallery=False, bootstrap=0, device="cpu", metrics=["identity", "l2_bg"], limit=3, **models),
                  log=lambda s: None).results
    assert list(r["metrics"]) == ["l2_bg"]
    for n in IDENTITY:
        assert r["not_computed"][n]["reason"] == ("needs a reference-based export (each sample's exemplar); "
                                                  "this data is the rie view")
    assert r["config"]["model_details"] == {}  # nothing was loaded for metrics that cannot run

