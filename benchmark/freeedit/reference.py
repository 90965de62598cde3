"""The reference image FreeEdit sees: the exemplar's object cut out by its mask, composited on a
flat background, cropped to the object, padded to a square (5% margin) and resized to the model's
``reference_resolution``. The trainer and the ``freeedit`` editor both prepare exemplars here, so
the model sees the same kind of reference in training and in scoring.

The cut-out is Paint-by-Example's (``pipelines.paint_by_example.exemplar_on_background``): the same
rule the reference-track baselines use.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from refcoco_edit.benchmark.editors.pbe_mask import reference_rgba
from refcoco_edit.pipelines.paint_by_example import exemplar_on_background

__all__ = ["reference_image", "to_pixels"]


def reference_image(image: np.ndarray, mask: Optional[np.ndarray], size: int, background: int = 255) -> np.ndarray:
    """The (size, size, 3) uint8 reference of an exemplar ``image`` (HxWx3 uint8) and its object
    ``mask`` (HxW bool; None = the whole image is the object). ValueError when the mask is empty
    or not of the image's size."""
    from PIL import Image

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"the exemplar must be an HxWx3 uint8 image, got shape {img.shape} dtype {img.dtype}")
    m = np.ones(img.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    rgba = reference_rgba({"image": img, "mask": m})
    if rgba is None:
        raise ValueError(f"the exemplar's object mask is empty or not of the exemplar's size "
                         f"(mask {m.shape}, image {img.shape[:2]})")
    square = exemplar_on_background(rgba, int(background))
    return np.asarray(square.resize((int(size), int(size)), Image.BICUBIC), dtype=np.uint8)


def to_pixels(images: List[np.ndarray]) -> Any:
    """A batch of HxWx3 uint8 images as a float tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(i, np.uint8) for i in images])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
