"""Object renderers: each fills an (h + 2 PAD, w + 2 PAD) crop of one object and returns (mask, colour)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

import cv2
import numpy as np

from .scene import PAD, Obj, pick
from .shapes import blob, contrast, fine_noise, height_normals, lathe, opening, rgb, shade, unit3

Light = Tuple[float, float, float]             # unit vector towards the key light
Normals = Tuple[np.ndarray, np.ndarray, np.ndarray]
# (obj, rng, xx, yy, light, side) -> (mask, colour) of the obj's crop; side: -1 light from the left, +1 right
Renderer = Callable[[Obj, np.random.Generator, np.ndarray, np.ndarray, Light, int],
                    Tuple[np.ndarray, np.ndarray]]


def render_object(o: Obj, rng: np.random.Generator, light: Light, side: int) -> None:
    """Render ``o`` at its placement: sets its crop origin (x0, y0), mask, alpha and colour."""
    bh, bw = o.h + 2 * PAD, o.w + 2 * PAD
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    mask, col = _RENDERERS[o.cat](o, rng, xx, yy, light, side)
    # ambient occlusion towards the contact with the table
    y_bot = PAD + o.h
    ao = 1.0 - 0.22 * np.clip((yy - (y_bot - 0.08 * o.h)) / max(1.0, 0.08 * o.h), 0.0, 1.0)
    col = np.clip(col * ao[..., None], 0.0, 1.0)
    m = mask.astype(np.float32)
    # premultiplied soft edge: a 1-px antialiased silhouette without dark fringes
    a = cv2.GaussianBlur(m, (3, 3), 0.6)
    prem = cv2.GaussianBlur(col * m[..., None], (3, 3), 0.6)
    o.rgb = prem / np.maximum(a, 1e-4)[..., None]
    o.alpha = a
    o.mask = mask
    o.x0 = int(round(o.cx - o.w / 2)) - PAD
    o.y0 = int(round(o.base - o.h)) - PAD


def _r_cup(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
           side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R = w / 2.55
    hs = int(pick(rng, (-1, 1)))
    cx = PAD + (R if hs > 0 else w - R)
    ry = 0.26 * R
    yc, y_bot = PAD + ry, PAD + h
    alb = rgb(o.colour, rng, albedo=o.albedo)
    # handle (behind the body): a thick ring shaded as a tube
    hmask = np.zeros(xx.shape, np.uint8)
    th = max(2, int(round(0.17 * R)))
    hcx = int(round(cx + hs * R * 0.98))
    cv2.ellipse(hmask, (hcx, int(round(PAD + 0.5 * h))), (max(2, int(0.42 * R)), max(3, int(0.3 * h))),
                0, 0, 360, 1, th)
    dt = cv2.distanceTransform(hmask, cv2.DIST_L2, 3)
    tube = np.sqrt(np.clip(dt * (th - dt), 0, None))
    col = shade(alb, height_normals(tube, 2.0), light, spec=0.35)
    mask = hmask > 0
    body, n, t = lathe(xx, yy, cx, yc, y_bot, (0.0, 1.0), (0.82, 1.0), R, foot=0.3)
    balb = np.broadcast_to(alb, xx.shape + (3,)).copy()
    if o.pattern == "striped":
        band = (t > 0.42) & (t < 0.6)
        balb[band] = contrast(o.colour)
    bc = shade(balb, n, light, spec=0.45, shin=30)
    col[body] = bc[body]
    mask |= body
    outer, inner = opening(xx, yy, cx, yc, R, ry, max(1.5, 0.07 * R))
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


def _r_bottle(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
              side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R = w / 2
    cx, y_top, y_bot = PAD + w / 2, PAD + 1.0, PAD + h
    mask, n, t = lathe(xx, yy, cx, y_top, y_bot, (0, 0.5, 0.62, 0.72, 0.89, 0.895, 1.0),
                        (1.0, 1.0, 0.8, 0.37, 0.35, 0.42, 0.42), R, foot=0.22)
    glass = rgb(o.colour, rng, albedo=o.albedo) * (0.78 if o.colour != "white" or o.albedo is not None else 0.95)
    alb = np.broadcast_to(glass, xx.shape + (3,)).copy()
    cap = t >= 0.895
    alb[cap] = np.asarray(pick(rng, ((0.85, 0.7, 0.2), (0.9, 0.9, 0.9), (0.15, 0.15, 0.15), (0.75, 0.1, 0.1))),
                          np.float32)
    if o.pattern == "label":
        lab = (t > 0.14) & (t < 0.44)
        alb[lab] = np.asarray((0.93, 0.9, 0.82), np.float32)
        stripe = (t > 0.25) & (t < 0.31)
        alb[stripe] = contrast(o.colour) * 0.8
    col = shade(alb, n, light, amb=0.35, spec=0.75, shin=60)
    # glass rim light on the side away from the key light
    rim = np.exp(-(((n[0] + 0.82 * side) / 0.12) ** 2)) * (~cap)
    col += (0.18 * rim)[..., None]
    return mask, col


def _r_vase(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
            side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R = w / 2
    cx, y_bot = PAD + w / 2, PAD + h
    rx = 0.56 * R
    ry = 0.22 * rx
    yc = PAD + ry
    mask, n, t = lathe(xx, yy, cx, yc, y_bot, (0, 0.08, 0.35, 0.62, 0.82, 0.92, 1.0),
                        (0.55, 0.78, 1.0, 0.82, 0.4, 0.42, 0.56), R, foot=0.2)
    base = rgb(o.colour, rng, albedo=o.albedo)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    if o.pattern == "striped":
        band = ((t > 0.25) & (t < 0.31)) | ((t > 0.55) & (t < 0.6))
        alb[band] = contrast(o.colour)
    col = shade(alb, n, light, spec=0.55, shin=40)
    outer, inner = opening(xx, yy, cx, yc, rx, ry, max(1.2, 0.12 * rx))
    col[outer & ~inner] = np.clip(base * 1.05 + 0.05, 0, 1)
    col[inner] = base * 0.25
    return mask | outer, col


def _r_bowl(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
            side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R = w / 2
    cx, y_bot = PAD + w / 2, PAD + h
    ry = 0.3 * R
    yc = PAD + ry
    mask, n, t = lathe(xx, yy, cx, yc, y_bot, (0, 0.1, 0.12, 0.3, 0.6, 0.85, 1.0),
                        (0.4, 0.4, 0.5, 0.76, 0.93, 0.99, 1.0), R, foot=0.25)
    base = rgb(o.colour, rng, albedo=o.albedo)
    col = shade(base, n, light, spec=0.5, shin=40)
    outer, inner = opening(xx, yy, cx, yc, R, ry, max(1.5, 0.045 * R))
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


def _sphere_like(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
                 parts: Sequence[Tuple[float, ...]], noise: float = 0.0, blur: float = 0.0
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Normals]:
    """A union of ellipsoids, optionally roughened or smoothed: (mask, part index, height, normals)."""
    hmap, idx = blob(xx, yy, parts)
    mask = idx >= 0
    if noise:
        hmap = hmap + noise * fine_noise(rng, hmap.shape, 0.9) * mask
    if blur:
        hmap = cv2.GaussianBlur(hmap, (0, 0), blur) * mask
    return mask, idx, hmap, height_normals(hmap)


def _r_ball(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
            side: int) -> Tuple[np.ndarray, np.ndarray]:
    d = o.w
    r = d / 2
    mask, _, _, n = _sphere_like(o, rng, xx, yy, [(PAD + r, PAD + r, r, r, 0.0, 0.0)])
    base = rgb(o.colour, rng, albedo=o.albedo)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    ax, ay, az = unit3(*rng.normal(0, 1, 3).astype(np.float32) * np.asarray((0.4, 1.0, 0.4), np.float32))
    dot = n[0] * ax + n[1] * ay + n[2] * az
    if o.pattern == "striped":
        alb[np.abs(dot) < 0.22] = contrast(o.colour)
    else:  # seams of a rubber ball
        seam = (np.abs(dot) < 0.03) | (np.abs(n[0] * ay - n[1] * ax) < 0.025)
        alb[seam] = base * 0.45
    return mask, shade(alb, n, light, spec=0.4, shin=28)


def _r_orange(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
              side: int) -> Tuple[np.ndarray, np.ndarray]:
    rx, ry = o.w / 2, o.h / 2
    cx, cy = PAD + rx, PAD + ry
    mask, _, _, n = _sphere_like(o, rng, xx, yy, [(cx, cy, rx, ry, 0.0, 0.0)], noise=0.5)
    base = rgb("orange", rng, (240, 130, 20), albedo=o.albedo)
    if o.albedo is None:  # the orange peel's own tint
        base = base * np.asarray((1.0, 0.92, 0.8), np.float32)
    alb = base * (1 + 0.05 * fine_noise(rng, xx.shape, 2.0))[..., None]
    col = shade(alb, n, light, spec=0.22, shin=14)
    cv2.circle(col, (int(round(cx + 0.05 * rx)), int(round(cy - 0.72 * ry))), max(1, int(0.07 * rx)),
               (0.25, 0.3, 0.08), -1, cv2.LINE_AA)
    return mask, col


def _r_apple(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
             side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    cx = PAD + w / 2
    y = lambda f: PAD + f * h  # noqa: E731
    parts = [(cx - 0.17 * h, y(0.42), 0.3 * h, 0.27 * h, 0.0, 0.0),
             (cx + 0.17 * h, y(0.42), 0.3 * h, 0.27 * h, 0.0, 0.0),
             (cx, y(0.58), 0.47 * h, 0.41 * h, 0.0, 0.0)]
    mask, _, hmap, _ = _sphere_like(o, rng, xx, yy, parts, blur=max(1.0, 0.05 * h))
    dip = np.exp(-(((xx - cx) / (0.08 * h)) ** 2 + ((yy - y(0.2)) / (0.06 * h)) ** 2))
    hmap = (hmap - 0.12 * h * dip) * mask
    n = height_normals(hmap)
    base = rgb(o.colour, rng, albedo=o.albedo)
    blush = np.asarray({"red": (0.85, 0.62, 0.2), "green": (0.75, 0.78, 0.25),
                        "yellow": (0.85, 0.55, 0.2)}.get(o.colour or "", (0.8, 0.6, 0.2)), np.float32)
    if o.albedo is not None:  # a plate: streaks of a deeper shade of the new colour
        blush = base * np.float32(0.8)
    streak = cv2.resize(rng.standard_normal((3, 12), dtype=np.float32), (xx.shape[1], xx.shape[0]),
                        interpolation=cv2.INTER_CUBIC)
    m = np.clip(0.25 + 0.25 * streak + 0.3 * (yy - y(0.5)) / h, 0, 0.7)[..., None]
    alb = base * (1 - m) + blush * m
    col = shade(alb, n, light, spec=0.45, shin=35)
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


def _r_donut(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
             side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    R, ry = w / 2, h / 2
    cx, cy = PAD + R, PAD + ry
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
    hmap = hmap + 0.06 * tube * frost + 0.15 * fine_noise(rng, hmap.shape, 1.0) * mask
    n = height_normals(hmap * mask, 1.0)
    dough = np.asarray((0.82, 0.58, 0.32), np.float32) * rng.uniform(0.92, 1.05)
    icing = {"pink": (0.95, 0.52, 0.68), "brown": (0.3, 0.16, 0.08), "white": (0.96, 0.94, 0.9)}
    ic = np.asarray(icing.get(o.colour or "", (0.95, 0.52, 0.68)) if o.albedo is None else o.albedo, np.float32)
    alb = np.broadcast_to(dough, xx.shape + (3,)).copy()
    alb *= (1 - 0.25 * np.clip(np.abs(2 * s - 1) - 0.6, 0, 1) * 2.5)[..., None]  # browner crust at the sides
    alb[frost] = ic
    col = shade(alb, n, light, spec=0.12, shin=10)
    gloss = shade(np.zeros(3, np.float32), n, light, amb=0.0, spec=0.5, shin=40)
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
                cv2.line(col, p0, p1, pick(rng, pal), max(1, int(0.025 * R)), cv2.LINE_AA)
    col[~mask] = 0
    return mask, col


def _r_book(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
            side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    sw = max(3, int(round(0.15 * w)))
    top = max(2, int(round(0.055 * h)))
    pages_right = int(pick(rng, (-1, 1))) > 0
    cl = PAD + (0 if pages_right else sw)
    cr = cl + (w - sw)
    ct, cb = PAD + top, PAD + h
    base = rgb(o.colour, rng, albedo=o.albedo)
    mask = np.zeros(xx.shape, np.uint8)
    col = np.zeros(xx.shape + (3,), np.float32)
    # front cover with a slight gradient towards the light and a title label
    cover = (xx >= cl) & (xx < cr) & (yy >= ct) & (yy < cb)
    g = 0.86 + 0.12 * np.clip(-side * (xx - (cl + cr) / 2) / max(1, cr - cl), -1, 1)
    col[cover] = (base[None, None, :] * g[..., None])[cover]
    lab_c = np.asarray(pick(rng, ((0.92, 0.85, 0.6), (0.95, 0.95, 0.92), (0.15, 0.15, 0.15))), np.float32)
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
    spec = shade(np.zeros(3, np.float32), (np.zeros_like(xx), np.zeros_like(xx) - 0.2, np.ones_like(xx)),
                  light, amb=0, spec=0.12, shin=4)
    col[cover] += spec[cover]
    return mask > 0, col


def _r_teddy(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
             side: int) -> Tuple[np.ndarray, np.ndarray]:
    h = float(o.h)
    cx = PAD + o.w / 2
    y = lambda f: PAD + f * h  # noqa: E731
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
    hmap, idx = blob(xx, yy, parts)
    mask = idx >= 0
    fur = fine_noise(rng, hmap.shape, 0.7)
    n = height_normals(hmap + 0.6 * fur * mask, 1.0)
    base = rgb(o.colour, rng, albedo=o.albedo)
    if o.colour == "brown" and o.albedo is None:
        base = np.clip(base * 1.35, 0, 1)
    light_c = np.clip(base * 0.55 + 0.42, 0, 1)
    alb = np.broadcast_to(base, xx.shape + (3,)).copy()
    lighter = np.isin(idx, (8, 9, 10, 11, 12))
    alb[lighter] = light_c
    tummy = (((xx - cx) / (0.15 * h)) ** 2 + ((yy - y(0.68)) / (0.17 * h)) ** 2 <= 1.0) & (idx == 0)
    alb[tummy] = base * 0.6 + light_c * 0.4
    alb *= (1.0 + 0.1 * fur)[..., None]
    col = shade(alb, n, light, amb=0.36, spec=0.06, shin=8)
    for ex in (-0.075, 0.075):
        cv2.circle(col, (int(round(cx + ex * h)), int(round(y(0.23)))), max(1, int(round(0.022 * h))),
                   (0.04, 0.03, 0.03), -1, cv2.LINE_AA)
        cv2.circle(col, (int(round(cx + ex * h - 0.006 * h)), int(round(y(0.225)))), max(1, int(0.006 * h)),
                   (0.8, 0.8, 0.8), -1, cv2.LINE_AA)
    cv2.ellipse(col, (int(round(cx)), int(round(y(0.31)))), (max(1, int(0.03 * h)), max(1, int(0.02 * h))),
                0, 0, 360, (0.06, 0.04, 0.04), -1, cv2.LINE_AA)
    col[~mask] = 0
    return mask, col


def _r_plant(o: Obj, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, light: Light,
             side: int) -> Tuple[np.ndarray, np.ndarray]:
    w, h = o.w, o.h
    cx = PAD + w / 2
    pot_top = PAD + 0.58 * h
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
    hmap, idx = blob(xx, yy, parts)
    leaf = idx >= 0
    greens = np.asarray([(0.16, 0.42, 0.14), (0.22, 0.5, 0.18), (0.12, 0.34, 0.12), (0.28, 0.55, 0.2)], np.float32)
    alb = greens[np.clip(idx, 0, None) % 4]
    col = shade(alb, height_normals(hmap, 1.2), light, spec=0.25, shin=20)
    pot, n, _ = lathe(xx, yy, cx, pot_top, PAD + h, (0, 0.85, 0.86, 1.0), (0.72, 0.98, 1.08, 1.08), R, foot=0.2)
    terracotta = np.asarray((0.72, 0.38, 0.24), np.float32) * rng.uniform(0.9, 1.05)
    pc = shade(terracotta, n, light, spec=0.12, shin=10)
    col[pot] = pc[pot]
    outer, inner = opening(xx, yy, cx, pot_top, 1.08 * R, ry, max(1.5, 0.06 * R))
    soil = inner & (yy > pot_top - 0.2 * ry)
    col[outer & ~leaf] = np.clip(terracotta * 1.05, 0, 1)
    col[soil & ~leaf] = (0.2, 0.13, 0.08)
    mask = leaf | pot | outer
    col[~mask] = 0
    return mask, col


# A new category needs a renderer here, its size/colours/patterns in scene.py and its words in grammar.py.
_RENDERERS: Dict[str, Renderer] = {
    "cup": _r_cup, "bottle": _r_bottle, "vase": _r_vase, "bowl": _r_bowl, "sports ball": _r_ball,
    "orange": _r_orange, "apple": _r_apple, "donut": _r_donut, "book": _r_book, "teddy bear": _r_teddy,
    "potted plant": _r_plant,
}


