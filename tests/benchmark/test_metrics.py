"""Every weight-free metric against an independent reference implementation written here.

The references are deliberately the slow, textbook way: float64, boolean indexing, explicit
windows and loops; none of them shares code with benchmark.metrics.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from refcoco_edit.benchmark.harness import aggregate, bootstrap_ci
from refcoco_edit.benchmark.metrics import FAMILIES, METRICS, MetricParams, SampleArrays, compute_sample, plan, select_metrics
from refcoco_edit.benchmark.metrics.background import ssim_map
from refcoco_edit.errors import InputError

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def _smooth(rng, h, w, scale=40.0):
    """A photo-like image: smooth blobs plus a little noise."""
    small = rng.random((h // 8 + 2, w // 8 + 2, 3))
    big = np.kron(small, np.ones((8, 8, 1)))[:h, :w]
    k = np.ones(5) / 5
    for axis in (0, 1):
        big = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, big)
    img = big * 200 + 20 + rng.normal(0, scale / 10, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(7)
    h, w = 61, 83
    src = _smooth(rng, h, w)
    target = _rect(h, w, 10, 30, 10, 30)
    d1 = _rect(h, w, 35, 55, 50, 75)
    d2 = _rect(h, w, 5, 25, 55, 80)
    me = _rect(h, w, 6, 34, 6, 34)  # the dilated edit area around the target
    ref = src.copy()
    ref[me] = np.clip(src[me].astype(int) + rng.integers(-90, 90, (int(me.sum()), 3)), 0, 255).astype(np.uint8)
    out = src.copy()
    out[target] = 255 - src[target]  # a strong edit of the target
    out[d1] = np.clip(src[d1].astype(int) + 7, 0, 255).astype(np.uint8)  # a faint change of one distractor
    out = np.clip(out.astype(int) + rng.integers(-3, 4, out.shape), 0, 255).astype(np.uint8)  # noise everywhere
    return dict(src=src, out=out, ref=ref, me=me, target=target, distractors=[d1, d2])


def _arrays(s, **kw):
    a = dict(source=s["src"], output=s["out"], reference=s["ref"], edit_mask=s["me"], target_mask=s["target"],
             distractor_masks=s["distractors"])
    a.update(kw)
    return SampleArrays(**a)


ALL = [n for n in METRICS if not METRICS[n].needs]  # the weight-free metrics

# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def ref_mse_bg(out, src, me):
    bg = ~me
    a = out.astype(np.float64) / 255.0
    b = src.astype(np.float64) / 255.0
    return float(np.mean((a[bg] - b[bg]) ** 2))  # a[bg]: (n_bg, 3) -> mean over pixels and channels


def ref_psnr_bg(out, src, me):
    """Textbook PSNR over the masked pixels, with MAX = 255 on 8-bit values."""
    bg = ~me
    mse255 = np.mean((out[bg].astype(np.float64) - src[bg].astype(np.float64)) ** 2)
    return 20 * math.log10(255.0) - 10 * math.log10(mse255)


def ref_ssim_map(x, y, win=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM (Wang et al. 2004) by explicit Gaussian windows: symmetric padding, float64,
    population statistics, the original formula; mean over channels."""
    r = win // 2
    g = np.exp(-((np.arange(win) - r) ** 2) / (2 * sigma ** 2))
    w2 = np.outer(g, g)
    w2 /= w2.sum()
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    h, w = x.shape[:2]
    maps = []
    for c in range(x.shape[2]):
        X = np.pad(x[..., c].astype(np.float64) / 255.0, r, mode="symmetric")
        Y = np.pad(y[..., c].astype(np.float64) / 255.0, r, mode="symmetric")
        wx = np.lib.stride_tricks.sliding_window_view(X, (win, win))
        wy = np.lib.stride_tricks.sliding_window_view(Y, (win, win))
        mx = np.einsum("ijkl,kl->ij", wx, w2)
        my = np.einsum("ijkl,kl->ij", wy, w2)
        vx = np.einsum("ijkl,kl->ij", (wx - mx[..., None, None]) ** 2, w2)
        vy = np.einsum("ijkl,kl->ij", (wy - my[..., None, None]) ** 2, w2)
        cxy = np.einsum("ijkl,kl->ij", (wx - mx[..., None, None]) * (wy - my[..., None, None]), w2)
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        assert s.shape == (h, w)
        maps.append(s)
    return np.mean(maps, axis=0)


def ref_magicbrush(out, ref):
    """MagicBrush's eval: ToTensor (x / 255) then torch.mean(|a-b|) and torch.mean((a-b)**2)."""
    a = out.astype(np.float64) / 255.0
    b = ref.astype(np.float64) / 255.0
    return float(np.mean(np.abs(a - b))), float(np.mean((a - b) ** 2))


def ref_referring(out, src, target, distractors, eps=0.01, tau=0.05):
    change_map = np.abs(out.astype(np.float64) - src.astype(np.float64)).mean(axis=2) / 255.0
    ct = change_map[target].mean()
    cds = []
    for d in distractors:
        only = d & ~target
        if only.any():
            cds.append(change_map[only].mean())
    res = {"change_target": ct}
    if cds:
        res.update(change_distractor_max=max(cds), change_distractor_mean=float(np.mean(cds)),
                   referring_margin=ct - max(cds), referring_accuracy=float(all(ct > c + eps for c in cds)),
                   distractor_preservation=float(np.mean([c < tau for c in cds])))
    return res


# ----------------------------------------------------------------------------------------------
# background family
# ----------------------------------------------------------------------------------------------


def test_l2_bg_and_mse_bg_match_the_reference(sample):
    m = compute_sample(_arrays(sample), ["l2_bg", "mse_bg"])
    ref = ref_mse_bg(sample["out"], sample["src"], sample["me"])
    assert ref > 0
    assert m["l2_bg"] == pytest.approx(ref, rel=1e-12)
    assert m["mse_bg"] == m["l2_bg"]


def test_psnr_bg_matches_the_textbook_formula(sample):
    m = compute_sample(_arrays(sample), ["psnr_bg"])
    assert m["psnr_bg"] == pytest.approx(ref_psnr_bg(sample["out"], sample["src"], sample["me"]), rel=1e-12)


def test_background_ignores_changes_inside_the_edit_mask(sample):
    out = sample["src"].copy()
    out[sample["me"]] = 0  # everything inside M_e wiped
    m = compute_sample(_arrays(sample, output=out), ["l2_bg", "mse_bg", "psnr_bg", "ssim_bg"])
    assert m["l2_bg"] == 0.0 and m["mse_bg"] == 0.0
    assert m["psnr_bg"] == 100.0  # the documented cap, not infinity
    assert m["ssim_bg"] == 1.0  # windows straddling M_e see the source's pixels there on both sides
    # one changed background pixel next to M_e is seen, and only through the windows around it
    ys, xs = np.nonzero(sample["me"])
    y, x = ys[0] - 1, xs[0]
    assert not sample["me"][y, x]
    out[y, x] = 255 - out[y, x]
    ssim = compute_sample(_arrays(sample, output=out), ["ssim_bg"])["ssim_bg"]
    ref = ref_ssim_map(np.where(sample["me"][..., None], sample["src"], out), sample["src"])
    assert ssim < 1.0 and ssim == pytest.approx(ref[~sample["me"]].mean(), abs=1e-6)


def test_ssim_map_matches_direct_gaussian_window_implementation(sample):
    x, y = sample["out"], sample["src"]
    ours = ssim_map(x, y).astype(np.float64)
    ref = ref_ssim_map(x, y)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 2e-5
    bg = ~sample["me"]
    m = compute_sample(_arrays(sample), ["ssim_bg"])
    # ssim_bg: the map of (output with the source inside M_e, source) over the background
    masked = ref_ssim_map(np.where(sample["me"][..., None], y, x), y)
    assert m["ssim_bg"] == pytest.approx(masked[bg].mean(), abs=1e-6)
    assert m["ssim_bg"] != pytest.approx(ref[bg].mean(), abs=1e-6)  # not the map of the raw output


def test_ssim_map_on_high_contrast_edits():
    rng = np.random.default_rng(11)
    for _ in range(3):
        x = _smooth(rng, 70, 90)
        y = x.copy()
        y[15:50, 20:70] = 255 - y[15:50, 20:70]
        y = np.clip(y.astype(int) + rng.integers(-3, 4, y.shape), 0, 255).astype(np.uint8)
        err = ssim_map(x, y).astype(np.float64) - ref_ssim_map(x, y)
        assert np.abs(err).max() < 2e-5 and abs(err.mean()) < 1e-6


def test_ssim_map_on_very_different_and_flat_images():
    rng = np.random.default_rng(3)
    x = np.full((30, 40, 3), 250, dtype=np.uint8)  # bright and flat: the cancellation-prone case
    y = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    assert np.abs(ssim_map(x, y) - ref_ssim_map(x, y)).max() < 1e-5
    z = x.copy()
    z[10:20, 10:20] = 240
    assert np.abs(ssim_map(x, z) - ref_ssim_map(x, z)).max() < 1e-5


def test_ssim_is_exactly_one_for_identical_images(sample):
    m = ssim_map(sample["src"], sample["src"])
    assert (m == 1.0).all()
    assert compute_sample(_arrays(sample, output=sample["src"]), ["ssim_bg"])["ssim_bg"] == 1.0


def test_ssim_against_scipy_gaussian_filter(sample):
    from scipy import ndimage

    x = sample["out"].astype(np.float64) / 255
    y = sample["src"].astype(np.float64) / 255
    f = lambda a: ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731 (skimage's way)
    maps = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx * mx, f(b * b) - my * my, f(a * b) - mx * my
        maps.append(((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx * mx + my * my + 1e-4) * (vx + vy + 9e-4)))
    assert np.abs(ssim_map(sample["out"], sample["src"]) - np.mean(maps, axis=0)).max() < 2e-5


def test_no_background_gives_nan(sample):
    full = np.ones_like(sample["me"])
    m = compute_sample(_arrays(sample, edit_mask=full), ["l2_bg", "psnr_bg", "ssim_bg", "l1"])
    assert math.isnan(m["l2_bg"]) and math.isnan(m["psnr_bg"]) and math.isnan(m["ssim_bg"])
    assert not math.isnan(m["l1"])


# ----------------------------------------------------------------------------------------------
# MagicBrush family
# ----------------------------------------------------------------------------------------------


def test_magicbrush_l1_l2_match_the_reference(sample):
    m = compute_sample(_arrays(sample), ["l1", "l2"])
    l1, l2 = ref_magicbrush(sample["out"], sample["ref"])
    assert m["l1"] == pytest.approx(l1, rel=1e-12)
    assert m["l2"] == pytest.approx(l2, rel=1e-12)
    z = compute_sample(_arrays(sample, output=sample["ref"]), ["l1", "l2"])
    assert z == {"l1": 0.0, "l2": 0.0}


# ----------------------------------------------------------------------------------------------
# referring family
# ----------------------------------------------------------------------------------------------

REF_NAMES = ["referring_accuracy", "distractor_preservation", "change_target", "change_distractor_max",
             "change_distractor_mean", "referring_margin"]


def _check_referring(s, out, distractors=None, **params):
    distractors = s["distractors"] if distractors is None else distractors
    got = compute_sample(_arrays(s, output=out, distractor_masks=distractors), REF_NAMES, MetricParams(**params))
    want = ref_referring(out, s["src"], s["target"], distractors, **{("eps" if k == "referring_eps" else "tau"): v
                                                                      for k, v in params.items()})
    for k in REF_NAMES:
        if k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), k
        else:
            assert math.isnan(got[k]), k
    return got


def test_referring_metrics_match_the_reference(sample):
    got = _check_referring(sample, sample["out"])
    assert got["referring_accuracy"] == 1.0
    assert got["distractor_preservation"] == 1.0  # the faint change (7 levels) is below tau


def test_referring_when_the_wrong_object_is_edited(sample):
    out = sample["src"].copy()
    d1 = sample["distractors"][0]
    out[d1] = 255 - out[d1]
    got = _check_referring(sample, out)
    assert got["referring_accuracy"] == 0.0
    assert got["distractor_preservation"] == 0.5
    assert got["referring_margin"] < 0


def test_referring_needs_the_margin(sample):
    src = sample["src"]
    out = src.copy()
    out[sample["target"]] = np.clip(src[sample["target"]].astype(int) + 2, 0, 255).astype(np.uint8)  # < eps
    assert _check_referring(sample, out)["referring_accuracy"] == 0.0
    assert _check_referring(sample, src)["referring_accuracy"] == 0.0  # nothing changed: 0 vs 0
    assert _check_referring(sample, out, referring_eps=0.001)["referring_accuracy"] == 1.0
    assert _check_referring(sample, sample["out"], preservation_tau=0.01)["distractor_preservation"] == 0.5


def test_referring_excludes_target_pixels_from_overlapping_distractors(sample):
    t = sample["target"]
    overlap = t.copy()
    overlap[25:45, 25:45] = True  # a distractor partly behind the target
    out = sample["src"].copy()
    out[t] = 255 - out[t]
    got = _check_referring(sample, out, distractors=[overlap])
    assert got["change_distractor_max"] == 0.0 and got["referring_accuracy"] == 1.0
    got = _check_referring(sample, out, distractors=[t.copy()])  # fully covered: ignored
    assert math.isnan(got["referring_accuracy"])


def test_referring_without_distractors_or_target(sample):
    got = _check_referring(sample, sample["out"], distractors=[])
    assert not math.isnan(got["change_target"]) and math.isnan(got["referring_accuracy"])
    none = compute_sample(_arrays(sample, target_mask=None), REF_NAMES)
    assert all(math.isnan(v) for v in none.values())


def test_sums_are_exact_and_deterministic(sample):
    a = compute_sample(_arrays(sample), ALL)
    b = compute_sample(_arrays(sample), ALL)
    assert list(a) == ALL
    for k in ALL:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k]


def test_metric_context_rejects_mismatched_arrays(sample):
    arr = _arrays(sample, output=sample["out"][:-1])
    with pytest.raises(ValueError):
        arr.check()


# ----------------------------------------------------------------------------------------------
# selection, plan, aggregation
# ----------------------------------------------------------------------------------------------


def test_select_metrics_by_name_and_family():
    assert select_metrics(None) == list(METRICS)
    assert select_metrics(["pie"]) == list(FAMILIES["pie"])
    assert select_metrics(["referring_accuracy", "l2-bg"]) == ["l2_bg", "referring_accuracy"]
    with pytest.raises(InputError, match="did you mean 'ssim_bg'"):
        select_metrics(["ssim_gb"])
    with pytest.raises(InputError, match="unknown metric"):
        select_metrics(["nonsense"])


def test_plan_reports_missing_weights():
    ok, skipped = plan(list(METRICS), {})
    assert set(ok) == set(ALL)
    assert skipped["ap"] == "needs --clip-model and --aesthetic-weights"
    assert skipped["dino"] == "needs --dino-model"
    assert skipped["lpips_bg"] == "needs --lpips-weights"
    ok, skipped = plan(["clip_i", "l1"], {"clip_model": "openai/clip-vit-large-patch14"})
    assert ok == ["clip_i", "l1"] and skipped == {}


def test_bootstrap_ci_is_seeded_and_close_to_the_normal_approximation():
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, 400)
    a = bootstrap_ci(v, seed=5, resamples=2000)
    assert a == bootstrap_ci(v, seed=5, resamples=2000)
    assert a != bootstrap_ci(v, seed=6, resamples=2000)
    se = v.std(ddof=1) / math.sqrt(v.size)
    assert a[0] == pytest.approx(v.mean() - 1.96 * se, abs=0.25 * se)
    assert a[1] == pytest.approx(v.mean() + 1.96 * se, abs=0.25 * se)
    # the same as a plain loop drawing the same indices
    g = np.random.default_rng(5)
    means = np.array([v[g.integers(0, v.size, size=v.size)].mean() for _ in range(2000)])
    assert a == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-12)
    assert bootstrap_ci(np.array([2.0]), 0) == (2.0, 2.0)
    assert bootstrap_ci(np.array([]), 0) is None
    assert bootstrap_ci(np.full(10, 0.5), 0) == (0.5, 0.5)


def test_aggregate_by_edit_type_skips_nan_and_unscored():
    recs = [
        {"status": "ok", "edit_type": "remove", "metrics": {"x": 1.0}},
        {"status": "ok", "edit_type": "remove", "metrics": {"x": 3.0}},
        {"status": "ok", "edit_type": "replace", "metrics": {"x": float("nan")}},
        {"status": "failed", "edit_type": "replace", "metrics": {}},
    ]
    agg = aggregate(recs, ["x"], seed=0, resamples=100)["x"]
    assert agg["n"] == 2 and agg["mean"] == 2.0 and agg["n_not_applicable"] == 1
    assert agg["by_edit_type"]["remove"]["mean"] == 2.0
    assert agg["by_edit_type"]["replace"] == {"n": 0, "mean": None, "std": None, "ci95": None}


# ----------------------------------------------------------------------------------------------
# every other annotated object (others)
# ----------------------------------------------------------------------------------------------


def ref_others(out, src, target, others, tau=0.05):
    """Textbook: per object, the float64 mean over its pixels (less the target's) and channels of
    |out - src| / 255."""
    diff = np.abs(out.astype(np.float64) - src.astype(np.float64)) / 255.0
    cs = [diff[o & ~target].mean() for o in others if (o & ~target).any()]
    if not cs:
        return dict(others_preservation=math.nan, change_others_max=math.nan, change_others_mean=math.nan)
    return dict(others_preservation=float(np.mean([c < tau for c in cs])), change_others_max=max(cs),
                change_others_mean=float(np.mean(cs)))


OTHER_NAMES = ["others_preservation", "change_others_max", "change_others_mean"]


def test_others_metrics_match_the_reference(sample):
    h, w = sample["src"].shape[:2]
    bottle = _rect(h, w, 40, 60, 5, 20)  # another category: no distractor, still an object of the scene
    others = sample["distractors"] + [bottle]
    got = compute_sample(_arrays(sample, other_masks=others), OTHER_NAMES)
    want = ref_others(sample["out"], sample["src"], sample["target"], others)
    for k in OTHER_NAMES:
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), k
    assert got["others_preservation"] == 1.0  # noise and a faint change stay under tau


def test_a_scribble_on_another_category_is_caught_by_others_not_by_the_distractors(sample):
    h, w = sample["src"].shape[:2]
    bottle = _rect(h, w, 40, 60, 5, 20)
    out = sample["out"].copy()
    out[45:55, 5:20] = 0  # a thick scribble over half of the bottle
    a = _arrays(sample, output=out, other_masks=sample["distractors"] + [bottle])
    got = compute_sample(a, OTHER_NAMES + ["distractor_preservation"])
    assert got["distractor_preservation"] == 1.0  # the same-category check cannot see it
    assert got["others_preservation"] == pytest.approx(2 / 3)
    want = ref_others(out, sample["src"], sample["target"], sample["distractors"] + [bottle])
    assert got["change_others_max"] == pytest.approx(want["change_others_max"], rel=1e-12) and got["change_others_max"] > 0.1


def test_others_unknown_empty_or_covered_by_the_target_are_nan(sample):
    for others in (None, [], [sample["target"].copy()]):
        got = compute_sample(_arrays(sample, other_masks=others), OTHER_NAMES)
        assert all(math.isnan(got[k]) for k in OTHER_NAMES), others
    got = compute_sample(_arrays(sample, other_masks=sample["distractors"], target_mask=None), OTHER_NAMES)
    assert all(math.isnan(got[k]) for k in OTHER_NAMES)


def test_others_exclude_the_targets_pixels(sample):
    t = sample["target"]
    overlap = t | _rect(*t.shape, 30, 33, 10, 30)  # claims the target too: only its own pixels count
    got = compute_sample(_arrays(sample, other_masks=[overlap]), OTHER_NAMES)
    want = ref_others(sample["out"], sample["src"], t, [overlap])
    assert got["change_others_max"] == pytest.approx(want["change_others_max"], rel=1e-12)
    assert got["change_others_max"] < 0.05  # the target's strong edit is not charged to the object
