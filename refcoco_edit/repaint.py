"""Twice-repainting (FreeEdit / FreeBench) for the reference-based view: the *second repaint*.

A triplet of the reference-based view is (before, reference, after) with the real photo as
*after*. The *before* image is the first repaint: the object's region repainted by a build
pipeline (a removal's output for an ``add`` triplet, a replacement's output for a ``replace``
one). The *reference* (exemplar) shows the same object -- its pixels taken from the after image,
so its identity is kept -- in a repainted surrounding, so that no pixel of its context is shared
with the after image and a model cannot learn to copy-paste it back in place.

A ``Repainter`` makes that reference from (after image, object mask, category, seed):

* ``BackdropRepainter`` (``backdrop``, the default, no weights): a new square canvas whose
  background is synthesized from the seed alone (a wall/floor split at a random height, random
  hues, smooth value noise, a soft contact shadow), and the object's pixels warped onto it with a
  geometric jitter: a scale change, a small rotation, an optional mirror flip and a random
  position. Nothing of the after image but the object's own pixels reaches the canvas.
* ``refcoco_edit.pipelines.repaint_surround.SDSurroundRepainter`` (``sd-inpaint-surround``, with
  ``--repaint-model``): SD inpainting of everything *outside* the object mask in a square window
  around the object; the object's original pixels are pasted back exactly.

Each returns a ``Repaint``: the RGB reference, the object's mask in it, and a record of what made
it (``describe``), which the view stores in its ``repaint`` column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

__all__ = ["Repaint", "Repainter", "BackdropRepainter", "mask_box"]


@dataclass
class Repaint:
    """A reference image made by a repainter: HxWx3 uint8 RGB, the object's HxW bool mask in it,
    and the parameters drawn for it (scale, angle, flip, ...)."""

    image: np.ndarray
    mask: np.ndarray
    params: Dict[str, Any] = field(default_factory=dict)


def mask_box(mask: np.ndarray) -> tuple:
    """(x0, y0, x1, y1) of a non-empty mask (x1, y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class Repainter:
    """Makes the reference of a triplet: the object of ``mask`` in ``image`` with a new surrounding."""

    name = "repainter"

    def describe(self) -> Dict[str, Any]:
        """What made the references (stored with every triplet)."""
        return {"repainter": self.name}

    def repaint(self, image: np.ndarray, mask: np.ndarray, category: str, seed: int) -> Repaint:
        raise NotImplementedError

    @staticmethod
    def check(image: np.ndarray, mask: np.ndarray) -> None:
        """ValueError unless ``image`` is HxWx3 uint8 and ``mask`` a non-empty HxW mask of it."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"the after image must be HxWx3 uint8, got {image.shape} {image.dtype}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"the object mask is {mask.shape}, the image {image.shape[:2]}")
        if not mask.any():
            raise ValueError("the object mask is empty")


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random coarse grid upsampled bicubically."""
    import cv2

    g = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    return np.clip(cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


class BackdropRepainter(Repainter):
    """The weight-free second repaint: the object, jittered, on a backdrop synthesized from the seed.

    ``scale``: (min, max) of the scale change; ``fill``: (min, max) of the scaled object's longer
    side as a fraction of the square reference's side, which is clamped to ``sizes`` (then the
    scale follows the side); ``max_angle``: rotation in degrees, uniform in [-max_angle,
    max_angle]; ``flip``: probability of a mirror flip.
    """

    name = "backdrop"

    def __init__(self, scale: tuple = (0.8, 1.25), fill: tuple = (0.45, 0.75), sizes: tuple = (64, 512),
                 max_angle: float = 10.0, flip: float = 0.5):
        lo, hi = (float(v) for v in fill)
        if not 0.05 <= lo <= hi <= 0.95:
            raise ValueError(f"fill must be 0.05 <= min <= max <= 0.95, got {fill}")
        s_lo, s_hi = (float(v) for v in scale)
        if not 0.1 <= s_lo <= s_hi <= 10:
            raise ValueError(f"scale must be 0.1 <= min <= max <= 10, got {scale}")
        z_lo, z_hi = (int(v) for v in sizes)
        if not 32 <= z_lo <= z_hi:
            raise ValueError(f"sizes must be 32 <= min <= max, got {sizes}")
        self.scale, self.fill, self.sizes = (s_lo, s_hi), (lo, hi), (z_lo, z_hi)
        self.max_angle, self.flip = float(max_angle), float(flip)

    def describe(self) -> Dict[str, Any]:
        return {"repainter": self.name, "scale_range": list(self.scale), "fill": list(self.fill),
                "sizes": list(self.sizes), "max_angle": self.max_angle, "flip": self.flip}

    def backdrop(self, rng: np.random.Generator, S: int) -> np.ndarray:
        """A seeded wall-and-floor backdrop, S x S x 3 float in [0, 1] (no input pixels)."""
        horizon = int(S * rng.uniform(0.35, 0.65))
        hue = rng.uniform(0, 1)
        wall = _hsv_rgb(hue, rng.uniform(0.05, 0.35), rng.uniform(0.55, 0.9))
        floor = _hsv_rgb(hue + rng.uniform(0.25, 0.75), rng.uniform(0.15, 0.55), rng.uniform(0.3, 0.7))
        yy = np.arange(S, dtype=np.float32)[:, None] * np.ones((1, S), np.float32)
        img = np.where((yy < horizon)[..., None], wall, floor).astype(np.float32)
        light = 1.0 + 0.12 * _value_noise(rng, S, S, 3) + 0.03 * _value_noise(rng, S, S, 24)
        grad = 1.0 - 0.18 * np.abs(np.linspace(-1, 1, S, dtype=np.float32))[None, :]
        return np.clip(img * (light * grad)[..., None], 0.0, 1.0)

    def repaint(self, image: np.ndarray, mask: np.ndarray, category: str, seed: int) -> Repaint:
        import cv2

        from .seeds import rng_for

        self.check(image, mask)
        rng = rng_for(int(seed), "backdrop-repaint")
        x0, y0, x1, y1 = mask_box(mask)
        crop = image[y0:y1, x0:x1].astype(np.float32) / 255.0
        m = mask[y0:y1, x0:x1].astype(np.float32)
        flip = bool(rng.random() < self.flip)
        if flip:
            crop, m = crop[:, ::-1], m[:, ::-1]
        h, w = m.shape
        scale = float(rng.uniform(*self.scale))
        S = int(np.clip(round(scale * max(h, w) / rng.uniform(*self.fill)), *self.sizes))
        scale = min(scale, 0.9 * S / max(h, w))  # a big object on the largest canvas: scaled down to fit
        angle = float(rng.uniform(-self.max_angle, self.max_angle))
        # the rotated, scaled object's box must fit the canvas
        a = math.radians(angle)
        bw = scale * (abs(w * math.cos(a)) + abs(h * math.sin(a)))
        bh = scale * (abs(w * math.sin(a)) + abs(h * math.cos(a)))
        cx = rng.uniform(bw / 2 + 2, max(bw / 2 + 2, S - bw / 2 - 2))
        cy = rng.uniform(bh / 2 + 2, max(bh / 2 + 2, S - bh / 2 - 2))
        M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        M[:, 2] += (cx - w / 2, cy - h / 2)
        alpha = cv2.warpAffine(np.ascontiguousarray(m), M, (S, S), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
        bg = self.backdrop(rng, S)
        # a soft contact shadow under the object (drawn from its warped mask)
        shadow = cv2.GaussianBlur(np.roll(alpha, max(1, int(0.04 * bh)), axis=0), (0, 0), max(1.0, 0.05 * bh))
        bg = bg * (1.0 - 0.35 * np.clip(shadow, 0, 1))[..., None]
        # premultiplied warp: colour = warped(colour * mask) / warped(mask) inside the object
        prem = cv2.warpAffine(np.ascontiguousarray(crop * m[..., None]), M, (S, S), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        col = prem / np.maximum(alpha, 1e-4)[..., None]
        out = col * alpha[..., None] + bg * (1.0 - alpha[..., None])
        rgb = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
        return Repaint(rgb, alpha >= 0.5, {"scale": round(scale, 6), "angle": round(angle, 4), "flip": flip,
                                           "center": [round(float(cx), 2), round(float(cy), 2)]})
