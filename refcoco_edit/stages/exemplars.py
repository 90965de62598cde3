"""Exemplars of ``replace`` edits: an RGBA cut-out of an instance of the target category.

``ExemplarBank`` cuts them from the data (the classical backend needs one; the diffusion
backend's Paint-by-Example uses one when there is one); ``user_exemplar`` takes them from
``--exemplar-dir`` first. ``exemplar_for`` is the policy of the generate stage.

What the bank offers: every non-crowd instance of a category that has a usable mask and covers
at least ``min_fraction`` of its image, **in any image, the source's own image included**; only
the referred object itself is never its own exemplar (``exclude_ann``). A category seen once in
the data is therefore a target for every object of another category.

Each exemplar is cut by its own *visible* pixels, never those of an object in front of it:

* **Who is in front** (``refcoco_edit.pipelines.classical.occludes``), for two annotations of
  one image: where the masks overlap (a coarse outline drawn around what stands before the
  object), the rule of the shared pixels that ``protected_region`` follows
  (``pipelines.base.in_front``: the object the shared pixels are the larger part of, ...); where
  they are disjoint but their boxes meet, (1) the one whose box lies inside the other's (at
  least 75 % of its box area), else (2) the one that lies more inside the other's convex hull
  (the one behind has a gap or notch where it is hidden). A person standing before a bus is in
  front of it whether the bus's outline is coarse (it includes the person) or exact (the bus
  mask has a person-shaped gap).
  An accessory the instance carries (``pipelines.base.carried``: a tie inside a person's
  outline) is part of it, not in front: it stays in the cut-out.
* **The cut**: the instance's mask less the masks of the objects in front, grown by one pixel
  (their anti-aliased rims). What an object in front hides of the instance is completed from the
  instance's own visible pixels by the patch filler of the removal (``patch_inpaint``, seeded by
  the annotation id) and joins the cut-out: where the instance's outline is coarse (it overlaps
  the occluder's mask), the occluder's pixels inside that outline; where it is exact (the
  occluder left a gap in it), the occluder's pixels inside the convex hull of the visible part.
  What lies outside stays out (a notch). The RGB under alpha 0 is black: no pixel of another
  object is kept.
* **Visible fraction** = visible pixels / (visible + completed). Instances whose box meets no
  other box are whole (fraction 1) and are tried first; then the others in a seeded order, the
  first with a fraction of at least ``CLEAR_VISIBLE`` taken, else the most visible of the first
  ``MAX_TRIES`` tried, if at least ``MIN_VISIBLE`` of it is visible. An instance more hidden
  than that is never cut (``no_exemplar`` when nothing else is left): its completion would be
  more guess than object.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from .. import rle as rle_mod
from ..errors import SampleError
from ..seeds import rng_for

if TYPE_CHECKING:
    from .config import BuildConfig

_EXTS = (".png", ".jpg", ".jpeg", ".webp")

MIN_VISIBLE = 0.5     # an instance less visible than this is never cut
CLEAR_VISIBLE = 0.9   # an occluded instance this visible is taken at once
MAX_TRIES = 6         # occluded instances looked at for the most visible one
_CACHE_SIZE = 32      # cut-outs kept per process (a cut is the same for every sample)
_COMPLETE_STREAM = 0x636F6D70  # "comp": the completion's random stream, apart from any sample's


def visible_cut(rgb: np.ndarray, mask: np.ndarray, front: List[np.ndarray],
                rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """The RGBA cut-out of the object ``mask`` in ``rgb`` without the objects ``front`` (masks of
    the objects in front of it), and its visible fraction (module docstring). Raises
    ``SampleError("no_exemplar")`` when nothing of it is visible."""
    import cv2

    from refcoco_edit.pipelines.classical import hull_mask
    from refcoco_edit.pipelines.patch_inpaint import patch_inpaint

    mask = np.asarray(mask).astype(bool)
    visible = mask.copy()
    fill = np.zeros_like(mask)
    if front:
        kernel = np.ones((3, 3), np.uint8)
        grown = [cv2.dilate(np.asarray(m).astype(np.uint8), kernel).astype(bool) for m in front]
        for g in grown:
            visible &= ~g
        if visible.any():
            hull = hull_mask(visible)
            for m, g in zip(front, grown):
                # a coarse outline drawn around what stands before the object says where the object
                # is: complete within it; an exact one (the occluder left a gap): within the hull
                fill |= g & (mask if (np.asarray(m).astype(bool) & mask).any() else hull)
            fill &= ~visible
    if not visible.any():
        raise SampleError("no_exemplar", "the instance is wholly hidden by the objects in front of it")
    shape = visible | fill
    rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    vis_c, fill_c = visible[y0:y1, x0:x1], fill[y0:y1, x0:x1]
    if fill_c.any():  # complete what the objects in front hide, from the object's own pixels only
        crop = patch_inpaint(crop, fill_c, rng, exclude=~(vis_c | fill_c))
    alpha = vis_c | fill_c
    out = np.zeros(crop.shape[:2] + (4,), np.uint8)
    out[..., :3] = np.where(alpha[..., None], crop, 0)
    out[..., 3] = alpha.astype(np.uint8) * 255
    return out, float(vis_c.sum()) / float(alpha.sum())


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
        self._neighbours = _neighbours(refer)
        self._cuts: "OrderedDict[int, Tuple[np.ndarray, float]]" = OrderedDict()

    def categories(self) -> List[str]:
        """Categories with at least one usable instance anywhere in the data (module docstring)."""
        return sorted(cat for cat, anns in self.by_cat.items() if anns)

    def aspects(self) -> Dict[str, float]:
        """Each category's median instance box aspect (width / height) in the data."""
        out = {}
        for cat, anns in self.by_cat.items():
            ratios = [float(b[2]) / float(b[3]) for b in (self.refer.anns[a].get("bbox") for a in anns)
                      if b is not None and len(b) == 4 and float(b[2]) > 0 and float(b[3]) > 0]
            if ratios:
                out[cat] = float(np.median(ratios))
        return out

    def cut(self, category: str, exclude_ann: Optional[int], rng: np.random.Generator,
            box_wh: Optional[Tuple[float, float]] = None, aspect_tolerance: float = 0.0) -> Tuple[np.ndarray, int]:
        """An RGBA cut-out of an instance of ``category`` other than annotation ``exclude_ann``
        (the referred object), and its annotation id.

        With ``box_wh`` (the source box) and ``aspect_tolerance > 0``, only instances whose box
        aspect is within that factor of the source box's are offered, when there are any (else
        all of them). Whole instances first, then the occluded ones by the visibility rule of
        the module docstring, each group in a seeded order. Unusable instances (bad image or
        mask) are remembered, so a broken image costs one attempt per process, not one per
        sample.
        """
        pool = [a for a in self.by_cat.get(category, []) if exclude_ann is None or a != int(exclude_ann)]
        if not pool:
            raise SampleError("no_exemplar", f"no instance of {category!r} in the data but the referred object")
        if box_wh is not None and aspect_tolerance > 0:
            from ..prompts.fit import aspect_gap

            fitting = [a for a in pool if self._aspect(a) is not None
                       and aspect_gap(box_wh, self._aspect(a)) <= aspect_tolerance]
            pool = fitting or pool
        whole = [a for a in pool if not self._neighbours.get(a)]
        rest = [a for a in pool if self._neighbours.get(a)]
        order = [whole[int(k)] for k in rng.permutation(len(whole))]
        order += [rest[int(k)] for k in rng.permutation(len(rest))]
        errors: List[str] = []
        best: Optional[Tuple[float, np.ndarray, int]] = None
        tried = 0
        for ann_id in order:
            if ann_id in self._unusable:
                continue
            if best is not None and tried >= MAX_TRIES:
                break
            try:
                rgba, fraction = self._cut_one(ann_id)
            except (SampleError, rle_mod.MaskError, ValueError) as e:
                self._unusable.add(ann_id)
                if len(errors) < 3:
                    errors.append(f"ann {ann_id}: {e}")
                continue
            if fraction >= CLEAR_VISIBLE:
                return rgba, ann_id
            tried += 1
            if fraction >= MIN_VISIBLE and (best is None or fraction > best[0]):
                best = (fraction, rgba, ann_id)
            elif fraction < MIN_VISIBLE and len(errors) < 3:
                errors.append(f"ann {ann_id}: only {fraction:.0%} visible")
        if best is not None:
            return best[1], best[2]
        raise SampleError("no_exemplar", f"no usable instance of {category!r}: " + "; ".join(errors))

    def _cut_one(self, ann_id: int) -> Tuple[np.ndarray, float]:
        """The visible cut-out of one annotation and its visible fraction (cached per process:
        the same bytes for every sample, the completion being seeded by the annotation id)."""
        if ann_id in self._cuts:
            self._cuts.move_to_end(ann_id)
            return self._cuts[ann_id]
        li = self.refer.load_image(self.refer.anns[ann_id]["image_id"], mode_policy=self.mode_policy)
        mask = li.orient_mask(rle_mod.decode(self.refer.ann_rle(ann_id))).astype(bool)
        if not mask.any():
            raise SampleError("no_exemplar", "empty mask")
        from refcoco_edit.pipelines.base import carried
        from refcoco_edit.pipelines.classical import occludes

        front = []
        for other in self._neighbours.get(ann_id, ()):
            try:
                om = li.orient_mask(rle_mod.decode(self.refer.ann_rle(other))).astype(bool)
            except (SampleError, rle_mod.MaskError, ValueError):
                continue  # a neighbour with a broken mask hides nothing we can tell
            if occludes(om, mask) and not carried(mask, om, self._category_of(other)):  # a worn tie stays
                front.append(om)
        res = visible_cut(li.array, mask, front, np.random.default_rng([int(ann_id), _COMPLETE_STREAM]))
        self._cuts[ann_id] = res
        if len(self._cuts) > _CACHE_SIZE:
            self._cuts.popitem(last=False)
        return res

    def _category_of(self, ann_id: int) -> Optional[str]:
        ann = self.refer.anns.get(ann_id)
        return None if ann is None else self.refer.cats.get(ann.get("category_id"))

    def _aspect(self, ann_id: int) -> Optional[float]:
        b = self.refer.anns[ann_id].get("bbox")
        if b is None or len(b) != 4 or float(b[3]) <= 0 or float(b[2]) <= 0:
            return None
        return float(b[2]) / float(b[3])


def _neighbours(refer: Any) -> Dict[int, List[int]]:
    """For each non-crowd annotation, the others of its image whose box meets its box (they may
    occlude it; boxes only: nothing is decoded). An annotation without any is whole."""
    by_image: Dict[int, List[Tuple[int, Tuple[float, float, float, float]]]] = {}
    for ann_id, ann in refer.anns.items():
        b = ann.get("bbox")
        if ann.get("iscrowd", 0) or b is None or len(b) != 4:
            continue
        x, y, w, h = (float(v) for v in b)
        by_image.setdefault(ann["image_id"], []).append((int(ann_id), (x, y, x + w, y + h)))
    out: Dict[int, List[int]] = {}
    for anns in by_image.values():
        for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(anns):
            for b, (bx0, by0, bx1, by1) in anns[i + 1:]:
                if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                    out.setdefault(a, []).append(b)
                    out.setdefault(b, []).append(a)
    return out


def _overlapped(refer: Any) -> set:
    """Annotations whose box meets the box of another (non-crowd) annotation of their image: maybe
    occluded, so maybe a fragment of the object (boxes only: nothing is decoded)."""
    return set(_neighbours(refer))


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


def _ann_id(row: Dict[str, Any]) -> Optional[int]:
    """The referred object's annotation id (never its own exemplar), if the row has one."""
    a = row.get("ann_id")
    return None if a is None else int(a)


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
        return bank.cut(row["edit_target"], _ann_id(row), rng, **fit)[0]
    exemplar = user_exemplar(cfg.exemplar_dir, row["edit_target"], rng)
    if exemplar is None:
        try:
            exemplar, _ = bank.cut(row["edit_target"], _ann_id(row), rng, **fit)
        except SampleError:
            exemplar = None
    return exemplar
