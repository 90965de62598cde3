"""Attribute plates: how a demo object would look in another colour or material, under the same light.

The renderers are linear in an object's base albedo: every pixel of an object's crop is
``albedo * g + c``, where ``g`` holds the shading (diffuse light, ambient occlusion, the
renderer's own albedo factors) and ``c`` everything that does not follow the albedo (specular
highlights, rim light, labels, caps, contrasting stripes, a cup's coffee). Rendering the object
twice more from the same random state with two grey albedos gives both maps exactly, and then:

* a colour target ``t`` of ``vocab.COLOURS`` is ``COLOURS[t] / 255 * g + c``: the object as the
  renderer would draw it in that colour, its pattern kept;
* a material of ``vocab.MATERIALS`` is a seeded albedo texture in place of the colour (wood
  rings, brushed metal, gold, marble veins, speckled stone) with the material's own gloss, and
  glass lets the scene behind show through.

Nothing here draws from the scene's own random streams: a plate's other pixels are those of
the demo image (``image.render_attribute_plates``).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import cv2
import numpy as np

from ..vocab import COLOURS, MATERIALS
from .objects import Light, render_object
from .scene import Obj

# the two grey albedos of the extra renders (low enough that no highlight clips at 1)
_GREYS = (0.2, 0.05)

Look = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def linear_parts(o: Obj, state: Dict[str, Any], light: Light, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """(g, c) of ``o``'s crop with ``o.rgb == albedo * g + c``: two renders of a copy of ``o`` from
    the random ``state`` its own render started from (PCG64 state dict), with grey albedos."""
    outs = []
    for grey in _GREYS:
        c = copy.copy(o)
        c.albedo = np.full(3, grey, np.float32)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state
        render_object(c, rng, light, side)
        if c.alpha.shape != o.alpha.shape or not np.array_equal(c.alpha, o.alpha):  # pragma: no cover - invariant
            raise RuntimeError("an attribute plate's render changed the object's shape")
        outs.append(c.rgb.astype(np.float32))
    g = (outs[0] - outs[1]) / np.float32(_GREYS[0] - _GREYS[1])
    return g, outs[0] - np.float32(_GREYS[0]) * g


def _noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Smooth multi-octave value noise, zero mean and unit std."""
    acc = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        cell = max(1.0, cell)
        gh, gw = int(h / cell) + 3, int(w / cell) + 3
        grid = rng.random((gh, gw)).astype(np.float32) - 0.5
        acc += amp * cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)[:h, :w]
        amp *= 0.5
        cell /= 2.0
    return (acc - acc.mean()) / max(float(acc.std()), 1e-6)


def _streaks(rng: np.random.Generator, h: int, w: int, angle: float, length: float) -> np.ndarray:
    """Anisotropic noise along ``angle`` (brushed metal, wood grain), zero mean and unit std."""
    d = int(math.ceil(math.hypot(h, w))) + 2
    n = cv2.GaussianBlur(rng.standard_normal((d, d)).astype(np.float32), (0, 0), sigmaX=max(1.0, length), sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((d / 2.0, d / 2.0), math.degrees(angle), 1.0)
    n = cv2.warpAffine(n, rot, (d, d), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    oy, ox = (d - h) // 2, (d - w) // 2
    n = n[oy:oy + h, ox:ox + w]
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _spec(g: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The white (specular) part of ``c`` on the albedo-coloured surface (where ``g`` is not 0):
    what it adds to every channel alike; 0 on the parts that keep their own colour (labels)."""
    gl = g.mean(axis=2)
    surface = gl > 0.15 * max(float(gl.max()), 1e-6)
    return np.where(surface, np.clip(c.min(axis=2), 0.0, None), 0.0).astype(np.float32)


def material_look(material: str, g: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> Look:
    """The crop of an object made of ``material`` (float RGB), or for glass a function of the
    scene behind it (divided by the light, as the crop's colours are)."""
    h, w = g.shape[:2]
    size = float(max(h, w, 8))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = float(rng.uniform(0.0, math.pi))
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    spec = _spec(g, c)[..., None]
    if material == "wooden":
        t = v / (size / float(rng.uniform(5.0, 9.0))) + 0.35 * _noise(rng, h, w, size / 3.0)
        rings = ((0.5 + 0.5 * np.sin(2 * math.pi * t)) ** 3 + 0.08 * _streaks(rng, h, w, angle, size / 8.0))
        light, dark = np.array([0.70, 0.48, 0.27], np.float32), np.array([0.38, 0.22, 0.11], np.float32)
        alb = light + (dark - light) * np.clip(0.75 * rings, 0.0, 1.0)[..., None]
        return alb * g + c
    if material in ("metallic", "golden"):
        col = np.array([0.69, 0.70, 0.73] if material == "metallic" else [0.84, 0.66, 0.23], np.float32)
        alb = col * (1.0 + 0.06 * _streaks(rng, h, w, angle, size / 4.0))[..., None]
        gl = g.mean(axis=2)
        ref = max(float(np.percentile(gl[gl > 0], 95)) if (gl > 0).any() else 1.0, 1e-3)
        contrast = np.clip(0.55 + 0.6 * gl / ref, 0.4, 1.3)[..., None]   # metals: harder shading
        tint = col / col.max() if material == "golden" else np.ones(3, np.float32)
        return alb * g * contrast + (c - spec) + 1.8 * spec * tint
    if material == "marble":
        veins = np.abs(np.sin(2 * math.pi * (u / (0.9 * size) + 0.45 * _noise(rng, h, w, size / 1.5, 4))))
        vein = cv2.GaussianBlur((1.0 - veins) ** 14, (0, 0), 0.8) * (0.4 + 0.6 * (0.5 + 0.25 * _noise(rng, h, w, size / 2.0)))
        alb = np.array([0.92, 0.91, 0.88], np.float32) * (1.0 + 0.02 * _noise(rng, h, w, size / 6.0))[..., None]
        alb = alb - (0.5 * vein)[..., None] * np.array([0.5, 0.5, 0.47], np.float32)
        return alb * g + c
    if material == "stone":
        alb = (np.array([0.52, 0.51, 0.48], np.float32) + rng.uniform(-0.02, 0.02, 3).astype(np.float32))
        alb = alb * (1.0 + 0.12 * _noise(rng, h, w, size / 4.0, 4))[..., None]
        alb = alb + (0.035 * rng.standard_normal((h, w)).astype(np.float32))[..., None]
        return alb * g + (c - spec) + 0.3 * spec   # matte
    if material == "glass":
        gl = g.mean(axis=2, keepdims=True)
        body = np.float32(0.12) * g

        def glass(behind: np.ndarray) -> np.ndarray:
            edge = np.clip(1.0 - gl / max(float(gl.max()), 1e-3), 0.0, 1.0)   # darker toward the silhouette
            return behind * np.array([0.62, 0.66, 0.65], np.float32) * (1.0 - 0.35 * edge) + body + (c - spec) + 1.5 * spec

        return glass
    raise ValueError(f"unknown material {material!r}; expected one of {MATERIALS}")


def attribute_looks(o: Obj, state: Dict[str, Any], light: Light, side: int, targets: Sequence[str],
                    seeds: Sequence[int]) -> Dict[str, Look]:
    """The new appearance of ``o``'s crop for every target (a colour or a material); each
    material's texture is drawn from ``default_rng([*seeds, material index])``."""
    g, c = linear_parts(o, state, light, side)
    if not (g > 1e-3).any():
        raise ValueError(f"the demo's {o.cat} has no colour of its own to change (its renderer ignores it)")
    out: Dict[str, Look] = {}
    for t in targets:
        if t in COLOURS:
            out[t] = np.asarray(COLOURS[t], np.float32) / np.float32(255.0) * g + c
        elif t in MATERIALS:
            out[t] = material_look(t, g, c, np.random.default_rng([*seeds, MATERIALS.index(t)]))
        else:
            raise ValueError(f"unknown attribute {t!r}: expected a colour {sorted(COLOURS)} or a material {list(MATERIALS)}")
    return out
