"""The backdrop: wall and table, the shelf of books (the crowd region), lighting, cast shadows, camera."""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..vocab import COLOURS
from .scene import Obj, Scene, pick

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


def background(scene: Scene, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
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
        colour = np.asarray(pick(rng, _WOODS), np.float32)
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
        colour = np.asarray(pick(rng, _TILES), np.float32)
        table = (1 + 0.05 * tv + 0.02 * _window(soft, rng, th, W)) * (1 - 0.35 * grout)
    else:
        colour = np.asarray(pick(rng, _CLOTHS), np.float32)
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
    colours[:hz] = np.asarray(pick(rng, _WALLS), np.float32) * rng.uniform(0.92, 1.04)
    colours[hz:] = colour
    return tone, colours


def light_field(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Key-light falloff across the frame times a lens vignette times exposure, (H, W)."""
    W, H = scene.width, scene.height
    ys = np.arange(H, dtype=np.float32)[:, None] / H - 0.5
    xs = np.arange(W, dtype=np.float32)[None, :] / W - 0.5
    return ((1.0 - 0.28 * scene.side * xs) * (1.0 - 0.5 * (xs * xs + ys * ys)) * rng.uniform(0.95, 1.08)).astype(
        np.float32)


def shelf(scene: Scene, img: np.ndarray, rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
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
        c = np.asarray(pick(rng, tuple(COLOURS.values())), np.float32) / 255.0 * 0.7 + 0.12
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


def shadow_factor(scene: Scene, objs: Optional[Sequence[Obj]] = None) -> np.ndarray:
    """Background darkening (H, W) from each object's cast shadow (a sheared silhouette) and contact shadow.

    ``objs``: the objects that cast shadows (default: all of the scene's; a clean plate leaves one out).

    Drawn at half resolution: the shadows are soft anyway, and full-size blurs were costly.
    """
    W, H = scene.width, scene.height
    w2, h2 = (W + 1) // 2, (H + 1) // 2
    cast = np.zeros((h2, w2), np.float32)
    contact = np.zeros((h2, w2), np.float32)
    sx, sy = -0.45 * scene.side, 0.2
    u = min(W, H)
    for o in (scene.objs if objs is None else objs):
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


def camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens softness and sensor noise, then 8-bit quantisation."""
    H, W = img.shape[:2]
    raw, _ = _noise_bank()
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += _window(raw, rng, H, W) * np.float32(0.011)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


