"""Benchmark: the weight-free metrics of `refcoco-edit score` on 512x512 samples against a
straightforward per-image reference loop, in the same run.

Goals (issue #6): at least 5x the reference loop, and metric compute costing no more than the
image decoding itself.

The data: N synthetic photo-like 512x512 samples (smooth colour fields + sensor noise), each with
a source, a reference edited inside M_e and an editor output (the target object edited, faint
changes and noise elsewhere), as PNG files written with the toolkit's encoder; masks as COCO RLE.

* baseline — the way PIE-Bench's and MagicBrush's evaluation scripts work, one thread:
  PIE-Bench-style, per sample: ``Image.open`` the source and the output once, then per metric
  (L2_bg/MSE, PSNR, SSIM) convert to float64 arrays, decode the mask, mask, compute (SSIM as
  ``skimage.metrics.structural_similarity`` computes it: ``scipy.ndimage.gaussian_filter`` per
  channel, float64; cv2 float64 if scipy is missing); MagicBrush-style, one pass over all pairs
  per metric (L1, then L2), each opening and decoding output and reference again; the referring
  metrics as a third script (decode source + output, masks, per-distractor loops).
  That is 8 PNG decodes per sample.
* ours — what the harness does: each PNG decoded once per sample (3 decodes), masks once, all
  metrics from the shared arrays (``refcoco_edit.benchmark.metrics.compute_sample``), in a thread pool of
  ``workers`` threads (the harness default is 2); also measured with 1 worker, phase by phase,
  for the "metric compute vs decode" figure.

Reported: ``baseline_s``, ``value_s`` (ours, 2 workers), ``ratio`` = value/baseline (the perf
table's convention: below 1 is faster), ``speedup`` = baseline/value, ``speedup_1_worker``,
``decode_s`` / ``metrics_s`` (1 worker, sum over samples) and ``metric_vs_decode`` =
metrics_s / decode_s, samples/s, and the largest difference between the two implementations'
values (they must agree).
"""
from __future__ import annotations

import gc
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

GEN_VERSION = 1
SIZE = 512
FULL = dict(samples=64, seed=0)
QUICK = dict(samples=12, seed=0)
METRIC_NAMES = ["l2_bg", "mse_bg", "psnr_bg", "ssim_bg", "l1", "l2", "referring_accuracy", "distractor_preservation",
                "change_target", "change_distractor_max", "change_distractor_mean", "referring_margin"]


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    base = rng.random((h // 32 + 1, w // 32 + 1, 3)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC) * 200 + 25
    img += rng.normal(0, 4, (h, w, 3)).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def generate(root: Path, samples: int, seed: int) -> None:
    from refcoco_edit import rle
    from refcoco_edit.imageio import encode_png

    import json

    rng = np.random.default_rng(seed)
    meta = []
    for i in range(samples):
        h = w = SIZE
        src = _photo(rng, h, w)
        cy, cx = rng.uniform(140, 370, 2)
        target = _ellipse(h, w, cy, cx, rng.uniform(40, 80), rng.uniform(40, 80))
        import cv2

        me = cv2.dilate(target.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        d1 = _ellipse(h, w, (cy + 200) % h, (cx + 150) % w, 50, 45)
        d2 = _ellipse(h, w, (cy + 330) % h, (cx + 290) % w, 40, 55)
        ref = src.copy()
        ref[me] = (255 - src[me]) // 2 + 40
        out = src.astype(np.int16)
        out[target] = 255 - out[target]
        out[d1] += 6
        out += rng.integers(-2, 3, out.shape, dtype=np.int16)
        out = np.clip(out, 0, 255).astype(np.uint8)
        sid = f"s{i:04d}"
        for name, arr in (("source", src), ("reference", ref), ("output", out)):
            (root / f"{sid}.{name}.png").write_bytes(encode_png(arr))
        meta.append({"sample_id": sid, "edit_mask": rle.encode(me), "target": rle.encode(target),
                     "distractors": [rle.encode(d1 & ~target), rle.encode(d2 & ~target)]})
    (root / "meta.json").write_text(json.dumps(meta))


def dataset(params: Dict[str, int]) -> Path:
    """The cached synthetic samples for ``params`` (generated on first use)."""
    from perf import cached_input

    key = f"score-v{GEN_VERSION}-" + "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return cached_input(key, lambda tmp: generate(tmp, **params))


# ----------------------------------------------------------------------------------------------
# the reference loop (PIE-Bench / MagicBrush style)
# ----------------------------------------------------------------------------------------------

def _gauss64() -> Callable[[np.ndarray], np.ndarray]:
    try:
        from scipy.ndimage import gaussian_filter

        return lambda a: gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")
    except ImportError:  # pragma: no cover - scipy is usually there
        import cv2

        return lambda a: cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)


def _baseline(root: Path, meta: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    from PIL import Image
    from pycocotools import mask as mask_api

    gf = _gauss64()

    def load(path: Path):
        return Image.open(path).convert("RGB")

    def m(r):
        return mask_api.decode({"size": r["size"], "counts": r["counts"].encode()}).astype(bool)

    res: Dict[str, Dict[str, float]] = {s["sample_id"]: {} for s in meta}
    # PIE-Bench style: per sample, images opened once, every metric converts and masks on its own
    for s in meta:
        sid = s["sample_id"]
        src_img, out_img = load(root / f"{sid}.source.png"), load(root / f"{sid}.output.png")
        r = res[sid]
        # L2_bg / MSE
        a = np.array(out_img).astype(np.float64) / 255
        b = np.array(src_img).astype(np.float64) / 255
        bg = ~m(s["edit_mask"])
        r["l2_bg"] = r["mse_bg"] = float(np.mean((a[bg] - b[bg]) ** 2))
        # PSNR
        a = np.array(out_img).astype(np.float64) / 255
        b = np.array(src_img).astype(np.float64) / 255
        bg = ~m(s["edit_mask"])
        mse = np.mean((a[bg] - b[bg]) ** 2)
        r["psnr_bg"] = 10 * math.log10(1.0 / max(mse, 1e-10))
        # SSIM (skimage-style per channel, float64), averaged over the background
        a = np.array(out_img).astype(np.float64) / 255
        b = np.array(src_img).astype(np.float64) / 255
        bg = ~m(s["edit_mask"])
        maps = []
        for c in range(3):
            x, y = a[..., c], b[..., c]
            mx, my = gf(x), gf(y)
            vx, vy, cxy = gf(x * x) - mx * mx, gf(y * y) - my * my, gf(x * y) - mx * my
            maps.append(((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx * mx + my * my + 1e-4) * (vx + vy + 9e-4)))
        r["ssim_bg"] = float(np.mean(maps, axis=0)[bg].mean())
    # MagicBrush style: one pass over all pairs per metric, each opening the images again
    for metric in ("l1", "l2"):
        for s in meta:
            sid = s["sample_id"]
            a = np.array(load(root / f"{sid}.output.png")).astype(np.float64) / 255
            b = np.array(load(root / f"{sid}.reference.png")).astype(np.float64) / 255
            res[sid][metric] = float(np.mean(np.abs(a - b))) if metric == "l1" else float(np.mean((a - b) ** 2))
    # referring: a script of its own
    for s in meta:
        sid = s["sample_id"]
        a = np.array(load(root / f"{sid}.output.png")).astype(np.float64)
        b = np.array(load(root / f"{sid}.source.png")).astype(np.float64)
        change = np.abs(a - b).mean(axis=2) / 255
        t = m(s["target"])
        ct = float(change[t].mean())
        cds = []
        for d in s["distractors"]:
            dm = m(d) & ~t
            cds.append(float(change[dm].mean()))
        r = res[sid]
        r.update(change_target=ct, change_distractor_max=max(cds), change_distractor_mean=float(np.mean(cds)),
                 referring_margin=ct - max(cds), referring_accuracy=float(ct > max(cds) + 0.01),
                 distractor_preservation=float(np.mean([c < 0.05 for c in cds])))
    return res


# ----------------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------------

def _samples(root: Path, meta: List[Dict[str, Any]]):
    from refcoco_edit.benchmark.data import BenchSample

    out = []
    for s in meta:
        sid = s["sample_id"]
        out.append(BenchSample(
            sample_id=sid, split="test", image_id=0, category="x", edit_type="replace", edit_target="y", prompt="p",
            referring_span=(0, 0), edit_span=(0, 0), source_bytes=b"", reference_bytes=b"", edit_mask=s["edit_mask"],
            source_mask=s["target"], distractor_masks=s["distractors"]))
    return out


def _ours(root: Path, samples: List[Any], workers: int, phases: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """The harness's path: read + decode every image once (pool), then all metrics (pool)."""
    from refcoco_edit.benchmark.data import decode_image, decode_sample
    from refcoco_edit.benchmark.metrics import SampleArrays, compute_sample

    def decode(s):
        sid = s.sample_id
        s.source_bytes = (root / f"{sid}.source.png").read_bytes()
        s.reference_bytes = (root / f"{sid}.reference.png").read_bytes()
        d = decode_sample(s)
        out = decode_image((root / f"{sid}.output.png").read_bytes(), "output")
        return d, out

    def score(args):
        d, out = args
        return compute_sample(SampleArrays(source=d.source, output=out, edit_mask=d.edit_mask, reference=d.reference,
                                           target_mask=d.target_mask, distractor_masks=d.distractor_masks), METRIC_NAMES)

    res: Dict[str, Dict[str, float]] = {}
    chunk = 32
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(samples), chunk):
            part = samples[i:i + chunk]
            t = time.perf_counter()
            decoded = list(pool.map(decode, part))
            phases["decode_s"] = phases.get("decode_s", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            values = list(pool.map(score, decoded))
            phases["metrics_s"] = phases.get("metrics_s", 0.0) + time.perf_counter() - t
            for s, v in zip(part, values):
                res[s.sample_id] = v
            del decoded
    return res


def _time(fn: Callable[[], Any]) -> Tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(quick: bool = False) -> Dict[str, Any]:
    import json

    params = QUICK if quick else FULL
    root = dataset(params)
    meta = json.loads((root / "meta.json").read_text())
    n = len(meta)
    reps = 1 if quick else 2
    times: Dict[str, List[float]] = {"baseline": [], "ours_2w": [], "ours_1w": [], "decode_1w": [], "metrics_1w": []}
    base_vals = ours_vals = None
    for _ in range(reps):  # interleaved, best of reps
        t, base_vals = _time(lambda: _baseline(root, meta))
        times["baseline"].append(t)
        ph: Dict[str, float] = {}
        t, ours_vals = _time(lambda: _ours(root, _samples(root, meta), 2, {}))
        times["ours_2w"].append(t)
        t, _ = _time(lambda: _ours(root, _samples(root, meta), 1, ph))
        times["ours_1w"].append(t)
        times["decode_1w"].append(ph["decode_s"])
        times["metrics_1w"].append(ph["metrics_s"])
    assert base_vals is not None and ours_vals is not None
    max_diff = {k: max(abs(base_vals[s][k] - ours_vals[s][k]) for s in base_vals) for k in METRIC_NAMES}
    b, v, v1 = min(times["baseline"]), min(times["ours_2w"]), min(times["ours_1w"])
    dec, met = min(times["decode_1w"]), min(times["metrics_1w"])
    res = {
        "name": "score",
        "baseline": "per-image PIE-Bench/MagicBrush-style loop (8 PNG decodes/sample)",
        "unit": f"s/{n} samples",
        "notes": (f"weight-free metrics, {SIZE}^2: ours {n / v:.1f} img/s (2 threads) vs {n / b:.1f}; "
                  f"metric/decode {met / dec:.2f}"),
        "samples": n,
        "image_size": f"{SIZE}x{SIZE}",
        "baseline_s": round(b, 4),
        "value_s": round(v, 4),
        "ratio": round(v / b, 3),
        "speedup": round(b / v, 2),
        "speedup_1_worker": round(b / v1, 2),
        "value_1_worker_s": round(v1, 4),
        "decode_s": round(dec, 4),
        "metrics_s": round(met, 4),
        "metric_vs_decode": round(met / dec, 3),
        "samples_per_s": {"baseline": round(n / b, 2), "ours_2_workers": round(n / v, 2), "ours_1_worker": round(n / v1, 2),
                          "decode_only_1_worker": round(n / dec, 2), "metrics_only_1_worker": round(n / met, 2)},
        "baseline_png_decodes_per_sample": 8,
        "ours_png_decodes_per_sample": 3,
        "max_abs_diff_vs_baseline": {k: float(f"{x:.3g}") for k, x in max_diff.items()},
        "times": {k: [round(t, 4) for t in ts] for k, ts in times.items()},
    }
    assert max(max_diff.values()) < 1e-5, max_diff  # the two implementations agree
    print(f"score: {n} samples of {SIZE}^2; reference loop {b:.2f}s ({n / b:.1f}/s), ours {v:.2f}s with 2 workers "
          f"({n / v:.1f}/s, {b / v:.1f}x), {v1:.2f}s with 1 worker ({b / v1:.1f}x); 1 worker: decode {dec:.2f}s, "
          f"metrics {met:.2f}s (metric/decode {met / dec:.2f})")
    return res
