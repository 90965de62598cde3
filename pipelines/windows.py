"""The square context window of the diffusion models: cut it out at the working resolution, and
put the generated crop back. Shared by the diffusion ground-truth pipelines
(``refcoco_edit.pipelines.diffusion.DiffusionGTPipeline``) and the windowed editors of the
benchmark (``refcoco_edit.benchmark.editors.diffusion``), so both map a model's square output to
the source the same way.

* ``crop_to_window``: the window is ``masks.crop_window(region_box, shape, context)`` (a square
  ``context`` x the region box, clipped to the image); the image crop is resized to
  ``resolution`` x ``resolution`` with PIL Lanczos, the mask crop with nearest neighbour (255 =
  edit).
* ``uncrop``: the source with the window replaced by the crop resized back (OpenCV area when
  shrinking, cubic when enlarging); float crops in [0, 1] are rounded to uint8 first.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from refcoco_edit.pipelines.masks import crop_window

__all__ = ["crop_to_window", "uncrop"]

Box = Tuple[int, int, int, int]


def crop_to_window(image: np.ndarray, mask: np.ndarray, region_box: Box, context: float,
                   resolution: int) -> Tuple[Box, Any, Any]:
    """(window, image crop, mask crop): the square context window around ``region_box`` and the
    image/mask crops resized to ``resolution`` (PIL RGB and L images)."""
    from PIL import Image

    win = crop_window(region_box, image.shape, context)
    x0, y0, x1, y1 = win
    r = int(resolution)
    img = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])).resize((r, r), Image.LANCZOS)
    m = Image.fromarray((np.asarray(mask)[y0:y1, x0:x1] * 255).astype(np.uint8)).resize((r, r), Image.NEAREST)
    return win, img, m


def uncrop(source: np.ndarray, window: Box, crop: np.ndarray) -> np.ndarray:
    """The source with ``window`` replaced by the generated crop resized back to it."""
    import cv2

    x0, y0, x1, y1 = window
    out = source.copy()
    c = np.asarray(crop)
    if c.dtype != np.uint8:
        c = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
    interp = cv2.INTER_AREA if c.shape[0] > (y1 - y0) else cv2.INTER_CUBIC
    out[y0:y1, x0:x1] = cv2.resize(c, (x1 - x0, y1 - y0), interpolation=interp)
    return out
