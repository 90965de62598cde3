"""Benchmark: RefCOCO construction (load + index) vs bare ``pickle.load`` + ``json.load``.

Acceptance criterion: on a RefCOCO-scale refer set (20k images, 196k polygon annotations, 50k
refs, 142k sentences) ``RefCOCO(...)`` costs at most 2x reading the same two files with the
stdlib. The synthetic set is generated once and cached under
``$TMPDIR/refcoco-edit-perf/<parameters>/`` (real files: instances.json + refs(unc).p, protocol 2).
"""
from __future__ import annotations

import gc
import json
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

GEN_VERSION = 1
FULL = dict(images=20_000, anns=196_000, refs=50_000, sents=142_000, crowd_every=150, seed=0)
QUICK = dict(images=2_000, anns=19_600, refs=5_000, sents=14_200, crowd_every=150, seed=0)
WORDS = ("man woman left right red blue shirt dog cat car person white black small big near far "
         "front back middle top bottom guy girl boy table chair umbrella green standing sitting").split()
SPLITS = (("train", 0.848), ("val", 0.076), ("testA", 0.040), ("testB", 0.036))


def _dumps_json(obj: Any) -> bytes:
    try:
        import orjson

        return orjson.dumps(obj)
    except ImportError:
        return json.dumps(obj).encode("utf-8")


def generate(root: Path, images: int, anns: int, refs: int, sents: int, crowd_every: int, seed: int) -> None:
    """Write a synthetic refer data root: root/refcoco/{instances.json, refs(unc).p}."""
    rng = np.random.default_rng(seed)
    from refcoco_edit.vocab import COCO_CATEGORIES

    cat_ids = np.array(sorted(COCO_CATEGORIES))
    ws = rng.integers(320, 641, images)
    hs = rng.integers(240, 641, images)
    image_recs = [
        {"license": 1, "file_name": f"COCO_train2014_{i + 1:012d}.jpg", "coco_url": "", "height": int(h),
         "width": int(w), "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": i + 1}
        for i, (w, h) in enumerate(zip(ws, hs))
    ]

    ann_img = np.sort(rng.integers(0, images, anns))
    n_parts = rng.integers(1, 4, anns)
    part_pts = rng.integers(10, 61, int(n_parts.sum()))
    total = int(part_pts.sum()) * 2
    coords = (rng.random(total) * 300 + 10).round(2).tolist()
    ann_recs: List[Dict[str, Any]] = []
    pos = 0
    part = 0
    for k in range(anns):
        img = image_recs[int(ann_img[k])]
        cat = int(cat_ids[k % len(cat_ids)])
        if crowd_every and k % crowd_every == crowd_every - 1:
            h, w = img["height"], img["width"]
            start, run = int(h * w // 3), int(h * w // 5)
            seg: Any = {"size": [h, w], "counts": [start, run, h * w - start - run]}
            crowd = 1
            part += int(n_parts[k])  # its polygon parts are skipped
        else:
            seg = []
            for _ in range(int(n_parts[k])):
                n = int(part_pts[part]) * 2
                seg.append(coords[pos:pos + n])
                pos += n
                part += 1
            crowd = 0
        ann_recs.append({"segmentation": seg, "area": 1234.5, "iscrowd": crowd, "image_id": img["id"],
                         "bbox": [10.0, 20.0, 100.5, 80.25], "category_id": cat, "id": k + 1000})
    instances = {"info": {"description": "synthetic refcoco-edit perf set"}, "licenses": [],
                 "images": image_recs, "annotations": ann_recs,
                 "categories": [{"supercategory": "x", "id": c, "name": n} for c, n in sorted(COCO_CATEGORIES.items())]}

    ref_anns = rng.choice(anns, size=refs, replace=False)
    per_ref = np.full(refs, sents // refs)
    per_ref[rng.choice(refs, size=sents - int(per_ref.sum()), replace=False)] += 1
    cum = np.cumsum([p for _, p in SPLITS])
    split_draw = rng.random(refs)
    word_idx = rng.integers(0, len(WORDS), (sents, 8))
    lens = rng.integers(2, 9, sents)
    ref_recs = []
    sid = 0
    for r in range(refs):
        a = ann_recs[int(ref_anns[r])]
        sentences = []
        for _ in range(int(per_ref[r])):
            toks = [WORDS[j] for j in word_idx[sid, : lens[sid]]]
            text = " ".join(toks)
            sentences.append({"tokens": toks, "raw": text, "sent_id": sid, "sent": text})
            sid += 1
        ref_recs.append({
            "sent_ids": [s["sent_id"] for s in sentences], "file_name": f"COCO_train2014_{a['image_id']:012d}_{a['id']}.jpg",
            "ann_id": a["id"], "ref_id": r, "image_id": a["image_id"],
            "split": SPLITS[int(np.searchsorted(cum, split_draw[r]))][0] if split_draw[r] < cum[-1] else "train",
            "sentences": sentences, "category_id": a["category_id"],
        })

    d = root / "refcoco"
    d.mkdir(parents=True, exist_ok=True)
    (d / "instances.json").write_bytes(_dumps_json(instances))
    with open(d / "refs(unc).p", "wb") as f:
        pickle.dump(ref_recs, f, protocol=2)
    (root / "images").mkdir(exist_ok=True)


def dataset(params: Dict[str, int]) -> Path:
    """The cached synthetic data root for ``params`` (generated on first use)."""
    from perf import cached_input

    key = "refer-v{}-".format(GEN_VERSION) + "-".join(f"{k}{v}" for k, v in sorted(params.items()))

    def make(tmp: Path) -> None:
        t0 = time.perf_counter()
        generate(tmp, **params)
        print(f"generated {key} in {time.perf_counter() - t0:.1f}s")

    return cached_input(key, make)


def _time(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    gc.collect()
    return dt


def run(quick: bool = False) -> Dict[str, Any]:
    """Best-of-2 (interleaved) wall times of the stdlib baseline and of ``RefCOCO(...)``."""
    from refcoco_edit import refcoco

    params = QUICK if quick else FULL
    root = dataset(params)
    refs_p = root / "refcoco" / "refs(unc).p"
    inst_p = root / "refcoco" / "instances.json"
    images = root / "images"

    def baseline():
        with open(refs_p, "rb") as f:
            r = pickle.load(f)
        with open(inst_p, "rb") as f:
            i = json.load(f)
        return r, i

    def loader():
        return refcoco.RefCOCO(root, "refcoco", "unc", images_dir=images)

    orjson_mod = refcoco._orjson

    def loader_stdlib_json():
        refcoco._orjson = None
        try:
            return loader()
        finally:
            refcoco._orjson = orjson_mod

    check = loader()
    counts = dict(refs=len(check.refs), sents=len(check.sents), images=len(check.images), anns=len(check.anns))
    del check
    times: Dict[str, List[float]] = {"baseline": [], "loader": [], "loader_stdlib_json": []}
    fns = {"baseline": baseline, "loader": loader, "loader_stdlib_json": loader_stdlib_json}
    rounds = 2  # (3 made the loader a third of `python -m perf`; the spread of the two is recorded in `times`)
    for r in range(rounds):
        for name, fn in fns.items():
            if name == "loader_stdlib_json" and r > 0:
                continue  # a side figure: one measurement is enough
            times[name].append(_time(fn))
    b, v, vs = min(times["baseline"]), min(times["loader"]), min(times["loader_stdlib_json"])
    res = {
        "name": "loader",
        "baseline": "pickle.load + json.load of the same two files",
        "unit": "s",
        "notes": (f"RefCOCO(...) index of {counts['refs']} refs, {counts['sents']} sents, {counts['anns']} anns; "
                  f"best of {rounds}"),
        "baseline_s": round(b, 4),
        "value_s": round(v, 4),
        "ratio": round(v / b, 3),
        "json_backend": "orjson" if orjson_mod is not None else "json",
        "value_stdlib_json_s": round(vs, 4),
        "ratio_stdlib_json": round(vs / b, 3),
        "counts": counts,
        "files_mb": round((refs_p.stat().st_size + inst_p.stat().st_size) / 1e6, 1),
        "times": {k: [round(t, 4) for t in ts] for k, ts in times.items()},
    }
    print(f"loader: baseline (pickle.load + json.load) {b:.3f}s, RefCOCO {v:.3f}s "
          f"({res['json_backend']}), ratio {res['ratio']:.2f}; with stdlib json {vs:.3f}s, ratio {res['ratio_stdlib_json']:.2f}")
    return res
