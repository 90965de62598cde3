"""Did the editor leave *every other annotated object* alone? (the referring family's wider check)

The referring metrics (``referring``) compare the target only with its same-category
distractors. These compare it with nothing: they score each other annotated instance of the
image (``other_masks``: every non-crowd object but the referred one, the distractors included),
whatever its category, so a bottle painted over while a bowl is edited is caught.

Per sample, with ``change(mask)`` = mean over the mask's pixels of ``mean over RGB |output -
source| / 255`` (as in ``referring``), and O_j = other_masks[j] **minus the target's pixels**
(where two annotations overlap, the pixels count as the target's; an object left empty by that
is ignored):

* per-object change c_j = change(O_j);
* ``others_preservation`` = the share of objects with c_j < tau, tau = ``MetricParams.
  preservation_tau`` (0.05, the distractors' threshold: above re-encoding noise, below any
  visible edit of the object);
* ``change_others_max`` = max_j c_j (the worst-treated object);
* ``change_others_mean`` = mean_j c_j.

NaN when the sample has no other object, when its other objects are unknown (data written before
schema 1.1, ``other_masks`` null) or when M is missing; results.json counts such samples.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .base import MetricContext, masked_sum

NAMES = ("others_preservation", "change_others_max", "change_others_mean")


def object_changes(abs_px: np.ndarray, target: np.ndarray, others: Sequence[np.ndarray]) -> List[float]:
    """c_j of each other object with pixels left once the target's are removed (``abs_px``: the
    per-pixel sum over channels of |output - source|, int)."""
    out: List[float] = []
    for m in others:
        own = m & ~target
        n = int(np.count_nonzero(own))
        if n:
            out.append(masked_sum(abs_px, own) / (3.0 * 255.0 * n))
    return out


def compute(ctx: MetricContext, names: Iterable[str]) -> Dict[str, float]:
    names = set(names) & set(NAMES)
    if not names:
        return {}
    out = {n: math.nan for n in names}
    others: Optional[List[np.ndarray]] = ctx.a.other_masks
    target = ctx.a.target_mask
    if others is None or target is None or not others:
        return out
    changes = object_changes(ctx.abs_src, target, others)
    if not changes:
        return out
    values = {
        "others_preservation": sum(1 for c in changes if c < ctx.params.preservation_tau) / len(changes),
        "change_others_max": max(changes),
        "change_others_mean": float(sum(changes) / len(changes)),
    }
    out.update({k: v for k, v in values.items() if k in names})
    return out
