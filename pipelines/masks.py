"""Edit masks M_e and exact paste-back through them (CPU, numpy + OpenCV).

Every ground-truth pipeline ends the same way:

1. ``edit_mask``: M_e = dilate(source mask ∪ changed region), so that M_e covers the object, what
   replaced it, and a margin for the seam;
2. ``paste_back``: the generated image is blended into the source through a feathered alpha that is
   exactly 0 outside M_e, so the output equals the source bit for bit outside M_e (the contract in
   ``pipelines.base``; the background metrics such as L2_bg rely on it);
3. ``check_output``: the contract is verified (size, exact background, a real change inside M_e)
   and violations become ``PipelineError`` with a quarantine reason code.
"""
from __future__ import annotations

from typing import Dict, Optional

import cv2
import numpy as np

from pipelines.base import PipelineError

__all__ = ["dilate", "erode", "changed_region", "edit_mask", "feather_alpha", "paste_back", "check_output"]


def _ellipse(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def _as_u8(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) > 0).astype(np.uint8)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a binary mask by ``px`` pixels with an elliptical (round) kernel; ``px<=0`` copies.

    Round rather than square so the margin is the same in every direction.
    """
    px = int(px)
    if px <= 0:
        return np.asarray(mask).astype(bool, copy=True)
    return cv2.dilate(_as_u8(mask), _ellipse(px)).astype(bool)


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Shrink a binary mask by ``px`` pixels (elliptical kernel); ``px<=0`` copies.

    Pixels beyond the image border count as inside, so a mask touching the border is not eaten
    away from that side.
    """
    px = int(px)
    if px <= 0:
        return np.asarray(mask).astype(bool, copy=True)
    return cv2.erode(_as_u8(mask), _ellipse(px), borderType=cv2.BORDER_REPLICATE).astype(bool)


def changed_region(source: np.ndarray, edited: np.ndarray, threshold: float = 12.0) -> np.ndarray:
    """Pixels whose largest per-channel absolute difference exceeds ``threshold``.

    Isolated specks (JPEG-like noise, single-pixel drift of a generator) are removed with a 3x3
    morphological opening so they do not inflate M_e.
    """
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    changed = (diff > threshold).astype(np.uint8)
    changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, _ellipse(1))
    return changed.astype(bool)


def edit_mask(source_mask: np.ndarray, changed: Optional[np.ndarray] = None, dilate_px: int = 8) -> np.ndarray:
    """M_e = dilate(source_mask ∪ changed, dilate_px): the object, what replaced it, and a seam margin."""
    m = np.asarray(source_mask).astype(bool)
    if changed is not None:
        if changed.shape != m.shape:
            raise ValueError(f"changed {changed.shape} and source_mask {m.shape} differ in shape")
        m = m | changed.astype(bool)
    return dilate(m, dilate_px)


def feather_alpha(edit_mask: np.ndarray, feather_px: int) -> np.ndarray:
    """A soft float32 alpha in [0, 1]: exactly 0 outside ``edit_mask``, rising to 1 inside it.

    The ramp is the (Euclidean) distance to the nearest pixel outside the mask divided by
    ``feather_px``, so the seam is soft but lies entirely *inside* M_e: nothing outside changes.
    The image border does not count as "outside", so masks touching it stay at 1 there.
    """
    m = _as_u8(edit_mask)
    if feather_px <= 0 or not m.any():
        return m.astype(np.float32)
    if m.all():
        return np.ones(m.shape, np.float32)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    alpha = np.minimum(dist / float(feather_px), 1.0).astype(np.float32)
    alpha[m == 0] = 0.0
    return alpha


def paste_back(source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray, feather_px: int = 4) -> np.ndarray:
    """Blend ``edited`` into ``source`` through the feathered M_e; uint8 output.

    The result equals ``source`` bit-exactly wherever ``edit_mask`` is False (enforced explicitly,
    not left to floating point), which is what makes background metrics meaningful.
    """
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    if edit_mask.shape != source.shape[:2]:
        raise ValueError(f"edit_mask {edit_mask.shape} does not match image {source.shape[:2]}")
    m = np.asarray(edit_mask).astype(bool)
    alpha = feather_alpha(m, feather_px)
    if source.ndim == 3:
        alpha = alpha[..., None]
    src = source.astype(np.float32)
    blended = src + (edited.astype(np.float32) - src) * alpha
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    keep = ~m
    out[keep] = source[keep]
    return out


def check_output(
    source: np.ndarray,
    output: np.ndarray,
    edit_mask: np.ndarray,
    min_changed_fraction: float = 0.02,
    min_mean_diff: float = 2.0,
    pixel_threshold: float = 8.0,
) -> Dict[str, float]:
    """Verify the pipeline contract and return change statistics.

    Raises ``PipelineError("pipeline_error")`` when the size/dtype differs or any pixel outside M_e
    differs from the source; ``PipelineError("no_change")`` when, inside M_e, fewer than
    ``min_changed_fraction`` of the pixels changed by more than ``pixel_threshold`` (max over
    channels) or the mean absolute difference is below ``min_mean_diff`` — i.e. nothing
    meaningful was edited. Returns ``{"changed_fraction", "mean_abs_diff_inside"}``.
    """
    if output.shape != source.shape or output.dtype != source.dtype:
        raise PipelineError(
            "pipeline_error", f"output {output.shape} {output.dtype} differs from source {source.shape} {source.dtype}"
        )
    m = np.asarray(edit_mask).astype(bool)
    if m.shape != source.shape[:2]:
        raise PipelineError("pipeline_error", f"edit_mask {m.shape} does not match image {source.shape[:2]}")
    if not m.any():
        raise PipelineError("no_change", "the edit mask is empty")
    diff = np.abs(source.astype(np.int16) - output.astype(np.int16))
    per_px = diff.max(axis=2) if diff.ndim == 3 else diff
    outside = int(np.count_nonzero(per_px[~m]))
    if outside:
        raise PipelineError("pipeline_error", f"{outside} pixels outside the edit mask differ from the source")
    inside = per_px[m]
    changed_fraction = float(np.count_nonzero(inside > pixel_threshold)) / inside.size
    mean_diff = float(diff[m].mean())
    stats = {"changed_fraction": changed_fraction, "mean_abs_diff_inside": mean_diff}
    if changed_fraction < min_changed_fraction or mean_diff < min_mean_diff:
        raise PipelineError(
            "no_change",
            f"no meaningful change inside the edit mask (changed fraction {changed_fraction:.4f} < "
            f"{min_changed_fraction} or mean abs diff {mean_diff:.2f} < {min_mean_diff})",
        )
    return stats
