"""The weight-free removal fill, one function for every pipeline that empties a region, and its
texture yardstick.

``remove_fill(image, hole, exclude=..., rng=...)`` fills ``hole`` of an RGB uint8 image from its
surroundings and keeps every other pixel; ``exclude`` (other objects, their rims) is kept as it
is but is neither copied nor diffused into the hole. ``classical-remove`` (``InpaintRemoval``)
fills its hole with it, and so should the hole a replacement leaves (``ExemplarComposite``), so
that a removal and a replacement empty a region the same way.

Methods (``FILL_METHODS``): ``patch`` (default: multi-scale exemplar copying with a Telea base,
``patch_inpaint.patch_inpaint``; bytes identical to what ``classical-remove`` makes today),
``telea`` and ``ns`` (``cv2.inpaint`` INPAINT_TELEA / INPAINT_NS, the excluded pixels hidden
from the diffusion; no grain) and ``pypatchmatch`` (PyPatchMatch, MIT: Barnes et al.'s
PatchMatch with bidirectional EM voting after Xavier Philippeau, the excluded pixels as its
``global_mask``, seeded from ``rng``; needs ``pip install pypatchmatch``, a prebuilt binary for
Python >= 3.11 that carries its own OpenCV and leaves ``cv2`` alone). ``perf/bench_removal.py``
compares them (and OpenCV contrib's FSR and ShiftMap, measured out of process) against the
demo's clean plates: PyPatchMatch scores best there (PSNR and texture) at the patch fill's
time (docs/performance.md).

The yardstick (``texture_stats``): PSNR and SSIM do not reward texture (a smooth blob that gets
the mean colour right scores as well as a fill that continues the floor's planks), so the bench
also compares the *fine detail* of a fill with the clean plate's, inside the region:

* ``detail`` = sqrt(E(out) / E(plate)), E(x) = the sum over the region of the squared
  band-pass of x's luminance (BT.601), band-pass = Gaussian(sigma 0.7) - Gaussian(sigma 3.0):
  the energy of structure between about 2 and 10 pixels (plank seams, wood grain, plaster) and
  not of the 8-bit quantisation. 1.0 = as much detail as the plate, 0 = flat, above 1 = more
  (noise, seams).
* ``texture`` = the gradient-histogram intersection: the luminance gradient (Sobel, after the
  same sigma 0.7 smoothing) of every pixel of the region is binned by orientation (8 bins over
  0-180 degrees, a texture's edge has no sign) and magnitude (8 bins, log-spaced from 1 to 128
  levels per pixel), the histogram counts the pixels; texture = sum(min(h_out, h_plate)) /
  sum(h_plate): the share of the plate's pixels whose gradient (how strong, which way) the fill
  reproduces. 1.0 for the plate itself; a blur (all gradients weak) scores low, and so does
  noise (strong gradients in every direction); a copy of the right texture scores high.

Both are 1.0 when the fill equals the plate and are computed inside the region only (the
band-pass and the gradient read a few pixels around it, the same pixels for every fill).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import cv2
import numpy as np

__all__ = ["FILL_METHODS", "default_method", "pypatchmatch_available", "remove_fill", "resolve_method",
           "texture_stats"]

FILL_METHODS = ("patch", "telea", "ns", "pypatchmatch")
# the patch window each patch-copying method uses unless told: PyPatchMatch's 5x5 scores as its
# 7x7 on the demo's clean plates at two thirds of the time (docs/performance.md)
DEFAULT_PATCH = {"patch": 7, "pypatchmatch": 5}
# PyPatchMatch's source crop: the hole's box grown by this multiple of its longer side (at least
# 28 px). Nearer sources match better: on the demo's first 12 images 0.3 scored 26.31 dB /
# texture 0.766 in M against 26.02 / 0.736 for 1.0 (the patch fill's crop), 15 % faster
PYPATCHMATCH_CONTEXT = 0.3


def pypatchmatch_available() -> bool:
    """Whether PyPatchMatch (``pip install pypatchmatch``; Python >= 3.11) can be imported here."""
    try:
        import patchmatch  # noqa: F401
    except ImportError:
        return False
    return True


def default_method() -> str:
    """The removal fill ``auto`` stands for: ``pypatchmatch``, the best fill measured on the
    demo's clean plates (PSNR and texture, docs/performance.md), where it is installed (a
    dependency on Python >= 3.11), else ``patch``, the best of the fills that need nothing
    beyond numpy and OpenCV. Every output records the method it was made with."""
    return "pypatchmatch" if pypatchmatch_available() else "patch"


def resolve_method(method: str) -> str:
    """``method`` with ``auto`` replaced by ``default_method()``; an unknown name is a ValueError."""
    if method == "auto":
        return default_method()
    if method not in FILL_METHODS:
        raise ValueError(f"method must be auto or one of {', '.join(FILL_METHODS)}, got {method!r}")
    return method

# the yardstick's constants (module docstring)
_SIGMA_LO, _SIGMA_HI = 0.7, 3.0
_ORI_BINS = 8
_MAG_EDGES = np.concatenate([[0.0], np.geomspace(1.0, 128.0, 8)[:-1], [np.inf]]).astype(np.float32)


def _diffuse(image: np.ndarray, hole: np.ndarray, exclude: Optional[np.ndarray], radius: int, flag: int) -> np.ndarray:
    """``cv2.inpaint`` of ``hole`` from the known pixels that are not ``exclude``d (those are
    filled too, then put back: only the hole changes)."""
    region = hole | exclude if exclude is not None else hole
    out = cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8), radius, flag)
    if exclude is not None:
        keep = exclude & ~hole
        out[keep] = image[keep]
    return out


def _bbox_crop(hole: np.ndarray, margin_min: int = 28, context: float = 1.0) -> Tuple[slice, slice]:
    """The crop ``patch_inpaint`` works on: the hole's box grown by ``context`` times its longer
    side (at least ``margin_min`` pixels) on each side, clipped to the image."""
    rows = np.flatnonzero(hole.any(axis=1))
    cols = np.flatnonzero(hole.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    m = max(margin_min, int(round(context * max(x1 - x0, y1 - y0))))
    H, W = hole.shape
    return slice(max(0, y0 - m), min(H, y1 + m)), slice(max(0, x0 - m), min(W, x1 + m))


def _pypatchmatch(image: np.ndarray, hole: np.ndarray, exclude: Optional[np.ndarray],
                  rng: Optional[np.random.Generator], patch: int,
                  context: float = PYPATCHMATCH_CONTEXT) -> np.ndarray:
    try:
        import patchmatch
    except ImportError as e:  # an optional binary package
        raise ImportError("remove_fill(method='pypatchmatch') needs the pypatchmatch package "
                          "(pip install pypatchmatch; Python >= 3.11)") from e
    ys, xs = _bbox_crop(hole, context=context)
    crop, h = image[ys, xs], hole[ys, xs]
    g = exclude[ys, xs] if exclude is not None else None
    seed = int((rng if rng is not None else np.random.default_rng(0)).integers(0, 2 ** 31 - 1))
    patchmatch.set_random_seed(seed)
    res = patchmatch.inpaint(np.ascontiguousarray(crop), h.astype(np.uint8),
                             global_mask=None if g is None else np.ascontiguousarray(g.astype(np.uint8)),
                             patch_size=max(1, int(patch) // 2))
    out = image.copy()
    out[ys, xs][h] = np.asarray(res)[h]
    return out


def remove_fill(
    image: np.ndarray,
    hole: np.ndarray,
    exclude: Optional[np.ndarray] = None,
    rng: Optional[np.random.Generator] = None,
    method: str = "patch",
    patch: Optional[int] = None,
    radius: int = 5,
) -> np.ndarray:
    """Fill ``hole`` (HxW bool) of an RGB uint8 ``image`` from its surroundings; pixels outside
    ``hole`` are returned unchanged.

    ``exclude``: pixels (other objects and their rims) that are neither copied nor diffused into
    the hole. ``rng``: the generator of the patch search (seed it per sample: same inputs, same
    bytes; default ``np.random.default_rng(0)``). ``method``: one of ``FILL_METHODS`` or ``auto``
    (``default_method()``);
    ``patch``: the patch window of ``patch`` and ``pypatchmatch`` (an even size uses the next
    odd one; default ``DEFAULT_PATCH[method]``); ``radius``: the neighbourhood of ``telea`` / ``ns``.
    """
    method = resolve_method(method)
    if patch is None:
        patch = DEFAULT_PATCH.get(method, 7)
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    hole = np.asarray(hole).astype(bool)
    if hole.shape != image.shape[:2]:
        raise ValueError(f"hole {hole.shape} does not match the image {image.shape[:2]}")
    excl = None
    if exclude is not None:
        excl = np.asarray(exclude).astype(bool)
        if excl.shape != hole.shape:
            raise ValueError(f"exclude {excl.shape} does not match the image {image.shape[:2]}")
        excl = excl & ~hole
        if not excl.any():
            excl = None
    if not hole.any():
        return image.copy()
    if method == "patch":
        from refcoco_edit.pipelines.patch_inpaint import patch_inpaint

        return patch_inpaint(image, hole, rng if rng is not None else np.random.default_rng(0), patch=int(patch) | 1,
                             exclude=excl)
    if method == "pypatchmatch":
        return _pypatchmatch(image, hole, excl, rng, int(patch) | 1)
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    return _diffuse(image, hole, excl, int(radius), flag)


def _luma(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32) if img.ndim == 3 \
        else img.astype(np.float32)


def _band(lum: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(lum, (0, 0), _SIGMA_LO) - cv2.GaussianBlur(lum, (0, 0), _SIGMA_HI)


def _grad_hist(lum: np.ndarray, region: np.ndarray) -> np.ndarray:
    s = cv2.GaussianBlur(lum, (0, 0), _SIGMA_LO)
    gx = cv2.Sobel(s, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(s, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    gx, gy = gx[region], gy[region]
    mag = np.hypot(gx, gy)
    ori = np.mod(np.arctan2(gy, gx), np.pi)
    oi = np.minimum((ori / np.pi * _ORI_BINS).astype(np.int64), _ORI_BINS - 1)
    mi = np.searchsorted(_MAG_EDGES, mag, side="right") - 1
    mi = np.clip(mi, 0, _MAG_EDGES.size - 2)
    # below the first magnitude edge a pixel is flat: its orientation is noise, one bin for all
    oi = np.where(mi == 0, 0, oi)
    return np.bincount(mi * _ORI_BINS + oi, minlength=(_MAG_EDGES.size - 1) * _ORI_BINS).astype(np.float64)


def texture_stats(out: np.ndarray, plate: np.ndarray, region: np.ndarray) -> Dict[str, float]:
    """``{"detail", "texture"}`` of ``out`` against ``plate`` inside ``region`` (module docstring);
    both 1.0 when ``out`` equals ``plate`` there."""
    region = np.asarray(region).astype(bool)
    if out.shape != plate.shape or region.shape != plate.shape[:2]:
        raise ValueError(f"out {out.shape}, plate {plate.shape} and region {region.shape} do not match")
    if not region.any():
        raise ValueError("the region is empty")
    lo, lp = _luma(out), _luma(plate)
    e_out = float(np.sum(np.square(_band(lo)[region], dtype=np.float64)))
    e_ref = float(np.sum(np.square(_band(lp)[region], dtype=np.float64)))
    detail = float(np.sqrt(e_out / e_ref)) if e_ref > 0 else (1.0 if e_out == 0 else float("inf"))
    h_out, h_ref = _grad_hist(lo, region), _grad_hist(lp, region)
    texture = float(np.minimum(h_out, h_ref).sum() / h_ref.sum())
    return {"detail": detail, "texture": texture}
