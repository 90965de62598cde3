"""Exemplars of ``replace`` edits: an RGBA cut-out of an instance of the target category.

``ExemplarBank`` cuts them from other images of the data (the classical backend needs one; the
diffusion backend's Paint-by-Example uses one when there is one); ``user_exemplar`` takes them from
``--exemplar-dir`` first. ``exemplar_for`` is the policy of the generate stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from .. import rle as rle_mod
from ..errors import SampleError
from ..seeds import rng_for

if TYPE_CHECKING:
    from .config import BuildConfig

_EXTS = (".png", ".jpg", ".jpeg", ".webp")


class ExemplarBank:
    """Instances of each category in the data, to cut exemplars from (``replace`` edits)."""

    def __init__(self, refer: Any, min_fraction: float, mode_policy: str = "convert"):
        self.refer = refer
        self.mode_policy = mode_policy  # --image-modes: a quarantined image gives no exemplar either
        by_cat: Dict[str, List[int]] = {}
        for ann_id, ann in refer.anns.items():
            if ann.get("iscrowd", 0):
                continue
            img = refer.images.get(ann["image_id"])
            if img is None:
                continue
            if float(ann.get("area", 0.0)) < min_fraction * img["width"] * img["height"]:
                continue
            by_cat.setdefault(refer.cats.get(ann["category_id"], ""), []).append(int(ann_id))
        self.by_cat = {k: sorted(v) for k, v in by_cat.items()}
        self._unusable: set = set()
        self._overlapped = _overlapped(refer)

    def categories(self) -> List[str]:
        """Categories with at least one usable instance in two different images."""
        out = []
        for cat, anns in self.by_cat.items():
            if len({self.refer.anns[a]["image_id"] for a in anns}) >= 2:
                out.append(cat)
        return sorted(out)

    def aspects(self) -> Dict[str, float]:
        """Each category's median instance box aspect (width / height) in the data."""
        out = {}
        for cat, anns in self.by_cat.items():
            ratios = [float(b[2]) / float(b[3]) for b in (self.refer.anns[a].get("bbox") for a in anns)
                      if b is not None and len(b) == 4 and float(b[2]) > 0 and float(b[3]) > 0]
            if ratios:
                out[cat] = float(np.median(ratios))
        return out

    def cut(self, category: str, exclude_image: int, rng: np.random.Generator,
            box_wh: Optional[Tuple[float, float]] = None, aspect_tolerance: float = 0.0) -> Tuple[np.ndarray, int]:
        """An RGBA cut-out of an instance of ``category`` from another image.

        With ``box_wh`` (the source box) and ``aspect_tolerance > 0``, only instances whose box
        aspect is within that factor of the source box's are offered, when there are any (else
        all of them). Instances are tried in a seeded order until one loads; unusable ones (bad
        image or mask) are remembered, so a broken image costs one attempt per process, not one
        per sample.
        """
        pool = [a for a in self.by_cat.get(category, []) if self.refer.anns[a]["image_id"] != exclude_image]
        if not pool:
            raise SampleError("no_exemplar", f"no instance of {category!r} in another image")
        if box_wh is not None and aspect_tolerance > 0:
            from ..prompts.fit import aspect_gap

            fitting = [a for a in pool if self._aspect(a) is not None
                       and aspect_gap(box_wh, self._aspect(a)) <= aspect_tolerance]
            pool = fitting or pool
        # a whole object, not the visible part of a half-hidden one (its cut-out would be a
        # fragment: the wrong shape, and a hard edge where the occluder was), when there is one
        whole = [a for a in pool if a not in self._overlapped]
        pool = whole or pool
        errors = []
        for k in rng.permutation(len(pool)):
            ann_id = pool[int(k)]
            if ann_id in self._unusable:
                continue
            try:
                li = self.refer.load_image(self.refer.anns[ann_id]["image_id"], mode_policy=self.mode_policy)
                mask = li.orient_mask(rle_mod.decode(self.refer.ann_rle(ann_id)))
            except (SampleError, rle_mod.MaskError) as e:
                self._unusable.add(ann_id)
                if len(errors) < 3:
                    errors.append(f"ann {ann_id}: {e}")
                continue
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            rgba = np.dstack([li.array[y0:y1, x0:x1], (mask[y0:y1, x0:x1] * 255).astype(np.uint8)])
            return np.ascontiguousarray(rgba), ann_id
        raise SampleError("no_exemplar", f"no usable instance of {category!r}: " + "; ".join(errors))

    def _aspect(self, ann_id: int) -> Optional[float]:
        b = self.refer.anns[ann_id].get("bbox")
        if b is None or len(b) != 4 or float(b[3]) <= 0 or float(b[2]) <= 0:
            return None
        return float(b[2]) / float(b[3])


def _overlapped(refer: Any) -> set:
    """Annotations whose box meets the box of another (non-crowd) annotation of their image: maybe
    occluded, so maybe a fragment of the object (boxes only: nothing is decoded)."""
    by_image: Dict[int, List[Tuple[int, Tuple[float, float, float, float]]]] = {}
    for ann_id, ann in refer.anns.items():
        b = ann.get("bbox")
        if ann.get("iscrowd", 0) or b is None or len(b) != 4:
            continue
        x, y, w, h = (float(v) for v in b)
        by_image.setdefault(ann["image_id"], []).append((int(ann_id), (x, y, x + w, y + h)))
    out = set()
    for anns in by_image.values():
        for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(anns):
            for b, (bx0, by0, bx1, by1) in anns[i + 1:]:
                if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                    out.update((a, b))
    return out


def user_exemplar(exemplar_dir: Optional[str], target: str, rng: np.random.Generator) -> Optional[np.ndarray]:
    """An exemplar of ``target`` from ``exemplar_dir`` (``DIR/<target>/*`` or ``DIR/<target>.png``;
    RGBA, an RGB file is all object), or None. A target names a file or folder under the
    directory, never a path out of it."""
    if not exemplar_dir:
        return None
    from PIL import Image, UnidentifiedImageError

    root = Path(exemplar_dir)
    name = target.strip().lower()
    for art in ("a ", "an ", "the "):
        if name.startswith(art):
            name = name[len(art):]
    if not name or name.startswith(".") or any(c in name for c in "/\\\0:"):
        return None
    files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in _EXTS) if (root / name).is_dir() else []
    files += [root / f"{name}{e}" for e in _EXTS if (root / f"{name}{e}").is_file()]
    for k in rng.permutation(len(files)) if files else []:
        try:
            with Image.open(files[int(k)]) as im:
                im = im.convert("RGBA")
                arr = np.asarray(im).copy()
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        if (arr[..., 3] > 0).any():
            return arr
    return None


def exemplar_for(bank: ExemplarBank, cfg: "BuildConfig", row: Dict[str, Any]) -> Optional[np.ndarray]:
    """The exemplar of a sample: none but for ``replace``; the classical backend cuts one from
    the data (``no_exemplar`` when it cannot); the diffusion backend tries ``--exemplar-dir``,
    then the data, and goes on without one (Paint-by-Example then says ``no_exemplar``).
    One seeded generator per sample serves both tries, in that order."""
    if row["edit_type"] != "replace":
        return None
    rng = rng_for(cfg.seed, row["sample_id"], "exemplar")
    bbox = row.get("bbox")
    fit = {"box_wh": (float(bbox[2]), float(bbox[3])) if bbox is not None and len(bbox) == 4 else None,
           "aspect_tolerance": cfg.selection.target_aspect_tolerance}
    if cfg.backend == "classical":
        return bank.cut(row["edit_target"], int(row["image_id"]), rng, **fit)[0]
    exemplar = user_exemplar(cfg.exemplar_dir, row["edit_target"], rng)
    if exemplar is None:
        try:
            exemplar, _ = bank.cut(row["edit_target"], int(row["image_id"]), rng, **fit)
        except SampleError:
            exemplar = None
    return exemplar
