"""Removal fidelity: the weight-free fills against the demo's clean plates (a quality bench).

The demo generator knows its scenes, so every object it draws has a true removal: the same
seeded scene rendered without it and without its shadows
(``refcoco_edit.demo.render_clean_plate``). For every removal-eligible demo object (every object
the select stage would turn into a ``remove`` sample: ``Selector`` with ``edit_types=remove``
and no per-image quota) the hole is set up exactly as ``classical-remove`` sets it up (M_e =
dilate(mask ∪ detected shadow), less the other objects; their masks grown by 2 px are
*excluded*: kept, never copied from nor diffused into the hole, but for objects behind the
removed one, which are a source), each fill fills it, the result
is pasted back through M_e as the pipeline does (``finish_output``), and it is compared with the
clean plate:

* inside M, the object's mask (the pixels a remover must invent), and
* inside M_e*, the true edit region: M together with the pixels where the clean plate differs
  from the photo near the object (its shadows), grown by the removal's seam margin. The same
  region for every fill, so one that leaves the shadow behind pays for it here.

Figures, each a mean over objects: PSNR (dB) and SSIM (``refcoco_edit.benchmark.metrics.
background.ssim_map``, 11x11 Gaussian window sigma 1.5; mean of the map over the region);
``detail`` and ``texture`` (``refcoco_edit.pipelines.fill.texture_stats``: the band-pass energy
of the output relative to the plate's, and the share of the plate's gradient histogram the fill
reproduces; both 1.0 for the plate itself), and seconds per object of the fill alone.

Fills compared on the same holes in the same run:

* in process (``refcoco_edit.pipelines.fill.remove_fill``): ``patch`` (the default of
  ``classical-remove``; the bench checks it gives the pipeline's bytes), ``telea`` and ``ns``
  (``cv2.inpaint`` INPAINT_TELEA / INPAINT_NS, the other objects excluded, no grain), and
  ``pypatchmatch`` (``remove_fill(method="pypatchmatch")``: PyPatchMatch 2.x, MIT, 7x7 patches,
  the excluded pixels as its ``global_mask``) where the package is installed;
* ``telea-grain``: the former remover as the pipeline runs it (``method=telea``: Telea + matched
  grain over the dilated mask, no shadow, time of the whole ``generate``);
* out of process, in a Python that has them (``--fill-python`` or ``$REFCOCO_EDIT_FILL_PYTHON``;
  skipped without): ``pypatchmatch`` where the main environment lacks it (the same
  ``remove_fill`` code, loaded from its file), ``pm-cython`` (patchmatch-cython, BSD,
  ``inpaint_pyramid``, 7x7), ``fsr-fast`` / ``fsr-best`` (OpenCV contrib ``cv2.xphoto.inpaint``
  INPAINT_FSR_FAST / INPAINT_FSR_BEST) and ``shiftmap`` (INPAINT_SHIFTMAP, on Lab). Each gets
  the crop ``patch_inpaint`` works on (the hole's box grown by its longer side; the excluded
  pixels are hidden as part of the hole where the method has no exclusion, and put back) and is
  timed inside the worker around the fill call. ``pm-cython``, ``fsr-best`` and ``shiftmap``
  are slow, so they run on every 10th object only; ``detail["subset"]`` holds every fill's
  figures on those objects (the same run), ``detail["table"]`` the others' on all objects. ``opencv-contrib-python-headless`` replaces
  ``opencv-python-headless``, so that Python is a separate plain virtualenv::

      python -m venv /tmp/fill-venv
      /tmp/fill-venv/bin/pip install numpy pillow opencv-contrib-python-headless pypatchmatch patchmatch-cython
      REFCOCO_EDIT_FILL_PYTHON=/tmp/fill-venv/bin/python python -m perf --only removal

The headline ratio is PSNR inside M of the default fill (``classical-remove``'s ``auto``:
``pypatchmatch`` where installed) / ``patch``, our own patch fill and the default before it
(without PyPatchMatch: ``patch`` / ``telea-grain``, the remover before that); higher is better.
The notes give texture, SSIM and the time ratio, ``detail["table"]`` every figure of every fill.
``--quick``: the first 12 demo images.

    python -m perf --only removal            # the table row, perf/results.json
    python -m perf.bench_removal --gallery DIR [--quick]   # also before/after PNGs per object
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

FORMER = "telea-grain"


def headline() -> Tuple[str, str]:
    """(the default fill, the fill it is compared with): see the module docstring."""
    from refcoco_edit.pipelines.fill import default_method

    new = default_method()
    return new, ("patch" if new != "patch" else FORMER)
SEED = 0
# the in-process fills: remove_fill's keyword arguments (or, with "patch_inpaint", patch_inpaint's)
FILLS: Dict[str, Dict[str, Any]] = {
    "patch": {"method": "patch"},
    "pypatchmatch": {"method": "pypatchmatch"},  # in process where installed, else in the fill Python
    "telea": {"method": "telea"},
    "ns": {"method": "ns"},
}
PIPELINES: Dict[str, Dict[str, Any]] = {"telea-grain": {"method": "telea"}}
EXTERNAL = ("pypatchmatch", "pm-cython", "fsr-fast", "fsr-best", "shiftmap")
# too slow for every object (FSR_BEST takes about a minute per object here): every SUBSET_STEP-th
SLOW = ("pm-cython", "fsr-best", "shiftmap")
SUBSET_STEP = 10
ORDER = ("patch", "pypatchmatch", "pm-cython", "telea", "ns", "fsr-fast", "fsr-best", "shiftmap", "telea-grain")
FIGURES = ("psnr_m", "ssim_m", "detail_m", "texture_m", "psnr_e", "ssim_e", "detail_e", "texture_e")


def _demo(num_images: int) -> Path:
    from perf import cached_input
    from refcoco_edit.demo import DEMO_VERSION, write_demo

    # the demo generator's version in the key: clean plates are rendered by the current generator
    return cached_input(f"removal-demo-v{DEMO_VERSION}-{num_images}-s{SEED}", lambda tmp: write_demo(tmp, num_images, SEED))


def eligible_objects(root: Path, edit_type: str = "remove") -> Tuple[List[Dict[str, Any]], Any]:
    """The select stage's ``edit_type`` samples, one per eligible object ({ann_id, image_id,
    category, source_mask}), and the RefCOCO index (also ``bench_recolor``'s, with "attribute")."""
    from refcoco_edit.refcoco import RefCOCO
    from refcoco_edit.select import SelectionConfig, Selector

    refer = RefCOCO(root, dataset="refcoco", split_by="unc", images_dir=root / "images")
    cfg = SelectionConfig(num_images=None, samples_per_image=1000, edit_types=(edit_type,))
    rows = Selector(refer, cfg, seed=SEED).run().rows
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r["ann_id"]):
        if r["ann_id"] not in seen:
            seen.add(r["ann_id"])
            out.append({"ann_id": int(r["ann_id"]), "image_id": int(r["image_id"]), "category": r["category"],
                        "source_mask": r["source_mask"]})
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


@dataclass
class Case:
    """One removal as ``classical-remove`` (defaults) sets it up, and its ground truth."""

    ann_id: int
    request: Any  # EditRequest
    clean: np.ndarray  # the clean plate
    region: np.ndarray  # M_e*
    m_e: np.ndarray  # the pipeline's M_e (mask ∪ detected shadow, dilated)
    hole: np.ndarray  # M_e less the other objects
    exclude: Optional[np.ndarray]  # the other objects but those behind the removed one, grown by 2 px (kept, never a source)
    protect: Optional[np.ndarray]  # the other objects (never painted)
    feather: int
    crop: Tuple[slice, slice]  # the crop patch_inpaint works on (the out-of-process fills get it)


def prepare(num_images: int) -> List[Case]:
    """Every removal-eligible object of the first ``num_images`` demo images, set up as the build does."""
    from refcoco_edit import rle as rle_mod
    from refcoco_edit.demo import render_clean_plate
    from refcoco_edit.pipelines.base import EditRequest, protected_region
    from refcoco_edit.pipelines.classical import _not_behind, _removal_dilate_px, fill_exclusion
    from refcoco_edit.pipelines.fill import _bbox_crop
    from refcoco_edit.pipelines.masks import edit_mask
    from refcoco_edit.pipelines.patch_inpaint import shadow_region

    root = _demo(num_images)
    objects, refer = eligible_objects(root)
    cases = []
    for n, obj in enumerate(objects):
        li = refer.load_image(obj["image_id"])
        image = li.array
        mask = li.orient_mask(rle_mod.decode(obj["source_mask"])).astype(bool)
        clean = render_clean_plate(obj["ann_id"], seed=SEED)
        dp = _removal_dilate_px(mask, 0.03, 5)
        others = [li.orient_mask(rle_mod.decode(refer.ann_rle(a))).astype(bool) for a, ann in refer.anns.items()
                  if ann["image_id"] == obj["image_id"] and int(a) != obj["ann_id"] and not ann.get("iscrowd", 0)]
        req = EditRequest(sample_id=f"ann{obj['ann_id']}", edit_type="remove", image=image, mask=mask,
                          bbox=rle_mod.to_bbox(obj["source_mask"]), prompt="remove it", edit_phrase="remove",
                          edit_target="", seed=n, other_masks=others)
        # as InpaintRemoval.generate (defaults): M_e = dilate(mask ∪ shadow), the other objects out
        m_e = edit_mask(mask, shadow_region(image, mask, darker=0.9), dp)
        protect = protected_region(req)
        hole = m_e & ~protect if protect is not None else m_e
        near = fill_exclusion(_not_behind(req, mask, protect))  # objects behind the removed one are a source
        crop = _bbox_crop(hole)
        cases.append(Case(obj["ann_id"], req, clean, true_region(image, clean, mask, dp), m_e, hole, near, protect,
                          min(4, dp), crop))
    return cases


def _fill_in_process(name: str, case: Case) -> np.ndarray:
    from refcoco_edit.pipelines.fill import remove_fill
    from refcoco_edit.pipelines.patch_inpaint import patch_inpaint

    kw = FILLS[name]
    rng = np.random.default_rng(case.request.seed)
    if "patch_inpaint" in kw:
        return patch_inpaint(case.request.image, case.hole, rng, exclude=case.exclude, **kw["patch_inpaint"])
    return remove_fill(case.request.image, case.hole, exclude=case.exclude, rng=rng, **kw)


def _run_external(python: str, cases: Sequence[Case], methods: Sequence[str],
                  idx: Sequence[int]) -> Dict[str, Tuple[Dict[int, np.ndarray], Dict[int, float]]]:
    """The out-of-process fills of the crops of ``cases[idx]``: {method: ({i: full-size filled image}, {i: seconds})}."""
    with tempfile.TemporaryDirectory(prefix="removal-fill-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays: Dict[str, np.ndarray] = {"seeds": np.asarray([cases[i].request.seed for i in idx], np.int64)}
        for j, i in enumerate(idx):
            c = cases[i]
            ys, xs = c.crop
            arrays[f"img{j}"] = np.ascontiguousarray(c.request.image[ys, xs])
            arrays[f"hole{j}"] = np.ascontiguousarray(c.hole[ys, xs])
            excl = c.exclude if c.exclude is not None else np.zeros_like(c.hole)
            arrays[f"excl{j}"] = np.ascontiguousarray(excl[ys, xs] & ~c.hole[ys, xs])
        np.savez(src, **arrays)
        subprocess.run([python, str(Path(__file__).resolve()), "--external-worker", str(src), str(dst),
                        "--methods", ",".join(methods)], check=True)
        got = np.load(dst, allow_pickle=False)
        out: Dict[str, Tuple[Dict[int, np.ndarray], Dict[int, float]]] = {}
        for m in methods:
            imgs: Dict[int, np.ndarray] = {}
            for j, i in enumerate(idx):
                full = cases[i].request.image.copy()
                ys, xs = cases[i].crop
                full[ys, xs] = got[f"{m}/{j}"]
                imgs[i] = full
            out[m] = (imgs, {i: float(t) for i, t in zip(idx, got[f"{m}/times"])})
        return out


def _fill_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fill", Path(__file__).resolve().parents[1] / "pipelines" / "fill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def external_worker(src: Path, dst: Path, methods: Sequence[str]) -> None:
    """Run in the fill Python (numpy + opencv-contrib + pypatchmatch + patchmatch-cython only):
    fill every crop of ``src`` with each method, write the crops and the seconds to ``dst``."""
    import cv2

    data = np.load(src, allow_pickle=False)
    seeds = data["seeds"]
    out: Dict[str, np.ndarray] = {}
    for m in methods:
        times = []
        for i, seed in enumerate(seeds):
            img, hole, excl = data[f"img{i}"], data[f"hole{i}"], data[f"excl{i}"]
            t0 = time.perf_counter()
            if m == "pypatchmatch":  # the production code, loaded from its file (no refcoco_edit here)
                res = _fill_module().remove_fill(img, hole, exclude=excl, rng=np.random.default_rng(int(seed)),
                                                 method="pypatchmatch")
            elif m == "pm-cython":
                from patchmatch_cython import inpaint_pyramid

                res = inpaint_pyramid(img, hole | excl, patch_size=7, seed=int(seed))
            elif m in ("fsr-fast", "fsr-best", "shiftmap"):
                bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
                known = (~(hole | excl)).astype(np.uint8) * 255
                algo = {"fsr-fast": cv2.xphoto.INPAINT_FSR_FAST, "fsr-best": cv2.xphoto.INPAINT_FSR_BEST,
                        "shiftmap": cv2.xphoto.INPAINT_SHIFTMAP}[m]
                srcimg = cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab) if m == "shiftmap" else bgr
                res_bgr = np.zeros_like(srcimg)
                cv2.xphoto.inpaint(srcimg, known, res_bgr, algo)
                if m == "shiftmap":
                    res_bgr = cv2.cvtColor(res_bgr, cv2.COLOR_Lab2BGR)
                res = cv2.cvtColor(res_bgr, cv2.COLOR_BGR2RGB)
            else:
                raise ValueError(f"unknown external fill {m!r}")
            times.append(time.perf_counter() - t0)
            if (i + 1) % 20 == 0:
                print(f"  {m}: {i + 1}/{len(seeds)} ({np.mean(times):.2f} s each)", file=sys.stderr, flush=True)
            filled = img.copy()
            filled[hole] = np.asarray(res)[hole]
            out[f"{m}/{i}"] = filled
        out[f"{m}/times"] = np.asarray(times)
    np.savez(dst, **out)


def _fill_python(explicit: Optional[str]) -> Optional[str]:
    return explicit or os.environ.get("REFCOCO_EDIT_FILL_PYTHON") or None


def _has_pypatchmatch() -> bool:
    import importlib.util

    return importlib.util.find_spec("patchmatch") is not None


def measure(num_images: int, gallery: Optional[Path] = None, fill_python: Optional[str] = None,
            only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Every fill on every eligible object of the first ``num_images`` demo images (the ``SLOW``
    ones on every ``SUBSET_STEP``-th object)."""
    from refcoco_edit.benchmark.metrics.background import ssim_map
    from refcoco_edit.pipelines.classical import InpaintRemoval, finish_output
    from refcoco_edit.pipelines.fill import texture_stats

    cases = prepare(num_images)
    new_fill = headline()[0]
    subset = list(range(0, len(cases), SUBSET_STEP))
    names = [k for k in ORDER if only is None or k in only]
    python = _fill_python(fill_python)
    in_process = set(FILLS) - ({"pypatchmatch"} if not _has_pypatchmatch() else set())
    external = [k for k in names if k in EXTERNAL and k not in in_process]
    skipped: Dict[str, str] = {}
    ext: Dict[str, Tuple[Dict[int, np.ndarray], Dict[int, float]]] = {}
    if external and python is None:
        skipped = {k: "no fill Python (--fill-python / REFCOCO_EDIT_FILL_PYTHON)" for k in external}
    elif external:
        for group in ([k for k in external if k not in SLOW], [k for k in external if k in SLOW]):
            if group:
                idx = subset if group[0] in SLOW else list(range(len(cases)))
                ext.update(_run_external(python, cases, group, idx))
    names = [k for k in names if k not in skipped]
    per: Dict[str, Dict[str, Dict[int, float]]] = {k: {f: {} for f in FIGURES} for k in names}
    secs: Dict[str, Dict[int, float]] = {k: {} for k in names}
    pipes = {k: InpaintRemoval(**kw) for k, kw in PIPELINES.items()}
    default_same = True
    if gallery is not None:
        gallery.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(cases):
        image, mask = c.request.image, np.asarray(c.request.mask).astype(bool)
        outs: Dict[str, np.ndarray] = {}
        for k in names:
            if k in SLOW and i not in subset:
                continue
            if k in pipes:
                t0 = time.perf_counter()
                out = pipes[k].generate(c.request).image
                secs[k][i] = time.perf_counter() - t0
            else:
                if k in ext:
                    filled, t = ext[k][0][i], ext[k][1][i]
                else:
                    t0 = time.perf_counter()
                    filled = _fill_in_process(k, c)
                    t = time.perf_counter() - t0
                secs[k][i] = t
                out = finish_output(image, filled, c.m_e, c.feather, {}, protect=c.protect).image
            outs[k] = out
            smap = ssim_map(out, c.clean)
            tm, te = texture_stats(out, c.clean, mask), texture_stats(out, c.clean, c.region)
            for f, v in (("psnr_m", psnr(out, c.clean, mask)), ("ssim_m", float(smap[mask].mean())),
                         ("detail_m", tm["detail"]), ("texture_m", tm["texture"]),
                         ("psnr_e", psnr(out, c.clean, c.region)), ("ssim_e", float(smap[c.region].mean())),
                         ("detail_e", te["detail"]), ("texture_e", te["texture"])):
                per[k][f][i] = float(v)
        if new_fill in outs and i < 8:  # the bench's hole set-up is the pipeline's: same bytes
            default_same &= bool(np.array_equal(outs[new_fill], InpaintRemoval().generate(c.request).image))
        if gallery is not None:
            _save_tiles(gallery / f"ann{c.ann_id}.png", image, c.clean, outs, mask)

    def rows(keys: Sequence[str], idx: Sequence[int]) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        for k in keys:
            row: Dict[str, Any] = {f: round(float(np.mean([per[k][f][i] for i in idx])), 4) for f in FIGURES}
            row["s_per_object"] = round(float(np.mean([secs[k][i] for i in idx])), 4)
            if FORMER in per and FORMER != k:
                row["wins_psnr_m_vs_telea_grain"] = int(sum(per[k]["psnr_m"][i] > per[FORMER]["psnr_m"][i] for i in idx))
            row["objects"] = len(idx)
            out[k] = row
        return out

    everyone = list(range(len(cases)))
    return {"objects": len(cases), "images": num_images,
            "table": rows([k for k in names if k not in SLOW], everyone),
            "subset": {"every": SUBSET_STEP, "objects": len(subset), "table": rows(names, subset)},
            "skipped": skipped, "default_matches_pipeline": default_same}


def _save_tiles(path: Path, image: np.ndarray, clean: np.ndarray, outs: Dict[str, np.ndarray], mask: np.ndarray) -> None:
    """source | clean plate | each fill, cropped around the object and labelled, one row."""
    import cv2
    from PIL import Image

    from refcoco_edit.pipelines.classical import mask_bbox

    x0, y0, x1, y1 = mask_bbox(mask)
    s = max(x1 - x0, y1 - y0) // 2 + 8
    H, W = mask.shape
    ys, xs = slice(max(0, y0 - s), min(H, y1 + s)), slice(max(0, x0 - s), min(W, x1 + s))
    tiles = []
    for label, t in [("source", image), ("clean plate", clean)] + list(outs.items()):
        tile = cv2.resize(np.ascontiguousarray(t[ys, xs]), (220, 220), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    Image.fromarray(np.hstack(tiles)).save(path)


def notes(res: Dict[str, Any]) -> str:
    """The row's one line: each fill's PSNR / texture in M and s/object (the table's figures)."""
    t = res["table"]
    parts = [f"{k} {t[k]['psnr_m']:.2f} dB / texture {t[k]['texture_m']:.3f} / {t[k]['s_per_object']:.2f} s"
             for k in ORDER if k in t]
    line = f"{res['objects']} objects, PSNR / texture in M / s per object: " + "; ".join(parts)
    if res.get("skipped"):
        line += f"; not measured: {', '.join(sorted(res['skipped']))} (no fill Python)"
    return line


def run(quick: bool = False) -> Dict[str, Any]:
    """The perf row: PSNR inside M, the default fill / the one before it (higher is better)."""
    res = measure(12 if quick else 48)
    t = res["table"]
    new_name, base_name = headline()
    new, base = t[new_name], t[base_name]
    return {
        "name": "removal",
        "baseline": (f"{base_name} (the former default remover) vs {new_name} (the default), PSNR inside M "
                     "against the clean plate"),
        "unit": "dB",
        "baseline_s": base["psnr_m"],
        "value_s": new["psnr_m"],
        "ratio": round(new["psnr_m"] / base["psnr_m"], 4),
        "better": "higher",
        "notes": notes(res),
        "detail": res,
        "time_ratio": round(new["s_per_object"] / max(base["s_per_object"], 1e-9), 2),
    }


def format_table(table: Dict[str, Dict[str, Any]]) -> str:
    """The comparison as a Markdown table (M figures, then M_e*)."""
    head = "| fill | PSNR M | SSIM M | texture M | detail M | PSNR M_e* | SSIM M_e* | texture M_e* | s/object |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in table.items():
        lines.append(f"| `{k}` | {r['psnr_m']:.2f} | {r['ssim_m']:.3f} | {r['texture_m']:.3f} | {r['detail_m']:.2f} | "
                     f"{r['psnr_e']:.2f} | {r['ssim_e']:.3f} | {r['texture_e']:.3f} | {r['s_per_object']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_removal", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 12 demo images")
    ap.add_argument("--gallery", type=Path, help="write source | clean plate | fills PNGs here")
    ap.add_argument("--fill-python", help="a Python with opencv-contrib, pypatchmatch, patchmatch-cython "
                                          "(default $REFCOCO_EDIT_FILL_PYTHON)")
    ap.add_argument("--only", help="comma-separated fills to run (default all)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--external-worker", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--methods", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.external_worker:
        external_worker(args.external_worker[0], args.external_worker[1], args.methods.split(","))
        return 0
    res = measure(12 if args.quick else 48, args.gallery, args.fill_python,
                  args.only.split(",") if args.only else None)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(format_table(res["table"]))
    print(f"\nevery {res['subset']['every']}th object ({res['subset']['objects']}):")
    print(format_table(res["subset"]["table"]))
    print(json.dumps({k: v for k, v in res.items() if k not in ("table", "subset")}))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file (the external worker, in the fill Python)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
