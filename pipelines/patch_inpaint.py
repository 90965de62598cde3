"""Weight-free exemplar (patch-based) inpainting for large holes, and a cast-shadow detector.

``patch_inpaint`` fills a hole with pixels copied from the rest of the image, the way Wexler,
Shechtman & Irani (2007, "Space-time completion of video") and PatchMatch (Barnes et al. 2009)
do, in numpy + OpenCV only:

1. work on a crop around the hole (the hole's box grown by ``context`` times its size): the
   source patches come from there, where the texture at the same depth and lighting is;
2. build an image pyramid (halving) until the hole's box spans about ``4 * patch`` pixels; the
   coarsest hole is filled with Telea (a smooth start);
3. at each level, coarse to fine, alternate a few times
   (E) a nearest-neighbour field: for every pixel whose ``patch x patch`` window touches the
       hole, the most similar window lying wholly in the known region, found by a vectorised
       PatchMatch (propagation from neighbours at distances 1, 2, 4 and 8 in the four
       directions, then random search in shrinking windows), and
   (M) voting: every hole pixel becomes the weighted mean of the pixels the windows covering it
       copy there (weight ``exp(-d / (2 * median d))`` of each window's distance d);
   the field and the filled image go up to the next level as its start.

Copying real texture continues plank seams, grout lines, wall/table edges and grain across a
hole where diffusion (Telea) smears them into a blur; the low frequencies (lighting) come from
the coarse levels. Everything is seeded by the caller's generator: same inputs, same bytes.

``shadow_region`` finds the cast and contact shadow an object leaves on its surroundings (pixels
next to its lower part that are darker than the background predicted around them), so that a
removal can erase it with the object.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

__all__ = ["patch_inpaint", "shadow_region"]

_STEPS = (8, 4, 2, 1)
_DIRS = ((0, 1), (0, -1), (1, 0), (-1, 0))
_TABLE_BYTES = 128 << 20  # the largest source-patch table a level builds (_Level.source_patches)


def _bbox(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _down(img: np.ndarray, hole: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    h, w = hole.shape
    sw, sh = max(1, (w + 1) // 2), max(1, (h + 1) // 2)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0
    return small, small_hole


class _Level:
    """One pyramid level: the padded image, the valid source centres and the target centres."""

    def __init__(self, img: np.ndarray, hole: np.ndarray, patch: int, row_prior: float = 0.0,
                 exclude: Optional[np.ndarray] = None):
        self.r = r = patch // 2
        self.row_cost = float(row_prior) * patch * patch
        self.h, self.w = hole.shape
        self.Wp = self.w + 2 * r
        self.img = cv2.copyMakeBorder(img.astype(np.float32), r, r, r, r, cv2.BORDER_REFLECT)
        hole_p = cv2.copyMakeBorder(hole.astype(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT, value=1).astype(bool)
        self.hole_p = hole_p
        kernel = np.ones((patch, patch), np.uint8)
        # a source centre: its whole window is known (the padding counts as unknown) and shows
        # no excluded pixel (another object: the fill copies the background, not its neighbours)
        unknown = hole_p
        if exclude is not None:
            unknown = unknown | cv2.copyMakeBorder(exclude.astype(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT,
                                                   value=0).astype(bool)
        self.valid = cv2.erode((~unknown).astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT,
                               borderValue=0).astype(bool)
        self.valid_idx = np.flatnonzero(self.valid.ravel())
        inner = np.zeros_like(hole_p)
        inner[r:r + self.h, r:r + self.w] = True
        # a target centre: its window touches the hole (centres kept inside the unpadded crop)
        touch = cv2.dilate(cv2.copyMakeBorder(hole.astype(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT, value=0),
                           kernel).astype(bool)
        self.targets = np.flatnonzero((touch & inner).ravel())
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
        self.offsets = (dy * self.Wp + dx).ravel()
        self.hole_flat = np.flatnonzero(hole_p.ravel() & inner.ravel())
        self._table: Optional[np.ndarray] = None  # source_patches' table, built on first use
        self._row: Optional[np.ndarray] = None

    def yx(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return idx // self.Wp, idx % self.Wp

    def patches(self, idx: np.ndarray) -> np.ndarray:
        flat = self.img.reshape(-1, 3)
        return flat[idx[:, None] + self.offsets[None, :]]

    def source_patches(self, src: np.ndarray) -> np.ndarray:
        """``patches(src)`` for valid source centres, from a table of every window of the level
        built once: a source window lies wholly in the known region, which voting never writes,
        so its pixels are fixed for the level, and one row gather per lookup replaces
        ``patch * patch`` pixel gathers (the same values, so the fill's bytes do not change).
        Over ``_TABLE_BYTES`` the table is not built and the pixels are gathered each time."""
        if self._table is None:
            if self.h * self.w * self.offsets.size * 12 > _TABLE_BYTES:
                return self.patches(src)
            p = 2 * self.r + 1
            win = np.lib.stride_tricks.sliding_window_view(self.img, (p, p), axis=(0, 1))  # h, w, 3, p, p
            self._table = np.ascontiguousarray(win.transpose(0, 1, 3, 4, 2)).reshape(self.h * self.w, p * p, 3)
            yy, xx = np.divmod(np.arange(self.valid.size), self.Wp)
            self._row = np.clip(yy - self.r, 0, self.h - 1) * self.w + np.clip(xx - self.r, 0, self.w - 1)
        return self._table[self._row[src]]

    def dist(self, tp: np.ndarray, src: np.ndarray, t: np.ndarray) -> np.ndarray:
        d = self.source_patches(src) - tp
        ssd = np.einsum("npc,npc->n", d, d)
        if self.row_cost:
            dy = (src // self.Wp - t // self.Wp).astype(np.float32)
            ssd += self.row_cost * dy * dy
        return ssd


def _random_sources(level: _Level, n: int, rng: np.random.Generator) -> np.ndarray:
    return level.valid_idx[rng.integers(0, level.valid_idx.size, n)]


def _patchmatch(level: _Level, nnf: np.ndarray, rng: np.random.Generator, iters: int) -> Tuple[np.ndarray, np.ndarray]:
    """Improve the field ``nnf`` (source index per target) by propagation and random search."""
    t = level.targets
    tp = level.patches(t)
    best = level.dist(tp, nnf, t)
    dense = np.full(level.img.shape[0] * level.Wp, -1, np.int64)
    ty, tx = level.yx(t)
    hp, wp = level.img.shape[:2]
    valid = level.valid.ravel()
    for _ in range(iters):
        for step in _STEPS:
            dense[t] = nnf
            for dy, dx in _DIRS:
                ny, nx = ty - dy * step, tx - dx * step
                ok = (ny >= 0) & (ny < hp) & (nx >= 0) & (nx < wp)
                nb = np.full(t.size, -1, np.int64)
                nb[ok] = dense[ny[ok] * level.Wp + nx[ok]]
                cand = nb + (dy * step) * level.Wp + dx * step
                ok = nb >= 0
                cand_ok = np.zeros(t.size, bool)
                cy, cx = level.yx(np.where(ok, cand, 0))
                inside = ok & (cy >= 0) & (cy < hp) & (cx >= 0) & (cx < wp)
                cand_ok[inside] = valid[cand[inside]]
                cand_ok &= cand != nnf
                if not cand_ok.any():
                    continue
                k = np.flatnonzero(cand_ok)
                d = level.dist(tp[k], cand[k], t[k])
                better = d < best[k]
                nnf[k[better]] = cand[k[better]]
                best[k[better]] = d[better]
        radius = max(hp, wp)
        sy, sx = level.yx(nnf)
        while radius >= 1:
            cy = sy + rng.integers(-radius, radius + 1, t.size)
            cx = sx + rng.integers(-radius, radius + 1, t.size)
            inside = (cy >= 0) & (cy < hp) & (cx >= 0) & (cx < wp)
            cand = np.where(inside, cy * level.Wp + cx, 0)
            ok = inside & valid[cand]
            if ok.any():
                k = np.flatnonzero(ok)
                d = level.dist(tp[k], cand[k], t[k])
                better = d < best[k]
                nnf[k[better]] = cand[k[better]]
                best[k[better]] = d[better]
                sy, sx = level.yx(nnf)
            radius //= 2
    return nnf, best


def _vote(level: _Level, nnf: np.ndarray, dist: np.ndarray, sharpness: float) -> None:
    """Set every hole pixel to the weighted mean of what the windows covering it copy there."""
    flat = level.img.reshape(-1, 3)
    scale = max(float(np.median(dist)), 1e-3) / sharpness
    w = np.exp(-dist / scale).astype(np.float64) + 1e-12
    q = (level.targets[:, None] + level.offsets[None, :]).ravel()
    ww = np.repeat(w, level.offsets.size)
    n = flat.shape[0]
    den = np.bincount(q, weights=ww, minlength=n)
    vals = level.source_patches(nnf).reshape(-1, 3)
    hole = level.hole_flat
    out = np.empty((hole.size, 3), np.float32)
    for c in range(3):
        num = np.bincount(q, weights=ww * vals[:, c], minlength=n)
        out[:, c] = num[hole] / np.maximum(den[hole], 1e-12)
    flat[hole] = out


def _upsample_nnf(coarse: _Level, nnf: np.ndarray, fine: _Level, rng: np.random.Generator) -> np.ndarray:
    """The coarse field doubled onto the fine level's targets (invalid sources drawn at random)."""
    dense = np.full(coarse.img.shape[0] * coarse.Wp, -1, np.int64)
    dense[coarse.targets] = nnf
    fy, fx = fine.yx(fine.targets)
    cy = np.clip((fy - fine.r) // 2 + coarse.r, 0, coarse.img.shape[0] - 1)
    cx = np.clip((fx - fine.r) // 2 + coarse.r, 0, coarse.Wp - 1)
    src = dense[cy * coarse.Wp + cx]
    out = _random_sources(fine, fine.targets.size, rng)
    ok = src >= 0
    sy, sx = coarse.yx(src[ok])
    ny = 2 * (sy - coarse.r) + fine.r + (fy[ok] - fine.r) % 2
    nx = 2 * (sx - coarse.r) + fine.r + (fx[ok] - fine.r) % 2
    hp, wp = fine.img.shape[:2]
    inside = (ny >= 0) & (ny < hp) & (nx >= 0) & (nx < wp)
    cand = np.where(inside, ny * fine.Wp + nx, 0)
    good = inside & fine.valid.ravel()[cand]
    idx = np.flatnonzero(ok)
    out[idx[good]] = cand[good]
    return out


def _telea(img: np.ndarray, hole: np.ndarray, exclude: np.ndarray, radius: int) -> np.ndarray:
    """Telea's fill of ``hole`` diffused from the known pixels that are not ``exclude``d (those
    are filled too, then put back: only the hole changes)."""
    region = hole | exclude
    out = cv2.inpaint(np.ascontiguousarray(img), region.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    if exclude.any():
        out[exclude] = img[exclude]
    return out


def patch_inpaint(
    image: np.ndarray,
    hole: np.ndarray,
    rng: np.random.Generator,
    patch: int = 7,
    context: float = 1.0,
    em_iters: int = 2,
    pm_iters: int = 1,
    max_levels: int = 6,
    sharpness: float = 0.5,
    row_prior: float = 1.0,
    lowpass: float = 2.5,
    exclude: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Fill ``hole`` of an RGB uint8 image by multi-scale patch copying; pixels outside are kept.

    ``context``: the source region is the hole's box grown by this multiple of its longer side
    (at least ``4 * patch`` pixels) on each side. ``em_iters`` / ``pm_iters``: voting rounds per
    level and PatchMatch sweeps per round (the finest level gets one round fewer when it has
    more than one). ``sharpness``: voting weight ``exp(-d * sharpness / median d)``.
    ``row_prior``: a cost per pixel of window and per squared row of vertical displacement
    between a window and its source (ground planes and horizons continue sideways: sources at
    the same depth are preferred). ``lowpass``: when > 0, the fill keeps only its detail above
    this Gaussian sigma and takes the lower frequencies from a Telea fill (patch copying gets
    texture right, diffusion gets smooth lighting right; the mix scores better than either on
    the demo's clean plates). Falls back to Telea when the crop has too few whole source windows.
    ``exclude``: pixels (other objects) that are kept but neither copied nor diffused into the
    hole, so a neighbour's colour does not bleed into the background that is filled in.
    """
    if patch < 3 or patch % 2 == 0:
        raise ValueError(f"patch must be an odd size >= 3, got {patch}")
    hole = np.asarray(hole).astype(bool)
    out = image.copy()
    if not hole.any():
        return out
    H, W = hole.shape
    x0, y0, x1, y1 = _bbox(hole)
    m = int(max(4 * patch, round(context * max(x1 - x0, y1 - y0))))
    ys, xs = slice(max(0, y0 - m), min(H, y1 + m)), slice(max(0, x0 - m), min(W, x1 + m))
    crop, h_crop = image[ys, xs], hole[ys, xs]
    x_crop = (np.asarray(exclude).astype(bool)[ys, xs] & ~h_crop) if exclude is not None else np.zeros_like(h_crop)
    # the pyramid: halve until the hole's box spans about 4 patches
    imgs: List[np.ndarray] = [crop]
    holes: List[np.ndarray] = [h_crop]
    excls: List[np.ndarray] = [x_crop]
    while len(imgs) < max_levels:
        bx0, by0, bx1, by1 = _bbox(holes[-1])
        if max(bx1 - bx0, by1 - by0) <= 4 * patch or min(holes[-1].shape) < 4 * patch:
            break
        a, b = _down(imgs[-1], holes[-1])
        imgs.append(a)
        holes.append(b)
        excls.append(_down(imgs[-2], excls[-1])[1] & ~b)
    coarse = _telea(imgs[-1], holes[-1], excls[-1], 3)
    current = coarse.astype(np.float32)
    prev: Optional[_Level] = None
    nnf: Optional[np.ndarray] = None
    for li in range(len(imgs) - 1, -1, -1):
        img_l = imgs[li].astype(np.float32)
        if li != len(imgs) - 1:
            up = cv2.resize(current, (holes[li].shape[1], holes[li].shape[0]), interpolation=cv2.INTER_LINEAR)
            img_l[holes[li]] = up[holes[li]]
        else:
            img_l = current
        level = _Level(img_l, holes[li], patch, row_prior, excls[li] if excls[li].any() else None)
        if level.valid_idx.size < 16 or level.targets.size == 0:
            fallback = _telea(crop, h_crop, x_crop, 5)
            out[ys, xs][h_crop] = fallback[h_crop]
            return out
        if prev is None or nnf is None:
            nnf = _random_sources(level, level.targets.size, rng)
        else:
            nnf = _upsample_nnf(prev, nnf, level, rng)
        rounds = em_iters if li > 0 or em_iters == 1 else em_iters - 1
        for _ in range(rounds):
            nnf, dist = _patchmatch(level, nnf, rng, pm_iters)
            _vote(level, nnf, dist, sharpness)
        r = level.r
        current = level.img[r:r + level.h, r:r + level.w]
        prev = level
    if lowpass > 0:
        smooth = _telea(crop, h_crop, x_crop, 5).astype(np.float32)
        current = current + cv2.GaussianBlur(smooth, (0, 0), lowpass) - cv2.GaussianBlur(current, (0, 0), lowpass)
    filled = np.clip(np.rint(current), 0, 255).astype(np.uint8)
    out_crop = out[ys, xs]
    out_crop[h_crop] = filled[h_crop]
    return out


def shadow_region(
    image: np.ndarray,
    mask: np.ndarray,
    darker: float = 0.9,
    reach: float = 0.5,
    min_px: int = 12,
    chroma_tol: float = 0.06,
) -> np.ndarray:
    """The cast/contact shadow of the object ``mask`` on its surroundings (HxW bool, disjoint from ``mask``).

    The background luminance expected around the object is predicted by filling a zone around it
    (the mask grown by ``reach`` times the object's size) from the zone's edge; pixels of the
    zone's lower part (from the object's vertical middle down) whose luminance is below
    ``darker`` times the prediction and whose chromaticity (r, g, b over their sum) is within
    ``chroma_tol`` of the prediction's (a shadow darkens a surface, it does not recolour it: a
    dark neighbouring object is not taken), down to 0.3 object sizes below the object, connected
    to the object's lower part, are its shadow.
    Empty when nothing clearly darker touches the object (small specks under ``min_px`` dropped).
    """
    mask = np.asarray(mask).astype(bool)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    H, W = mask.shape
    x0, y0, x1, y1 = _bbox(mask)
    size = max(x1 - x0, y1 - y0)
    grow = max(3, int(round(reach * size)))
    cx0, cy0, cx1, cy1 = max(0, x0 - grow - 4), max(0, y0 - 2), min(W, x1 + grow + 4), min(H, y1 + grow + 4)
    crop = image[cy0:cy1, cx0:cx1]
    m = mask[cy0:cy1, cx0:cx1]
    lum = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32)
    zone = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))) > 0
    # predict the lit background (colour) inside the zone from its edge, at low resolution (smooth)
    f = max(1, int(math.ceil(max(lum.shape) / 96)))
    sw, sh_ = max(1, lum.shape[1] // f), max(1, lum.shape[0] // f)
    small = cv2.resize(np.ascontiguousarray(crop), (sw, sh_), interpolation=cv2.INTER_AREA)
    small_zone = cv2.resize(zone.astype(np.float32), (sw, sh_), interpolation=cv2.INTER_AREA) > 0
    ring = cv2.dilate(small_zone.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~small_zone
    if ring.sum() < 8:
        return out
    zone_u8 = small_zone.astype(np.uint8)
    pred_small = cv2.inpaint(small, zone_u8, 3, cv2.INPAINT_TELEA)
    pred = cv2.resize(pred_small, (lum.shape[1], lum.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # the lit luminance from a bright-biased ring (the surface as lit, not its dark seams or
    # other shadows); the colour (chromaticity) from the plain ring
    lum_small = cv2.dilate(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), np.ones((3, 3), np.uint8))
    pred_lum = cv2.resize(cv2.inpaint(lum_small, zone_u8, 3, cv2.INPAINT_TELEA), (lum.shape[1], lum.shape[0]),
                          interpolation=cv2.INTER_LINEAR).astype(np.float32)
    smooth_rgb = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 1.5)
    smooth = cv2.cvtColor(smooth_rgb, cv2.COLOR_RGB2GRAY)
    # a shadow darkens the surface but keeps its chromaticity; another object does not
    chroma = smooth_rgb / np.maximum(smooth_rgb.sum(axis=2, keepdims=True), 1.0)
    pred_chroma = pred / np.maximum(pred.sum(axis=2, keepdims=True), 1.0)
    same_hue = np.abs(chroma - pred_chroma).max(axis=2) < chroma_tol
    mid = (y0 + y1) // 2 - cy0
    lower = np.zeros(m.shape, bool)
    lower[max(0, mid):min(m.shape[0], y1 - cy0 + max(2, int(round(0.3 * size))))] = True
    cand = zone & ~m & lower & same_hue & (smooth < darker * pred_lum)
    cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    # keep the parts touching the object's lower half
    seed = cv2.dilate((m & lower).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    n, labels = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    touched = np.unique(labels[seed & cand])
    keep[touched[touched > 0]] = True
    sh = keep[labels] & cand
    if sh.sum() < min_px:
        return out
    sh = cv2.morphologyEx(sh.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)).astype(bool) & ~m
    out[cy0:cy1, cx0:cx1] = sh
    return out
