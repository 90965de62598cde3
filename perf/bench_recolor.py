"""Attribute-edit fidelity: the weight-free recolouring against the demo's attribute plates (a quality bench).

The demo generator knows its scenes, so every object it draws has a true attribute edit: the
same seeded scene rendered with that object in the target colour or material under the same
light (``refcoco_edit.demo.render_attribute_plates``; every other pixel is the demo image's).
For every attribute-eligible demo object (every object the select stage would turn into an
``attribute`` sample: ``Selector`` with ``edit_types=attribute`` and no per-image quota) and
every attribute target the build uses (``vocab.COLOURS`` and ``vocab.MATERIALS``; a target whose
plate is the photo itself, the object's own colour, is left out), ``classical-attribute`` runs as
the build runs it and its output is compared with the plate inside M, the object's mask:

* CIEDE2000 (``pipelines.recolor.ciede2000``, tested on Sharma, Wu & Dalal's 34 pairs), mean
  over M's pixels, then over (object, target) pairs: lower is better;
* luminance SSIM: ``refcoco_edit.benchmark.metrics.background.ssim_map`` on CIELAB L (scaled to
  0..255), mean of the map over M, then over pairs: does the edit keep the object's shading and
  detail where the plate has them. Higher is better;
* seconds per edit (one object, one target).

Colours and materials are also reported apart (a material's texture is drawn at random, so its
pixels cannot match the plate's; its mean colour can: ``de_mean``, the CIEDE2000 of the mean
Lab inside M). Baseline: ``method: lab``, the former recolouring, measured in the same run. The
headline ratio is the baseline's CIEDE2000 / ours (higher is better); the SSIM ratio and time
ratio are in the notes. ``--quick``: the first 12 demo images.

    python -m perf --only recolor              # the table row, perf/results.json
    python -m perf.bench_recolor --gallery DIR [--quick]   # source | plate | each recolour PNGs
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

RECOLOURS = {"lab": {"method": "lab"}, "shading": {}}
NEW, BASE = "shading", "lab"
SEED = 0
SAME_AS_PHOTO = 2.0  # mean CIEDE2000 inside M under which a plate is the photo itself (the own colour)


def _demo(num_images: int) -> Path:
    from perf import cached_input
    from refcoco_edit.demo import DEMO_VERSION, write_demo

    return cached_input(f"recolor-demo-v{DEMO_VERSION}-{num_images}-s{SEED}", lambda tmp: write_demo(tmp, num_images, SEED))


def eligible_objects(root: Path) -> Tuple[List[Dict[str, Any]], Any]:
    """The select stage's attribute samples, one per eligible object ({ann_id, image_id, category,
    source_mask}), and the RefCOCO index: the removal bench's selection with "attribute"."""
    from perf.bench_removal import eligible_objects as eligible

    return eligible(root, "attribute")


def _window(mask: np.ndarray, margin: int = 8) -> Tuple[slice, slice]:
    """The mask's box grown by ``margin`` (more than the SSIM window's radius), clipped to the image."""
    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    return (slice(max(0, ys.min() - margin), min(H, ys.max() + 1 + margin)),
            slice(max(0, xs.min() - margin), min(W, xs.max() + 1 + margin)))


def compare(out: np.ndarray, plate: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """CIEDE2000 (mean over ``mask``), CIEDE2000 of the mean Lab, and luminance SSIM (mean over ``mask``)."""
    from refcoco_edit.benchmark.metrics.background import ssim_map
    from refcoco_edit.pipelines.recolor import ciede2000, rgb_to_lab

    ys, xs = _window(mask)
    m = mask[ys, xs]
    lo, lp = rgb_to_lab(out[ys, xs]), rgb_to_lab(plate[ys, xs])
    de = float(ciede2000(lo[m], lp[m]).mean())
    de_mean = float(ciede2000(lo[m].mean(axis=0), lp[m].mean(axis=0)))

    def lum(lab: np.ndarray) -> np.ndarray:  # L on 0..255 in three equal channels (ssim_map's mean over them)
        return np.repeat(np.clip(np.rint(lab[..., :1] * 2.55), 0, 255).astype(np.uint8), 3, axis=2)

    ssim = float(ssim_map(lum(lo), lum(lp))[m].mean())
    return {"de": de, "de_mean": de_mean, "ssim_l": ssim}


def measure(num_images: int, gallery: Optional[Path] = None, gallery_every: int = 5) -> Dict[str, Any]:
    """Run every recolouring on every eligible (object, target) of the first ``num_images`` demo images."""
    from refcoco_edit import rle as rle_mod
    from refcoco_edit.demo import render_attribute_plates
    from refcoco_edit.pipelines.base import EditRequest, PipelineError
    from refcoco_edit.pipelines.recolor import Recolor, ciede2000, rgb_to_lab
    from refcoco_edit.vocab import COLOURS, MATERIALS

    root = _demo(num_images)
    objects, refer = eligible_objects(root)
    pipes = {k: Recolor(**kw) for k, kw in RECOLOURS.items()}
    targets = list(COLOURS) + list(MATERIALS)
    rows: List[Dict[str, Any]] = []
    secs = {k: 0.0 for k in pipes}
    skipped = {"own_colour": 0, "no_change": 0}
    if gallery is not None:
        gallery.mkdir(parents=True, exist_ok=True)
    n = 0
    for obj in objects:
        li = refer.load_image(obj["image_id"])
        image = li.array
        mask = li.orient_mask(rle_mod.decode(obj["source_mask"])).astype(bool)
        plates = render_attribute_plates(obj["ann_id"], targets, seed=SEED)
        others = [li.orient_mask(rle_mod.decode(refer.ann_rle(a))).astype(bool) for a, ann in refer.anns.items()
                  if ann["image_id"] == obj["image_id"] and int(a) != obj["ann_id"] and not ann.get("iscrowd", 0)]
        src_lab = rgb_to_lab(image[mask])
        for target in targets:
            plate = plates[target]
            if float(ciede2000(src_lab, rgb_to_lab(plate[mask])).mean()) < SAME_AS_PHOTO:
                skipped["own_colour"] += 1
                continue
            req = EditRequest(sample_id=f"ann{obj['ann_id']}-{target}", edit_type="attribute", image=image, mask=mask,
                              bbox=rle_mod.to_bbox(obj["source_mask"]), prompt=f"make it {target}",
                              edit_phrase=target, edit_target=target, seed=n, category=obj["category"],
                              other_masks=others)
            outs: Dict[str, np.ndarray] = {}
            row: Dict[str, Any] = {"ann_id": obj["ann_id"], "category": obj["category"], "target": target,
                                   "kind": "colour" if target in COLOURS else "material"}
            try:
                for k, pipe in pipes.items():
                    t0 = time.perf_counter()
                    outs[k] = pipe.generate(req).image
                    secs[k] += time.perf_counter() - t0
            except PipelineError as e:  # an object that already looks so (no_change) is no sample
                skipped[e.reason if e.reason in skipped else "no_change"] += 1
                continue
            for k, out in outs.items():
                row[k] = compare(out, plate, mask)
            rows.append(row)
            if gallery is not None and n % gallery_every == 0:
                _save_tiles(gallery / f"ann{obj['ann_id']}-{target}.png", image, plate, outs, mask)
            n += 1
    return summarise(rows, secs, skipped, len(objects), num_images)


def summarise(rows: List[Dict[str, Any]], secs: Dict[str, float], skipped: Dict[str, int], n_objects: int,
              num_images: int) -> Dict[str, Any]:
    """Means per recolouring, over every pair and per kind (colour / material), and wins."""
    table: Dict[str, Dict[str, Any]] = {}
    for k in secs:
        t: Dict[str, Any] = {}
        for kind in ("all", "colour", "material"):
            sel = [r[k] for r in rows if kind == "all" or r["kind"] == kind]
            for metric in ("de", "de_mean", "ssim_l"):
                t[f"{metric}_{kind}"] = round(float(np.mean([s[metric] for s in sel])), 4) if sel else None
        t["s_per_edit"] = round(secs[k] / max(len(rows), 1), 5)
        t["wins_de_vs_base"] = int(sum(r[k]["de"] < r[BASE]["de"] for r in rows))
        table[k] = t
    per_target: Dict[str, Dict[str, float]] = {}
    for target in sorted({r["target"] for r in rows}):
        sel = [r for r in rows if r["target"] == target]
        per_target[target] = {f"{k}_{m}": round(float(np.mean([r[k][m] for r in sel])), 3)
                              for k in secs for m in ("de", "ssim_l")}
        per_target[target]["n"] = len(sel)
    return {"objects": n_objects, "images": num_images, "pairs": len(rows), "skipped": skipped, "table": table,
            "per_target": per_target}


def _save_tiles(path: Path, image: np.ndarray, plate: np.ndarray, outs: Dict[str, np.ndarray], mask: np.ndarray) -> None:
    """source | plate | each recolouring, cropped around the object, one row."""
    import cv2
    from PIL import Image

    ys, xs = _window(mask, 12)
    tiles = [cv2.resize(np.ascontiguousarray(t[ys, xs]), (200, 200), interpolation=cv2.INTER_AREA)
             for t in [image, plate] + list(outs.values())]
    Image.fromarray(np.hstack(tiles)).save(path)


def run(quick: bool = False) -> Dict[str, Any]:
    """The perf row: CIEDE2000 inside M, former recolouring / ours (higher is better); the rest in ``detail``."""
    res = measure(12 if quick else 48)
    t = res["table"]
    new, base = t[NEW], t[BASE]
    notes = (f"{res['objects']} objects, {res['pairs']} edits; luminance SSIM in M {new['ssim_l_all']:.3f} vs "
             f"{base['ssim_l_all']:.3f} (x{new['ssim_l_all'] / base['ssim_l_all']:.2f}); colours: dE00 "
             f"{new['de_colour']:.2f} vs {base['de_colour']:.2f}, materials {new['de_material']:.2f} vs "
             f"{base['de_material']:.2f}; {new['s_per_edit'] * 1000:.0f} vs {base['s_per_edit'] * 1000:.0f} ms/edit")
    return {
        "name": "recolor",
        "baseline": "classical-attribute method=lab (the former recolouring), CIEDE2000 inside M vs the attribute plate",
        "unit": "dE00",
        "baseline_s": base["de_all"],
        "value_s": new["de_all"],
        "ratio": round(base["de_all"] / new["de_all"], 4),
        "better": "higher",
        "notes": notes,
        "detail": res,
        "ssim_ratio": round(new["ssim_l_all"] / base["ssim_l_all"], 4),
        "time_ratio": round(new["s_per_edit"] / max(base["s_per_edit"], 1e-9), 2),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_recolor", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 12 demo images")
    ap.add_argument("--gallery", type=Path, help="write source | plate | recolourings PNGs here")
    ap.add_argument("--every", type=int, default=5, help="one gallery PNG every this many edits")
    args = ap.parse_args(argv)
    res = measure(12 if args.quick else 48, args.gallery, args.every)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
