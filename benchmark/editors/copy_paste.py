"""``copy-paste``: the naive floor of the reference-based track (weight-free).

The exemplar's object, cut out by its mask, is scaled to fit the box of the ground-truth edited
area M_e (aspect ratio kept, centred in the box) and pasted over the before image; every other
pixel stays the before image's, bit for bit. It is *told where*: it declares ``gt_mask`` (the
box) besides ``reference_object`` (the exemplar and its mask), so it is a floor on identity, not
a mask-free method. A model must beat it: the exemplar shows the object in another pose, scale and
surrounding than the after image (the export's twice-repainting), so pasting it back is not the
answer, and nothing blends it into the scene.

Resampling: the object's crop is resized with PIL Lanczos, its mask bilinearly and thresholded
at 0.5 (``paste_object``). A sample with an empty M_e or an empty exemplar mask fails
(``editor_error``) with the reason.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

import numpy as np

from .base import EditFailure, Editor

__all__ = ["CopyPasteEditor", "fit_box", "paste_object"]

Box = Tuple[int, int, int, int]


def _tight_box(mask: np.ndarray) -> Box:
    """(x0, y0, x1, y1), x1/y1 exclusive, of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fit_box(obj_hw: Tuple[int, int], box: Box) -> Box:
    """The box an object of ``obj_hw`` = (h, w) takes when scaled to fit ``box`` (aspect ratio
    kept, at least 1 px per side) and centred in it."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    h, w = obj_hw
    s = min(bw / float(w), bh / float(h))
    nw = min(bw, max(1, int(round(w * s))))
    nh = min(bh, max(1, int(round(h * s))))
    ox, oy = x0 + (bw - nw) // 2, y0 + (bh - nh) // 2
    return ox, oy, ox + nw, oy + nh


def paste_object(image: np.ndarray, exemplar: np.ndarray, exemplar_mask: np.ndarray,
                 box: Box) -> Tuple[np.ndarray, np.ndarray]:
    """(``image`` with the exemplar's object pasted into ``box``, the pasted pixels' mask): the
    object (the tight crop of ``exemplar_mask``) scaled to fit the box (``fit_box``)."""
    from PIL import Image

    ex0, ey0, ex1, ey1 = _tight_box(exemplar_mask)
    crop = np.ascontiguousarray(exemplar[ey0:ey1, ex0:ex1])
    cmask = exemplar_mask[ey0:ey1, ex0:ex1]
    px0, py0, px1, py1 = fit_box(crop.shape[:2], box)
    size = (px1 - px0, py1 - py0)
    obj = np.asarray(Image.fromarray(crop).resize(size, Image.LANCZOS))
    alpha = np.asarray(Image.fromarray(cmask.astype(np.float32)).resize(size, Image.BILINEAR)) >= 0.5
    out = np.array(image, copy=True)
    pasted = np.zeros(image.shape[:2], bool)
    pasted[py0:py1, px0:px1] = alpha
    out[py0:py1, px0:px1][alpha] = obj[alpha]
    return out, pasted


class CopyPasteEditor(Editor):
    """The exemplar's object pasted, scaled to fit, into the box of M_e (the naive floor)."""

    name = "copy-paste"
    protocol = frozenset({"reference_object", "gt_mask"})
    batch_size = 16

    def __init__(self) -> None:  # no options: a typo in --editor-arg is an error, not ignored
        super().__init__()

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["rule"] = ("the exemplar's object (tight crop of its mask) scaled to fit the box of M_e (aspect kept, "
                     "PIL Lanczos; mask bilinear >= 0.5), centred, pasted over the before image; exact elsewhere")
        return d

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        out: List[Union[np.ndarray, EditFailure]] = []
        for img, e in zip(images, extras):
            ref, target = e["reference_object"], np.asarray(e["gt_mask"], bool)
            ex_mask = np.asarray(ref["mask"], bool)
            if not target.any():
                out.append(EditFailure("editor_error", "M_e is empty: no box to paste into"))
            elif not ex_mask.any():
                out.append(EditFailure("editor_error", "the exemplar's object mask is empty"))
            else:
                out.append(paste_object(img, np.asarray(ref["image"]), ex_mask, _tight_box(target))[0])
        return out
