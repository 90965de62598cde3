"""Aggregation of per-sample metric values: mean, std and a seeded percentile bootstrap 95% CI,
overall, per edit type and per difficulty bucket (step 5 of ``refcoco-edit score``, see ``refcoco_edit.benchmark.harness``)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.seeds import derive_seed

__all__ = ["bootstrap_ci", "aggregate"]


def bootstrap_ci(values: np.ndarray, seed: int, resamples: int = 1000, confidence: float = 0.95
                 ) -> Optional[Tuple[float, float]]:
    """Percentile bootstrap CI of the mean (``resamples`` draws of n with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return None
    if n == 1 or resamples <= 0:
        return (float(v[0]), float(v[0])) if n == 1 else None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    step = max(1, 2_000_000 // n)  # bound memory: at most ~2M indices at a time
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _summary(values: np.ndarray, seed: int, resamples: int) -> Dict[str, Any]:
    n = int(values.size)
    ci = bootstrap_ci(values, seed, resamples)
    return {
        "n": n,
        "mean": float(values.mean()) if n else None,
        "std": float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else None),
        "ci95": [ci[0], ci[1]] if ci is not None else None,
    }


def aggregate(records: Sequence[Dict[str, Any]], names: Sequence[str], seed: int, resamples: int = 1000
              ) -> Dict[str, Dict[str, Any]]:
    """Per metric: mean/std/CI over the scored samples where the metric applies, overall, per
    edit type and per difficulty bucket (``by_attribute``: attr_* column -> label -> summary, from
    the records' ``attr_*`` fields; labels of no sample are left out). The bootstrap of (metric,
    group) is seeded from (seed, metric, group), so a metric's CI does not depend on which other
    metrics were selected."""
    from refcoco_edit.difficulty import BUCKETS

    ok = [r for r in records if r["status"] == "ok"]
    edit_types = sorted({str(r.get("edit_type")) for r in ok})
    attrs = [a for a in BUCKETS if any(r.get(a) is not None for r in ok)]
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        vals = np.array([r["metrics"].get(name, math.nan) for r in ok], dtype=np.float64)
        finite = np.isfinite(vals)
        entry = _summary(vals[finite], derive_seed(seed, "bootstrap", name, "all"), resamples)
        entry["n_not_applicable"] = int((~finite).sum())
        by_type = {}
        for et in edit_types:
            sel = np.array([str(r.get("edit_type")) == et for r in ok], dtype=bool) & finite
            by_type[et] = _summary(vals[sel], derive_seed(seed, "bootstrap", name, et), resamples)
        entry["by_edit_type"] = by_type
        by_attr: Dict[str, Dict[str, Any]] = {}
        for attr in attrs:
            cells = {}
            for label in sorted({r.get(attr) for r in ok if r.get(attr) is not None}):
                sel = np.array([r.get(attr) == label for r in ok], dtype=bool) & finite
                cells[label] = _summary(vals[sel], derive_seed(seed, "bootstrap", name, attr, label), resamples)
            if cells:
                by_attr[attr] = cells
        entry["by_attribute"] = by_attr
        out[name] = entry
    return out
