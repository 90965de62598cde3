"""A deterministic synthetic mini-RefCOCO in the real "refer" layout: the default data of `build`.

Why: `refcoco-edit build` must run end to end on any laptop without the 13 GB COCO download, and the
tests need real-format data with look-alike objects, occlusions and crowd masks. So this module
draws photo-like table-top scenes with numpy/cv2 (textured wall and table, shaded objects with
highlights and soft shadows, vignette, sensor noise) and writes them exactly as the refer toolkit
ships RefCOCO, RefCOCO+ and RefCOCOg::

    out_dir/
      refcoco/instances.json   refcoco/refs(unc).p   refcoco/refs(google).p
      refcoco+/instances.json  refcoco+/refs(unc).p
      refcocog/instances.json  refcocog/refs(umd).p  refcocog/refs(google).p
      images/COCO_train2014_{image_id:012d}.jpg

* ``instances.json``: COCO style {info, licenses, images, annotations, categories}; all 80 COCO
  categories with their real ids; polygons (a list of flat [x1, y1, x2, y2, ...] lists, two of them
  when an occluder splits an object) or, for ``iscrowd=1``, an uncompressed column-major RLE.
  The three datasets share the same images and annotations (same file content).
* Scenes: 320-640 px per side, 3-6 objects on a table (plus, in some, a potted plant that no
  ref points at); at least two look-alikes of one category in every image; a tall object in front
  of a wide one in every sixth image (a two-part polygon); a shelf of books on the wall in every
  sixteenth one (its visible part is one ``iscrowd=1`` "book" annotation, never a ref).
* ``refs(*).p``: a protocol-2 pickle of a list of plain dicts, one per referred object:
  {ref_id, ann_id, image_id, split, sent_ids, sentences: [{tokens, raw, sent_id, sent}],
  category_id, file_name}. Splits are per image. RefCOCO expressions are short and may use
  location words; RefCOCO+ ones use appearance only (colour, size, pattern); RefCOCOg ones are
  longer sentences. Every expression identifies its object among the same-category objects of
  its image (positions by x-order, colours only when they tell the objects apart).

Every random choice comes from ``numpy.random.default_rng([seed, image_index, stream])``, so the
first N images are the same whatever ``num_images`` is, and two runs give byte-identical files.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import InputError
from .vocab import COCO_CATEGORIES, COCO_SUPERCATEGORIES, COLOURS

__all__ = ["DEFAULT_NUM_IMAGES", "DEMO_VERSION", "MARKER_NAME", "LOCATION_WORDS", "write_demo", "ensure_demo"]

DEFAULT_NUM_IMAGES = 48
DEMO_VERSION = 1  # bump when the generator's output changes: ensure_demo then rewrites old demos
MARKER_NAME = ".demo-complete.json"
FIRST_IMAGE_ID = 1000
MAX_IMAGES = 100_000  # keeps the per-image id blocks below from colliding
JPEG_QUALITY = 92

# dataset -> split schemes written as refs({scheme}).p
DATASETS: Dict[str, Tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
_SENT_ID_BASE = {"refcoco": 0, "refcoco+": 10_000_000, "refcocog": 20_000_000}
# Deterministic per-image split cycles (about 60% train; every split present from 8 images on).
_SPLIT_CYCLES = {
    "unc": ("train", "val", "train", "testA", "train", "train", "testB", "train"),
    "google": ("train", "train", "val", "train", "test"),
    "umd": ("train", "val", "train", "test", "train"),
}

_CAT_IDS = {name: cid for cid, name in COCO_CATEGORIES.items()}
_SUPER_OF = {cid: sup for sup, ids in COCO_SUPERCATEGORIES.items() for cid in ids}

# Drawable categories: (height as a fraction of min(W, H), width / height).
_SIZE: Dict[str, Tuple[float, float]] = {
    "cup": (0.21, 0.95), "bottle": (0.37, 0.34), "sports ball": (0.20, 1.0), "apple": (0.18, 0.95),
    "orange": (0.17, 1.05), "bowl": (0.145, 2.2), "vase": (0.32, 0.44), "book": (0.28, 0.78),
    "donut": (0.15, 1.67), "teddy bear": (0.34, 0.8), "potted plant": (0.40, 0.62),
}
_REF_CATS = ("cup", "bottle", "sports ball", "apple", "orange", "bowl", "vase", "book", "donut", "teddy bear")
_CAT_COLOURS: Dict[str, Tuple[Optional[str], ...]] = {
    "cup": ("red", "blue", "white", "yellow", "green", "black", "pink"),
    "bottle": ("green", "brown", "blue", "white"),
    "sports ball": ("red", "blue", "yellow", "orange", "white", "green", "purple"),
    "apple": ("red", "green", "yellow"),
    "orange": (None,),  # always orange: colour never tells two oranges apart
    "bowl": ("white", "blue", "red", "yellow", "green", "gray"),
    "vase": ("blue", "white", "red", "purple", "green", "pink", "yellow"),
    "book": ("red", "blue", "green", "yellow", "black", "purple", "orange"),
    "donut": ("pink", "brown", "white"),
    "teddy bear": ("brown", "white", "pink", "gray"),
}
_PATTERNS: Dict[str, Tuple[str, ...]] = {
    "cup": ("plain", "striped"), "sports ball": ("plain", "striped"), "bottle": ("plain", "label"),
    "donut": ("plain", "sprinkles"), "vase": ("plain", "striped"),
}
_WIDE_BACK = ("bowl", "donut")      # occluded objects of the forced occlusions
_TALL_FRONT = ("bottle", "vase")   # their occluders: they split the back object in two

_P = 3  # padding of an object's render crop (px)


# ----------------------------------------------------------------------------------------------
# Scene model
# ----------------------------------------------------------------------------------------------
@dataclass
class _Obj:
    """One drawn object: its attributes (for the expressions) and its placement/render state."""

    cat: str
    colour: Optional[str]
    pattern: str
    jitter: float
    group: int = -1            # index of its look-alike group, -1 for single objects
    cx: float = 0.0
    base: float = 0.0          # y of the contact point with the table
    w: int = 0
    h: int = 0
    placed: bool = False
    x0: int = 0                # crop origin in the image
    y0: int = 0
    mask: Optional[np.ndarray] = None    # crop bool mask (full object)
    alpha: Optional[np.ndarray] = None   # crop float alpha (antialiased)
    rgb: Optional[np.ndarray] = None     # crop float colour
    visible: Optional[np.ndarray] = None  # image bool mask of the visible part
    full_area: float = 0.0
    vis_area: float = 0.0
    ann: Optional[Dict[str, Any]] = None

    @property
    def x_lo(self) -> float:
        return self.cx - self.w / 2

    @property
    def x_hi(self) -> float:
        return self.cx + self.w / 2


@dataclass
class _Scene:
    index: int
    width: int
    height: int
    horizon: float
    surface: str               # wood | tiles | cloth
    side: int                  # -1: light from the left, +1: from the right
    objs: List[_Obj] = field(default_factory=list)
    shelf: bool = False
    occlusion_pair: Optional[Tuple[_Obj, _Obj]] = None


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _plan(seed: int, index: int) -> _Scene:
    """Choose the image size, look-alike groups, colours, patterns and positions of one scene."""
    rng = np.random.default_rng([seed, index, 0])
    W, H = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    scene = _Scene(index, W, H, horizon=float(H * rng.uniform(0.30, 0.46)),
                   surface=_pick(rng, ("wood", "wood", "wood", "tiles", "cloth")),
                   side=int(_pick(rng, (-1, 1))))
    scene.shelf = index % 16 == 5              # a crowd annotation (a row of books on a shelf)
    occlude = index % 6 == 2                   # forced partial occlusion -> multi-part polygon
    plant = index % 4 == 1                     # a non-ref background object
    pool = [c for c in _REF_CATS if not (scene.shelf and c == "book")]
    n_obj = int(rng.integers(3, 7))

    groups: List[Tuple[str, int]] = []
    if occlude:
        a = _pick(rng, _WIDE_BACK)
        groups.append((a, 3 if rng.random() < 0.3 else 2))
        front = _pick(rng, _TALL_FRONT)
        groups.append((front, 2 if rng.random() < 0.5 else 1))
    else:
        a = _pick(rng, pool)
        groups.append((a, 3 if rng.random() < 0.35 else 2))
        rest = n_obj - groups[0][1]
        if rest >= 2 and rng.random() < 0.55:
            b = _pick(rng, [c for c in pool if c != a])
            groups.append((b, 3 if rest >= 3 and rng.random() < 0.3 else 2))
    used = {c for c, _ in groups}
    n_rest = max(0, n_obj - sum(k for _, k in groups))
    singles = [c for c in pool if c not in used]
    order = rng.permutation(len(singles))
    groups += [(singles[int(j)], 1) for j in order[:n_rest]]

    objs: List[_Obj] = []
    for gi, (cat, k) in enumerate(groups):
        members = _group_members(rng, cat, k, gi if k >= 2 else -1)
        objs.extend(members)
    if plant:
        objs.append(_Obj("potted plant", "green", "plain", float(rng.uniform(0.9, 1.1))))
    if occlude:
        back = next(o for o in objs if o.cat in _WIDE_BACK)
        front = next(o for o in objs if o.cat in _TALL_FRONT)
        back.jitter = max(back.jitter, 1.1)
        scene.occlusion_pair = (back, front)
    pair = scene.occlusion_pair
    for attempt in range(4):   # crowded small images: retry with smaller objects
        for o in objs:
            o.placed = False
        scene.objs, scene.occlusion_pair = list(objs), pair
        groups_before = [o.group for o in objs]
        _place(scene, rng, 0.85 ** attempt)
        if len(scene.objs) >= 3 and any(o.group >= 0 for o in scene.objs):
            break
        for o, g in zip(objs, groups_before):
            o.group = g
    return scene


def _group_members(rng: np.random.Generator, cat: str, k: int, group: int) -> List[_Obj]:
    """k objects of one category: same colour, all different, or mixed; sometimes one bigger."""
    choices = _CAT_COLOURS[cat]
    if len(choices) == 1 or k == 1:
        cols = [_pick(rng, choices)] * k
    else:
        mode = _pick(rng, ("same", "distinct", "distinct", "mixed"))
        if mode == "same" or (mode == "mixed" and k == 2):
            cols = [_pick(rng, choices)] * k
        elif mode == "distinct":
            idx = rng.permutation(len(choices))[:k]
            cols = [choices[int(j)] for j in idx]
        else:
            idx = rng.permutation(len(choices))[:2]
            cols = [choices[int(idx[0])], choices[int(idx[0])], choices[int(idx[1])]]
            perm = rng.permutation(3)
            cols = [cols[int(j)] for j in perm]
    pats = _PATTERNS.get(cat, ("plain",))
    out = []
    for c in cols:
        pat = pats[1] if len(pats) > 1 and rng.random() < 0.35 else "plain"
        out.append(_Obj(cat, c, pat, float(rng.uniform(0.9, 1.08)), group=group))
    if k >= 2 and rng.random() < 0.45:
        out[int(rng.integers(k))].jitter *= 1.45
    return out


def _place(scene: _Scene, rng: np.random.Generator, scale: float = 1.0) -> None:
    """Rejection-sample positions: inside the table, boxes (almost) disjoint, look-alikes apart in x."""
    W, H, hz = scene.width, scene.height, scene.horizon
    u = min(W, H)
    bmin, bmax = hz + 0.2 * (H - hz), H - _P - 1
    pair_back, pair_front = scene.occlusion_pair or (None, None)
    order = list(scene.objs)
    if pair_back is not None:
        order.remove(pair_back)
        order.remove(pair_front)
        order = [pair_back, pair_front] + order
    placed: List[_Obj] = []
    for o in order:
        hf, aspect = _SIZE[o.cat]
        for attempt in range(90):
            shrink = 0.88 ** (attempt // 15)
            paired = o is pair_front and pair_back is not None and pair_back.placed and attempt < 45
            if paired:
                base = pair_back.base + rng.uniform(0.04, 0.09) * H
            else:
                base = rng.uniform(bmin, bmax)
            s = 0.8 + 0.38 * (base - hz) / (H - hz)
            h = int(round(hf * u * s * o.jitter * shrink * scale))
            w = int(round(h * aspect))
            if paired:
                cx = pair_back.cx + rng.uniform(-0.12, 0.12) * pair_back.w
                if w > 0.55 * pair_back.w:
                    continue
            else:
                lo, hi = _P + w / 2, W - _P - w / 2
                if hi <= lo:
                    continue
                cx = rng.uniform(lo, hi)
            cx = float(round(cx))
            base = float(round(base))
            x_lo, x_hi, top = cx - w / 2, cx + w / 2, base - h
            if x_lo < _P or x_hi > W - _P or top < _P or base > H - _P:
                continue
            if _fits(o, (x_lo, top, x_hi, base), placed, scene.occlusion_pair):
                o.cx, o.base, o.w, o.h, o.placed = cx, base, w, h, True
                placed.append(o)
                break
    # look-alike groups that lost members below two become single (non-ref) objects
    for g in {o.group for o in scene.objs if o.group >= 0}:
        members = [o for o in scene.objs if o.group == g and o.placed]
        if len(members) < 2:
            for o in members:
                o.group = -1
    scene.objs = [o for o in scene.objs if o.placed]
    if pair_front is not None and not (pair_front.placed and pair_back.placed):
        scene.occlusion_pair = None


def _fits(o: _Obj, box: Tuple[float, float, float, float], placed: List[_Obj],
          pair: Optional[Tuple[_Obj, _Obj]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for p in placed:
        if pair is not None and {id(o), id(p)} == {id(pair[0]), id(pair[1])}:
            continue
        px0, py0, px1, py1 = p.x_lo, p.base - p.h, p.x_hi, p.base
        if p.cat == o.cat and not (x1 + 6 <= px0 or px1 + 6 <= x0):
            return False   # look-alikes never share an x-range: left/middle/right stay clear
        iw, ih = min(x1, px1) - max(x0, px0), min(y1, py1) - max(y0, py0)
        if iw > 0 and ih > 0 and iw * ih > 0.05 * min(area, (px1 - px0) * (py1 - py0)):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Rendering helpers
# ----------------------------------------------------------------------------------------------
def _unit3(x: Any, y: Any, z: Any) -> Tuple[Any, Any, Any]:
    n = np.sqrt(x * x + y * y + z * z) + 1e-6
    return x / n, y / n, z / n


def _shade(alb: Any, n: Tuple[np.ndarray, np.ndarray, np.ndarray], light: Tuple[float, float, float],
           amb: float = 0.32, spec: float = 0.3, shin: float = 24.0) -> np.ndarray:
    """Lambert diffuse + Blinn-Phong highlight: albedo (3,) or (h, w, 3) -> shaded colour."""
    nx, ny, nz = n
    lx, ly, lz = light
    ndl = np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)
    hx, hy, hz = _unit3(lx, ly, lz + 1.0)
    ndh = np.clip(nx * hx + ny * hy + nz * hz, 0.0, 1.0)
    diff = (amb + (1.0 - amb) * ndl).astype(np.float32)
    s = (spec * ndh ** shin).astype(np.float32)
    return np.asarray(alb, np.float32) * diff[..., None] + s[..., None]


def _height_normals(h: np.ndarray, strength: float = 1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = np.asarray(h, np.float32)
    gx = cv2.Sobel(h, cv2.CV_32F, 1, 0, ksize=3) * (strength / 8.0)
    gy = cv2.Sobel(h, cv2.CV_32F, 0, 1, ksize=3) * (strength / 8.0)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    return -gx * inv, -gy * inv, inv


def _ellipsoid(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float,
               ang: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Height (a half ellipsoid) and mask of a possibly rotated ellipse."""
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = xx - cx, yy - cy
    a = (dx * c + dy * s) / rx
    b = (-dx * s + dy * c) / ry
    e = 1.0 - a * a - b * b
    return np.sqrt(np.clip(e, 0.0, None)) * min(rx, ry), e > 0


def _blob(xx: np.ndarray, yy: np.ndarray, parts: Sequence[Tuple[float, ...]]) -> Tuple[np.ndarray, np.ndarray]:
    """Z-buffer union of ellipsoid parts (cx, cy, rx, ry, ang, z0): height map and part index."""
    hmap = np.zeros(xx.shape, np.float32)
    idx = np.full(xx.shape, -1, np.int16)
    for k, (cx, cy, rx, ry, ang, z0) in enumerate(parts):
        h, m = _ellipsoid(xx, yy, cx, cy, rx, ry, ang)
        hz = h + z0
        upd = m & ((hz > hmap) | (idx < 0))
        hmap[upd] = hz[upd]
        idx[upd] = k
    return hmap, idx


def _lathe(xx: np.ndarray, yy: np.ndarray, cx: float, y_top: float, y_bot: float, ts: Sequence[float],
           rs: Sequence[float], R: float, foot: float = 0.16) -> Tuple[np.ndarray, Tuple[np.ndarray, ...], np.ndarray]:
    """A surface of revolution seen from the front: mask, normals and the height parameter t per row.

    ``rs`` is the radius profile (fraction of R) at heights ``ts`` (0 = bottom, 1 = top); the
    bottom edge is an ellipse so that the object stands on the table in perspective.
    """
    rows = np.arange(xx.shape[0], dtype=np.float32)
    t = (y_bot - rows) / max(1.0, y_bot - y_top)
    r = np.interp(t, ts, rs, left=0.0, right=0.0).astype(np.float32) * R
    k = max(1, int(round(0.04 * (y_bot - y_top))))
    if k > 1:  # smooth the piecewise-linear profile (box filter twice ~ a triangle kernel)
        ker = np.ones(k, np.float32) / k
        r = np.convolve(np.convolve(r, ker, mode="same"), ker, mode="same").astype(np.float32)
    eb = foot * R * 0.5
    low = rows > y_bot - eb
    r[low] *= np.sqrt(np.clip(1.0 - ((rows[low] - (y_bot - eb)) / eb) ** 2, 0.0, 1.0))
    r[rows > y_bot] = 0.0
    dr = np.clip(np.gradient(r), -3.0, 3.0)
    rr = np.maximum(r, 1e-3)[:, None]
    nx = (xx - cx) / rr
    mask = (np.abs(nx) <= 1.0) & (r[:, None] > 0.5)
    nxc = np.clip(nx, -1.0, 1.0)
    nz = np.sqrt(1.0 - nxc * nxc)
    ny = np.broadcast_to(-dr[:, None], nx.shape)
    return mask, _unit3(nxc, ny, nz), np.broadcast_to(t[:, None], nx.shape)


def _opening(xx: np.ndarray, yy: np.ndarray, cx: float, yc: float, rx: float, ry: float,
             rim: float) -> Tuple[np.ndarray, np.ndarray]:
    outer = ((xx - cx) / rx) ** 2 + ((yy - yc) / ry) ** 2 <= 1.0
    irx, iry = max(1.0, rx - rim), max(1.0, ry - rim * ry / rx)
    inner = ((xx - cx) / irx) ** 2 + ((yy - yc) / iry) ** 2 <= 1.0
    return outer, inner


def _rgb(name: Optional[str], rng: np.random.Generator, default: Tuple[int, int, int] = (235, 125, 25)) -> np.ndarray:
    base = np.asarray(COLOURS[name] if name else default, np.float32) / 255.0
    # brightness varies, hue barely: a "white" cup must not turn lavender
    jitter = rng.uniform(0.93, 1.05) * rng.uniform(0.985, 1.015, 3)
    return np.clip(base * jitter.astype(np.float32), 0.02, 0.97)


def _contrast(name: Optional[str]) -> np.ndarray:
    """A band colour that stands out on an object of colour ``name``."""
    return np.asarray((0.85, 0.15, 0.15) if name in ("white", "yellow", "pink") else (0.95, 0.95, 0.93), np.float32)


def _fine_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma: float = 0.8) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    return cv2.GaussianBlur(n, (0, 0), sigma)


# ----------------------------------------------------------------------------------------------
# Object renderers: each fills an (h + 2P, w + 2P) crop and returns (mask, colour)
# ----------------------------------------------------------------------------------------------
def _render_object(o: _Obj, rng: np.random.Generator, light: Tuple[float, float, float], side: int) -> None:
    bh, bw = o.h + 2 * _P, o.w + 2 * _P
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    mask, col = _RENDERERS[o.cat](o, rng, xx, yy, light, side)
    # ambient occlusion towards the contact with the table
    y_bot = _P + o.h
    ao = 1.0 - 0.22 * np.clip((yy - (y_bot - 0.08 * o.h)) / max(1.0, 0.08 * o.h), 0.0, 1.0)
    col = np.clip(col * ao[..., None], 0.0, 1.0)
    m = mask.astype(np.float32)
    # premultiplied soft edge: a 1-px antialiased silhouette without dark fringes
    a = cv2.GaussianBlur(m, (3, 3), 0.6)
    prem = cv2.GaussianBlur(col * m[..., None], (3, 3), 0.6)
    o.rgb = prem / np.maximum(a, 1e-4)[..., None]
    o.alpha = a
    o.mask = mask
    o.x0 = int(round(o.cx - o.w / 2)) - _P
    o.y0 = int(round(o.base - o.h)) - _P


def _r_cup(o: _Obj, rng: np.random.Generator, xx, yy, light, side) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R = w / 2.55
    hs = int(_pick(rng, (-1, 1)))
    cx = _P + (R if hs > 0 else w - R)
    ry = 0.26 * R
    yc, y_bot = _P + ry, _P + h
    alb = _rgb(o.colour, rng)
    # handle (behind the body): a thick ring shaded as a tube
    hmask = np.zeros(xx.shape, np.uint8)
    th = max(2, int(round(0.17 * R)))
    hcx = int(round(cx + hs * R * 0.98))
    cv2.ellipse(hmask, (hcx, int(round(_P + 0.5 * h))), (max(2, int(0.42 * R)), max(3, int(0.3 * h))),
                0, 0, 360, 1, th)
    dt = cv2.distanceTransform(hmask, cv2.DIST_L2, 3)
    tube = np.sqrt(np.clip(dt * (th - dt), 0, None))
    col = _shade(alb, _height_normals(tube, 2.0), light, spec=0.35)
    mask = hmask > 0
    body, n, t = _lathe(xx, yy, cx, yc, y_bot, (0.0, 1.0), (0.82, 1.0), R, foot=0.3)
    balb = np.broadcast_to(alb, xx.shape + (3,)).copy()
    if o.pattern == "striped":
        band = (t > 0.42) & (t < 0.6)
        balb[band] = _contrast(o.colour)
    bc = _shade(balb, n, light, spec=0.45, shin=30)
    col[body] = bc[body]
    mask |= body
    outer, inner = _opening(xx, yy, cx, yc, R, ry, max(1.5, 0.07 * R))
    rim = outer & ~inner
    col[rim] = np.clip(alb * 1.05 + 0.06, 0, 1)
    u = (xx - cx) / R
    v = (yy - yc) / ry
    ishade = 0.42 + 0.22 * (v + 1) / 2 + 0.12 * np.clip(-u * side, -1, 1)
    inside = alb[None, None, :] * ishade[..., None]
    if rng.random() < 0.5:  # some cups hold coffee
        liquid = ((xx - cx) / (0.86 * R)) ** 2 + ((yy - yc - 0.25 * ry) / (0.7 * ry)) ** 2 <= 1.0
        inside[liquid] = np.asarray((0.23, 0.13, 0.07), np.float32) * (0.8 + 0.3 * (v[liquid, None] + 1) / 2)
    col[inner] = inside[inner]
    mask |= outer
    return mask, col


def _r_bottle(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    R = w / 2
    cx, y_top, y_bot = _P + w / 2, _P + 1.0, _P + h
    mask, n, t = _lathe(xx, yy, cx, y_top, y_bot, (0, 0.5, 0.62, 0.72, 0.89, 0.895, 1.0),
                        (1.0, 1.0, 0.8, 0.37, 0.35, 0.42, 0.42), R, foot=0.22)
    glass = _rgb(o.colour, rng) * (0.78 if o.colour != "white" else 0.95)
    alb = np.broadcast_to(glass, xx.shape + (3,)).copy()
    cap = t >= 0.895
    alb[cap] = np.asarray(_pick(rng, ((0.85, 0.7, 0.2), (0.9, 0.9, 0.9), (0.15, 0.15, 0.15), (0.75, 0.1, 0.1))),
                          np.float32)
    if o.pattern == "label":
        lab = (t > 0.14) & (t < 0.44)
        alb[lab] = np.asarray((0.93, 0.9, 0.82), np.float32)
        stripe = (t > 0.25) & (t < 0.31)
        alb[stripe] = _contrast(o.colour) * 0.8
    col = _shade(alb, n, light, amb=0.35, spec=0.75, shin=60)
    # glass rim light on the side away from the key light
    rim = np.exp(-(((n[0] + 0.82 * side) / 0.12) ** 2)) * (~cap)
    col += (0.18 * rim)[..., None]
    return mask, col


def _r_vase(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    R = w / 2
    cx, y_bot = _P + w / 2, _P + h
    rx = 0.56 * R
    ry = 0.22 * rx
    yc = _P + ry
    mask, n, t = _lathe(xx, yy, cx, yc, y_bot, (0, 0.08, 0.35, 0.62, 0.82, 0.92, 1.0),
                        (0.55, 0.78, 1.0, 0.82, 0.4, 0.42, 0.56), R, foot=0.2)
    base = _rgb(o.colour, rng)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    if o.pattern == "striped":
        band = ((t > 0.25) & (t < 0.31)) | ((t > 0.55) & (t < 0.6))
        alb[band] = _contrast(o.colour)
    col = _shade(alb, n, light, spec=0.55, shin=40)
    outer, inner = _opening(xx, yy, cx, yc, rx, ry, max(1.2, 0.12 * rx))
    col[outer & ~inner] = np.clip(base * 1.05 + 0.05, 0, 1)
    col[inner] = base * 0.25
    return mask | outer, col


def _r_bowl(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    R = w / 2
    cx, y_bot = _P + w / 2, _P + h
    ry = 0.3 * R
    yc = _P + ry
    mask, n, t = _lathe(xx, yy, cx, yc, y_bot, (0, 0.1, 0.12, 0.3, 0.6, 0.85, 1.0),
                        (0.4, 0.4, 0.5, 0.76, 0.93, 0.99, 1.0), R, foot=0.25)
    base = _rgb(o.colour, rng)
    col = _shade(base, n, light, spec=0.5, shin=40)
    outer, inner = _opening(xx, yy, cx, yc, R, ry, max(1.5, 0.045 * R))
    col[outer & ~inner] = np.clip(base * 1.06 + 0.05, 0, 1)
    u = (xx - cx) / R
    v = (yy - yc) / ry
    ishade = 0.5 + 0.22 * np.clip(u * side * -1, -1, 1) + 0.18 * (1 - np.clip(u * u + v * v, 0, 1))
    ishade -= 0.2 * np.clip(-v - 0.4, 0, 1)  # shadow under the far rim
    inside = base[None, None, :] * ishade[..., None]
    spot = np.exp(-(((u + 0.35 * side) / 0.18) ** 2 + ((v - 0.35) / 0.3) ** 2))
    inside += 0.25 * spot[..., None]
    col[inner] = inside[inner]
    return mask | outer, col


def _sphere_like(o: _Obj, rng, xx, yy, parts, noise: float = 0.0, blur: float = 0.0):
    hmap, idx = _blob(xx, yy, parts)
    mask = idx >= 0
    if noise:
        hmap = hmap + noise * _fine_noise(rng, hmap.shape, 0.9) * mask
    if blur:
        hmap = cv2.GaussianBlur(hmap, (0, 0), blur) * mask
    return mask, idx, hmap, _height_normals(hmap)


def _r_ball(o: _Obj, rng, xx, yy, light, side):
    d = o.w
    r = d / 2
    mask, _, _, n = _sphere_like(o, rng, xx, yy, [(_P + r, _P + r, r, r, 0.0, 0.0)])
    base = _rgb(o.colour, rng)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    ax, ay, az = _unit3(*rng.normal(0, 1, 3).astype(np.float32) * np.asarray((0.4, 1.0, 0.4), np.float32))
    dot = n[0] * ax + n[1] * ay + n[2] * az
    if o.pattern == "striped":
        alb[np.abs(dot) < 0.22] = _contrast(o.colour)
    else:  # seams of a rubber ball
        seam = (np.abs(dot) < 0.03) | (np.abs(n[0] * ay - n[1] * ax) < 0.025)
        alb[seam] = base * 0.45
    return mask, _shade(alb, n, light, spec=0.4, shin=28)


def _r_orange(o: _Obj, rng, xx, yy, light, side):
    rx, ry = o.w / 2, o.h / 2
    cx, cy = _P + rx, _P + ry
    mask, _, _, n = _sphere_like(o, rng, xx, yy, [(cx, cy, rx, ry, 0.0, 0.0)], noise=0.5)
    base = _rgb("orange", rng, (240, 130, 20)) * np.asarray((1.0, 0.92, 0.8), np.float32)
    alb = base * (1 + 0.05 * _fine_noise(rng, xx.shape, 2.0))[..., None]
    col = _shade(alb, n, light, spec=0.22, shin=14)
    cv2.circle(col, (int(round(cx + 0.05 * rx)), int(round(cy - 0.72 * ry))), max(1, int(0.07 * rx)),
               (0.25, 0.3, 0.08), -1, cv2.LINE_AA)
    return mask, col


def _r_apple(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    cx = _P + w / 2
    y = lambda f: _P + f * h  # noqa: E731
    parts = [(cx - 0.17 * h, y(0.42), 0.3 * h, 0.27 * h, 0.0, 0.0),
             (cx + 0.17 * h, y(0.42), 0.3 * h, 0.27 * h, 0.0, 0.0),
             (cx, y(0.58), 0.47 * h, 0.41 * h, 0.0, 0.0)]
    mask, _, hmap, _ = _sphere_like(o, rng, xx, yy, parts, blur=max(1.0, 0.05 * h))
    dip = np.exp(-(((xx - cx) / (0.08 * h)) ** 2 + ((yy - y(0.2)) / (0.06 * h)) ** 2))
    hmap = (hmap - 0.12 * h * dip) * mask
    n = _height_normals(hmap)
    base = _rgb(o.colour, rng)
    blush = np.asarray({"red": (0.85, 0.62, 0.2), "green": (0.75, 0.78, 0.25),
                        "yellow": (0.85, 0.55, 0.2)}.get(o.colour or "", (0.8, 0.6, 0.2)), np.float32)
    streak = cv2.resize(rng.standard_normal((3, 12), dtype=np.float32), (xx.shape[1], xx.shape[0]),
                        interpolation=cv2.INTER_CUBIC)
    m = np.clip(0.25 + 0.25 * streak + 0.3 * (yy - y(0.5)) / h, 0, 0.7)[..., None]
    alb = base * (1 - m) + blush * m
    col = _shade(alb, n, light, spec=0.45, shin=35)
    stem_c = (0.32, 0.2, 0.1)
    p0 = (int(round(cx)), int(round(y(0.22))))
    p1 = (int(round(cx + 0.06 * h)), int(round(y(0.02))))
    th = max(2, int(round(0.05 * h)))
    mu8 = mask.astype(np.uint8)
    cv2.line(col, p0, p1, stem_c, th, cv2.LINE_AA)
    cv2.line(mu8, p0, p1, 1, th)
    if rng.random() < 0.5:  # a leaf
        lc = (int(round(cx + 0.15 * h)), int(round(y(0.1))))
        axes = (max(2, int(0.13 * h)), max(1, int(0.05 * h)))
        cv2.ellipse(col, lc, axes, -25, 0, 360, (0.2, 0.45, 0.12), -1, cv2.LINE_AA)
        cv2.ellipse(mu8, lc, axes, -25, 0, 360, 1, -1)
    return mu8 > 0, col


def _r_donut(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    R, ry = w / 2, h / 2
    cx, cy = _P + R, _P + ry
    # normalised elliptical radius q; the tube spans q in [qh, 1] (a torus seen from above at an angle)
    qh = 0.34
    q = np.sqrt(((xx - cx) / R) ** 2 + ((yy - cy + 0.08 * ry * (1 - ((xx - cx) / R) ** 2)) / ry) ** 2)
    s = (q - qh) / (1 - qh)
    mask = (s >= 0) & (s <= 1)
    tube = 0.5 * (1 - qh) * R
    hmap = (np.sqrt(np.clip(1 - (2 * s - 1) ** 2, 0, 1)) * tube).astype(np.float32)
    wob = cv2.resize(rng.standard_normal((4, 8), dtype=np.float32), (xx.shape[1], xx.shape[0]),
                     interpolation=cv2.INTER_CUBIC)
    frost = mask & (s > 0.14 + 0.05 * wob) & (s < 0.8 + 0.07 * wob)
    hmap = hmap + 0.06 * tube * frost + 0.15 * _fine_noise(rng, hmap.shape, 1.0) * mask
    n = _height_normals(hmap * mask, 1.0)
    dough = np.asarray((0.82, 0.58, 0.32), np.float32) * rng.uniform(0.92, 1.05)
    icing = {"pink": (0.95, 0.52, 0.68), "brown": (0.3, 0.16, 0.08), "white": (0.96, 0.94, 0.9)}
    ic = np.asarray(icing.get(o.colour or "", (0.95, 0.52, 0.68)), np.float32)
    alb = np.broadcast_to(dough, xx.shape + (3,)).copy()
    alb *= (1 - 0.25 * np.clip(np.abs(2 * s - 1) - 0.6, 0, 1) * 2.5)[..., None]  # browner crust at the sides
    alb[frost] = ic
    col = _shade(alb, n, light, spec=0.12, shin=10)
    gloss = _shade(np.zeros(3, np.float32), n, light, amb=0.0, spec=0.5, shin=40)
    col[frost] += gloss[frost]
    if o.pattern == "sprinkles":
        ys, xs = np.nonzero(frost & (s > 0.25) & (s < 0.7))
        if len(ys):
            pal = ((0.95, 0.2, 0.2), (0.2, 0.5, 0.95), (0.98, 0.9, 0.2), (0.3, 0.8, 0.3), (0.98, 0.98, 0.98))
            ln = max(2.0, 0.07 * R)
            for j in rng.integers(0, len(ys), size=int(12 + 0.25 * R)):
                a = rng.uniform(0, math.pi)
                x0, y0 = float(xs[j]), float(ys[j])
                p0 = (int(round(x0)), int(round(y0)))
                p1 = (int(round(x0 + ln * math.cos(a))), int(round(y0 + 0.6 * ln * math.sin(a))))
                cv2.line(col, p0, p1, _pick(rng, pal), max(1, int(0.025 * R)), cv2.LINE_AA)
    col[~mask] = 0
    return mask, col


def _r_book(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    sw = max(3, int(round(0.15 * w)))
    top = max(2, int(round(0.055 * h)))
    pages_right = int(_pick(rng, (-1, 1))) > 0
    cl = _P + (0 if pages_right else sw)
    cr = cl + (w - sw)
    ct, cb = _P + top, _P + h
    base = _rgb(o.colour, rng)
    mask = np.zeros(xx.shape, np.uint8)
    col = np.zeros(xx.shape + (3,), np.float32)
    # front cover with a slight gradient towards the light and a title label
    cover = (xx >= cl) & (xx < cr) & (yy >= ct) & (yy < cb)
    g = 0.86 + 0.12 * np.clip(-side * (xx - (cl + cr) / 2) / max(1, cr - cl), -1, 1)
    col[cover] = (base[None, None, :] * g[..., None])[cover]
    lab_c = np.asarray(_pick(rng, ((0.92, 0.85, 0.6), (0.95, 0.95, 0.92), (0.15, 0.15, 0.15))), np.float32)
    lab = (xx >= cl + 0.15 * (cr - cl)) & (xx < cr - 0.15 * (cr - cl)) & (yy >= ct + 0.18 * h) & (yy < ct + 0.3 * h)
    col[lab] = lab_c * 0.92
    bar = (xx >= cl + 0.15 * (cr - cl)) & (xx < cr - 0.15 * (cr - cl)) & (yy >= ct + 0.78 * h) & (yy < ct + 0.8 * h)
    col[bar] = lab_c * 0.85
    hinge = np.abs(xx - (cl + 0.08 * (cr - cl) if pages_right else cr - 0.08 * (cr - cl))) < 1.0
    col[cover & hinge] *= 0.7
    mask[cover] = 1
    # fore-edge (pages) and top edge as parallelograms
    dx = sw if pages_right else -sw
    edge_x = cr if pages_right else cl
    side_poly = np.array([[edge_x, ct], [edge_x + dx, ct - top], [edge_x + dx, cb - top], [edge_x, cb]], np.int32)
    top_poly = np.array([[cl, ct], [cl + dx, ct - top], [cr + dx, ct - top], [cr, ct]], np.int32)
    sm = np.zeros(xx.shape, np.uint8)
    cv2.fillPoly(sm, [side_poly], 1)
    tm = np.zeros(xx.shape, np.uint8)
    cv2.fillPoly(tm, [top_poly], 1)
    sm[mask > 0] = 0
    tm[(mask > 0) | (sm > 0)] = 0
    paper = np.asarray((0.93, 0.9, 0.8), np.float32)
    lines = 1.0 - 0.08 * (np.sin(yy * 2.7 + xx * 0.3) > 0.6)
    lit = 0.95 if (pages_right and side > 0) or (not pages_right and side < 0) else 0.72
    col[sm > 0] = (paper[None, None, :] * (lit * lines)[..., None])[sm > 0]
    col[tm > 0] = paper * 1.02
    # the back board's edge around the pages
    cv2.polylines(col, [side_poly], False, tuple(float(v) for v in base * 0.6), 1, cv2.LINE_AA)
    mask |= sm | tm
    spec = _shade(np.zeros(3, np.float32), (np.zeros_like(xx), np.zeros_like(xx) - 0.2, np.ones_like(xx)),
                  light, amb=0, spec=0.12, shin=4)
    col[cover] += spec[cover]
    return mask > 0, col


def _r_teddy(o: _Obj, rng, xx, yy, light, side):
    h = float(o.h)
    cx = _P + o.w / 2
    y = lambda f: _P + f * h  # noqa: E731
    body_z, head_z = 0.0, 0.05 * h
    parts = [
        (cx, y(0.64), 0.27 * h, 0.3 * h, 0.0, body_z),                          # 0 body
        (cx - 0.16 * h, y(0.1), 0.075 * h, 0.075 * h, 0.0, head_z),              # 1 ear
        (cx + 0.16 * h, y(0.1), 0.075 * h, 0.075 * h, 0.0, head_z),              # 2 ear
        (cx, y(0.26), 0.2 * h, 0.18 * h, 0.0, head_z + 0.02 * h),                # 3 head
        (cx - 0.27 * h, y(0.58), 0.075 * h, 0.16 * h, 0.45, 0.1 * h),            # 4 arm
        (cx + 0.27 * h, y(0.58), 0.075 * h, 0.16 * h, -0.45, 0.1 * h),           # 5 arm
        (cx - 0.16 * h, y(0.87), 0.11 * h, 0.09 * h, 0.0, 0.14 * h),             # 6 leg
        (cx + 0.16 * h, y(0.87), 0.11 * h, 0.09 * h, 0.0, 0.14 * h),             # 7 leg
        (cx, y(0.33), 0.09 * h, 0.065 * h, 0.0, 0.2 * h),                        # 8 snout
        (cx - 0.16 * h, y(0.88), 0.06 * h, 0.05 * h, 0.0, 0.23 * h),             # 9 pad
        (cx + 0.16 * h, y(0.88), 0.06 * h, 0.05 * h, 0.0, 0.23 * h),             # 10 pad
        (cx - 0.16 * h, y(0.1), 0.04 * h, 0.04 * h, 0.0, head_z + 0.04 * h),     # 11 inner ear
        (cx + 0.16 * h, y(0.1), 0.04 * h, 0.04 * h, 0.0, head_z + 0.04 * h),     # 12 inner ear
    ]
    hmap, idx = _blob(xx, yy, parts)
    mask = idx >= 0
    fur = _fine_noise(rng, hmap.shape, 0.7)
    n = _height_normals(hmap + 0.6 * fur * mask, 1.0)
    base = _rgb(o.colour, rng)
    if o.colour == "brown":
        base = np.clip(base * 1.35, 0, 1)
    light_c = np.clip(base * 0.55 + 0.42, 0, 1)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    lighter = np.isin(idx, (8, 9, 10, 11, 12))
    alb[lighter] = light_c
    tummy = (((xx - cx) / (0.15 * h)) ** 2 + ((yy - y(0.68)) / (0.17 * h)) ** 2 <= 1.0) & (idx == 0)
    alb[tummy] = base * 0.6 + light_c * 0.4
    alb *= (1.0 + 0.1 * fur)[..., None]
    col = _shade(alb, n, light, amb=0.36, spec=0.06, shin=8)
    for ex in (-0.075, 0.075):
        cv2.circle(col, (int(round(cx + ex * h)), int(round(y(0.23)))), max(1, int(round(0.022 * h))),
                   (0.04, 0.03, 0.03), -1, cv2.LINE_AA)
        cv2.circle(col, (int(round(cx + ex * h - 0.006 * h)), int(round(y(0.225)))), max(1, int(0.006 * h)),
                   (0.8, 0.8, 0.8), -1, cv2.LINE_AA)
    cv2.ellipse(col, (int(round(cx)), int(round(y(0.31)))), (max(1, int(0.03 * h)), max(1, int(0.02 * h))),
                0, 0, 360, (0.06, 0.04, 0.04), -1, cv2.LINE_AA)
    col[~mask] = 0
    return mask, col


def _r_plant(o: _Obj, rng, xx, yy, light, side):
    w, h = o.w, o.h
    cx = _P + w / 2
    pot_top = _P + 0.58 * h
    R = 0.3 * w
    ry = 0.2 * R
    # leaves fanning out of the pot
    parts = []
    for k in range(9):
        a = -1.2 + 2.4 * k / 8 + rng.uniform(-0.12, 0.12)
        ln = h * rng.uniform(0.22, 0.32)
        sx, sy = cx + 0.2 * R * math.sin(a), pot_top
        mx, my = sx + math.sin(a) * ln, sy - math.cos(a) * ln
        parts.append((mx, my, ln, 0.045 * w + 0.05 * ln, a + math.pi / 2, rng.uniform(0, 0.3) * ln))
    hmap, idx = _blob(xx, yy, parts)
    leaf = idx >= 0
    greens = np.asarray([(0.16, 0.42, 0.14), (0.22, 0.5, 0.18), (0.12, 0.34, 0.12), (0.28, 0.55, 0.2)], np.float32)
    alb = greens[np.clip(idx, 0, None) % 4]
    col = _shade(alb, _height_normals(hmap, 1.2), light, spec=0.25, shin=20)
    pot, n, _ = _lathe(xx, yy, cx, pot_top, _P + h, (0, 0.85, 0.86, 1.0), (0.72, 0.98, 1.08, 1.08), R, foot=0.2)
    terracotta = np.asarray((0.72, 0.38, 0.24), np.float32) * rng.uniform(0.9, 1.05)
    pc = _shade(terracotta, n, light, spec=0.12, shin=10)
    col[pot] = pc[pot]
    outer, inner = _opening(xx, yy, cx, pot_top, 1.08 * R, ry, max(1.5, 0.06 * R))
    soil = inner & (yy > pot_top - 0.2 * ry)
    col[outer & ~leaf] = np.clip(terracotta * 1.05, 0, 1)
    col[soil & ~leaf] = (0.2, 0.13, 0.08)
    mask = leaf | pot | outer
    col[~mask] = 0
    return mask, col


_RENDERERS = {
    "cup": _r_cup, "bottle": _r_bottle, "vase": _r_vase, "bowl": _r_bowl, "sports ball": _r_ball,
    "orange": _r_orange, "apple": _r_apple, "donut": _r_donut, "book": _r_book, "teddy bear": _r_teddy,
    "potted plant": _r_plant,
}


# ----------------------------------------------------------------------------------------------
# Background: wall, table, shelf of books (the crowd region), lighting, camera
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _noise_bank() -> Tuple[np.ndarray, np.ndarray]:
    """Fixed banks of Gaussian noise (raw RGB, and soft single-channel) that images take windows of.

    Drawing fresh full-size noise per image dominated the generation time; windows at seeded
    offsets of one fixed bank look just as random and keep every output deterministic.
    """
    rng = np.random.default_rng(0x5EED)
    n = 640 + 64
    raw = rng.standard_normal((n, n, 3), dtype=np.float32)
    soft = cv2.GaussianBlur(raw[..., 0], (0, 0), 0.8)
    soft /= float(soft.std())
    return raw, soft


def _window(bank: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    oy = int(rng.integers(0, bank.shape[0] - h + 1))
    ox = int(rng.integers(0, bank.shape[1] - w + 1))
    return bank[oy:oy + h, ox:ox + w]


def _fbm(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth multi-octave value noise of unit-ish amplitude (random grids, upsampled)."""
    sh, sw = max(2, h // 4), max(2, w // 4)
    out = np.zeros((sh, sw), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        gh = max(2, int(round(cells * h / max(h, w))) + 1)
        gw = max(2, int(round(cells * w / max(h, w))) + 1)
        g = rng.standard_normal((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(g, (sw, sh), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
        cells *= 2
    return cv2.resize(out / total, (w, h), interpolation=cv2.INTER_LINEAR)


_WALLS = ((0.86, 0.82, 0.74), (0.8, 0.8, 0.78), (0.72, 0.78, 0.82), (0.72, 0.78, 0.68), (0.88, 0.78, 0.74),
          (0.62, 0.64, 0.68), (0.9, 0.88, 0.84), (0.78, 0.72, 0.62))
_WOODS = ((0.7, 0.5, 0.3), (0.5, 0.32, 0.18), (0.62, 0.42, 0.24), (0.64, 0.56, 0.46), (0.78, 0.62, 0.42))
_CLOTHS = ((0.85, 0.84, 0.8), (0.55, 0.62, 0.7), (0.7, 0.3, 0.28), (0.5, 0.58, 0.45))
_TILES = ((0.86, 0.86, 0.84), (0.7, 0.74, 0.76), (0.62, 0.55, 0.48))


def _background(scene: _Scene, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Wall and table as a brightness map (H, W) and one colour per row (H, 3).

    Kept single-channel until the end because full-size RGB passes are what costs time.
    """
    W, H = scene.width, scene.height
    hz = int(round(scene.horizon))
    _, soft = _noise_bank()
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    tone = np.empty((H, W), np.float32)
    # wall: soft gradient, blotchy paint, fine plaster texture, occlusion near the table
    wall = 1.0 + 0.05 * _fbm(rng, hz, W, 3) + 0.014 * _window(soft, rng, hz, W)
    wall *= (1.03 - 0.12 * ys[:hz] / H) * (1.0 - 0.22 * np.exp(-(hz - ys[:hz]) / (0.05 * H)))
    tone[:hz] = wall
    # table top in perspective: u across, v in depth (both perspective-correct)
    th = H - hz
    ty = ys[hz:]
    d0 = 0.12 * H
    d = (ty - hz) + d0
    vx = W * rng.uniform(0.3, 0.7)
    if scene.surface == "wood":
        plank_px = W / rng.uniform(3.5, 6.0)
        k = (th + d0) / plank_px
        u = (xs - vx) * (k / d)
        pid = np.floor(u)
        frac = u - pid
        pidx = pid.astype(np.int64) % 97
        pv = rng.uniform(-1, 1, 97).astype(np.float32)[pidx]
        pf = rng.uniform(4, 8, 97).astype(np.float32)[pidx]
        warp = _fbm(rng, th, W, 6, 2)
        grain = 0.5 + 0.5 * np.sin((2 * np.pi) * (u * pf + 0.8 * warp + 3.0 * pv))
        fine = rng.standard_normal(4099).astype(np.float32)[(np.floor(u * 60).astype(np.int64) % 4099)]
        seam_px = np.minimum(frac, 1 - frac) * (d / k)
        seam = np.exp(-((seam_px / 1.1) ** 2))
        colour = np.asarray(_pick(rng, _WOODS), np.float32)
        fade = np.clip((ty - hz) / (0.3 * th), 0.25, 1.0)  # no moire of dense grain near the horizon
        table = (1 + 0.08 * pv + 0.02 * fine * fade) * (1 - 0.13 * fade * grain ** 3) * (1 - 0.5 * seam)
    elif scene.surface == "tiles":
        tile_px = W / rng.uniform(4, 7)
        k = (th + d0) / tile_px
        K = (th + d0) ** 2 / (0.55 * tile_px)   # a near tile is about half as tall as it is wide
        u = (xs - vx) * (k / d)
        v = K / d
        fu, fv = u - np.floor(u), v - np.floor(v)
        gu = np.minimum(fu, 1 - fu) * (d / k)
        gv = np.minimum(fv, 1 - fv) * (d * d / K)
        grout = np.maximum(np.exp(-(gu / 1.2) ** 2), np.exp(-(gv / 1.0) ** 2))
        tid = (np.floor(u).astype(np.int64) * 31 + np.floor(v).astype(np.int64) * 17) % 53
        tv = rng.uniform(-1, 1, 53).astype(np.float32)[tid]
        colour = np.asarray(_pick(rng, _TILES), np.float32)
        table = (1 + 0.05 * tv + 0.02 * _window(soft, rng, th, W)) * (1 - 0.35 * grout)
    else:
        colour = np.asarray(_pick(rng, _CLOTHS), np.float32)
        weave = 0.035 * np.sin(xs * 2.3) * np.sin(ty * 2.3) + 0.02 * _window(soft, rng, th, W)
        folds = 0.06 * cv2.resize(rng.standard_normal((3, 6), dtype=np.float32), (W, th),
                                  interpolation=cv2.INTER_CUBIC)
        table = 1 + weave + folds
    # a soft pool of light on the lit side; the far table is a bit darker
    pool = np.exp(-(((xs - W * (0.5 - 0.25 * scene.side)) / (0.6 * W)) ** 2 + ((ty - H) / (0.8 * H)) ** 2))
    tone[hz:] = table * (0.82 + 0.22 * pool + 0.06 * (ty - hz) / H)
    # back edge of the table: a thin highlight line
    tone[hz:hz + 3] *= np.float32([1.18, 1.1, 1.03])[:, None][: min(3, th)]
    colours = np.empty((H, 3), np.float32)
    colours[:hz] = np.asarray(_pick(rng, _WALLS), np.float32) * rng.uniform(0.92, 1.04)
    colours[hz:] = colour
    return tone, colours


def _light_field(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Key-light falloff across the frame times a lens vignette times exposure, (H, W)."""
    W, H = scene.width, scene.height
    ys = np.arange(H, dtype=np.float32)[:, None] / H - 0.5
    xs = np.arange(W, dtype=np.float32)[None, :] / W - 0.5
    return ((1.0 - 0.28 * scene.side * xs) * (1.0 - 0.5 * (xs * xs + ys * ys)) * rng.uniform(0.95, 1.08)).astype(
        np.float32)


def _shelf(scene: _Scene, img: np.ndarray, rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """A wall shelf with a row of book spines; returns the books' mask (the crowd region)."""
    W, H, hz = scene.width, scene.height, scene.horizon
    u = min(W, H)
    books = np.zeros((H, W), bool)
    y_s = int(round(hz * rng.uniform(0.55, 0.75)))
    sw = int(round(W * rng.uniform(0.45, 0.65)))
    xa = int(round(rng.uniform(0.03, 0.97 - sw / W) * W))
    xb = xa + sw
    th = max(4, int(round(0.022 * H)))
    # the board's shadow on the wall
    y1 = min(H, y_s + th + 3 * th)
    sh = np.zeros((y1 - y_s, W), np.float32)
    sh[th:th + max(3, th), xa + 2:xb + 2] = 1.0
    img[y_s:y1] *= (1 - 0.35 * cv2.GaussianBlur(sh, (0, 0), 3.0))[..., None]
    x = xa + 4
    while True:
        bw = int(rng.integers(max(4, int(0.022 * u)), max(6, int(0.045 * u))))
        if x + bw > xb - 4:
            break
        bh = int(round(u * rng.uniform(0.09, 0.15)))
        top = max(2, y_s - bh)
        c = np.asarray(_pick(rng, tuple(COLOURS.values())), np.float32) / 255.0 * 0.7 + 0.12
        xs = np.arange(bw, dtype=np.float32)
        prof = 0.68 + 0.32 * np.sin(np.pi * (xs + 0.5) / bw)
        spine = c[None, None, :] * prof[None, :, None] * light[top:y_s, x:x + bw, None]
        band_y = int((y_s - top) * rng.uniform(0.15, 0.3))
        spine[band_y:band_y + max(1, (y_s - top) // 12)] *= 1.4
        img[top:y_s, x:x + bw] = np.clip(spine, 0, 1)
        books[top:y_s, x:x + bw] = True
        x += bw + int(rng.integers(0, 2))
    wood = np.asarray((0.55, 0.38, 0.22), np.float32)
    img[y_s:y_s + th, xa:xb] = wood * 0.85 * light[y_s:y_s + th, xa:xb, None]
    img[y_s:y_s + max(1, th // 3), xa:xb] = wood * 1.15 * light[y_s:y_s + max(1, th // 3), xa:xb, None]
    return books


def _shadow_factor(scene: _Scene) -> np.ndarray:
    """Background darkening (H, W) from each object's cast shadow (a sheared silhouette) and contact shadow.

    Drawn at half resolution: the shadows are soft anyway, and full-size blurs were costly.
    """
    W, H = scene.width, scene.height
    w2, h2 = (W + 1) // 2, (H + 1) // 2
    cast = np.zeros((h2, w2), np.float32)
    contact = np.zeros((h2, w2), np.float32)
    sx, sy = -0.45 * scene.side, 0.2
    u = min(W, H)
    for o in scene.objs:
        base = o.base
        M = np.float32([[0.5, -0.5 * sx, 0.5 * (o.x0 + sx * (base - o.y0))],
                        [0, 0.5 * sy, 0.5 * (base * (1 - sy) + sy * o.y0)]])
        sh = cv2.warpAffine(o.alpha, M, (w2, h2), flags=cv2.INTER_LINEAR, borderValue=0)
        np.maximum(cast, sh, out=cast)
        ax = max(1, int(round(0.21 * o.w)))
        cv2.ellipse(contact, (int(round(0.5 * (o.cx - 0.08 * o.w * scene.side))), int(round(0.5 * (base - 1)))),
                    (ax, max(1, int(round(0.025 * o.w + 1)))), 0, 0, 360, 1.0, -1)
    cast = cv2.GaussianBlur(cast, (0, 0), max(1.0, 0.006 * u))
    contact = cv2.GaussianBlur(contact, (0, 0), max(0.8, 0.0035 * u))
    f = (1 - 0.3 * cast) * (1 - 0.5 * contact)
    return cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR)


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens softness and sensor noise, then 8-bit quantisation."""
    H, W = img.shape[:2]
    raw, _ = _noise_bank()
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += _window(raw, rng, H, W) * np.float32(0.011)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------
def _polygons(mask: np.ndarray) -> List[List[float]]:
    """Visible mask -> simplified external contours, each a flat [x1, y1, ...] list of >= 3 points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        if cv2.contourArea(c) < 6.0:
            continue
        a = cv2.approxPolyDP(c, 0.7, True).reshape(-1, 2)
        if len(a) < 3:
            continue
        polys.append([float(v) for v in a.reshape(-1)])
    # a fixed order: left to right by the first point
    polys.sort(key=lambda p: (min(p[0::2]), min(p[1::2])))
    return polys


def _uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO uncompressed RLE: column-major runs, alternating 0s and 1s, starting with 0s."""
    flat = np.asfortranarray(mask.astype(np.uint8)).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat.size and flat[0] == 1:
        runs = np.concatenate([[0], runs])
    return {"counts": [int(v) for v in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _ann_geometry(segmentation: Any, h: int, w: int) -> Tuple[float, List[float]]:
    """pycocotools area and bbox of the union of a segmentation's parts."""
    from pycocotools import mask as mask_api

    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, h, w))
    else:
        rle = mask_api.frPyObjects(segmentation, h, w)
    return float(mask_api.area(rle)), [float(v) for v in mask_api.toBbox(rle)]


# ----------------------------------------------------------------------------------------------
# Referring expressions
# ----------------------------------------------------------------------------------------------
_NOUNS = {"cup": ("cup", "mug"), "bottle": ("bottle",), "sports ball": ("ball",), "apple": ("apple",),
          "orange": ("orange",), "bowl": ("bowl",), "vase": ("vase",), "book": ("book",), "donut": ("donut",),
          "teddy bear": ("teddy bear", "bear", "teddy"), "potted plant": ("plant", "potted plant")}
_LONG = {"cup": ("cup", "mug", "coffee mug"), "bottle": ("bottle", "glass bottle"),
         "sports ball": ("ball", "rubber ball"), "apple": ("apple",), "orange": ("orange",),
         "bowl": ("bowl", "ceramic bowl"), "vase": ("vase", "flower vase"), "book": ("book", "hardcover book"),
         "donut": ("donut", "frosted donut"), "teddy bear": ("teddy bear", "stuffed bear"),
         "potted plant": ("potted plant",)}
_VERBS = {"cup": ("sitting", "standing"), "bottle": ("standing",), "sports ball": ("lying", "resting"),
          "apple": ("sitting", "lying"), "orange": ("sitting", "lying"), "bowl": ("sitting",),
          "vase": ("standing",), "book": ("standing", "standing upright"), "donut": ("lying", "sitting"),
          "teddy bear": ("sitting",), "potted plant": ("standing",)}
# pattern -> (adjective form, post-modifier form); None where the form would sound wrong
_PATTERN_WORDS = {"striped": ("striped", "with a stripe"), "label": ("labeled", "with a label"),
                  "sprinkles": ("sprinkled", "with sprinkles")}
_PLAIN_WORDS = {"bottle": (None, "without a label"), "donut": ("plain", "without sprinkles"),
                "cup": ("plain", None), "sports ball": ("plain", None), "vase": ("plain", None)}
_SURFACES = {"wood": "wooden table", "tiles": "tiled counter", "cloth": "table"}
_NUM = {2: "two", 3: "three"}
# words that give a location: never in RefCOCO+ expressions
LOCATION_WORDS = frozenset(
    "left right middle center centre top bottom front back behind near far closest farthest furthest "
    "leftmost rightmost nearest side corner next beside between above below first second third last "
    "camera".split())


def _pos_word(o: _Obj, S: List[_Obj]) -> Optional[str]:
    """left / middle / right of o among S by x-order (S's x-ranges are disjoint by construction)."""
    if len(S) < 2:
        return None
    xs = sorted(S, key=lambda a: a.cx)
    k = xs.index(o)
    if k == 0:
        return "left"
    if k == len(xs) - 1:
        return "right"
    return "middle" if len(xs) == 3 else None


def _depth_word(o: _Obj, S: List[_Obj], H: int) -> Optional[str]:
    others = [a for a in S if a is not o]
    if not others:
        return None
    if all(o.base - a.base > 0.08 * H for a in others):
        return "front"
    if all(a.base - o.base > 0.08 * H for a in others):
        return "back"
    return None


def _size_word(o: _Obj, S: List[_Obj]) -> Optional[str]:
    """bigger/smaller (2 objects) or biggest/smallest (3+), only when clearly so (full and visible)."""
    others = [a for a in S if a is not o]
    if not others:
        return None
    two = len(S) == 2
    if all(o.full_area > 1.4 * a.full_area and o.vis_area > 1.3 * a.vis_area for a in others):
        return "bigger" if two else "biggest"
    if all(a.full_area > 1.4 * o.full_area and a.vis_area > 1.3 * o.vis_area for a in others):
        return "smaller" if two else "smallest"
    return None


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _pattern_forms(o: _Obj) -> Tuple[Optional[str], Optional[str]]:
    if o.pattern in _PATTERN_WORDS:
        return _PATTERN_WORDS[o.pattern]
    return _PLAIN_WORDS.get(o.cat, (None, None))


class _Phrases:
    """Identifying descriptions of one object among its look-alikes, by kind."""

    def __init__(self, o: _Obj, group: List[_Obj], H: int):
        self.o, self.G, self.H = o, group, H
        same_col = [a for a in group if a.colour == o.colour]
        same_pat = [a for a in group if a.pattern == o.pattern]
        self.colour_unique = o.colour is not None and len(same_col) == 1
        self.same_col = same_col if o.colour is not None else []
        self.pattern_unique = len(same_pat) == 1 and _pattern_forms(o) != (None, None)
        self.col_pat_unique = o.colour is not None and sum(
            1 for a in group if a.colour == o.colour and a.pattern == o.pattern) == 1 and \
            _pattern_forms(o) != (None, None)
        self.pos = _pos_word(o, group)
        self.depth = _depth_word(o, group, H)
        self.size = _size_word(o, group)
        self.pos_in_col = _pos_word(o, self.same_col) if len(self.same_col) >= 2 else None
        self.size_in_col = _size_word(o, self.same_col) if len(self.same_col) >= 2 else None


def _noun(o: _Obj, rng: np.random.Generator) -> str:
    return _pick(rng, _NOUNS[o.cat])


def _refcoco_candidates(ph: _Phrases, rng: np.random.Generator) -> List[List[str]]:
    """Short RefCOCO-style expressions, in pools (spatial, colour, other)."""
    o, c = ph.o, ph.o.colour
    N = lambda: _noun(o, rng)  # noqa: E731
    spatial, colour, other = [], [], []
    three = len(ph.G) == 3
    if ph.pos == "middle":
        spatial += [f"middle {N()}", f"{N()} in the middle", f"the middle {N()}", f"center {N()}"]
    elif ph.pos:
        p = ph.pos
        spatial += [f"{p} {N()}", f"{N()} on the {p}", f"the {N()} on the {p}", f"{N()} on {p}"]
        if three:
            spatial += [f"{p}most {N()}", f"far {p} {N()}"]
    if ph.depth == "front":
        spatial += [f"front {N()}", f"{N()} in front", f"closest {N()}"]
    elif ph.depth == "back":
        spatial += [f"back {N()}", f"{N()} in the back", f"farthest {N()}"]
    if ph.colour_unique:
        colour += [f"{c} {N()}", f"the {c} {N()}"]
        if ph.pos in ("left", "right"):
            colour += [f"{c} {N()} on the {ph.pos}", f"the {c} {N()} on the {ph.pos}"]
    if ph.pos_in_col == "middle":
        colour += [f"middle {c} {N()}"]
    elif ph.pos_in_col:
        colour += [f"{c} {N()} on the {ph.pos_in_col}", f"{ph.pos_in_col} {c} {N()}"]
    if ph.size_in_col:
        colour += [f"{ph.size_in_col} {c} {N()}", f"the {ph.size_in_col} {c} {N()}"]
    if ph.size:
        other += [f"{ph.size} {N()}", f"the {ph.size} {N()}"]
    adj, post = _pattern_forms(o)
    if ph.pattern_unique:
        if adj:
            other.append(f"{adj} {N()}")
        if post:
            other.append(f"{N()} {post}")
    return [spatial, colour, other]


def _refcoco_plus_candidates(ph: _Phrases, rng: np.random.Generator) -> List[List[str]]:
    """Appearance-only expressions (no location words), in pools (colour, size, pattern)."""
    o, c = ph.o, ph.o.colour
    N = lambda: _noun(o, rng)  # noqa: E731
    colour, size, pattern = [], [], []
    adj, post = _pattern_forms(o)
    if ph.colour_unique:
        colour += [f"{c} {N()}", f"the {c} {N()}", f"{c} colored {N()}"]
        if ph.size:
            colour.append(f"the {ph.size} {c} {N()}")
    if ph.size:
        big = "big" if ph.size.startswith("big") else "small"
        size += [f"{ph.size} {N()}", f"the {ph.size} {N()}", f"{big} {N()}"]
    if ph.size_in_col:
        size += [f"{ph.size_in_col} {c} {N()}", f"the {ph.size_in_col} {c} {N()}"]
    if ph.pattern_unique:
        if adj:
            pattern.append(f"{adj} {N()}")
        if post:
            pattern.append(f"{N()} {post}")
    if ph.col_pat_unique and (adj or post):
        pattern.append(f"{c} {adj} {N()}" if adj else f"{c} {N()} {post}")
    return [colour, size, pattern]


def _landmark(L: _Obj, objs: List[_Obj], rng: np.random.Generator) -> Optional[str]:
    """A description that identifies another object L of the image, or None."""
    same = [a for a in objs if a.cat == L.cat]
    n = _noun(L, rng)
    if len(same) == 1:
        return f"the {L.colour} {n}" if L.colour and L.cat not in ("potted plant",) and rng.random() < 0.6 else f"the {n}"
    if L.colour and sum(1 for a in same if a.colour == L.colour) == 1:
        return f"the {L.colour} {n}"
    return None


def _relations(o: _Obj, L: _Obj, H: int) -> List[str]:
    """True spatial relations of o to a landmark L (left/right of, next to, in front of, behind)."""
    near = abs(o.base - L.base) < 0.1 * H
    if o.x_hi < L.x_lo:
        return ["to the left of"] + (["next to"] if near and L.x_lo - o.x_hi < 0.4 * min(o.w, L.w) else [])
    if o.x_lo > L.x_hi:
        return ["to the right of"] + (["next to"] if near and o.x_lo - L.x_hi < 0.4 * min(o.w, L.w) else [])
    if o.base > L.base + 0.05 * H:
        return ["in front of"]
    if o.base < L.base - 0.05 * H:
        return ["behind"]
    return []


def _refcocog_candidates(ph: _Phrases, scene: _Scene, rng: np.random.Generator) -> List[List[str]]:
    """Longer sentences: an identifying noun phrase + what it does + where, relative to a landmark."""
    o, c, H = ph.o, ph.o.colour, scene.height
    L_ = lambda: _pick(rng, _LONG[o.cat])  # noqa: E731
    N = lambda: _noun(o, rng)  # noqa: E731
    plural = lambda: _plural(_noun(o, rng))  # noqa: E731
    k = _NUM.get(len(ph.G), str(len(ph.G)))
    adj, post = _pattern_forms(o)
    app, loc = [], []
    if ph.colour_unique:
        app += [_article(f"{c} {L_()}"), f"the {c} {L_()}"]
    if ph.col_pat_unique and adj:
        app.append(_article(f"{c} {adj} {N()}"))
    if ph.pattern_unique and post:
        app.append(_article(f"{N()} {post}"))
    if ph.size:
        app.append(f"the {ph.size} of the {k} {plural()}")
    if ph.size_in_col:
        app.append(f"the {ph.size_in_col} {c} {N()}")
    if ph.pos in ("left", "right"):
        p = ph.pos
        loc += [f"the {N()} on the {p}", f"the {N()} furthest to the {p}", f"the {p}most of the {k} {plural()}"]
    elif ph.pos == "middle":
        loc += [f"the {N()} in the middle", f"the middle one of the three {plural()}"]
    if ph.depth == "front":
        loc.append(f"the {N()} closest to the camera")
    elif ph.depth == "back":
        loc.append(f"the {N()} furthest back")
    if ph.pos_in_col in ("left", "right"):
        loc.append(f"the {c} {N()} on the {ph.pos_in_col}")
    # landmarks: the nearest other objects that can be named unambiguously
    others = sorted((a for a in scene.objs if a is not o),
                    key=lambda a: (abs(a.cx - o.cx) + abs(a.base - o.base), a.cx))
    rels = []
    for L in others:
        desc = _landmark(L, scene.objs, rng)
        rel = _relations(o, L, H)
        if desc and rel:
            rels.append(f"{_pick(rng, rel)} {desc}")
        if len(rels) == 2:
            break
    surface = _SURFACES[scene.surface]
    verb = _pick(rng, _VERBS[o.cat])
    out_app, out_loc = [], []
    for pool, out, located in ((app, out_app, False), (loc, out_loc, True)):
        for np_ in pool:
            tails = [f" {verb} on the {surface}"] + ([] if located else [f" on the {surface}"])
            for r in rels:
                tails += [f" {verb} {r}", f" that is {r}"] + ([] if located else [f" {r}"])
            out.append(np_ + _pick(rng, tails))
    return [out_app, out_loc]


def _choose(pools: List[List[str]], rng: np.random.Generator, k_max: int) -> List[str]:
    """1..k_max distinct expressions, round-robin over the non-empty pools in a random order."""
    pools = [list(p) for p in pools if p]
    if not pools:
        return []
    for p in pools:
        perm = rng.permutation(len(p))
        p[:] = [p[int(j)] for j in perm]
    order = [pools[int(j)] for j in rng.permutation(len(pools))]
    k = int(rng.integers(1, k_max + 1))
    out: List[str] = []
    i = 0
    while len(out) < k and any(order):
        p = order[i % len(order)]
        if p:
            s = p.pop(0)
            if s not in out:
                out.append(s)
        i += 1
    return out


def _sentence(raw: str, sent_id: int) -> Dict[str, Any]:
    tokens = re.findall(r"[a-z0-9]+", raw.lower())
    return {"tokens": tokens, "raw": raw, "sent_id": int(sent_id), "sent": " ".join(tokens)}


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------
def _make_image(seed: int, index: int) -> Tuple[bytes, Dict[str, Any], List[Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]:
    """Render one scene; returns (jpeg bytes, image record, annotations, refs per dataset)."""
    scene = _plan(seed, index)
    rrng = np.random.default_rng([seed, index, 1])   # rendering stream
    # one text stream per dataset, so that changing one dataset's wording leaves the others alone
    trngs = {ds: np.random.default_rng([seed, index, 2, j]) for j, ds in enumerate(DATASETS)}
    W, H = scene.width, scene.height
    image_id = FIRST_IMAGE_ID + index
    file_name = f"COCO_train2014_{image_id:012d}.jpg"
    light = _unit3(0.55 * scene.side, -0.7, 0.55)

    tone, colours = _background(scene, rrng)
    wb = (1.0 + np.asarray((1.0, 0.0, -1.0), np.float32) * rrng.uniform(-0.035, 0.05)).astype(np.float32)
    colours *= wb
    for o in scene.objs:
        _render_object(o, rrng, light, scene.side)
    lf = _light_field(scene, rrng)
    tone *= _shadow_factor(scene)
    tone *= lf
    img = tone[..., None] * colours[:, None, :]
    books = _shelf(scene, img, rrng, lf) if scene.shelf else None
    draw = sorted(scene.objs, key=lambda a: (a.base, a.cx))
    for o in draw:
        ys, xs = slice(o.y0, o.y0 + o.alpha.shape[0]), slice(o.x0, o.x0 + o.alpha.shape[1])
        a = o.alpha[..., None]
        img[ys, xs] = (o.rgb * wb) * (lf[ys, xs, None] * a) + img[ys, xs] * (1 - a)
    pixels = _camera(img, rrng)

    # visible masks, front to back
    occ = np.zeros((H, W), bool)
    for o in reversed(draw):
        full = np.zeros((H, W), bool)
        full[o.y0:o.y0 + o.mask.shape[0], o.x0:o.x0 + o.mask.shape[1]] = o.mask
        o.visible = full & ~occ
        o.full_area = float(full.sum())
        occ |= full
    annotations: List[Dict[str, Any]] = []
    kept: List[_Obj] = []
    for o in scene.objs:
        polys = _polygons(o.visible)
        if not polys:
            continue
        area, bbox = _ann_geometry(polys, H, W)
        if area < 1:
            continue
        o.vis_area = area
        o.ann = {"id": image_id * 100 + len(kept), "image_id": image_id, "category_id": _CAT_IDS[o.cat],
                 "segmentation": polys, "area": area, "bbox": bbox, "iscrowd": 0}
        annotations.append(o.ann)
        kept.append(o)
    if books is not None:
        vis = books & ~occ
        if vis.any():
            seg = _uncompressed_rle(vis)
            area, bbox = _ann_geometry(seg, H, W)
            annotations.append({"id": image_id * 100 + 90, "image_id": image_id, "category_id": _CAT_IDS["book"],
                                "segmentation": seg, "area": area, "bbox": bbox, "iscrowd": 1})
    scene.objs = kept

    # refs: every object that has look-alikes (>= 2 of its category in the image)
    refs: Dict[str, List[Dict[str, Any]]] = {ds: [] for ds in DATASETS}
    n_sent = {ds: 0 for ds in DATASETS}
    by_cat: Dict[str, List[_Obj]] = {}
    for o in kept:
        by_cat.setdefault(o.cat, []).append(o)
    for k, o in enumerate(kept):
        group = by_cat[o.cat]
        if len(group) < 2 or o.cat == "potted plant":
            continue
        ph = _Phrases(o, group, H)
        r0, r1, r2 = trngs["refcoco"], trngs["refcoco+"], trngs["refcocog"]
        texts = {
            "refcoco": _choose(_refcoco_candidates(ph, r0), r0, 3),
            "refcoco+": _choose(_refcoco_plus_candidates(ph, r1), r1, 3),
            "refcocog": _choose(_refcocog_candidates(ph, scene, r2), r2, 2),
        }
        for ds, sents in texts.items():
            if not sents:
                continue  # e.g. RefCOCO+ has no appearance-only way to tell identical twins apart
            if ds == "refcocog":
                sents = [s[0].upper() + s[1:] + "." for s in sents]
            recs = []
            for s in sents:
                recs.append(_sentence(s, _SENT_ID_BASE[ds] + index * 100 + n_sent[ds]))
                n_sent[ds] += 1
            refs[ds].append({
                "ref_id": index * 20 + k, "ann_id": o.ann["id"], "image_id": image_id, "split": "",
                "sent_ids": [r["sent_id"] for r in recs], "sentences": recs,
                "category_id": _CAT_IDS[o.cat], "file_name": f"COCO_train2014_{image_id:012d}_{o.ann['id']}.jpg",
            })
    buf = BytesIO()
    from PIL import Image

    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    record = {"id": image_id, "file_name": file_name, "height": H, "width": W}
    return buf.getvalue(), record, annotations, refs


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def _check_params(num_images: int, seed: int) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(f"num_images must be an integer in [1, {MAX_IMAGES}], got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def write_demo(out_dir: str | Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> Dict[str, Any]:
    """Write the synthetic mini-RefCOCO (layout in the module docstring) into ``out_dir``.

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
        data, rec, anns, img_refs = _make_image(int(seed), i)
        (images_dir / rec["file_name"]).write_bytes(data)
        images.append(rec)
        annotations.extend(anns)
        for ds, rs in img_refs.items():
            refs[ds].extend((i, r) for r in rs)
    categories = [{"id": cid, "name": name, "supercategory": _SUPER_OF[cid]}
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
            cycle = _SPLIT_CYCLES[scheme]
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
