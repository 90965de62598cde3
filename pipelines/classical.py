"""Classical CPU ground-truth pipelines: no weights, numpy + OpenCV only, deterministic bytes.

Three ``GTPipeline`` subclasses, one per edit type, used by the default ``classical`` backend so
that ``refcoco-edit build`` runs on any laptop:

``InpaintRemoval`` ("classical-remove", edit type ``remove``)
    1. check the request;
    2. M_e = dilate(source mask ∪ its cast/contact shadow, max(min_dilate_px, dilate_frac *
       object size)) (``shadow``; ``patch_inpaint.shadow_region``);
    3. ``method="patch"`` (default): fill M_e by multi-scale exemplar (patch) copying with a
       smooth Telea base (``patch_inpaint.patch_inpaint``); ``method="telea"``: the former
       remover: Telea inpainting (coarse-to-fine for large holes, so a 15 % mask stays fast),
    4. plus (Telea only) seeded grain matched to the surrounding texture;
    5. paste back through M_e (exact outside) and check the output.
    ``perf/bench_removal.py`` scores both against the demo's clean plates.

``ExemplarComposite`` ("classical-replace", edit type ``replace``, needs an exemplar)
    1. check the request; clean the RGBA exemplar (largest alpha blob, holes filled, eroded edge);
    2. remove the source object as ``InpaintRemoval`` does;
    3. scale the exemplar to the source box: its aspect is stretched toward the box's by at most
       a factor ``stretch``, then it is scaled to fit the box and anchored at the box's bottom
       centre (or centre), clipped to the image; a paste whose box covers less than ``min_cover``
       of the source box fails with ``shape_mismatch`` (the target does not fit the region);
    4. Poisson-blend it (``cv2.seamlessClone`` on a reflect-padded canvas, so masks touching the
       border are safe); the Poisson colour shift is applied with weight ``harmonize`` (1 = pure
       NORMAL_CLONE, which turns an object that differs from its new surroundings into a tinted
       ghost; 0 = plain cut-and-paste); tiny pastes fall back to alpha compositing;
    5. M_e = dilate(source mask ∪ pasted region); paste back and check.

Every pipeline here leaves the other annotated objects of the image alone (``protect_others``,
on by default): their pixels (``base.protected_region``: the other masks less the source's) are
left out of the hole a removal fills and out of M_e, and keep the source's values with a hard
edge, so an object standing in front of the source stays in front of the replacement or the
recoloured object. Without ``EditRequest.other_masks`` nothing changes.

``Recolor`` ("classical-attribute", edit type ``attribute``): its steps are in ``recolor``'s
    docstring (Lab recolouring or a seeded procedural material, composited inside the mask).

All randomness comes from ``np.random.default_rng(request.seed)``; work is done on a crop around
the object, which keeps each pipeline well under 0.3 s on a 640x480 image.

Variations (``EditRequest.vary``: a sample's candidates after the first, and re-drawn duplicates)
draw other settings from ``base.variation_rng`` so that the candidates of one sample are other
images even where the canonical edit barely depends on the seed: the removal grows M_e by a
factor 1-1.6 and picks another patch size (Telea: another radius); the replacement mirrors the
exemplar half of the time, shrinks it by a factor 0.9-1 (kept at 1 when that would fail
``min_cover``) and draws ``harmonize`` in 0.15-0.45. The drawn values are in
``params["variation"]``; the canonical edit (``vary`` False) is unchanged by any of this.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from refcoco_edit.pipelines.base import (EditRequest, GTPipeline, PipelineError, PipelineOutput, protected_region,
                                         variation_rng)
from refcoco_edit.pipelines.masks import check_output, dilate, edit_mask, erode, feather_alpha, paste_back
from refcoco_edit.pipelines.patch_inpaint import patch_inpaint, shadow_region

__all__ = ["InpaintRemoval", "ExemplarComposite", "inpaint", "mask_bbox", "box_slices", "finish_output"]

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
REMOVAL_METHODS = ("patch", "telea")


class InpaintRemoval(GTPipeline):
    """Remove the referred object and its shadow: patch-based filling (default) or Telea inpainting."""

    name = "classical-remove"
    edit_types = ("remove",)
    needs_exemplar = False

    def __init__(
        self,
        method: str = "patch",
        shadow: str = "auto",
        dilate_frac: float = 0.03,
        min_dilate_px: int = 5,
        radius: int = 5,
        noise: float = 0.8,
        feather_px: int = 4,
        max_direct_px: int = 12000,
        patch_size: int = 7,
        shadow_darker: float = 0.9,
        protect_others: bool = True,
    ) -> None:
        """``method``: ``patch`` (exemplar filling) or ``telea`` (the former default, bytes
        unchanged); ``shadow``: erase the object's cast shadow too: ``on``, ``off`` or ``auto``
        (on for ``patch``, off for ``telea``); ``patch_size``: the patch window (an even size
        uses the next odd one); ``shadow_darker``: a shadow pixel is below this fraction of the
        background luminance predicted around it; ``radius``, ``noise``, ``max_direct_px``: Telea's;
        ``protect_others``: never paint the other annotated objects (``base.protected_region``;
        the hole is filled around them, and a shadow the object casts on one of them stays)."""
        if method not in REMOVAL_METHODS:
            raise ValueError(f"method must be one of {', '.join(REMOVAL_METHODS)}, got {method!r}")
        if shadow not in ("auto", "on", "off"):
            raise ValueError(f"shadow must be auto, on or off, got {shadow!r}")
        if int(patch_size) < 3:
            raise ValueError(f"patch_size must be >= 3, got {patch_size}")
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
        use_shadow = p["shadow"] == "on" or (p["shadow"] == "auto" and p["method"] == "patch")
        shadow = shadow_region(image, mask, darker=p["shadow_darker"]) if use_shadow else None
        m_e = edit_mask(mask, shadow, dp)
        protect = protected_region(request) if p["protect_others"] else None
        hole = m_e & ~protect if protect is not None else m_e  # other objects stay and are context
        # 3-4. fill the hole: patch copying, or Telea (coarse-to-fine when large) + matched grain
        if p["method"] == "patch":
            # other objects are no source of the fill, nor their anti-aliased rims (masks stop a
            # pixel or two short of an object's edge: its colour would bleed into the background)
            near = None if protect is None else cv2.dilate(protect.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            filled = patch_inpaint(image, hole, rng, patch=p["patch_size"] | 1, exclude=near)
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
        if p["method"] == "patch":
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


def _cover(placed: Box, box: Box) -> float:
    """The share of ``box`` that the ``placed`` box covers (both x0, y0, x1, y1)."""
    iw = min(placed[2], box[2]) - max(placed[0], box[0])
    ih = min(placed[3], box[3]) - max(placed[1], box[1])
    area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
    return max(0, iw) * max(0, ih) / area


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask, with its interior holes filled."""
    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == k).astype(np.uint8)
    # fill holes: flood the background from a padded border, whatever is not reached is inside
    padded = cv2.copyMakeBorder(blob, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    ff = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return blob.astype(bool) | holes


def clean_exemplar(exemplar: np.ndarray, erode_px: int = 1) -> np.ndarray:
    """Crop an RGBA cut-out to its alpha, keep its largest blob (holes filled), erode the fringe.

    Returns an RGBA uint8 array whose alpha is 255 on the cleaned blob, 0 elsewhere. The erosion
    drops the ring of pixels from the exemplar's own background that polygon masks usually carry.
    """
    if exemplar.ndim != 3 or exemplar.shape[2] not in (3, 4) or exemplar.dtype != np.uint8:
        raise PipelineError("pipeline_error", f"exemplar must be hxwx4 uint8 RGBA, got {exemplar.shape} {exemplar.dtype}")
    if exemplar.shape[2] == 3:
        exemplar = np.dstack([exemplar, np.full(exemplar.shape[:2], 255, np.uint8)])
    blob = _largest_blob(exemplar[..., 3] > 0)
    if blob.sum() > 64:
        eroded = erode(blob, erode_px) if erode_px > 0 else blob
        # keep the erosion only if it does not destroy a thin exemplar
        blob = _largest_blob(eroded) if eroded.sum() >= 0.5 * blob.sum() else blob
    if not blob.any():
        raise PipelineError("no_exemplar", "the exemplar's alpha channel is empty")
    x0, y0, x1, y1 = mask_bbox(blob)
    out = exemplar[y0:y1, x0:x1].copy()
    out[..., 3] = np.where(blob[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return out


def _extend_colours(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Fill the pixels outside ``alpha`` with a smooth outward extension of the object's colours.

    Used as the Poisson source outside the clone mask, so the guidance field at the object's edge
    carries the object's own gradient rather than a step to whatever lay behind the cut-out.
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


class ExemplarComposite(GTPipeline):
    """Replace the referred object by a Poisson-blended exemplar of the target category."""

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
    ) -> None:
        """``stretch``: the most the exemplar's aspect may be stretched toward the source box's
        (1: never); ``min_cover``: the least share of the source box the pasted exemplar's box
        must cover (else ``shape_mismatch``; 0: off); ``protect_others``: never paint the other
        annotated objects (``base.protected_region``): an object in front of the source stays in
        front of the new one. The others: see the module docstring."""
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
        self.params: Dict[str, Any] = {
            "scale": float(scale), "clone_mode": clone_mode, "harmonize": float(harmonize), "anchor": anchor,
            "dilate_px": None if dilate_px is None else int(dilate_px), "dilate_frac": float(dilate_frac),
            "min_dilate_px": int(min_dilate_px), "erode_px": int(erode_px), "radius": int(radius),
            "noise": float(noise), "feather_px": int(feather_px), "pad_px": int(pad_px),
            "min_clone_px": int(min_clone_px), "stretch": float(stretch), "min_cover": float(min_cover),
            "protect_others": bool(protect_others),
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
        (rgb, alpha bool, left, top) before clipping."""
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
        rgb = cv2.resize(np.ascontiguousarray(ex[..., :3]), (nw, nh), interpolation=interp)
        alpha = cv2.resize(ex[..., 3].astype(np.float32) / 255.0, (nw, nh), interpolation=cv2.INTER_LINEAR) >= 0.5
        if not alpha.any():  # a very small paste: keep at least the centre pixel
            alpha[nh // 2, nw // 2] = True
        left = int(round((x0 + x1) / 2.0 - nw / 2.0))
        top = y1 - nh if self.params["anchor"] == "bottom" else int(round((y0 + y1) / 2.0 - nh / 2.0))
        return rgb, alpha, left, top

    def generate(self, request: EditRequest) -> PipelineOutput:
        """Steps: 1 check + clean exemplar; 2 remove; 3 place; 4 blend; 5 M_e, paste back, check."""
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
        # 2. remove the source object
        dp = p["dilate_px"] if p["dilate_px"] is not None else _removal_dilate_px(mask, p["dilate_frac"], p["min_dilate_px"])
        hole = dilate(mask, dp)
        protect = protected_region(request) if p["protect_others"] else None
        if protect is not None:
            hole &= ~protect  # the objects in front stay, and are context of the fill
        bg = inpaint(image, hole, p["radius"], rng=rng, noise=p["noise"])
        # 3. scale into the source box, anchor, clip to the image
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
        placed = np.zeros((H, W), bool)
        placed[cy0:cy1, cx0:cx1] = alpha[sub]
        if not placed.any():
            raise PipelineError("pipeline_error", "the placed exemplar lies outside the image")
        cover = _cover((cx0, cy0, cx1, cy1), box)
        if cover < p["min_cover"]:
            raise PipelineError("shape_mismatch", f"the exemplar of {request.edit_target!r} ({ex.shape[1]}x{ex.shape[0]}) "
                                f"covers {cover:.0%} of the source box {box[2] - box[0]}x{box[3] - box[1]} once scaled "
                                f"into it, under min_cover {p['min_cover']:.0%}: the target does not fit the region")
        raw = bg.copy()
        raw[placed] = rgb[sub][alpha[sub]]  # row-major order matches inside the window
        # 4. blend: Poisson (seamlessClone) on a reflect-padded canvas, or alpha for tiny pastes
        mode = p["clone_mode"]
        blend = mode
        if mode == "alpha" or int(placed.sum()) < p["min_clone_px"] or min(cy1 - cy0, cx1 - cx0) < 4:
            blend = "alpha"  # a one-pixel soft edge instead of a jagged cut
            a = feather_alpha(placed, 2 if placed.sum() >= p["min_clone_px"] else 0)[..., None]
            composite = np.clip(np.rint(bg + (raw.astype(np.float32) - bg) * a), 0, 255).astype(np.uint8)
        else:
            composite = self._poisson(bg, raw, rgb, alpha, placed, (left, top), mode, p["harmonize"])
        # 5. M_e = dilate(mask ∪ pasted) less the other objects, exact paste-back and contract check
        m_e = edit_mask(mask, placed, dp)
        params = {**p, "dilate_px": dp, "blend": blend, "cover": round(cover, 4),
                  "placement": [int(cx0), int(cy0), int(cx1 - cx0), int(cy1 - cy0)]}
        if variation:
            params["variation"] = variation
        return finish_output(image, composite, m_e, min(p["feather_px"], dp), params, exemplar=ex, protect=protect)

    def _poisson(
        self, bg: np.ndarray, raw: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, placed: np.ndarray,
        topleft: Tuple[int, int], mode: str, harmonize: float,
    ) -> np.ndarray:
        """seamlessClone the placed exemplar into ``bg``; changes only pixels of ``placed``."""
        P = self.params["pad_px"]
        H, W = bg.shape[:2]
        left, top = topleft
        nh, nw = alpha.shape
        # the Poisson source: the exemplar with its colours extended outward, placed on a canvas
        src = raw.copy()
        ext = _extend_colours(rgb, alpha)
        cx0, cy0, cx1, cy1 = max(0, left), max(0, top), min(W, left + nw), min(H, top + nh)
        src[cy0:cy1, cx0:cx1] = ext[cy0 - top:cy1 - top, cx0 - left:cx1 - left]
        src_p = cv2.copyMakeBorder(src, P, P, P, P, cv2.BORDER_REFLECT)
        dst_p = cv2.copyMakeBorder(bg, P, P, P, P, cv2.BORDER_REFLECT)
        m_p = cv2.copyMakeBorder(placed.astype(np.uint8) * 255, P, P, P, P, cv2.BORDER_CONSTANT, value=0)
        x, y, w, h = cv2.boundingRect(m_p)
        centre = (x + w // 2, y + h // 2)  # maps the mask's bounding rect onto itself
        # cv2.seamlessClone (OpenCV 5) writes into the mask it is given: always pass a copy
        out_p = cv2.seamlessClone(src_p, dst_p, m_p.copy(), centre, _CLONE_MODES[mode])
        out = out_p[P:P + H, P:P + W]
        # The Poisson solution as an offset from the raw paste, weighted by ``harmonize``. OpenCV
        # keeps the mask's outermost ring at the destination values; there the offset is taken
        # from the solved neighbours instead, so the paste keeps exactly the placed footprint
        # without a ring of either background or unblended exemplar colour.
        inner = cv2.erode(placed.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0).astype(bool)
        offset = np.zeros(bg.shape, np.float32)
        offset[inner] = out[inner].astype(np.float32) - raw[inner].astype(np.float32)
        ring = placed & ~inner
        if ring.any() and inner.any():
            w_in = inner.astype(np.float32)
            num = cv2.GaussianBlur(offset, (0, 0), 1.5)
            den = cv2.GaussianBlur(w_in, (0, 0), 1.5)
            ok = ring & (den > 1e-4)
            offset[ok] = num[ok] / den[ok][:, None]
        k = np.float32(harmonize)
        res = bg.copy()
        mixed = np.clip(np.rint(raw.astype(np.float32) + k * offset), 0, 255).astype(np.uint8)
        res[placed] = mixed[placed]
        return res
