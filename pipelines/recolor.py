"""The classical ``attribute`` pipeline, ``Recolor`` ("classical-attribute"): no weights.

1. check the request: the target must be a colour of ``vocab.COLOURS`` or a material of
   ``vocab.MATERIALS``;
2. colour: in CIE Lab keep the object's relative shading, move its lightness to the target's
   and set its chroma to the target's (≈0 for white / black / gray);
   material: render a seeded procedural texture (wood, brushed metal, gold, marble, glass,
   stone) modulated by the object's luminance;
3. composite inside the source mask with a feathered edge; M_e = dilate(mask, 2);
   paste back and check (an object that already has the colour gives ``no_change``).

A variation (``EditRequest.vary``: a sample's candidates after the first) moves the new
appearance by a seeded shift in Lab before step 3: lightness by 4-10 units (toward the middle
for a near-white or near-black result), hue by 3-9 degrees, chroma by a factor 0.85-1.15 (small
enough that the colour keeps its name); the drawn values are in ``params["variation"]``.
Without it a colour edit ignores the seed.

The removal and replacement pipelines and the helpers shared with them are in ``classical``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from refcoco_edit.pipelines.base import (EditRequest, GTPipeline, PipelineError, PipelineOutput, protected_region,
                                         variation_rng)
from refcoco_edit.pipelines.classical import box_slices, finish_output, inpaint, mask_bbox
from refcoco_edit.pipelines.masks import dilate, edit_mask, erode, feather_alpha
from refcoco_edit.vocab import COLOURS, MATERIALS

__all__ = ["Recolor", "ciede2000", "rgb_to_lab"]

_ALIASES = {"grey": "gray", "wood": "wooden", "metal": "metallic", "gold": "golden", "marbled": "marble"}


def _normalise_attribute(target: str) -> str:
    t = target.strip().lower()
    return _ALIASES.get(t, t)


def _rgb_to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb_u8.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0, 0, 255)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (k_L = k_C = k_H = 1) between CIELAB arrays of shape (..., 3).

    The formula as written out by Sharma, Wu & Dalal (2005), "The CIEDE2000 Color-Difference
    Formula: Implementation Notes, Supplementary Test Data, and Mathematical Observations"
    (eqs. 1-22), including their conventions for the mean hue and the hue difference when the
    hues lie more than 180 degrees apart or a chroma is 0; float64 throughout.
    """
    lab1 = np.asarray(lab1, np.float64)
    lab2 = np.asarray(lab2, np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0) ** 7
    G = 0.5 * (1.0 - np.sqrt(c_bar7 / (c_bar7 + 25.0 ** 7)))
    a1p, a2p = (1.0 + G) * a1, (1.0 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0
    zero = (C1p * C2p) == 0
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(zero, 0.0, dh)
    dL, dC = L2 - L1, C2p - C1p
    dH = 2.0 * np.sqrt(C1p * C2p) * np.sin(np.radians(dh / 2.0))
    L_bar, C_bar = (L1 + L2) / 2.0, (C1p + C2p) / 2.0
    hsum = h1p + h2p
    h_bar = np.where(np.abs(h1p - h2p) <= 180.0, hsum / 2.0,
                     np.where(hsum < 360.0, (hsum + 360.0) / 2.0, (hsum - 360.0) / 2.0))
    h_bar = np.where(zero, hsum, h_bar)
    T = (1.0 - 0.17 * np.cos(np.radians(h_bar - 30.0)) + 0.24 * np.cos(np.radians(2.0 * h_bar))
         + 0.32 * np.cos(np.radians(3.0 * h_bar + 6.0)) - 0.20 * np.cos(np.radians(4.0 * h_bar - 63.0)))
    d_theta = 30.0 * np.exp(-(((h_bar - 275.0) / 25.0) ** 2))
    C_bar7 = C_bar ** 7
    R_C = 2.0 * np.sqrt(C_bar7 / (C_bar7 + 25.0 ** 7))
    S_L = 1.0 + 0.015 * (L_bar - 50.0) ** 2 / np.sqrt(20.0 + (L_bar - 50.0) ** 2)
    S_C = 1.0 + 0.045 * C_bar
    S_H = 1.0 + 0.015 * C_bar * T
    R_T = -np.sin(np.radians(2.0 * d_theta)) * R_C
    tl, tc, th = dL / S_L, dC / S_C, dH / S_H
    return np.sqrt(np.maximum(tl * tl + tc * tc + th * th + R_T * tc * th, 0.0))


def rgb_to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB (D65; L in [0, 100]), float32."""
    a = np.asarray(rgb_u8)
    return _rgb_to_lab(a.reshape(-1, 1, 3)).reshape(a.shape)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with feature size ``cell`` pixels."""
    cell = max(1.0, float(cell))
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.random((gh, gw)).astype(np.float32)
    up = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return np.clip(up[:h, :w], 0, 1)


def _fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Fractal (multi-octave) value noise, normalised to zero mean and unit std."""
    acc = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        acc += amp * (_value_noise(rng, h, w, cell) - 0.5)
        amp *= 0.5
        cell = max(1.0, cell / 2.0)
    return (acc - acc.mean()) / max(float(acc.std()), 1e-6)


def _streaks(rng: np.random.Generator, h: int, w: int, angle: float, length: float) -> np.ndarray:
    """Anisotropic noise (brushed streaks) along ``angle`` radians, zero mean, unit std."""
    d = int(math.ceil(math.hypot(h, w))) + 2
    n = rng.standard_normal((d, d)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(1.0, length), sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((d / 2.0, d / 2.0), math.degrees(angle), 1.0)
    n = cv2.warpAffine(n, rot, (d, d), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    oy, ox = (d - h) // 2, (d - w) // 2
    n = n[oy:oy + h, ox:ox + w]
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _vary_appearance(new: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, float]]:
    """A variation of a new appearance (float RGB 0..255): its lightness shifted by 4-10 Lab
    units (down for a near-white object, up for a near-black one), its hue turned by 3-9
    degrees and its chroma scaled by 0.85-1.15, all drawn from ``rng``; returns it and the values."""
    lab = cv2.cvtColor(np.clip(new, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    L0 = float(np.median(lab[..., 0][m]))
    sign = -1.0 if L0 > 85 else 1.0 if L0 < 15 else (1.0 if rng.random() < 0.5 else -1.0)
    dl = sign * float(rng.uniform(4.0, 10.0))
    dh = (1.0 if rng.random() < 0.5 else -1.0) * float(rng.uniform(3.0, 9.0))
    cs = float(rng.uniform(0.85, 1.15))
    t = math.radians(dh)
    a, b = lab[..., 1].copy(), lab[..., 2].copy()
    lab[..., 0] = np.clip(lab[..., 0] + dl, 0.0, 100.0)
    lab[..., 1] = cs * (a * math.cos(t) - b * math.sin(t))
    lab[..., 2] = cs * (a * math.sin(t) + b * math.cos(t))
    return _lab_to_rgb(lab), {"lightness": round(dl, 3), "hue_deg": round(dh, 3), "chroma": round(cs, 3)}


class Shading(NamedTuple):
    """An object's crop split as ``pixel = d * albedo + spec + residual`` (display RGB in [0, 1]).

    ``albedo``: the lit body's colour (3,); ``d``: shading relative to it (about 1 on the lit
    body, less in shadow, HxW); ``spec``: the white part added to every channel alike
    (highlights, white print; HxW); ``residual``: what the two do not explain (colour print,
    noise; HxWx3); ``main``: how much each pixel has the object's main colour (0..1, HxW);
    ``luma``: the pixels' luminance (Rec. 709 weights on the display values, HxW).
    """

    albedo: np.ndarray
    d: np.ndarray
    spec: np.ndarray
    residual: np.ndarray
    main: np.ndarray
    luma: np.ndarray


SAME_COLOUR_DE = 5.0  # CIEDE2000 under which an object's albedo already is the target colour (no_change)
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def split_shading(crop: np.ndarray, m: np.ndarray, ridge: float = 0.05) -> Shading:
    """Split an object's crop (uint8 RGB) into albedo x shading + white + residual (:class:`Shading`).

    The albedo is the median colour of the object's lit body: its core pixels of the commonest
    hue (:func:`_dominant_hue`) between their 60th and 90th luminance percentiles. Each pixel is then fitted as ``d * albedo + w * (1, 1, 1)``,
    ``d, w >= 0``, by least squares with a small ridge on ``w`` (a grey object cannot tell its
    highlights from its own colour by hue: there ``w`` is the luminance above the lit body's
    95th percentile instead, blended by how grey the albedo is).
    """
    P = crop.astype(np.float32) / np.float32(255.0)
    core = erode(m, 2)
    core = core if core.sum() >= 16 else m
    Y = P @ _LUMA
    main = _dominant_hue(crop, core)
    body = core & (main >= 0.6)
    body = body if body.sum() >= max(16, 0.2 * core.sum()) else core
    lo, hi = np.percentile(Y[body], [60, 90])
    top = float(np.percentile(Y[core], 95))
    band = body & (Y >= lo) & (Y <= hi)
    albedo = np.median(P[band if band.sum() >= 8 else body], axis=0).astype(np.float32)
    albedo = np.maximum(albedo, np.float32(1.0 / 255.0))
    rr, r1 = float(albedo @ albedo), float(albedo.sum())
    det = rr * (3.0 + ridge) - r1 * r1
    pr, p1 = P @ albedo, P.sum(axis=2)
    d = ((3.0 + ridge) * pr - r1 * p1) / det
    w = (rr * p1 - r1 * pr) / det
    neg_w = w < 0
    d = np.where(neg_w, pr / rr, d)
    w = np.where(neg_w, 0.0, w)
    neg_d = d < 0
    w = np.where(neg_d, p1 / 3.0, w)
    d = np.where(neg_d, 0.0, d)
    # a grey albedo: its highlights are what rises above the lit body
    sat = float((albedo.max() - albedo.min()) / max(float(albedo.max()), 1e-3))
    beta = float(np.clip(1.0 - sat / 0.2, 0.0, 1.0))
    if beta > 0:
        ya = float(albedo @ _LUMA)
        w_n = np.maximum(Y - max(float(top), ya), 0.0)
        d_n = (Y - w_n) / max(ya, 1e-3)
        d = (1.0 - beta) * d + beta * d_n
        w = (1.0 - beta) * w + beta * w_n
    # the albedo's scale: where the body faces the light (the 95th percentile of its shading
    # off the highlights, a little smoothed against noise) the shading is 1
    plain = body & (w < 0.03)
    d_s = cv2.GaussianBlur(d.astype(np.float32), (0, 0), 1.0)
    s = float(np.percentile(d_s[plain if plain.sum() >= 8 else body], 95))
    s = float(np.clip(s, 0.5, 2.0))
    albedo = albedo * np.float32(s)
    d, w = (d / s).astype(np.float32), w.astype(np.float32)
    residual = P - d[..., None] * albedo - w[..., None]
    return Shading(albedo, d, w, residual.astype(np.float32), main, Y.astype(np.float32))


def _dominant_hue(crop: np.ndarray, core: np.ndarray, radius: float = 0.04) -> np.ndarray:
    """How much each pixel has the object's main colour, 0..1: a Gaussian (sigma ``radius``) of
    the distance of its chromaticity (r, g) / (r + g + b), which shading does not move, to the
    commonest chromaticity of ``core`` (a smoothed 2-D histogram of 0.01 bins,
    each pixel weighted by 0.5 + its saturation, so that a coloured body outweighs a
    same-sized grey label): the object's main colour, not its label or print."""
    P = crop.astype(np.float32) + np.float32(1.0)
    rg = P[..., :2] / P.sum(axis=2, keepdims=True)
    c = rg[core]
    pc = P[core]
    sat = (pc.max(axis=1) - pc.min(axis=1)) / pc.max(axis=1)
    hist, ea, eb = np.histogram2d(c[:, 0], c[:, 1], bins=100, range=[[0, 1], [0, 1]], weights=0.5 + sat)
    hist = cv2.GaussianBlur(hist.astype(np.float32), (0, 0), 1.5)
    i, j = np.unravel_index(int(np.argmax(hist)), hist.shape)
    mode = np.array([(ea[i] + ea[i + 1]) / 2.0, (eb[j] + eb[j + 1]) / 2.0], np.float32)
    return np.exp(-((rg - mode) ** 2).sum(axis=2) / (2.0 * radius * radius)).astype(np.float32)


def _denoise(d: np.ndarray, m: np.ndarray, gain: float) -> np.ndarray:
    """``d`` with its fine noise damped where a lighter target amplifies it ``gain`` times (an
    edge-preserving bilateral filter: folds, features and the silhouette stay)."""
    if gain <= 1.5:
        return d
    ref = max(float(np.median(d[m])), 1e-3)
    smooth = cv2.bilateralFilter(d, 5, 0.15 * ref, 2.0)
    keep = float(np.clip(1.5 / gain, 0.35, 1.0))
    return (smooth + (d - smooth) * keep).astype(np.float32)


def _shoulder(x: np.ndarray, knee: float = 0.85) -> np.ndarray:
    """Identity below ``knee``, then a smooth roll-off toward 1 (highlights that would clip keep a gradient)."""
    over = np.maximum(x - knee, 0.0)
    return np.where(x <= knee, x, knee + (1.0 - knee) * (1.0 - np.exp(-over / (1.0 - knee)))).astype(np.float32)


def _dark_regions(logl: np.ndarray, m: np.ndarray, min_gap: float = 1.1) -> Tuple[np.ndarray, float]:
    """Large regions of a much darker albedo (a black jacket under a white shirt): (soft 0..1
    membership, their log-luminance gap to the rest), or (zeros, 0) when the object is not so.

    Otsu's threshold on the log luminance inside ``m``; two classes at least ``min_gap`` apart
    (x3) and each at least 15% of the object count; the dark class is opened with a disc of 1/12
    of the object's size, so that small dark features (eyes, print, dots) are no region and keep
    their contrast. A smooth shadow on a one-colour object is no second class (no gap)."""
    v = logl[m]
    lo, hi = float(v.min()), float(v.max())
    zero = np.zeros(m.shape, np.float32)
    if hi - lo < min_gap:
        return zero, 0.0
    q = np.clip(np.rint((logl - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(q[m].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = m & (q <= t)
    frac = float(dark.sum()) / float(m.sum())
    gap = float(np.median(logl[m & ~dark]) - np.median(logl[dark])) if 0.15 <= frac <= 0.85 else 0.0
    if gap < min_gap:
        return zero, 0.0
    x0, y0, x1, y1 = mask_bbox(m)
    k = max(3, int(max(x1 - x0, y1 - y0) / 12) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    big = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, disc)
    soft = cv2.GaussianBlur(big.astype(np.float32), (0, 0), max(1.0, k / 6.0))
    return np.where(m, soft, 0.0).astype(np.float32), gap


def _material_shade(sh: Shading, m: np.ndarray, lift: float = 0.7) -> np.ndarray:
    """The shading a material takes from the object: its luminance over its 75th percentile
    (all of it: a face or a print in a golden statue keeps its features), large regions of a
    much darker albedo brought ``lift`` of the way up to the rest (:func:`_dark_regions`: a
    black jacket in a golden statue is gold, its folds kept), what stays below 0.5 lifted a
    little more (``0.5 * (r / 0.5) ** 0.5``) and capped at 1.6."""
    logl = np.log(np.maximum(sh.luma, 1e-3)).astype(np.float32)
    region, gap = _dark_regions(logl, m)
    logl = logl + np.float32(lift * gap) * region
    r = np.exp(logl - float(np.percentile(logl[m], 75)))
    r = np.where(r < 0.5, 0.5 * np.sqrt(np.maximum(r, 0.0) / 0.5), r)
    return np.minimum(r, 1.6).astype(np.float32)


class Recolor(GTPipeline):
    """Change the referred object's colour (its shading and detail kept) or material (procedural texture)."""

    name = "classical-attribute"
    edit_types = ("attribute",)
    needs_exemplar = False

    def __init__(
        self,
        method: str = "shading",
        shading_gain: float = 1.0,
        texture_keep: float = 0.15,
        edge_feather_px: int = 2,
        dilate_px: int = 2,
        texture_strength: float = 1.0,
        protect_others: bool = True,
        lit_level: float = 0.9,
        residual_keep: float = 0.6,
    ) -> None:
        """``method``: ``shading`` (default; :func:`split_shading`: the object's shading, highlights
        and detail kept, its albedo replaced) or ``lab`` (the former recolouring: Lab lightness
        moved to the target's, chroma set; ``shading_gain``, ``texture_keep`` are its own).
        ``lit_level``: the target's lit body is ``lit_level`` x its albedo (the source's lit body
        is taken as its albedo at that level); ``residual_keep``: how much of what the shading
        split leaves (colour print, grain) stays. ``protect_others``: never paint the other
        annotated objects (``base.protected_region``): the recoloured rim stops at an object in
        front of the source."""
        if method not in ("shading", "lab"):
            raise ValueError(f"unknown recolouring method {method!r}: expected 'shading' or 'lab'")
        self.params: Dict[str, Any] = {
            "method": method, "shading_gain": float(shading_gain), "texture_keep": float(texture_keep),
            "edge_feather_px": int(edge_feather_px), "dilate_px": int(dilate_px),
            "texture_strength": float(texture_strength), "protect_others": bool(protect_others),
            "lit_level": float(lit_level), "residual_keep": float(residual_keep),
        }

    def check_inputs(self, request: EditRequest) -> None:
        """Base checks, plus: the target is a known colour or material."""
        super().check_inputs(request)
        t = _normalise_attribute(request.edit_target)
        if t not in COLOURS and t not in MATERIALS:
            raise PipelineError(
                "pipeline_error",
                f"unknown attribute {request.edit_target!r} (colours: {', '.join(COLOURS)}; "
                f"materials: {', '.join(MATERIALS)})",
            )

    def generate(self, request: EditRequest) -> PipelineOutput:
        """Steps: 1 check; 2 recolour / texture the object crop; 3 composite, M_e, paste back, check."""
        # 1. check
        self.check_inputs(request)
        p = self.params
        image, mask = np.ascontiguousarray(request.image), np.asarray(request.mask).astype(bool)
        target = _normalise_attribute(request.edit_target)
        rng = np.random.default_rng(request.seed)
        margin = 8
        ys, xs = box_slices(image.shape, mask_bbox(mask), margin)
        crop, m = image[ys, xs], mask[ys, xs]
        # 2. new appearance of the object crop (float RGB 0..255)
        shading = split_shading(crop, m) if p["method"] == "shading" else None
        if shading is not None and target in COLOURS:
            have = rgb_to_lab(np.clip(np.rint(shading.albedo * 255.0), 0, 255).astype(np.uint8))
            if float(ciede2000(have, rgb_to_lab(np.asarray(COLOURS[target], np.uint8)))) < SAME_COLOUR_DE:
                raise PipelineError("no_change", f"the object is already {target} (its lit body's colour is the target's)")
        if target in COLOURS:
            new = self._colour(crop, m, COLOURS[target]) if shading is None else self._colour_shading(shading, m, COLOURS[target])
            kind = "colour"
        else:
            new = self._material(image, mask, (ys, xs), crop, m, target, rng, shading)
            kind = "material"
        extra: Dict[str, Any] = {}
        vrng = variation_rng(request)
        if vrng is not None:  # candidates after the first: a seeded shift of the new appearance
            new, extra["variation"] = _vary_appearance(new, m, vrng)
        # 3. composite through an edge-aware alpha, M_e = dilate(mask), exact paste-back
        a = self._alpha(crop, m)[..., None]
        cf = crop.astype(np.float32)
        mixed = np.clip(np.rint(cf + (new - cf) * a), 0, 255).astype(np.uint8)
        edited = image.copy()
        edited[ys, xs] = mixed
        m_e = edit_mask(mask, None, p["dilate_px"])
        protect = protected_region(request) if p["protect_others"] else None
        return finish_output(image, edited, m_e, 0, {**p, "attribute": target, "kind": kind, **extra}, protect=protect)

    def _alpha(self, crop: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Where the new appearance is applied: 1 inside the object, a feathered rim at its edge,
        and, within ``dilate_px`` outside the mask, the pixels whose chroma matches the object's.

        Mask polygons rarely follow the object exactly: without the outside part a ring of the
        old colour stays around the recoloured object; without the similarity weight the rim
        would recolour the background.
        """
        p = self.params
        inside = feather_alpha(m, p["edge_feather_px"])
        if p["dilate_px"] <= 0:
            return inside
        lab = _rgb_to_lab(crop)
        core = erode(m, 2)
        core = core if core.sum() >= 16 else m
        ab0 = np.median(lab[core][:, 1:], axis=0)
        d2 = ((lab[..., 1:] - ab0) ** 2).sum(axis=2)
        sim = np.exp(-d2 / (2.0 * 12.0 ** 2)).astype(np.float32)
        dist_out = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 3)
        falloff = np.clip(1.0 - (dist_out - 1.0) / float(p["dilate_px"]), 0.0, 1.0)
        band = dilate(m, p["dilate_px"]) & ~m
        alpha = np.where(m, np.maximum(inside, sim), 0.0).astype(np.float32)
        alpha[band] = (sim * falloff)[band]
        return alpha

    # -- colour ------------------------------------------------------------------------------
    def _colour_shading(self, sh: Shading, m: np.ndarray, rgb: Tuple[int, int, int]) -> np.ndarray:
        """The object's albedo replaced by the target's: ``d * lit_level * target + spec +
        residual_keep * (1 - main ** 0.25) * residual``, through a highlight shoulder (float RGB 0..255).

        Shading, highlights and detail are the object's own, so a white target keeps its folds
        and a black one its highlights; lighter targets damp the noise they amplify."""
        p = self.params
        target = np.asarray(rgb, np.float32) / np.float32(255.0)
        lit = target * np.float32(p["lit_level"])
        gain = float((lit @ _LUMA) / max(float(sh.albedo @ _LUMA), 1e-3))
        d = _denoise(sh.d, m, gain)
        # print and features of other hues keep some of their colour; the body (and its shadows,
        # whose chromaticity drifts) none: main ** 0.25 is the same Gaussian twice as wide
        keep = np.float32(p["residual_keep"]) * (1.0 - sh.main ** np.float32(0.25))
        new = d[..., None] * lit + sh.spec[..., None] + keep[..., None] * sh.residual
        return _shoulder(np.maximum(new, 0.0)) * np.float32(255.0)

    def _colour(self, crop: np.ndarray, m: np.ndarray, rgb: Tuple[int, int, int]) -> np.ndarray:
        """``method: lab``: relative shading kept, lightness and chroma moved to the target's."""
        g = self.params["shading_gain"]
        lab = _rgb_to_lab(crop)
        L, A, B = lab[..., 0], lab[..., 1], lab[..., 2]
        Lt, At, Bt = _rgb_to_lab(np.array([[rgb]], np.uint8))[0, 0]
        Lm = L[m]
        if Lt >= 50:  # light target: keep relative "darkness", so highlights stay highlights
            d_ref = max(float(np.median(100.0 - Lm)), 1.0)
            ratio = np.clip((100.0 - L) / d_ref, 0.0, 4.0)
            L_new = 100.0 - (100.0 - Lt) * ratio ** g
        else:  # dark target: keep relative lightness, so shadows stay shadows
            l_ref = max(float(np.median(Lm)), 1.0)
            ratio = np.clip(L / l_ref, 0.0, 4.0)
            L_new = Lt * ratio ** g
        L_new = np.clip(L_new, 0.0, 100.0)
        chroma_t = math.hypot(float(At), float(Bt))
        if chroma_t < 8.0:  # white / black / gray: neutral
            A_new = np.full_like(A, At)
            B_new = np.full_like(B, Bt)
        else:  # chroma fades toward black and white, as a real dyed surface does
            c = np.minimum(np.minimum(L_new / max(Lt, 1.0), (100.0 - L_new) / max(100.0 - Lt, 1.0)), 1.0)
            c = np.clip(c, 0.0, 1.0) ** 0.6
            A_new, B_new = At * c, Bt * c
        keep = self.params["texture_keep"] if chroma_t >= 8.0 else 0.0  # neutral targets stay neutral
        if keep > 0:  # a little of the object's own colour variation (pattern, print)
            A_new = A_new + keep * (A - float(np.median(A[m])))
            B_new = B_new + keep * (B - float(np.median(B[m])))
        return _lab_to_rgb(np.dstack([L_new, A_new, B_new]))

    # -- materials ---------------------------------------------------------------------------
    def _material(
        self, image: np.ndarray, mask: np.ndarray, window: Tuple[slice, slice], crop: np.ndarray, m: np.ndarray,
        material: str, rng: np.random.Generator, shading: Optional[Shading] = None,
    ) -> np.ndarray:
        """Procedural texture of ``material`` modulated by the object's shading (float RGB).

        ``shading`` (``method: shading``): the texture is lit by the object's own shading, its
        albedo contrasts compressed (:func:`_material_shade`), and its highlights are the
        object's own; without it (``method: lab``, the former recolouring) by the luminance
        over its median, clipped to [0.25, 2], with highlights at the top percentiles.
        """
        h, w = m.shape
        x0, y0, x1, y1 = mask_bbox(m)
        size = float(max(x1 - x0, y1 - y0, 8))
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
        if shading is None:
            ref = max(float(np.median(gray[m])), 8.0)
            shade = np.clip(gray / ref, 0.25, 2.0)  # relative shading of the object
        else:
            shade = _material_shade(shading, m)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = float(rng.uniform(0, math.pi))
        u = xx * math.cos(angle) + yy * math.sin(angle)  # along the grain / streaks
        v = -xx * math.sin(angle) + yy * math.cos(angle)  # across
        k = self.params["texture_strength"]
        lum = cv2.GaussianBlur(gray, (0, 0), max(1.0, size / 100.0)) / 255.0  # smooth: no speckled highlights

        def highlights(lo_pct: float) -> np.ndarray:
            """Where the surface shines, 0..1: ``lab``: the top luminance percentiles; ``shading``:
            the object's own highlights (its white part)."""
            if shading is None:
                hi = np.percentile(lum[m], [lo_pct, 99.5])
                return np.clip((lum - hi[0]) / max(hi[1] - hi[0], 1e-3), 0, 1)
            sp = cv2.GaussianBlur(shading.spec, (0, 0), max(1.0, size / 100.0))
            return np.clip(sp / max(float(np.percentile(sp[m], 99.5)), 0.08), 0, 1)

        if material == "wooden":
            period = size / float(rng.uniform(5.0, 9.0))
            warp = _fbm(rng, h, w, size / 3.0, 3)
            t = v / period + 0.35 * k * warp + 0.08 * np.sin(u / (0.5 * size) * 2 * math.pi)
            rings = (0.5 + 0.5 * np.sin(2 * math.pi * t)) ** 3
            grain = _streaks(rng, h, w, angle, size / 8.0)
            light, dark = np.array([178, 122, 70], np.float32), np.array([96, 56, 28], np.float32)
            tone = np.clip(0.75 * rings + 0.08 * k * grain, 0, 1)[..., None]
            base = light + (dark - light) * tone
            out = base * (shade ** 0.9)[..., None]
        elif material in ("metallic", "golden"):
            col = np.array([176, 179, 186] if material == "metallic" else [214, 168, 58], np.float32)
            streak = _streaks(rng, h, w, angle, size / 4.0)
            s = shade ** (1.6 if shading is None else 1.15)  # harder, more contrasted shading than a matte surface
            out = col * (s * (1.0 + 0.07 * k * streak))[..., None]
            spec = highlights(80) ** 1.5
            out = out + (255.0 - out) * (0.85 * spec)[..., None]
            # environment-like broad reflection bands
            band = 0.5 + 0.5 * np.sin(2 * math.pi * (v / (0.6 * size) + 0.3 * _fbm(rng, h, w, size / 2.0, 2)))
            out = out * (0.85 + 0.3 * band)[..., None]
        elif material == "marble":
            turb = _fbm(rng, h, w, size / 1.5, 4)
            veins = np.abs(np.sin(2 * math.pi * (u / (0.9 * size) + 0.45 * k * turb)))
            strength = 0.4 + 0.6 * _value_noise(rng, h, w, size / 2.0)  # veins fade in and out
            vein = cv2.GaussianBlur((1.0 - veins) ** 14, (0, 0), 0.8) * strength
            mottle = _fbm(rng, h, w, size / 6.0, 3)
            base = np.array([234, 231, 224], np.float32) + 6.0 * mottle[..., None]
            out = base - (vein * 0.55 * k)[..., None] * np.array([130, 128, 120], np.float32)
            out = out * (shade ** 0.7)[..., None]
            spec = highlights(85)
            out = out + (255.0 - out) * (0.5 * spec)[..., None]
        elif material == "glass":
            ys, xs = window
            behind = inpaint(image, dilate(mask, 3), 5)[ys, xs].astype(np.float32)
            lab = _rgb_to_lab(crop)
            lab[..., 0] = 40.0 + 0.6 * lab[..., 0]
            lab[..., 1:] *= 0.25
            body = _lab_to_rgb(lab)
            out = 0.55 * behind + 0.45 * body
            dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
            rim = np.exp(-dist / max(1.5, size / 40.0))
            spec = highlights(85)
            out = out + (255.0 - out) * np.clip(0.45 * rim + 0.7 * spec, 0, 1)[..., None]
        elif material == "stone":
            tint = rng.uniform(-6, 6, 3).astype(np.float32)
            blotch = _fbm(rng, h, w, size / 4.0, 4)
            speck = rng.standard_normal((h, w)).astype(np.float32)
            base = np.array([132, 129, 122], np.float32) + tint
            out = base * (1.0 + 0.12 * k * blotch)[..., None] + (10.0 * k * speck)[..., None]
            out = out * (shade ** 1.0)[..., None]
        else:  # pragma: no cover - check_inputs rejects anything else
            raise PipelineError("pipeline_error", f"unknown material {material!r}")
        return np.clip(out, 0, 255).astype(np.float32)
