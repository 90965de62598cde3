"""MagicBrush's pixel metrics: L1 and L2 between the output and the **reference** image.

As in MagicBrush's evaluation script (images read in [0, 1] with ``ToTensor``, then
``mean(|a - b|)`` and ``mean((a - b)^2)``), over the whole image and the 3 RGB channels:

* ``l1`` = mean of ``|output/255 - reference/255|``
* ``l2`` = mean of ``(output/255 - reference/255)^2`` (a mean squared error; no square root)

Unlike MagicBrush's script, the output is never resized to the reference: both are at the
source's resolution (a wrong-sized output is a failure unless ``--resize-outputs``). Computed
exactly from integer sums of 8-bit differences. The model-based members of the family (CLIP-I,
DINO, CLIP-T) are declared in ``model_based``.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable

import numpy as np

from .base import MetricContext

NAMES = ("l1", "l2")


def compute(ctx: MetricContext, names: Iterable[str]) -> Dict[str, float]:
    names = set(names) & set(NAMES)
    if not names:
        return {}
    if ctx.a.reference is None:
        return {n: math.nan for n in names}
    d = ctx.diff_ref
    n = float(d.size) * 255.0
    out: Dict[str, float] = {}
    if "l1" in names:
        out["l1"] = int(np.abs(d).sum(dtype=np.int64)) / n
    if "l2" in names:
        d32 = d.astype(np.int32)
        np.multiply(d32, d32, out=d32)  # <= 65025: exact in int32
        out["l2"] = int(d32.sum(dtype=np.int64)) / (n * 255.0)
    return out
