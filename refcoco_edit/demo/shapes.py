"""Shading and shape primitives of the object renderers: normals, Lambert/Blinn-Phong, lathes, blobs."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..vocab import COLOURS

def unit3(x: Any, y: Any, z: Any) -> Tuple[Any, Any, Any]:
    """Normalise a 3-vector (scalars or arrays of the same shape)."""
    n = np.sqrt(x * x + y * y + z * z) + 1e-6
    return x / n, y / n, z / n


def shade(alb: Any, n: Tuple[np.ndarray, np.ndarray, np.ndarray], light: Tuple[float, float, float],
           amb: float = 0.32, spec: float = 0.3, shin: float = 24.0) -> np.ndarray:
    """Lambert diffuse + Blinn-Phong highlight: albedo (3,) or (h, w, 3) -> shaded colour."""
    nx, ny, nz = n
    lx, ly, lz = light
    ndl = np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)
    hx, hy, hz = unit3(lx, ly, lz + 1.0)
    ndh = np.clip(nx * hx + ny * hy + nz * hz, 0.0, 1.0)
    diff = (amb + (1.0 - amb) * ndl).astype(np.float32)
    s = (spec * ndh ** shin).astype(np.float32)
    return np.asarray(alb, np.float32) * diff[..., None] + s[..., None]


def height_normals(h: np.ndarray, strength: float = 1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (nx, ny, nz) of a height map, from its Sobel gradients."""
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


def blob(xx: np.ndarray, yy: np.ndarray, parts: Sequence[Tuple[float, ...]]) -> Tuple[np.ndarray, np.ndarray]:
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


def lathe(xx: np.ndarray, yy: np.ndarray, cx: float, y_top: float, y_bot: float, ts: Sequence[float],
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
    return mask, unit3(nxc, ny, nz), np.broadcast_to(t[:, None], nx.shape)


def opening(xx: np.ndarray, yy: np.ndarray, cx: float, yc: float, rx: float, ry: float,
             rim: float) -> Tuple[np.ndarray, np.ndarray]:
    """The elliptical opening of a cup, vase, bowl or pot: (outer, inner) masks; the rim lies between."""
    outer = ((xx - cx) / rx) ** 2 + ((yy - yc) / ry) ** 2 <= 1.0
    irx, iry = max(1.0, rx - rim), max(1.0, ry - rim * ry / rx)
    inner = ((xx - cx) / irx) ** 2 + ((yy - yc) / iry) ** 2 <= 1.0
    return outer, inner


def rgb(name: Optional[str], rng: np.random.Generator, default: Tuple[int, int, int] = (235, 125, 25),
        albedo: Optional[np.ndarray] = None) -> np.ndarray:
    """The float albedo of colour ``name`` (``default`` when None), with a little brightness jitter.

    ``albedo``: a float RGB in [0, 1] used instead of the colour (an attribute plate's render);
    the jitter is drawn all the same, so the random stream advances as for the colour.
    """
    if albedo is not None:
        base = np.asarray(albedo, np.float32)
    else:
        base = np.asarray(COLOURS[name] if name else default, np.float32) / 255.0
    # brightness varies, hue barely: a "white" cup must not turn lavender
    jitter = rng.uniform(0.93, 1.05) * rng.uniform(0.985, 1.015, 3)
    return np.clip(base * jitter.astype(np.float32), 0.02, 0.97)


def contrast(name: Optional[str]) -> np.ndarray:
    """A band colour that stands out on an object of colour ``name``."""
    return np.asarray((0.85, 0.15, 0.15) if name in ("white", "yellow", "pink") else (0.95, 0.95, 0.93), np.float32)


def fine_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma: float = 0.8) -> np.ndarray:
    """Blurred Gaussian noise (a bump/texture map)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    return cv2.GaussianBlur(n, (0, 0), sigma)


