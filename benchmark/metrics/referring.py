"""Instance-level referring metrics: did the editor change *the referred object*, and only it?

Per sample, with the change map ``c = mean over RGB of |output - source| / 255`` (HxW, in [0, 1]):

* ``change(mask)`` = mean of ``c`` over the mask's pixels.
* target = M, the referred object's mask (``source_mask``).
* distractors = the ``distractor_masks`` whose ``distractor_categories`` equal the sample's
  ``category`` (same-category look-alikes; the filter is applied when the data are loaded),
  each **minus the target's pixels** (an occluding overlap must not charge the target's edit to
  a distractor); a distractor left empty by that is ignored.

Reported per sample:

* ``change_target`` = change(M).
* ``change_distractor_max`` / ``change_distractor_mean`` = max / mean of change(D_j).
* ``referring_margin`` = change_target - change_distractor_max.
* ``referring_accuracy`` = 1 if ``change_target > change_distractor_max + eps`` else 0, with
  ``eps = 0.01`` (``MetricParams.referring_eps``): the target changed more than every distractor,
  by a margin that "nothing changed" (0 vs 0) and low-level noise cannot pass.
* ``distractor_preservation`` = the fraction of distractors with ``change(D_j) < tau``,
  ``tau = 0.05`` (``MetricParams.preservation_tau``).

The distractor-based metrics are NaN for a sample without a same-category distractor (and all
of them when M is missing or empty); results.json counts those samples.

* ``mask_iou`` = IoU(M_hat >= 0.5, M) for editors that also predict where the referred object is
  (``Editor.returns_mask``, e.g. ReferDiffusion's mask head): did the model find the right
  object, whatever it then painted. 1.0 when both are empty; NaN without a predicted mask or M.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List

import numpy as np

from .base import MetricContext, masked_sum

NAMES = ("referring_accuracy", "distractor_preservation", "change_target", "change_distractor_max",
         "change_distractor_mean", "referring_margin", "mask_iou")


def mask_iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``pred >= threshold`` with the boolean ``gt`` (1.0 when both are empty). ``pred`` is
    a probability in [0, 1]; uint8 levels (the cached form) are read as ``level / 255``."""
    p = np.asarray(pred)
    p = (p >= 128) if p.dtype == np.uint8 else (p >= threshold)
    g = np.asarray(gt).astype(bool)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def _change(abs_px: np.ndarray, mask: np.ndarray, n: int) -> float:
    return masked_sum(abs_px, mask) / (3.0 * 255.0 * n)


def compute(ctx: MetricContext, names: Iterable[str]) -> Dict[str, float]:
    names = set(names) & set(NAMES)
    if not names:
        return {}
    out = {n: math.nan for n in names}
    target = ctx.a.target_mask
    if target is None:
        return out
    if "mask_iou" in names and ctx.a.pred_mask is not None:
        out["mask_iou"] = mask_iou(ctx.a.pred_mask, target)
    n_t = int(np.count_nonzero(target))
    if n_t == 0:
        return out
    abs_px = ctx.abs_src
    ct = _change(abs_px, target, n_t)
    changes: List[float] = []
    for m in ctx.a.distractor_masks:
        d = m & ~target
        n_d = int(np.count_nonzero(d))
        if n_d:
            changes.append(_change(abs_px, d, n_d))
    if "change_target" in names:
        out["change_target"] = ct
    if changes:
        cmax = max(changes)
        p = ctx.params
        values = {
            "change_distractor_max": cmax,
            "change_distractor_mean": float(sum(changes) / len(changes)),
            "referring_margin": ct - cmax,
            "referring_accuracy": 1.0 if ct > cmax + p.referring_eps else 0.0,
            "distractor_preservation": sum(1 for c in changes if c < p.preservation_tau) / len(changes),
        }
        out.update({k: v for k, v in values.items() if k in names})
    return out
