"""The model-based metrics (AP, CLIP-Sim_fg, CLIP whole/edited, CLIP-I/T, DINO, LPIPS_bg) against
independent reference computations written here, with tiny random models saved to disk and
loaded back through the metrics' own loading path (``--clip-model PATH`` etc.).

The references call the transformers models directly (``CLIPModel.forward`` with the saved
``CLIPProcessor``; ``ViTModel`` with its processor), take the crops with their own numpy code,
run the aesthetic MLP in numpy and LPIPS with raw ``torch.nn.functional`` convolutions on the
saved state dicts and OpenCV's bilinear resize. Nothing here touches the network.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.benchmark.metrics import METRICS, plan
from refcoco_edit.benchmark.metrics.model_based import NAMES, ModelMetrics, ModelSample, target_text
from refcoco_edit.errors import InputError
from support.tiny_bench_models import tiny_bench

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def paths():
    return {k: tiny_bench(k) for k in ("clip", "aesthetic", "dino", "lpips")}


@pytest.fixture(scope="module")
def models(paths):
    return {"clip_model": str(paths["clip"]), "aesthetic_weights": str(paths["aesthetic"]),
            "dino_model": str(paths["dino"]), "lpips_weights": str(paths["lpips"])}


@pytest.fixture(scope="module")
def mm(models):
    return ModelMetrics(NAMES, models, device="cpu", batch_size=2).load()


def _samples():
    rng = np.random.default_rng(3)
    out = []
    for k, (h, w) in enumerate([(70, 90), (64, 64), (70, 90)]):
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        me = np.zeros((h, w), bool)
        me[8 + k:40, 12:60 - k] = True
        me[20, 70 % w] = True  # a stray pixel: the box is the tight box of all of M_e
        o = src.copy()
        o[me] = rng.integers(0, 256, (int(me.sum()), 3), dtype=np.uint8)
        ref = np.clip(o.astype(int) + rng.integers(-30, 30, o.shape), 0, 255).astype(np.uint8)
        out.append(ModelSample(output=o, source=src, edit_mask=me, reference=ref,
                               prompt=["Replace the cow in the back with a panda.", "Make the red car blue.",
                                       "Remove the dog on the left."][k],
                               edit_phrase=["a panda", "blue", "Remove"][k],
                               referring_phrase=["the cow in the back", "the red car", "the dog on the left"][k],
                               target_text=target_text(["replace", "attribute", "remove"][k], ["panda", "blue", ""][k],
                                                       ["cow", "car", "dog"][k])))
    return out


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


class RefClip:
    """CLIPModel.forward + CLIPProcessor, straight from the saved folder."""

    def __init__(self, path):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
        self.proc = CLIPProcessor.from_pretrained(str(path), local_files_only=True)

    def pair(self, image, text):
        """(normalised image embedding, normalised text embedding) as float64 numpy."""
        inp = self.proc(text=[text], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            o = self.model(**inp)
        return o.image_embeds[0].double().numpy(), o.text_embeds[0].double().numpy()

    def image(self, image):
        return self.pair(image, "x")[0]


def ref_crop(img, mask):
    ys, xs = np.nonzero(mask)
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def ref_cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_aesthetic(path, emb_normalised):
    sd = {k: v.double().numpy() for k, v in torch.load(str(path), weights_only=True).items()}
    x = np.asarray(emb_normalised, np.float64)
    for k in ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"):  # no activations in the published MLP
        x = x @ sd[k + ".weight"].T + sd[k + ".bias"]
    return float(x[0, 0])


def ref_lpips_map(folder, a, b):
    """LPIPS-alex v0.1 spatial map, from the raw state dicts with functional ops + cv2 upsampling."""
    import cv2
    import torch.nn.functional as F

    feats = torch.load(str(Path(folder) / "alexnet-random.pth"), weights_only=True)
    lin = torch.load(str(Path(folder) / "alex.pth"), weights_only=True)
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1).double()
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1).double()

    def taps(img):
        x = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None] / 127.5 - 1.0
        x = (x - shift) / scale
        W = {k: v.double() for k, v in feats.items()}
        r1 = F.relu(F.conv2d(x, W["features.0.weight"], W["features.0.bias"], stride=4, padding=2))
        x = F.max_pool2d(r1, 3, 2)
        r2 = F.relu(F.conv2d(x, W["features.3.weight"], W["features.3.bias"], padding=2))
        x = F.max_pool2d(r2, 3, 2)
        r3 = F.relu(F.conv2d(x, W["features.6.weight"], W["features.6.bias"], padding=1))
        r4 = F.relu(F.conv2d(r3, W["features.8.weight"], W["features.8.bias"], padding=1))
        r5 = F.relu(F.conv2d(r4, W["features.10.weight"], W["features.10.bias"], padding=1))
        return [t[0].numpy() for t in (r1, r2, r3, r4, r5)]

    h, w = a.shape[:2]
    total = np.zeros((h, w))
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        na = fa / (np.sqrt((fa ** 2).sum(0, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb ** 2).sum(0, keepdims=True)) + 1e-10)
        wk = lin[f"lin{k}.model.1.weight"].double().numpy().reshape(-1)
        d = np.tensordot(wk, (na - nb) ** 2, axes=(0, 0))
        total += cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
    return total


# ----------------------------------------------------------------------------------------------
# metric values vs the references
# ----------------------------------------------------------------------------------------------


def test_clip_metrics_match_direct_model_calls(mm, paths):
    ref = RefClip(paths["clip"])
    samples = _samples()
    got = mm.compute(samples)
    for s, g in zip(samples, got):
        crop = ref_crop(s.output, s.edit_mask)
        if s.target_text:
            i, t = ref.pair(crop, s.target_text)
            assert g["clip_sim_fg"] == pytest.approx(100 * ref_cos(i, t), abs=1e-4)
        else:
            assert math.isnan(g["clip_sim_fg"])  # a removal has no target text
        i, t = ref.pair(crop, s.referring_phrase)
        assert g["clip_sim_fg_pr"] == pytest.approx(100 * ref_cos(i, t), abs=1e-4)
        i, t = ref.pair(s.output, s.prompt)
        assert g["clip_t"] == pytest.approx(ref_cos(i, t), abs=1e-6)
        assert g["clip_whole"] == pytest.approx(max(100 * ref_cos(i, t), 0.0), abs=1e-4)
        masked = s.output * s.edit_mask[..., None].astype(np.uint8)
        i, t = ref.pair(masked, s.edit_phrase)
        assert g["clip_edited"] == pytest.approx(max(100 * ref_cos(i, t), 0.0), abs=1e-4)
        assert g["clip_i"] == pytest.approx(ref_cos(ref.image(s.output), ref.image(s.reference)), abs=1e-6)
    # the texts differ, so do the scores: the crop really is scored against each text
    assert got[0]["clip_sim_fg"] != got[0]["clip_sim_fg_pr"]


def test_clip_whole_is_clamped_at_zero_like_clipscore():
    class FakeClip:  # image embedding = [1, 0]; text "neg" points the other way
        embed_dim = 2

        def images(self, imgs):
            return np.tile([1.0, 0.0], (len(imgs), 1))

        def texts(self, texts):
            return np.array([[-1.0, 0.2] if t == "neg" else [1.0, 1.0] for t in texts])

    s = ModelSample(output=np.zeros((4, 4, 3), np.uint8), source=np.zeros((4, 4, 3), np.uint8),
                    edit_mask=np.eye(4, dtype=bool), prompt="neg", edit_phrase="pos", referring_phrase="neg",
                    target_text="pos")
    mm = ModelMetrics(["clip_whole", "clip_t", "clip_edited", "clip_sim_fg", "clip_sim_fg_pr"], {}, clip=FakeClip())
    g = mm.compute([s])[0]
    c_neg = -1.0 / math.hypot(1.0, 0.2)
    assert g["clip_t"] == pytest.approx(c_neg) and g["clip_whole"] == 0.0
    assert g["clip_sim_fg_pr"] == pytest.approx(100 * c_neg)  # the paper's 100*cos is not clamped
    assert g["clip_edited"] == pytest.approx(100 / math.sqrt(2)) and g["clip_sim_fg"] == pytest.approx(100 / math.sqrt(2))
    empty = ModelSample(output=s.output, source=s.source, edit_mask=np.zeros((4, 4), bool), prompt="neg",
                        edit_phrase="pos", referring_phrase="neg", target_text="pos")
    g = mm.compute([empty])[0]
    assert math.isnan(g["clip_sim_fg"]) and math.isnan(g["clip_edited"]) and not math.isnan(g["clip_whole"])


def test_aesthetic_matches_a_numpy_mlp_on_the_normalised_embedding(mm, paths):
    ref = RefClip(paths["clip"])
    samples = _samples()
    got = mm.compute(samples)
    for s, g in zip(samples, got):
        emb = ref.image(s.output)  # CLIPModel.forward's image_embeds: already L2-normalised
        assert np.linalg.norm(emb) == pytest.approx(1.0)
        assert g["ap"] == pytest.approx(ref_aesthetic(paths["aesthetic"], emb[None]), abs=1e-5)


def test_dino_matches_the_cls_token_of_a_direct_call(mm, paths):
    from transformers import AutoImageProcessor, ViTModel

    model = ViTModel.from_pretrained(str(paths["dino"]), local_files_only=True, add_pooling_layer=False).eval()
    proc = AutoImageProcessor.from_pretrained(str(paths["dino"]), local_files_only=True)

    def cls(img):
        with torch.no_grad():
            return model(**proc(images=[img], return_tensors="pt")).last_hidden_state[0, 0].double().numpy()

    samples = _samples()
    for s, g in zip(samples, mm.compute(samples)):
        assert g["dino"] == pytest.approx(ref_cos(cls(s.output), cls(s.reference)), abs=1e-6)


def test_lpips_bg_matches_a_functional_reference(mm, paths):
    import dataclasses

    rng = np.random.default_rng(11)
    samples = []  # _samples() edit inside M_e only: add a background change for LPIPS to measure
    for s in _samples():
        noisy = np.clip(s.output.astype(int) + rng.integers(-40, 41, s.output.shape), 0, 255).astype(np.uint8)
        samples.append(dataclasses.replace(s, output=np.where(s.edit_mask[..., None], s.output, noisy)))
    got = mm.compute(samples)
    for s, g in zip(samples, got):
        # the map of (output with the source inside M_e, source): receptive fields across M_e's border
        # see the source there on both sides
        ref_map = ref_lpips_map(paths["lpips"], np.where(s.edit_mask[..., None], s.source, s.output), s.source)
        bg = ~s.edit_mask
        assert g["lpips_bg"] == pytest.approx(float(ref_map[bg].mean()), rel=1e-4, abs=1e-7)
        assert g["lpips_bg"] != pytest.approx(float(ref_map.mean()), rel=1e-3)  # over bg only, not the whole map
        raw = ref_lpips_map(paths["lpips"], s.output, s.source)
        assert g["lpips_bg"] != pytest.approx(float(raw[bg].mean()), rel=1e-3)  # not the raw output's map
    # the single-file format (a whole lpips.LPIPS state dict) gives the same maps
    one = ModelMetrics(["lpips_bg"], {"lpips_weights": str(paths["lpips"] / "full" / "lpips_alex_full.pth")}, device="cpu")
    assert [r["lpips_bg"] for r in one.compute(samples)] == pytest.approx([g["lpips_bg"] for g in got], rel=1e-6)
    same = ModelSample(output=samples[0].source, source=samples[0].source, edit_mask=samples[0].edit_mask)
    assert one.compute([same])[0]["lpips_bg"] == 0.0
    inside = samples[0].source.copy()  # an edit inside M_e only (the oracle's case): exactly 0 as well
    inside[samples[0].edit_mask] = 255 - inside[samples[0].edit_mask]
    assert one.compute([ModelSample(output=inside, source=samples[0].source,
                                    edit_mask=samples[0].edit_mask)])[0]["lpips_bg"] == 0.0
    full = ModelSample(output=samples[0].output, source=samples[0].source,
                       edit_mask=np.ones_like(samples[0].edit_mask))
    assert math.isnan(one.compute([full])[0]["lpips_bg"])  # no background


def test_batching_does_not_change_values(models):
    samples = _samples()
    a = ModelMetrics(NAMES, models, device="cpu", batch_size=1).compute(samples)
    b = ModelMetrics(NAMES, models, device="cpu", batch_size=8).compute(samples[::-1])[::-1]
    for x, y in zip(a, b):
        for n in NAMES:
            if math.isnan(x[n]):
                assert math.isnan(y[n])
            else:  # float32 GEMMs of other batch shapes: last-bit differences, scaled by 100 for CLIP scores
                assert y[n] == pytest.approx(x[n], rel=1e-4, abs=1e-4)


def test_target_text_rule():
    assert target_text("replace", "giraffe", "cow") == "giraffe"
    assert target_text("attribute", "red", "car") == "red car"
    assert target_text("remove", "", "dog") == ""
    assert target_text("add", "hat", "person") == "hat"


# ----------------------------------------------------------------------------------------------
# loading: paths, kinds, mismatches, the hub cache
# ----------------------------------------------------------------------------------------------


def test_model_details_are_recorded(mm, paths):
    d = mm.describe()
    assert set(d) == {"clip_model", "aesthetic_weights", "dino_model", "lpips_weights"}
    assert d["clip_model"]["projection_dim"] == 32 and len(d["clip_model"]["weights_sha256"]) == 64
    assert d["clip_model"]["image_input"]["crop_size"] == {"height": 32, "width": 32}
    assert d["aesthetic_weights"]["input_dim"] == 32 and d["lpips_weights"]["net"] == "alex"
    assert d["dino_model"]["model_type"] == "vit"
    assert mm.describe() == d  # stable: results.json of two runs are identical
    json.dumps(d)
    rules = mm.settings()["rules"]
    assert "tight box of M_e" in rules["clip_sim_fg_crop"] and "set to 0" in rules["clip_edited_view"]


def test_bad_models_are_input_errors(paths, tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        ModelMetrics(["clip_i"], {"clip_model": str(tmp_path / "nope")}).load()
    with pytest.raises(InputError, match="expected a CLIP model"):
        ModelMetrics(["clip_i"], {"clip_model": str(paths["dino"])}).load()
    with pytest.raises(InputError, match="expected a ViT or DINOv2"):
        ModelMetrics(["dino"], {"dino_model": str(paths["clip"])}).load()
    from support.tiny_bench_models import save_tiny_aesthetic

    wrong = save_tiny_aesthetic(tmp_path / "a768.pth", input_dim=768)
    with pytest.raises(InputError, match="768-d image embeddings"):
        ModelMetrics(["ap"], {"clip_model": str(paths["clip"]), "aesthetic_weights": str(wrong)}).load()
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.pth"))
    with pytest.raises(InputError, match="not a LAION aesthetic predictor"):
        ModelMetrics(["ap"], {"clip_model": str(paths["clip"]), "aesthetic_weights": str(tmp_path / "bad.pth")}).load()
    with pytest.raises(InputError, match="linear layers only"):
        ModelMetrics(["lpips_bg"], {"lpips_weights": str(paths["lpips"] / "alex.pth")}).load()
    (tmp_path / "pickle.pth").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot be read"):
        ModelMetrics(["lpips_bg"], {"lpips_weights": str(tmp_path / "pickle.pth")}).load()


def test_hub_ids_come_from_the_local_cache_only(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        ModelMetrics(["clip_t"], {"clip_model": "openai/clip-vit-large-patch14"}).load()
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        ModelMetrics(["ap"], {"clip_model": "x", "aesthetic_weights": "camenduru/improved-aesthetic-predictor/"
                                                                      "sac+logos+ava1-l14-linearMSE.pth"},
                     clip=object()).load()


def test_plan_needs_every_weight_of_a_metric():
    ok, skipped = plan(list(NAMES), {"clip_model": "c"})
    assert skipped == {"ap": "needs --aesthetic-weights", "dino": "needs --dino-model",
                       "lpips_bg": "needs --lpips-weights"}
    assert set(ok) == set(NAMES) - set(skipped)
    assert all(METRICS[n].implemented for n in NAMES)


# ----------------------------------------------------------------------------------------------
# through the harness
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    from refcoco_edit.build import BuildConfig, build

    out = tmp_path_factory.mktemp("mm-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=3,
                             progress=False), log=lambda s: None).export_dir


def _score(export, out, model, models, **kw):
    return run_score(ScoreConfig(model=model, data=str(export), out=str(out), plots=False, gallery=False, bootstrap=50,
                                 device="cpu", metric_batch_size=3, **models, **kw), log=lambda s: None)


def test_score_run_with_every_model_metric(export, models, tmp_path):
    res = _score(export, tmp_path / "o", "oracle", models, limit=4)
    r = res.results
    # the oracle predicts no mask, the rie view has no exemplars (identity family); every other model metric runs
    assert list(r["not_computed"]) == ["ref_dino", "ref_clip_i", "ref_clip_t", "obj_dino", "obj_clip_i", "mask_iou"]
    for n in NAMES:
        assert r["metrics"][n]["n"] + r["metrics"][n]["n_not_applicable"] == r["counts"]["scored"] == 4
    assert r["metrics"]["clip_i"]["mean"] == pytest.approx(1.0) and r["metrics"]["dino"]["mean"] == pytest.approx(1.0)
    # the oracle's background is exact: LPIPS_bg is 0 on every sample (its receptive fields see M_e's source pixels)
    assert [rec["metrics"]["lpips_bg"] for rec in res.records] == [0.0] * 4
    assert r["metrics"]["l2_bg"]["mean"] == 0.0
    cfg = r["config"]
    assert cfg["models"]["clip_model"] == models["clip_model"]
    assert cfg["model_details"]["clip_model"]["weights_sha256"] and cfg["model_details"]["lpips_weights"]["net"] == "alex"
    assert cfg["model_metrics"]["device"] == "cpu" and "clip_sim_fg_text" in cfg["model_metrics"]["rules"]
    assert r["versions"]["torch"] and r["versions"]["transformers"]
    from refcoco_edit.benchmark.report import validate_results

    validate_results(r)
    md = (res.out / "report.md").read_text()
    assert "CLIP-Sim_fg (target)" in md and "CLIP-Sim_fg (P_r)" in md and "sha256" in md
    # per-sample values equal a direct ModelMetrics pass over the decoded arrays
    from refcoco_edit.benchmark.data import decode_sample, load_dataset

    ds = load_dataset(str(export), limit=4)
    rows = {row["sample_id"]: row for row in pq.read_table(res.out / "samples.parquet").to_pylist()}
    batch = []
    for s in ds.samples:
        d = decode_sample(s)
        batch.append(ModelSample(output=d.reference, source=d.source, edit_mask=d.edit_mask, reference=d.reference,
                                 prompt=s.prompt, edit_phrase=s.edit_phrase, referring_phrase=s.referring_phrase,
                                 target_text=target_text(s.edit_type, s.edit_target, s.category)))
    direct = ModelMetrics(NAMES, models, device="cpu", batch_size=1).compute(batch)
    for s, v in zip(ds.samples, direct):
        for n in NAMES:
            a, b = rows[s.sample_id][n], v[n]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-4), (n, a, b)
    # a second run (outputs cached) writes the same results.json
    first = (res.out / "results.json").read_bytes()
    _score(export, tmp_path / "o", "oracle", models, limit=4)
    assert (res.out / "results.json").read_bytes() == first


def test_missing_weights_leave_the_rest_running(export, paths, tmp_path):
    res = _score(export, tmp_path / "i", "identity", {"clip_model": str(paths["clip"])}, limit=2)
    r = res.results
    assert r["not_computed"]["ap"]["reason"] == "needs --aesthetic-weights"
    assert r["not_computed"]["dino"]["reason"] == "needs --dino-model"
    assert r["not_computed"]["lpips_bg"]["reason"] == "needs --lpips-weights"
    for n in ("clip_sim_fg_pr", "clip_whole", "clip_i", "clip_t", "l2_bg", "referring_accuracy"):
        assert n in r["metrics"]
    assert set(r["config"]["model_details"]) == {"clip_model"}
    res = _score(export, tmp_path / "n", "identity", {}, limit=2)
    assert res.results["config"]["model_details"] == {} and "clip_t" in res.results["not_computed"]


def test_a_bad_model_stops_before_editing(export, tmp_path):
    with pytest.raises(InputError, match="--clip-model"):
        _score(export, tmp_path / "b", "identity", {"clip_model": str(tmp_path / "missing")}, limit=2)
    assert not (tmp_path / "b").exists()


def test_cli_model_options(export, paths, tmp_path, capsys):
    import argparse

    from refcoco_edit.benchmark.cli import add_score_parser

    ap = argparse.ArgumentParser()
    add_score_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["score", "--model", "identity", "--data", str(export), "--out", str(tmp_path / "c"),
                          "--limit", "2", "--metrics", "paper", "--clip-model", str(paths["clip"]),
                          "--aesthetic-weights", str(paths["aesthetic"]), "--device", "cpu", "--dtype", "fp32",
                          "--metric-batch-size", "2", "--no-plots", "--no-gallery", "--bootstrap", "20"])
    assert args.local_files_only is True
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "ap " in text and "clip_sim_fg_pr" in text
    r = json.loads((tmp_path / "c" / "results.json").read_text())
    assert r["config"]["model_metrics"]["dtype"] == "fp32" and r["config"]["model_metrics"]["batch_size"] == 2
    assert set(r["metrics"]) == {"ap", "l2_bg", "clip_sim_fg", "clip_sim_fg_pr"}
    assert ap.parse_args(["score", "--no-local-files-only"]).local_files_only is False
