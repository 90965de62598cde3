"""The refer-format writer: instances.json, refs(*).p and the images, written plainly or atomically."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..vocab import COCO_CATEGORIES
from .image import make_image
from .layout import DATASETS, DEFAULT_NUM_IMAGES, DEMO_VERSION, MARKER_NAME, MAX_IMAGES, SPLIT_CYCLES, SUPER_OF

def _check_params(num_images: int, seed: int) -> None:
    """ValueError unless 1 <= num_images <= MAX_IMAGES and seed >= 0 (integers, not bools)."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(f"num_images must be an integer in [1, {MAX_IMAGES}], got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def write_demo(out_dir: str | Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> Dict[str, Any]:
    """Write the synthetic mini-RefCOCO (layout in the package docstring) into ``out_dir``.

    Not atomic (use :func:`ensure_demo` for that). Returns a summary:
    {images, annotations, refs: {dataset: n}, sentences (all datasets), sentences_by_dataset, root, images_dir}.
    """
    _check_params(num_images, seed)
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    refs: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {ds: [] for ds in DATASETS}
    for i in range(int(num_images)):
        data, rec, anns, img_refs = make_image(int(seed), i)
        (images_dir / rec["file_name"]).write_bytes(data)
        images.append(rec)
        annotations.extend(anns)
        for ds, rs in img_refs.items():
            refs[ds].extend((i, r) for r in rs)
    categories = [{"id": cid, "name": name, "supercategory": SUPER_OF[cid]}
                  for cid, name in sorted(COCO_CATEGORIES.items())]
    instances = {
        "info": {"description": "refcoco-edit synthetic demo (mini-RefCOCO in the refer layout)",
                 "version": str(DEMO_VERSION), "year": 2024, "contributor": "refcoco_edit.demo",
                 "seed": int(seed), "num_images": int(num_images)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    inst_bytes = json.dumps(instances, separators=(",", ":")).encode("utf-8")
    for ds, schemes in DATASETS.items():
        d = root / ds
        d.mkdir(parents=True, exist_ok=True)
        (d / "instances.json").write_bytes(inst_bytes)
        for scheme in schemes:
            cycle = SPLIT_CYCLES[scheme]
            out = [dict(r, split=cycle[i % len(cycle)]) for i, r in refs[ds]]
            with open(d / f"refs({scheme}).p", "wb") as f:
                pickle.dump(out, f, protocol=2)
    by_ds = {ds: sum(len(r["sentences"]) for _, r in refs[ds]) for ds in DATASETS}
    return {
        "images": len(images), "annotations": len(annotations),
        "refs": {ds: len(refs[ds]) for ds in DATASETS},
        "sentences": sum(by_ds.values()), "sentences_by_dataset": by_ds,
        "root": str(root), "images_dir": str(images_dir),
    }


_DEMO_ENTRIES = frozenset(list(DATASETS) + ["images", MARKER_NAME])


def _params(num_images: int, seed: int) -> Dict[str, Any]:
    return {"num_images": int(num_images), "seed": int(seed), "version": DEMO_VERSION}


def _is_complete(root: Path, params: Dict[str, Any]) -> bool:
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("params") != params:
        return False
    needed = [root / ds / "instances.json" for ds in DATASETS]
    needed += [root / ds / f"refs({s}).p" for ds, ss in DATASETS.items() for s in ss]
    return (root / "images").is_dir() and all(p.is_file() for p in needed)


def ensure_demo(out_dir: str | Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> Path:
    """Make sure ``out_dir`` holds a complete demo with these params; write it only when not.

    The demo is written into a temporary sibling folder, its done-marker last, and then renamed
    into place, so a killed run never leaves a folder that looks complete. A folder holding
    anything but demo files is never replaced (InputError).
    """
    _check_params(num_images, seed)
    root = Path(out_dir)
    params = _params(num_images, seed)
    if _is_complete(root, params):
        return root
    if root.exists():
        if not root.is_dir():
            raise InputError(f"{root} exists and is not a folder")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _DEMO_ENTRIES)
        if foreign:
            raise InputError(f"{root} holds files that are not demo data ({', '.join(foreign[:3])}); "
                             "refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    stale: Optional[Path] = None
    try:
        summary = write_demo(tmp, num_images, seed)
        summary.update(root=str(root), images_dir=str(root / "images"))
        (tmp / MARKER_NAME).write_text(json.dumps({"params": params, "summary": summary}, indent=2, sort_keys=True))
        if _is_complete(root, params):   # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if root.exists():
            stale = root.parent / f".{root.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, stale)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return root


def _clean_stale(root: Path, age_s: float = 3600.0) -> None:
    """Remove temp/stale siblings left by killed runs (old enough not to belong to a live one)."""
    now = time.time()
    for p in root.parent.glob(f".{root.name}.*-*"):
        if p.name.startswith((f".{root.name}.tmp-", f".{root.name}.stale-")) and p.is_dir():
            try:
                if now - p.stat().st_mtime > age_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass
