"""Removal fidelity: the weight-free removers against the demo's clean plates (a quality bench).

The demo generator knows its scenes, so every object it draws has a true removal: the same
seeded scene rendered without it and without its shadows
(``refcoco_edit.demo.render_clean_plate``). For every removal-eligible demo object (every object
the select stage would turn into a ``remove`` sample: ``Selector`` with ``edit_types=remove``
and no per-image quota) each remover runs as the build runs it, and its output is compared with
the clean plate:

* inside M, the object's mask (the pixels a remover must invent), and
* inside M_e*, the true edit region: M together with the pixels where the clean plate differs
  from the photo near the object (its shadows), grown by the removal's seam margin. The same
  region for every remover, so a remover that leaves the shadow behind pays for it here.

Figures: PSNR (dB, mean over objects) and SSIM (``refcoco_edit.benchmark.metrics.background.
ssim_map``, 11x11 Gaussian window sigma 1.5, Wang et al. 2004, tested against a direct reference
implementation; mean of the map over the region, mean over objects), and seconds per object.

Removers (all ``classical-remove``): ``telea`` (the former default: Telea + grain, M_e = the
dilated mask), ``telea+shadow`` (the same fill over M_e with the detected shadow: shows what the
shadow alone brings), ``patch`` (the default: patch copying with a Telea base, shadow included).
The headline ratio is PSNR inside M of ``patch`` / ``telea`` (higher is better); the notes give
SSIM and the time ratio. ``--quick``: the first 12 demo images.

    python -m perf --only removal            # the table row, perf/results.json
    python -m perf.bench_removal --gallery DIR [--quick]   # also before/after PNGs per object
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REMOVERS = {
    "telea": {"method": "telea"},
    "telea+shadow": {"method": "telea", "shadow": "on"},
    "patch": {},
    # the same without the other objects protected: their pixels may be painted and copied from
    "patch-unprotected": {"protect_others": False},
}
NEW, BASE = "patch", "telea"
SEED = 0


def _demo(num_images: int) -> Path:
    from perf import cached_input
    from refcoco_edit.demo import DEMO_VERSION, write_demo

    # the demo generator's version in the key: clean plates are rendered by the current generator
    return cached_input(f"removal-demo-v{DEMO_VERSION}-{num_images}-s{SEED}", lambda tmp: write_demo(tmp, num_images, SEED))


def eligible_objects(root: Path) -> Tuple[List[Dict[str, Any]], Any]:
    """The select stage's remove samples, one per eligible object ({ann_id, image_id, source_mask}), and the index."""
    from refcoco_edit.refcoco import RefCOCO
    from refcoco_edit.select import SelectionConfig, Selector

    refer = RefCOCO(root, dataset="refcoco", split_by="unc", images_dir=root / "images")
    cfg = SelectionConfig(num_images=None, samples_per_image=1000, edit_types=("remove",))
    rows = Selector(refer, cfg, seed=SEED).run().rows
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r["ann_id"]):
        if r["ann_id"] not in seen:
            seen.add(r["ann_id"])
            out.append({"ann_id": int(r["ann_id"]), "image_id": int(r["image_id"]), "source_mask": r["source_mask"]})
    return out, refer


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB, peak 255) over the pixels of ``region`` (all channels)."""
    d = a[region].astype(np.float64) - b[region].astype(np.float64)
    mse = float(np.mean(d * d))
    return 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def true_region(source: np.ndarray, clean: np.ndarray, mask: np.ndarray, margin: int, thr: int = 8) -> np.ndarray:
    """M_e*: the mask plus the pixels near it (within half the object's size) where the clean
    plate differs from the photo by more than ``thr`` levels (its shadows), grown by ``margin``."""
    from refcoco_edit.pipelines.classical import mask_bbox
    from refcoco_edit.pipelines.masks import dilate

    x0, y0, x1, y1 = mask_bbox(mask)
    near = dilate(mask, max(2, max(x1 - x0, y1 - y0) // 2))
    changed = (np.abs(clean.astype(np.int16) - source.astype(np.int16)).max(axis=2) > thr) & near
    return dilate(mask | changed, margin)


def measure(num_images: int, gallery: Optional[Path] = None) -> Dict[str, Any]:
    """Run every remover on every eligible object of the first ``num_images`` demo images."""
    from refcoco_edit import rle as rle_mod
    from refcoco_edit.benchmark.metrics.background import ssim_map
    from refcoco_edit.demo import render_clean_plate
    from refcoco_edit.pipelines.base import EditRequest
    from refcoco_edit.pipelines.classical import InpaintRemoval, _removal_dilate_px

    root = _demo(num_images)
    objects, refer = eligible_objects(root)
    pipes = {k: InpaintRemoval(**kw) for k, kw in REMOVERS.items()}
    per: Dict[str, Dict[str, List[float]]] = {k: {"psnr_m": [], "ssim_m": [], "psnr_e": [], "ssim_e": []} for k in pipes}
    secs = {k: 0.0 for k in pipes}
    if gallery is not None:
        gallery.mkdir(parents=True, exist_ok=True)
    for n, obj in enumerate(objects):
        li = refer.load_image(obj["image_id"])
        image = li.array
        mask = li.orient_mask(rle_mod.decode(obj["source_mask"])).astype(bool)
        clean = render_clean_plate(obj["ann_id"], seed=SEED)
        region = true_region(image, clean, mask, _removal_dilate_px(mask, 0.03, 5))
        others = [li.orient_mask(rle_mod.decode(refer.ann_rle(a))).astype(bool) for a, ann in refer.anns.items()
                  if ann["image_id"] == obj["image_id"] and int(a) != obj["ann_id"] and not ann.get("iscrowd", 0)]
        req = EditRequest(sample_id=f"ann{obj['ann_id']}", edit_type="remove", image=image, mask=mask,
                          bbox=rle_mod.to_bbox(obj["source_mask"]), prompt="remove it", edit_phrase="remove",
                          edit_target="", seed=n, other_masks=others)
        outs = {}
        for k, pipe in pipes.items():
            t0 = time.perf_counter()
            out = pipe.generate(req).image
            secs[k] += time.perf_counter() - t0
            smap = ssim_map(out, clean)
            per[k]["psnr_m"].append(psnr(out, clean, mask))
            per[k]["ssim_m"].append(float(smap[mask].mean()))
            per[k]["psnr_e"].append(psnr(out, clean, region))
            per[k]["ssim_e"].append(float(smap[region].mean()))
            outs[k] = out
        if gallery is not None:
            _save_tiles(gallery / f"ann{obj['ann_id']}.png", image, clean, outs, mask)
    n_obj = len(objects)
    table = {k: {m: round(float(np.mean(v)), 4) for m, v in d.items()} for k, d in per.items()}
    for k in table:
        table[k]["s_per_object"] = round(secs[k] / max(n_obj, 1), 4)
        table[k]["wins_psnr_m_vs_telea"] = int(np.sum(np.asarray(per[k]["psnr_m"]) > np.asarray(per[BASE]["psnr_m"])))
    return {"objects": n_obj, "images": num_images, "table": table}


def _save_tiles(path: Path, image: np.ndarray, clean: np.ndarray, outs: Dict[str, np.ndarray], mask: np.ndarray) -> None:
    """source | clean plate | each remover, cropped around the object, one row."""
    import cv2
    from PIL import Image

    from refcoco_edit.pipelines.classical import mask_bbox

    x0, y0, x1, y1 = mask_bbox(mask)
    s = max(x1 - x0, y1 - y0) // 2 + 8
    H, W = mask.shape
    ys, xs = slice(max(0, y0 - s), min(H, y1 + s)), slice(max(0, x0 - s), min(W, x1 + s))
    tiles = [cv2.resize(np.ascontiguousarray(t[ys, xs]), (220, 220), interpolation=cv2.INTER_AREA)
             for t in [image, clean] + list(outs.values())]
    Image.fromarray(np.hstack(tiles)).save(path)


def run(quick: bool = False) -> Dict[str, Any]:
    """The perf row: PSNR inside M, new / Telea (higher is better); the rest in ``detail``."""
    res = measure(12 if quick else 48)
    t = res["table"]
    new, base = t[NEW], t[BASE]
    notes = (f"{res['objects']} objects; SSIM in M {new['ssim_m']:.4f} vs {base['ssim_m']:.4f}; "
             f"in M_e* PSNR {new['psnr_e']:.2f} vs {base['psnr_e']:.2f}, SSIM {new['ssim_e']:.4f} vs {base['ssim_e']:.4f}; "
             f"time x{new['s_per_object'] / max(base['s_per_object'], 1e-9):.1f}")
    return {
        "name": "removal",
        "baseline": "classical-remove method=telea (the former default), PSNR inside M vs the clean plate",
        "unit": "dB",
        "baseline_s": base["psnr_m"],
        "value_s": new["psnr_m"],
        "ratio": round(new["psnr_m"] / base["psnr_m"], 4),
        "better": "higher",
        "notes": notes,
        "detail": res,
        "time_ratio": round(new["s_per_object"] / max(base["s_per_object"], 1e-9), 2),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_removal", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 12 demo images")
    ap.add_argument("--gallery", type=Path, help="write source | clean plate | removers PNGs here")
    args = ap.parse_args(argv)
    res = measure(12 if args.quick else 48, args.gallery)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
