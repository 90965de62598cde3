"""Candidate filters (pipelines.filters): formulas against an independent computation with a
stub embedder, the tiny CLIP through the user's loading path, skipping without weights, the
weight-free background check, and the ranking."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from support.tiny_models import tiny  # noqa: E402  (sets HF_HUB_OFFLINE before any hub import)

pytest.importorskip("torch")
pytest.importorskip("transformers")

from refcoco_edit.models import ModelError  # noqa: E402
from refcoco_edit.pipelines.filters import CandidateFilter, FilterConfig, FilterItem, load_clip, rank_candidates  # noqa: E402

H, W = 64, 80


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), bool)
    mask[20:40, 30:50] = True
    edited = src.copy()
    edited[22:38, 32:48] = 255 - edited[22:38, 32:48]
    me = np.zeros((H, W), bool)
    me[18:42, 28:52] = True
    return src, edited, mask, me


class StubClip:
    """Embeds an image as its (normalised) mean colour + 1, a text by a fixed table."""

    name = "stub"

    def __init__(self, table):
        self.table = table
        self.seen_images = []

    def images(self, crops):
        self.seen_images.extend(crops)
        v = np.array([np.r_[c.reshape(-1, 3).mean(axis=0) / 255.0, 1.0] for c in crops])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def texts(self, texts):
        v = np.array([self.table[t] for t in texts], float)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def test_replace_scores_match_an_independent_computation():
    src, edited, mask, me = _scene()
    table = {"a photo of a cow": [1, 0, 0, 0.5], "a photo of giraffe": [0, 1, 1, 0.5]}
    stub = StubClip(table)
    f = CandidateFilter(FilterConfig(min_clip_target=-100, min_clip_directional=-1), clip=stub)
    (s,) = f.score_many([FilterItem(src, edited, mask, me, "replace", "giraffe", "cow")])
    # the crop: the box of M_e grown by 10 % (min 2 px)
    x0, y0, x1, y1 = 26, 16, 54, 44
    assert stub.seen_images[0].shape == (y1 - y0, x1 - x0, 3)
    e_src = _unit(np.r_[src[y0:y1, x0:x1].reshape(-1, 3).mean(0) / 255, 1])
    e_ed = _unit(np.r_[edited[y0:y1, x0:x1].reshape(-1, 3).mean(0) / 255, 1])
    t_src, t_tgt = _unit(table["a photo of a cow"]), _unit(table["a photo of giraffe"])
    assert s["clip_target"] == pytest.approx(100 * e_ed @ t_tgt, abs=1e-3)
    assert s["clip_directional"] == pytest.approx(_unit(e_ed - e_src) @ _unit(t_tgt - t_src), abs=1e-5)
    assert s["score"] == pytest.approx(s["clip_target"] / 100 + s["clip_directional"], abs=1e-5)
    assert s["passed"] and s["failed"] == [] and s["clip_model"] == "stub"
    assert s["bg_change"] == 0.0 and "skipped" not in s
    # a threshold above the score fails that check, and only that one
    f2 = CandidateFilter(FilterConfig(min_clip_target=s["clip_target"] + 1, min_clip_directional=-1), clip=stub)
    (s2,) = f2.score_many([FilterItem(src, edited, mask, me, "replace", "giraffe", "cow")])
    assert not s2["passed"] and s2["failed"] == ["clip_target"]


def test_removal_score_is_the_category_probability_against_background():
    src, edited, mask, me = _scene(1)
    table = {"a photo of a cow": [1, 0, 0, 0], "a photo of the empty background": [0, 0, 0, 1]}
    f = CandidateFilter(FilterConfig(max_removed_prob=0.99), clip=StubClip(table))
    (s,) = f.score_many([FilterItem(src, edited, mask, me, "remove", "", "cow")])
    e_ed = _unit(np.r_[edited[16:44, 26:54].reshape(-1, 3).mean(0) / 255, 1])
    a, b = 100 * e_ed @ _unit(table["a photo of a cow"]), 100 * e_ed @ _unit(table["a photo of the empty background"])
    p = math.exp(a) / (math.exp(a) + math.exp(b))
    assert s["removed_prob"] == pytest.approx(p, abs=1e-5)
    assert s["clip_category_after"] == pytest.approx(a, abs=1e-3)
    assert s["score"] == pytest.approx(-p, abs=1e-5)
    assert s["passed"] == (p <= 0.99)


def test_background_check_needs_no_weights_and_catches_spill():
    src, edited, mask, me = _scene(2)
    f = CandidateFilter(FilterConfig(clip_model=None), clip=None)
    (ok,) = f.score_many([FilterItem(src, edited, mask, me, "replace", "giraffe", "cow")])
    assert ok["bg_change"] == 0.0 and ok["passed"] and ok["skipped"]["clip"]
    spill = edited.copy()
    spill[:, :6] = 0  # far outside the source box grown by 35 %
    (bad,) = f.score_many([FilterItem(src, spill, mask, np.ones((H, W), bool), "replace", "giraffe", "cow")])
    # allowed: the 20x20 source box grown by max(8 px, 35 %) on each side = 36x36; mean over channels too
    d = ((src[:, :6].astype(float) / 255) ** 2).sum() / (3 * (H * W - 36 * 36))
    assert bad["bg_change"] == pytest.approx(d, rel=1e-3)
    assert not bad["passed"] and bad["failed"] == ["bg_change"]
    assert bad["edit_area_ratio"] == pytest.approx(H * W / 400, rel=1e-3)
    json.dumps(bad)  # JSON-ready


def test_tiny_clip_loads_through_the_user_path_and_scores(tmp_path):
    emb = load_clip(str(tiny("clip")))
    imgs = emb.images([np.zeros((20, 30, 3), np.uint8), np.full((50, 40, 3), 200, np.uint8)])
    txts = emb.texts(["a photo of a cow", "a photo of giraffe"])
    assert imgs.shape == (2, 32) and txts.shape == (2, 32)
    assert np.allclose(np.linalg.norm(imgs, axis=1), 1, atol=1e-5) and not np.allclose(txts[0], txts[1])
    f = CandidateFilter.from_config(FilterConfig(clip_model=str(tiny("clip"))))
    assert f.clip is not None and f.skip_reason is None
    src, edited, mask, me = _scene(3)
    scores = f.score_many([FilterItem(src, edited, mask, me, "replace", "giraffe", "cow"),
                           FilterItem(src, edited, mask, me, "attribute", "red cow", "cow"),
                           FilterItem(src, edited, mask, me, "remove", "", "cow")])
    assert {"clip_target", "clip_directional"} <= set(scores[0]) and {"clip_target"} <= set(scores[1])
    assert "removed_prob" in scores[2] and 0 <= scores[2]["removed_prob"] <= 1
    for s in scores:
        assert all(math.isfinite(v) for v in s.values() if isinstance(v, float))
        assert s["clip_model"] == str(tiny("clip"))


def test_without_clip_weights_the_filters_are_skipped_and_say_why(tmp_path):
    f = CandidateFilter.from_config(FilterConfig(clip_model="openai/clip-vit-large-patch14"))
    assert f.clip is None and "not available" in f.skip_reason and "openai/clip-vit-large-patch14" in f.skip_reason
    src, edited, mask, me = _scene(4)
    (s,) = f.score_many([FilterItem(src, edited, mask, me, "replace", "giraffe", "cow")])
    assert s["skipped"] == {"clip": f.skip_reason} and "clip_target" not in s
    off = CandidateFilter.from_config(FilterConfig(clip_model="none"))
    assert off.clip is None and "off" in off.skip_reason
    with pytest.raises(ModelError, match="no such file"):
        CandidateFilter.from_config(FilterConfig(clip_model=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="model_type"):
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        CandidateFilter.from_config(FilterConfig(clip_model=str(tmp_path / "bert")))


def test_rank_prefers_passing_then_score_then_earlier():
    assert rank_candidates([{"passed": False, "score": 9}, {"passed": True, "score": 0.1}]) == 1
    assert rank_candidates([{"passed": True, "score": 0.1}, {"passed": True, "score": 0.5}]) == 1
    assert rank_candidates([{"passed": True, "score": 0.5}, {"passed": True, "score": 0.5}]) == 0
    assert rank_candidates([{}, {}]) == 0
