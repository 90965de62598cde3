"""CLIP-based metrics: the views of a sample that CLIP sees for AP, CLIP-Sim_fg (paper), CLIP
whole/edited (PIE-Bench), CLIP-I and CLIP-T (MagicBrush). Definitions: ``model_based``.

The backbone is the model layer's ``refcoco_edit.models.ClipEncoder`` (unnormalised projected
embeddings as float32; the cosines are taken in float64 by ``model_based``). The view rules,
which belong to the metrics and stay here:

* ``bbox_crop``: ``image[y0:y1, x0:x1]`` at the tight box of the mask (exclusive ends, no margin);
* ``masked_image``: the image with every pixel outside the mask set to 0, full frame (PIE-Bench's
  ``img * mask`` before its CLIP score).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["bbox_crop", "masked_image"]


def bbox_crop(image: np.ndarray, mask: np.ndarray) -> Optional[np.ndarray]:
    """The crop of ``image`` at the tight bounding box of ``mask``; None when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return np.ascontiguousarray(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def masked_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with the pixels outside ``mask`` set to 0 (uint8, same size)."""
    return np.where(np.asarray(mask, dtype=bool)[..., None], image, np.uint8(0)).astype(np.uint8)
