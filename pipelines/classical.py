"""Classical CPU ground-truth pipelines: no weights, numpy + OpenCV only, deterministic bytes.

Three ``GTPipeline`` subclasses, one per edit type, used by the default ``classical`` backend so
that ``refcoco-edit build`` runs on any laptop:

``InpaintRemoval`` ("classical-remove", edit type ``remove``)
    1. check the request;
    2. M_e = dilate(source mask ∪ its cast/contact shadow, max(min_dilate_px, dilate_frac *
       object size)) (``shadow``; ``patch_inpaint.shadow_region``);
    3. fill M_e by patch copying (``pipelines.fill.remove_fill``), ``method="auto"`` (default):
       PyPatchMatch (``pypatchmatch``: PatchMatch with EM voting; a dependency on Python >= 3.11)
       where installed, else ``patch`` (``patch_inpaint.patch_inpaint``: multi-scale exemplar
       copying with a smooth Telea base, numpy and OpenCV only); the params record which;
       ``method="telea"``: the former remover: Telea inpainting (coarse-to-fine for large holes),
    4. plus (Telea only) seeded grain matched to the surrounding texture;
    5. paste back through M_e (exact outside) and check the output.
    ``perf/bench_removal.py`` scores both against the demo's clean plates.

``ExemplarComposite`` ("classical-replace", edit type ``replace``, needs an exemplar)
    1. check the request; clean the RGBA exemplar (largest alpha blob, pinholes closed with its
       own colours, eroded edge; larger holes stay see-through). The exemplars the build cuts
       from the data hold the instance's *visible* pixels only, what stood in front of it
       subtracted and completed (``refcoco_edit.stages.exemplars``; who is in front:
       ``occludes``);
    2. scale the exemplar to the source box: its aspect is stretched toward the box's by at most
       a factor ``stretch``, then it is scaled to fit the box and anchored at the box's bottom
       centre (or centre), clipped to the image; a paste whose box covers less than ``min_cover``
       of the source box fails with ``shape_mismatch`` (the target does not fit the region);
    3. fill the hole the old object leaves where the new one does not cover it (the source mask
       grown by the removal's margin, less the part the paste hides) with the remover of
       ``classical-remove`` (``remove_fill``, the same ``auto`` choice; ``fill="telea"``: the former
       Telea + grain fill). The old object's shadow is kept by default (``shadow="keep"``: the
       hole stops at it, the new object stands in it; ``"erase"``: erased as the removal does);
       other objects beside or in front are no source of the fill, objects *behind* the source
       are (what the old object hid of them continues them);
    4. a contact shadow under the new object's base (``contact_shadow``): a soft dark ellipse,
       only where the ground under the base is visible background (``contact_shadow()``), never
       for targets that do not stand on the ground (``NO_GROUND``);
    5. blend: the Poisson colour shift of ``cv2.seamlessClone`` (on a reflect-padded canvas, so
       masks touching the border are safe) applied with weight ``harmonize`` (1 = pure
       NORMAL_CLONE, which turns an object that differs from its new surroundings into a tinted
       ghost; 0 = plain cut-and-paste), then composited through a soft alpha: the footprint
       blurred by ``edge_px`` (the exemplar's colours extended outward first, so the soft edge
       shows no trace of what lay behind the cut-out); tiny pastes are alpha-composited;
    6. M_e = dilate(source mask ∪ pasted region ∪ contact shadow (∪ the erased shadow)); paste
       back and check.
    Chosen by looking at the demo and at photos: the alpha feather over a Poisson colour shift
    keeps the exemplar's own texture (MIXED_CLONE lets the background's texture show through
    the object), and keeping the old shadow avoids both a light ring (a hole cut through the
    shadow, filled with lit ground) and the blotches the fill leaves on large shadow regions.

Every pipeline here leaves the other annotated objects of the image alone (``protect_others``,
on by default): their pixels (``base.protected_region``: the other masks less the source's) are
left out of the hole a removal fills and out of M_e, and keep the source's values with a hard
edge, so an object standing in front of the source stays in front of the replacement or the
recoloured object. Without ``EditRequest.other_masks`` nothing changes.

``Recolor`` ("classical-attribute", edit type ``attribute``): its steps are in ``recolor``'s
    docstring (Lab recolouring or a seeded procedural material, composited inside the mask).

All randomness comes from ``np.random.default_rng(request.seed)``; work is done on a crop around
the object. The fills cost most: about 0.36 s per removal and 0.26 s per replacement
on the demo's 320-640 px images (Telea: well under 0.1 s).

Variations (``EditRequest.vary``: a sample's candidates after the first, and re-drawn duplicates)
draw other settings from ``base.variation_rng`` so that the candidates of one sample are other
images even where the canonical edit barely depends on the seed: the removal grows M_e by a
factor 1-1.6 and picks another patch size (Telea: another radius); the replacement mirrors the
exemplar half of the time, shrinks it by a factor 0.9-1 (kept at 1 when that would fail
``min_cover``) and draws ``harmonize`` (the blend strength) in 0.15-0.45. The drawn values are in
``params["variation"]``; the canonical edit (``vary`` False) is unchanged by any of this.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from refcoco_edit.pipelines.base import (EditRequest, GTPipeline, PipelineError, PipelineOutput, in_front,
                                         protected_region, variation_rng)
from refcoco_edit.pipelines.masks import check_output, dilate, edit_mask, erode, paste_back
from refcoco_edit.pipelines.patch_inpaint import shadow_region

__all__ = ["InpaintRemoval", "ExemplarComposite", "inpaint", "mask_bbox", "box_slices", "finish_output", "remove_fill",
           "clean_exemplar", "contact_shadow", "occludes", "hull_mask"]

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------
def mask_bbox(mask: np.ndarray) -> Box:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty boolean mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PipelineError("empty_mask", "the mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_slices(shape: Tuple[int, ...], box: Box, margin: int) -> Tuple[slice, slice]:
    """Slices of ``box`` grown by ``margin`` and clipped to an image of ``shape``."""
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    return slice(max(0, y0 - margin), min(h, y1 + margin)), slice(max(0, x0 - margin), min(w, x1 + margin))


def _object_size(mask: np.ndarray) -> int:
    x0, y0, x1, y1 = mask_bbox(mask)
    return max(x1 - x0, y1 - y0)


def _removal_dilate_px(mask: np.ndarray, frac: float, min_px: int) -> int:
    return int(max(min_px, round(frac * _object_size(mask))))


def _robust_std(x: np.ndarray) -> np.ndarray:
    """Per-column robust standard deviation (1.4826 * MAD)."""
    med = np.median(x, axis=0)
    return 1.4826 * np.median(np.abs(x - med), axis=0)


def inpaint(
    image: np.ndarray,
    hole: np.ndarray,
    radius: int = 5,
    rng: Optional[np.random.Generator] = None,
    noise: float = 0.8,
    max_direct_px: int = 12000,
) -> np.ndarray:
    """Fill ``hole`` in an RGB uint8 image with Telea inpainting; pixels outside the hole are kept.

    Works on a crop around the hole. Holes larger than ``max_direct_px`` pixels are filled
    coarse-to-fine: Telea at a reduced resolution fills the interior, then Telea at full resolution
    re-fills a band along the hole edge so the boundary continues the real background sharply.
    With ``rng`` and ``noise > 0``, seeded grain with the robust per-channel high-frequency
    standard deviation of a ring around the hole (times ``noise``) is added inside the hole.
    """
    hole = np.asarray(hole).astype(bool)
    out = image.copy()
    if not hole.any():
        return out
    ring_px = max(6, 2 * radius)
    ys, xs = box_slices(image.shape, mask_bbox(hole), ring_px + radius + 2)
    crop = image[ys, xs]
    h_crop = hole[ys, xs]
    h_u8 = h_crop.astype(np.uint8)
    n = int(h_u8.sum())
    ch, cw = h_crop.shape
    if n > max_direct_px:
        f = int(math.ceil(math.sqrt(n / max_direct_px)))
        f = max(f, 2)
        sw, sh = max(1, -(-cw // f)), max(1, -(-ch // f))
        small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
        small_hole = (cv2.resize(h_u8.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        low = cv2.inpaint(small, small_hole, radius, cv2.INPAINT_TELEA)
        up = cv2.resize(low, (cw, ch), interpolation=cv2.INTER_LINEAR)
        filled = crop.copy()
        filled[h_crop] = up[h_crop]
        band = h_crop & ~erode(h_crop, max(3, 2 * f))
        res = cv2.inpaint(filled, band.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    else:
        res = cv2.inpaint(crop, h_u8, radius, cv2.INPAINT_TELEA)
    if rng is not None and noise > 0:
        ring = dilate(h_crop, ring_px) & ~h_crop
        if ring.sum() >= 16:
            cf = crop.astype(np.float32)
            resid = cf - cv2.GaussianBlur(cf, (0, 0), 1.5)
            std = _robust_std(resid[ring])  # (3,)
            grain = rng.standard_normal((ch, cw)).astype(np.float32)
            grain = cv2.GaussianBlur(grain, (0, 0), 0.7)
            grain /= max(float(grain.std()), 1e-6)
            # luminance-like grain, scaled per channel to the ring's texture
            add = grain[..., None] * (std * noise)[None, None, :]
            rf = res.astype(np.float32)
            rf[h_crop] += add[h_crop]
            res = np.clip(np.rint(rf), 0, 255).astype(np.uint8)
    out_crop = out[ys, xs]
    out_crop[h_crop] = res[h_crop]
    return out


def remove_fill(image: np.ndarray, hole: np.ndarray, rng: np.random.Generator, patch_size: int = 7,
                protect: Optional[np.ndarray] = None, exclude: Optional[np.ndarray] = None,
                method: str = "patch") -> np.ndarray:
    """The fill of ``classical-remove`` and of the hole a replacement leaves: the one removal fill
    (``pipelines.fill.remove_fill`` with ``method``: ``patch`` or ``pypatchmatch``) of ``hole``
    with the other objects (``protect``) and their anti-aliased rims (masks stop a pixel or two
    short of an object's edge) neither copied nor diffused into it, nor any pixel of ``exclude``."""
    from refcoco_edit.pipelines.fill import remove_fill as fill

    return fill(image, hole, exclude=fill_exclusion(protect, exclude), rng=rng, method=method, patch=int(patch_size))


def fill_exclusion(protect: Optional[np.ndarray], exclude: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """What ``remove_fill`` keeps out of the fill: the other objects (``protect``) grown by 2 px
    for their anti-aliased rims, and any pixel of ``exclude``; None when nothing is."""
    near = None if protect is None else cv2.dilate(protect.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if exclude is not None:
        near = exclude.astype(bool) if near is None else near | exclude.astype(bool)
    return near


def _fill_choice(name: str, value: str, choices: Tuple[str, ...], patch_size: Optional[int]) -> Tuple[str, int]:
    """A pipeline's removal fill and patch window: ``auto`` becomes the installed best
    (``pipelines.fill.default_method``: ``pypatchmatch`` or ``patch``), so the recorded params say
    which fill made the bytes; ``patch_size`` None takes the method's own (``fill.DEFAULT_PATCH``)."""
    from refcoco_edit.pipelines.fill import DEFAULT_PATCH, pypatchmatch_available, resolve_method

    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    value = resolve_method(value)
    if value == "pypatchmatch" and not pypatchmatch_available():
        raise ValueError(f"{name}=pypatchmatch needs the pypatchmatch package (pip install pypatchmatch; "
                         "Python >= 3.11); auto uses it where installed, else the patch fill")
    size = DEFAULT_PATCH.get(value, 7) if patch_size is None else int(patch_size)
    if size < 3:
        raise ValueError(f"patch_size must be >= 3, got {patch_size}")
    return value, size


def finish_output(
    source: np.ndarray, edited: np.ndarray, m_e: np.ndarray, feather_px: int, params: Dict[str, Any],
    exemplar: Optional[np.ndarray] = None, protect: Optional[np.ndarray] = None,
) -> PipelineOutput:
    """Paste back through M_e, verify the contract, and build the output record.

    ``protect`` (the other objects' pixels, ``base.protected_region``) is never painted: those
    pixels keep the source's values, with a hard edge (the object in front occludes the edit), and
    leave M_e; ``params["protected_px"]`` counts the pixels of M_e given back."""
    out = paste_back(source, edited, m_e, feather_px=feather_px)
    params = dict(params)
    if protect is not None:
        hit = m_e & protect
        out[hit] = source[hit]
        m_e = m_e & ~protect
        params["protected_px"] = int(hit.sum())
    stats = check_output(source, out, m_e)
    params["stats"] = {k: round(float(v), 4) for k, v in stats.items()}
    return PipelineOutput(image=out, edit_mask=m_e, params=params, exemplar=exemplar)


# ----------------------------------------------------------------------------------------------
# 1. removal
# ----------------------------------------------------------------------------------------------
REMOVAL_METHODS = ("auto", "pypatchmatch", "patch", "telea")


class InpaintRemoval(GTPipeline):
    """Remove the referred object and its shadow: patch-based filling (default) or Telea inpainting."""

    name = "classical-remove"
    edit_types = ("remove",)
    needs_exemplar = False

    def __init__(
        self,
        method: str = "auto",
        shadow: str = "auto",
        dilate_frac: float = 0.03,
        min_dilate_px: int = 5,
        radius: int = 5,
        noise: float = 0.8,
        feather_px: int = 4,
        max_direct_px: int = 12000,
        patch_size: Optional[int] = None,
        shadow_darker: float = 0.9,
        protect_others: bool = True,
    ) -> None:
        """``method``: ``auto`` (``pypatchmatch`` where installed, else ``patch``; the params
        record which), ``pypatchmatch`` (PyPatchMatch, the best fill measured on the demo's clean
        plates), ``patch`` (our exemplar filling: numpy and OpenCV only) or ``telea`` (the former
        default, bytes unchanged); ``shadow``: erase the object's cast shadow too: ``on``, ``off``
        or ``auto`` (on for the patch-copying fills, off for ``telea``); ``patch_size``: the patch
        window (an even size uses the next odd one; default 5 for ``pypatchmatch``, 7 for
        ``patch``); ``shadow_darker``: a shadow pixel is below this fraction of the
        background luminance predicted around it; ``radius``, ``noise``, ``max_direct_px``: Telea's;
        ``protect_others``: never paint the other annotated objects (``base.protected_region``;
        the hole is filled around them, and a shadow the object casts on one of them stays)."""
        method, patch_size = _fill_choice("method", method, REMOVAL_METHODS, patch_size)
        if shadow not in ("auto", "on", "off"):
            raise ValueError(f"shadow must be auto, on or off, got {shadow!r}")
        self.params: Dict[str, Any] = {
            "method": method, "shadow": shadow,
            "dilate_frac": float(dilate_frac), "min_dilate_px": int(min_dilate_px), "radius": int(radius),
            "noise": float(noise), "feather_px": int(feather_px), "max_direct_px": int(max_direct_px),
            "patch_size": int(patch_size), "shadow_darker": float(shadow_darker),
            "protect_others": bool(protect_others),
        }

    def generate(self, request: EditRequest) -> PipelineOutput:
        """Steps: 1 check; 2 M_e (with the shadow); 3-4 fill (+ grain for Telea); 5 paste back + check."""
        # 1. check
        self.check_inputs(request)
        p, variation = self._vary(request)
        image, mask = np.ascontiguousarray(request.image), np.asarray(request.mask).astype(bool)
        rng = np.random.default_rng(request.seed)
        # 2. M_e = dilate(mask ∪ shadow)
        dp = _removal_dilate_px(mask, p["dilate_frac"], p["min_dilate_px"])
        use_shadow = p["shadow"] == "on" or (p["shadow"] == "auto" and p["method"] != "telea")
        shadow = shadow_region(image, mask, darker=p["shadow_darker"]) if use_shadow else None
        m_e = edit_mask(mask, shadow, dp)
        protect = protected_region(request) if p["protect_others"] else None
        hole = m_e & ~protect if protect is not None else m_e  # other objects stay and are context
        # 3-4. fill the hole: patch copying, or Telea (coarse-to-fine when large) + matched grain
        if p["method"] != "telea":
            # other objects beside or in front are no source of the fill, nor their anti-aliased
            # rims (masks stop a pixel or two short of an object's edge: its colour would bleed
            # into the background); an object *behind* the removed one is: what it hid of that
            # object continues it (the bus behind a removed pedestrian, not the pavement)
            filled = remove_fill(image, hole, rng, p["patch_size"], _not_behind(request, mask, protect),
                                 method=p["method"])
        else:
            filled = inpaint(image, hole, p["radius"], rng=rng, noise=p["noise"], max_direct_px=p["max_direct_px"])
        # 5. exact paste-back (never over another object) and contract check
        extra = {"dilate_px": dp, "shadow_px": int(shadow.sum()) if shadow is not None else 0, **variation}
        return finish_output(image, filled, m_e, min(p["feather_px"], dp), {**p, **extra}, protect=protect)

    def _vary(self, request: EditRequest) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The parameters of this request (a variation's drawn ones, see the module docstring)
        and ``{"variation": drawn values}`` (empty for the canonical edit)."""
        vrng = variation_rng(request)
        if vrng is None:
            return self.params, {}
        p = dict(self.params)
        grow = float(vrng.uniform(1.0, 1.6))
        p["dilate_frac"] = p["dilate_frac"] * grow
        p["min_dilate_px"] = int(round(p["min_dilate_px"] * grow))
        drawn: Dict[str, Any] = {"dilate_scale": round(grow, 3)}
        if p["method"] != "telea":
            p["patch_size"] = int(vrng.choice([k for k in (5, 7, 9) if k != (self.params["patch_size"] | 1)]))
            drawn["patch_size"] = p["patch_size"]
        else:
            p["radius"] = int(vrng.choice([k for k in (3, 5, 7) if k != self.params["radius"]]))
            drawn["radius"] = p["radius"]
        return p, {"variation": drawn}


# ----------------------------------------------------------------------------------------------
# 2. replacement by an exemplar
# ----------------------------------------------------------------------------------------------
_CLONE_MODES = {
    "normal": cv2.NORMAL_CLONE,
    "mixed": cv2.MIXED_CLONE,
    "monochrome": cv2.MONOCHROME_TRANSFER,
    "alpha": None,  # plain alpha compositing, no Poisson blending
}
REPLACE_FILLS = ("auto", "pypatchmatch", "patch", "telea")
REPLACE_SHADOWS = ("keep", "erase", "off")  # the old object's shadow: kept, erased, not looked for
_SHADOW_RIM_PX = 3  # shadow: keep: this ring around the old object is filled even where it looks like shadow
# targets that do not stand on the ground in photos: no contact shadow under them
NO_GROUND = frozenset({"airplane", "kite", "frisbee", "clock", "traffic light"})


def _cover(placed: Box, box: Box) -> float:
    """The share of ``box`` that the ``placed`` box covers (both x0, y0, x1, y1)."""
    iw = min(placed[2], box[2]) - max(placed[0], box[0])
    ih = min(placed[3], box[3]) - max(placed[1], box[1])
    area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
    return max(0, iw) * max(0, ih) / area


def _fill_holes(blob: np.ndarray) -> np.ndarray:
    """The pixels a binary mask encloses (its holes), not the mask itself."""
    padded = cv2.copyMakeBorder(blob.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    ff = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 1)
    return flood[1:-1, 1:-1] == 0


def _largest_blob(mask: np.ndarray, max_hole: Optional[int] = None) -> np.ndarray:
    """The largest 8-connected component of a binary mask, with its interior holes filled
    (only those of at most ``max_hole`` pixels, when given)."""
    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = labels == k
    holes = _fill_holes(blob)
    if max_hole is not None and holes.any():
        hn, hl, hs, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
        small = np.flatnonzero(hs[:, cv2.CC_STAT_AREA] <= max_hole)
        holes = np.isin(hl, small[small > 0])
    return blob | holes


CONTAINED = 0.75  # a box this much inside another's is "inside" it (occludes)


def _box_of(mask: np.ndarray) -> Tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _inside(a: Tuple[float, ...], b: Tuple[float, ...]) -> bool:
    """Whether at least ``CONTAINED`` of box ``a``'s area lies inside box ``b``."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    area = max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))
    return max(0.0, iw) * max(0.0, ih) >= CONTAINED * area


def hull_mask(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a binary mask (HxW bool)."""
    out = np.zeros(mask.shape, np.uint8)
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out.astype(bool)


def occludes(other: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the object ``other`` (HxW bool mask) is judged in front of the object ``mask``,
    hiding part of it.

    * Masks that overlap (a coarse outline drawn around what stands before the object): the rule
      of the pixels both claim, ``base.in_front(mask, other)`` (the one ``protected_region``
      follows: the object the shared pixels are the larger part of, ...).
    * Disjoint masks (exact visible outlines: the one behind has a gap or a notch where it is
      hidden), whose boxes meet: (1) the one whose box lies inside the other's (at least
      ``CONTAINED`` of its box area) is in front, a person before a bus; else (2) the one that
      lies more inside the other's convex hull, as a share of its own pixels, by at least 2 % of
      them (the apple whose top covers the bottom of a box: the box's hull holds the apple's top,
      the apple's hull hardly any of the box). Neither: side by side, not in front."""
    other, mask = np.asarray(other).astype(bool), np.asarray(mask).astype(bool)
    if not other.any() or not mask.any():
        return False
    if (other & mask).any():
        return in_front(mask, other)
    bo, bm = _box_of(other), _box_of(mask)
    if not (bo[0] < bm[2] and bm[0] < bo[2] and bo[1] < bm[3] and bm[1] < bo[3]):
        return False
    o_in, m_in = _inside(bo, bm), _inside(bm, bo)
    if o_in != m_in:
        return o_in
    o_share = float((hull_mask(mask) & other).sum()) / float(other.sum())  # of ``other`` in the object's hull
    m_share = float((hull_mask(other) & mask).sum()) / float(mask.sum())
    return o_share >= 0.02 and o_share > m_share


def clean_exemplar(exemplar: np.ndarray, erode_px: int = 1) -> np.ndarray:
    """Crop an RGBA cut-out to its alpha, keep its largest blob, erode the fringe.

    Returns an RGBA uint8 array whose alpha is 255 on the cleaned blob, 0 elsewhere. The erosion
    drops the ring of pixels from the exemplar's own background that polygon masks usually carry.
    Pinholes of the blob (at most 0.2 % of it, mask noise) are closed with the object's own
    colours (Telea from its pixels); larger holes stay transparent: what is seen through the
    object (a cup's handle, the gap between an arm and a body) is the new scene's background.
    """
    if exemplar.ndim != 3 or exemplar.shape[2] not in (3, 4) or exemplar.dtype != np.uint8:
        raise PipelineError("pipeline_error", f"exemplar must be hxwx4 uint8 RGBA, got {exemplar.shape} {exemplar.dtype}")
    if exemplar.shape[2] == 3:
        exemplar = np.dstack([exemplar, np.full(exemplar.shape[:2], 255, np.uint8)])
    own = exemplar[..., 3] > 0
    max_hole = max(4, int(0.002 * own.sum()))
    blob = _largest_blob(own, max_hole)
    if blob.sum() > 64:
        eroded = erode(blob, erode_px) if erode_px > 0 else blob
        # keep the erosion only if it does not destroy a thin exemplar
        blob = _largest_blob(eroded, max_hole) if eroded.sum() >= 0.5 * blob.sum() else blob
    if not blob.any():
        raise PipelineError("no_exemplar", "the exemplar's alpha channel is empty")
    x0, y0, x1, y1 = mask_bbox(blob)
    out = exemplar[y0:y1, x0:x1].copy()
    closed = blob[y0:y1, x0:x1] & ~own[y0:y1, x0:x1]
    if closed.any():  # closed pinholes: the object's colours, not what lay behind them
        out[..., :3] = cv2.inpaint(np.ascontiguousarray(out[..., :3]), closed.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    out[..., 3] = np.where(blob[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return out


def _extend_colours(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Fill the pixels outside ``alpha`` with a smooth outward extension of the object's colours.

    Used before the exemplar is resized (so its soft edge never mixes in whatever lay behind the
    cut-out, or black) and as the Poisson source outside the clone mask (so the guidance field at
    the object's edge carries the object's own gradient rather than a step to the background).
    """
    a = alpha.astype(np.float32)
    rgbf = rgb.astype(np.float32)
    out = rgbf.copy()
    todo = a < 0.5
    for sigma in (2.0, 6.0, 18.0, 54.0):
        if not todo.any():
            break
        num = cv2.GaussianBlur(rgbf * a[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(a, (0, 0), sigma)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok][:, None]
        todo &= ~ok
    if todo.any():
        out[todo] = rgbf[a >= 0.5].mean(axis=0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def contact_shadow(core: np.ndarray, ground: np.ndarray, strength: float) -> Optional[np.ndarray]:
    """The darkening (HxW float32 in [0, strength]) of a soft contact shadow under the object
    ``core`` (HxW bool, as placed), or None where there is none to draw.

    A filled ellipse under the object's base (its lowest 6 % of rows): centred on the base line,
    1.1 times the base's width, 0.16 times as high as wide (at most a fifth of the object's
    height), blurred by 0.4 of its height, at most ``strength`` (a factor 1 - strength on the
    ground's colour). Drawn only where the ground under the base is visible: at least half of a
    band under the base (as high as the ellipse's half-height) lies inside the image on pixels of
    ``ground`` (the background: not another object); zero on every pixel outside ``ground``.
    """
    if strength <= 0 or not core.any():
        return None
    H, W = core.shape
    rows = np.flatnonzero(core.any(axis=1))
    top, base = int(rows[0]), int(rows[-1])
    oh = base - top + 1
    foot = core[max(top, base - max(1, int(round(0.06 * oh)))):base + 1]
    cols = np.flatnonzero(foot.any(axis=0))
    bx0, bx1 = int(cols[0]), int(cols[-1]) + 1
    bw = bx1 - bx0
    ax = 0.55 * bw + 1.0
    ay = float(np.clip(0.08 * bw, 1.5, max(1.5, 0.1 * oh)))
    band_h = max(1, int(math.ceil(ay)))
    nominal = band_h * bw
    band = ground[base + 1:min(H, base + 1 + band_h), bx0:bx1]
    if nominal <= 0 or float(band.sum()) < 0.5 * nominal:
        return None
    canvas = np.zeros((H, W), np.float32)
    cx, cy = 0.5 * (bx0 + bx1 - 1), base - 0.2 * ay
    sh = 4  # sub-pixel precision of cv2.ellipse
    cv2.ellipse(canvas, (int(round(cx * (1 << sh))), int(round(cy * (1 << sh)))),
                (int(round(ax * (1 << sh))), int(round(ay * (1 << sh)))), 0, 0, 360, 1.0, -1, cv2.LINE_AA, sh)
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.8, 0.4 * ay))
    canvas *= np.float32(strength)
    canvas[~ground] = 0
    return canvas if canvas.max() > 0 else None


def _not_behind(request: EditRequest, mask: np.ndarray, protect: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The protected pixels less those of the objects behind the source (``occludes(mask, m)``):
    what the source hid of an object behind it continues that object, so the fill may copy from
    it (the box behind a replaced apple), while an object beside or in front is no source (its
    colour would streak into the background). Nothing is painted on either: that is ``protect``."""
    if protect is None or not request.other_masks:
        return protect
    out = protect.copy()
    for m in request.other_masks:
        m = np.asarray(m).astype(bool)
        if (m & protect).any() and occludes(mask, m) and not occludes(m, mask):
            out &= ~m
    return out if out.any() else None


class ExemplarComposite(GTPipeline):
    """Replace the referred object by an exemplar of the target category, fitted to its box,
    blended at its edges and grounded by a contact shadow."""

    name = "classical-replace"
    edit_types = ("replace",)
    needs_exemplar = True

    def __init__(
        self,
        scale: float = 1.0,
        clone_mode: str = "normal",
        harmonize: float = 0.3,
        anchor: str = "bottom",
        dilate_px: Optional[int] = None,
        dilate_frac: float = 0.03,
        min_dilate_px: int = 5,
        erode_px: int = 1,
        radius: int = 5,
        noise: float = 0.8,
        feather_px: int = 4,
        pad_px: int = 16,
        min_clone_px: int = 64,
        stretch: float = 1.25,
        min_cover: float = 0.4,
        protect_others: bool = True,
        fill: str = "auto",
        patch_size: Optional[int] = None,
        shadow: Any = "keep",
        shadow_darker: float = 0.9,
        edge_px: float = 0.8,
        contact_shadow: float = 0.35,
    ) -> None:
        """``stretch``: the most the exemplar's aspect may be stretched toward the source box's
        (1: never); ``min_cover``: the least share of the source box the pasted exemplar's box
        must cover (else ``shape_mismatch``; 0: off); ``protect_others``: never paint the other
        annotated objects (``base.protected_region``): an object in front of the source stays in
        front of the new one; ``fill``: how the hole the old object leaves is filled where the
        new one does not cover it: ``auto``, ``pypatchmatch`` or ``patch`` (the remover of
        ``classical-remove``, the same choice, with ``patch_size``) or ``telea`` (the former fill: Telea + grain with ``radius`` and
        ``noise``; with ``shadow="off"`` the former removal step); ``shadow``: the old object's
        cast/contact shadow (``patch_inpaint.shadow_region``, ``shadow_darker`` as in
        ``classical-remove``): ``keep`` it (the hole stops at it, but for a ``_SHADOW_RIM_PX``
        ring around the object), ``erase`` it with the object, or ``off`` (not looked for: the
        hole is the grown mask; YAML's on/off booleans mean erase/off); ``edge_px``: the Gaussian softness
        of the pasted object's edge (0: hard); ``contact_shadow``: the darkening at the centre of
        the shadow under the new object's base (0: none). The others: see the module docstring."""
        if not stretch >= 1:
            raise ValueError(f"stretch must be >= 1, got {stretch}")
        if not 0 <= min_cover <= 1:
            raise ValueError(f"min_cover must be in [0, 1], got {min_cover}")
        if clone_mode not in _CLONE_MODES:
            raise ValueError(f"clone_mode must be one of {sorted(_CLONE_MODES)}, got {clone_mode!r}")
        if anchor not in ("bottom", "center"):
            raise ValueError(f"anchor must be 'bottom' or 'center', got {anchor!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if isinstance(shadow, bool):  # YAML (and --pipeline-params) read on/off as booleans
            shadow = "erase" if shadow else "off"
        fill, patch_size = _fill_choice("fill", fill, REPLACE_FILLS, patch_size)
        if shadow not in REPLACE_SHADOWS:
            raise ValueError(f"shadow must be one of {', '.join(REPLACE_SHADOWS)}, got {shadow!r}")
        if not 0 <= contact_shadow < 1:
            raise ValueError(f"contact_shadow must be in [0, 1), got {contact_shadow}")
        if not edge_px >= 0:
            raise ValueError(f"edge_px must be >= 0, got {edge_px}")
        self.params: Dict[str, Any] = {
            "scale": float(scale), "clone_mode": clone_mode, "harmonize": float(harmonize), "anchor": anchor,
            "dilate_px": None if dilate_px is None else int(dilate_px), "dilate_frac": float(dilate_frac),
            "min_dilate_px": int(min_dilate_px), "erode_px": int(erode_px), "radius": int(radius),
            "noise": float(noise), "feather_px": int(feather_px), "pad_px": int(pad_px),
            "min_clone_px": int(min_clone_px), "stretch": float(stretch), "min_cover": float(min_cover),
            "protect_others": bool(protect_others), "fill": fill, "patch_size": int(patch_size),
            "shadow": shadow, "shadow_darker": float(shadow_darker), "edge_px": float(edge_px),
            "contact_shadow": float(contact_shadow),
        }

    def check_inputs(self, request: EditRequest) -> None:
        """Base checks, plus: the exemplar is an RGBA uint8 cut-out with a non-empty alpha."""
        super().check_inputs(request)
        ex = request.exemplar
        if ex.ndim != 3 or ex.shape[2] not in (3, 4) or ex.dtype != np.uint8:
            raise PipelineError("pipeline_error", f"exemplar must be hxwx4 uint8 RGBA, got {ex.shape} {ex.dtype}")
        if ex.shape[2] == 4 and not (ex[..., 3] > 0).any():
            raise PipelineError("no_exemplar", "the exemplar's alpha channel is empty")

    def _place(self, box: Box, ex: np.ndarray, shrink: float = 1.0) -> Tuple[np.ndarray, np.ndarray, int, int]:
        """Resize the exemplar into the source box (times ``shrink``, a variation's); return
        (rgb, alpha float in [0, 1], left, top) before clipping. The rgb outside the object is
        its own colours extended outward (``_extend_colours``), so a soft edge shows no other."""
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        eh, ew = ex.shape[:2]
        # stretch the exemplar's aspect toward the box's (at most by ``stretch``), then fit it
        st = self.params["stretch"]
        k = math.sqrt(min(max((bw / bh) / (ew / eh), 1.0 / st), st))
        ew_s, eh_s = ew * k, eh / k
        s = self.params["scale"] * min(bw / ew_s, bh / eh_s)
        if shrink != 1.0:
            s *= shrink
        nw, nh = max(1, int(round(ew_s * s))), max(1, int(round(eh_s * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        ext = _extend_colours(ex[..., :3], ex[..., 3] > 0)
        rgb = cv2.resize(ext, (nw, nh), interpolation=interp)
        alpha = cv2.resize(ex[..., 3].astype(np.float32) / 255.0, (nw, nh),
                           interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        alpha = np.clip(alpha, 0.0, 1.0)
        if not (alpha >= 0.5).any():  # a very small paste: keep at least the centre pixel
            alpha[nh // 2, nw // 2] = 1.0
        left = int(round((x0 + x1) / 2.0 - nw / 2.0))
        top = y1 - nh if self.params["anchor"] == "bottom" else int(round((y0 + y1) / 2.0 - nh / 2.0))
        return rgb, alpha, left, top

    def generate(self, request: EditRequest) -> PipelineOutput:
        """Steps: 1 check + clean exemplar; 2 place; 3 remove; 4 contact shadow; 5 blend;
        6 M_e, paste back, check."""
        # 1. check the request, clean the exemplar into a single blob
        self.check_inputs(request)
        p = self.params
        image, mask = np.ascontiguousarray(request.image), np.asarray(request.mask).astype(bool)
        H, W = image.shape[:2]
        rng = np.random.default_rng(request.seed)
        ex = clean_exemplar(request.exemplar, p["erode_px"])
        vrng = variation_rng(request)
        variation: Dict[str, Any] = {}
        if vrng is not None:  # candidates after the first: other settings, drawn (module docstring)
            mirror = bool(vrng.random() < 0.5)
            variation = {"mirror": mirror, "scale": round(float(vrng.uniform(0.9, 1.0)), 3),
                         "harmonize": round(float(vrng.uniform(0.15, 0.45)), 3)}
            if mirror:
                ex = np.ascontiguousarray(ex[:, ::-1])
            p = dict(p, harmonize=variation["harmonize"])
        dp = p["dilate_px"] if p["dilate_px"] is not None else _removal_dilate_px(mask, p["dilate_frac"], p["min_dilate_px"])
        protect = protected_region(request) if p["protect_others"] else None
        # 2. scale into the source box, anchor, clip to the image
        box = mask_bbox(mask)
        rgb, alpha, left, top = self._place(box, ex, variation.get("scale", 1.0))
        nh, nw = alpha.shape
        cx0, cy0, cx1, cy1 = max(0, left), max(0, top), min(W, left + nw), min(H, top + nh)
        if variation.get("scale", 1.0) != 1.0 and _cover((cx0, cy0, cx1, cy1), box) < p["min_cover"]:
            variation["scale"] = 1.0  # the smaller paste would not fit the region: full size
            rgb, alpha, left, top = self._place(box, ex)
            nh, nw = alpha.shape
            cx0, cy0, cx1, cy1 = max(0, left), max(0, top), min(W, left + nw), min(H, top + nh)
        if cx0 >= cx1 or cy0 >= cy1:
            raise PipelineError("pipeline_error", "the placed exemplar lies outside the image")
        sub = (slice(cy0 - top, cy1 - top), slice(cx0 - left, cx1 - left))
        a_full = np.zeros((H, W), np.float32)
        a_full[cy0:cy1, cx0:cx1] = alpha[sub]
        placed = a_full >= 0.5  # the object's footprint
        if not placed.any():
            raise PipelineError("pipeline_error", "the placed exemplar lies outside the image")
        cover = _cover((cx0, cy0, cx1, cy1), box)
        if cover < p["min_cover"]:
            raise PipelineError("shape_mismatch", f"the exemplar of {request.edit_target!r} ({ex.shape[1]}x{ex.shape[0]}) "
                                f"covers {cover:.0%} of the source box {box[2] - box[0]}x{box[3] - box[1]} once scaled "
                                f"into it, under min_cover {p['min_cover']:.0%}: the target does not fit the region")
        mode = p["clone_mode"]
        tiny = int(placed.sum()) < p["min_clone_px"] or min(cy1 - cy0, cx1 - cx0) < 4
        blend = "alpha" if mode == "alpha" or tiny else mode
        # the soft alpha of the edge: the footprint blurred (a tiny paste: a one-pixel ramp)
        soft_px = p["edge_px"] if not tiny else 0.7 * (int(placed.sum()) >= p["min_clone_px"])
        soft = placed.astype(np.float32)
        if soft_px > 0:
            soft = cv2.GaussianBlur(soft, (0, 0), soft_px)
        soft[soft < 1.0 / 255] = 0.0
        support = soft > 0
        # 3. remove the source object (and its shadow) where the new one does not cover it, with
        # the remover of classical-remove; what the paste hides stays and is no source of the fill
        old_shadow = shadow_region(image, mask, darker=p["shadow_darker"]) if p["shadow"] != "off" else None
        if p["shadow"] == "erase":
            hole = edit_mask(mask, old_shadow, dp)
        else:  # keep: the hole stops at the old shadow, which the new object then stands in (but
            # for the object's own rim, which a shadow detector takes for shadow: dark, same hue)
            hole = dilate(mask, dp)
            if old_shadow is not None:
                hole &= ~(old_shadow & ~dilate(mask, _SHADOW_RIM_PX))
            old_shadow = None
        if protect is not None:
            hole &= ~protect  # the objects in front stay, and are context of the fill
        if p["fill"] != "telea":
            # The paste hides the old object but for its soft edge and the band where OpenCV's
            # Poisson solver reads the background's gradient (the clone mask eroded 3 times):
            # those are filled, the rest is no source; modes other than normal read it all
            hidden = (erode(placed, int(math.ceil(3 * soft_px)) + 5) if blend in ("normal", "alpha")
                      else np.zeros_like(placed))
            bg = remove_fill(image, hole & ~hidden, rng, p["patch_size"], _not_behind(request, mask, protect),
                             exclude=hole & hidden, method=p["fill"])
        else:
            bg = inpaint(image, hole, p["radius"], rng=rng, noise=p["noise"])
        # 4. a contact shadow under the new object's base, where the ground there is background
        ground = ~placed if protect is None else ~placed & ~protect
        shade = None
        if request.edit_target.strip().lower() not in NO_GROUND:
            shade = contact_shadow(placed, ground, p["contact_shadow"])
        if shade is not None:
            bg = np.clip(np.rint(bg.astype(np.float32) * (1.0 - shade[..., None])), 0, 255).astype(np.uint8)
        # 5. blend: the object (Poisson colour shift weighted by harmonize) over the background
        # through the soft alpha
        raw = bg.copy()
        raw[cy0:cy1, cx0:cx1] = rgb[sub]
        if blend == "alpha":
            layer = raw.astype(np.float32)
        else:
            layer = self._harmonized(bg, raw, placed, support, mode, p["harmonize"])
        comp = bg.astype(np.float32)
        comp[support] += soft[support][:, None] * (layer[support] - comp[support])
        composite = np.clip(np.rint(comp), 0, 255).astype(np.uint8)
        # 6. M_e = dilate(mask ∪ old shadow ∪ pasted ∪ contact shadow) less the other objects,
        # exact paste-back and contract check
        changed = support | (old_shadow if old_shadow is not None else False)
        if shade is not None:
            changed = changed | (shade * 255.0 >= 0.5)
        m_e = edit_mask(mask, changed, dp)
        params = {**p, "dilate_px": dp, "blend": blend, "cover": round(cover, 4),
                  "placement": [int(cx0), int(cy0), int(cx1 - cx0), int(cy1 - cy0)],
                  "shadow_px": int(old_shadow.sum()) if old_shadow is not None else 0,
                  "contact_shadow_px": int((shade * 255.0 >= 0.5).sum()) if shade is not None else 0}
        if variation:
            params["variation"] = variation
        return finish_output(image, composite, m_e, min(p["feather_px"], dp), params, exemplar=ex, protect=protect)

    def _harmonized(self, bg: np.ndarray, raw: np.ndarray, placed: np.ndarray, support: np.ndarray, mode: str,
                    harmonize: float) -> np.ndarray:
        """The object layer (float32 HxWx3, meaningful on ``support``): the placed exemplar
        ``raw`` plus ``harmonize`` times the colour shift ``cv2.seamlessClone`` gives it over
        ``bg`` (on a reflect-padded canvas, so masks touching the border are safe)."""
        P = self.params["pad_px"]
        H, W = bg.shape[:2]
        src_p = cv2.copyMakeBorder(raw, P, P, P, P, cv2.BORDER_REFLECT)
        dst_p = cv2.copyMakeBorder(bg, P, P, P, P, cv2.BORDER_REFLECT)
        m_p = cv2.copyMakeBorder(placed.astype(np.uint8) * 255, P, P, P, P, cv2.BORDER_CONSTANT, value=0)
        x, y, w, h = cv2.boundingRect(m_p)
        centre = (x + w // 2, y + h // 2)  # maps the mask's bounding rect onto itself
        # cv2.seamlessClone (OpenCV 5) writes into the mask it is given: always pass a copy
        out_p = cv2.seamlessClone(src_p, dst_p, m_p.copy(), centre, _CLONE_MODES[mode])
        out = out_p[P:P + H, P:P + W]
        # The Poisson solution as an offset from the raw paste. OpenCV keeps the mask's outermost
        # ring at the destination values; there, and on the soft edge outside the footprint, the
        # offset is taken from the solved neighbours instead.
        inner = cv2.erode(placed.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0).astype(bool)
        offset = np.zeros(bg.shape, np.float32)
        offset[inner] = out[inner].astype(np.float32) - raw[inner].astype(np.float32)
        ring = support & ~inner
        if ring.any() and inner.any():
            w_in = inner.astype(np.float32)
            known = offset.copy()
            for sigma in (1.5, 4.0):
                num = cv2.GaussianBlur(known, (0, 0), sigma)
                den = cv2.GaussianBlur(w_in, (0, 0), sigma)
                ok = ring & (den > 1e-4)
                offset[ok] = num[ok] / den[ok][:, None]
                ring &= ~ok
        return raw.astype(np.float32) + np.float32(harmonize) * offset
