"""The study's numbers: Table 3 means with bootstrap CIs, Krippendorff's alpha (from the
``krippendorff`` package), and metric-human alignment (Spearman and Kendall from scipy, pairwise
agreement), each with a bootstrap CI.

Ratings come as :class:`Rating` rows (one per rater, task and slot, de-blinded to a method key).
Every bootstrap resamples *samples* (tasks) with replacement, taking all their ratings along
(the ratings of one sample are not independent), with numpy's default_rng seeded from
(study seed, what is estimated): the same ratings give the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.seeds import rng_for
from refcoco_edit.study_format import CRITERIA

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rating:
    """One rater's ratings of one output (None: left empty)."""

    sample_id: str
    method: str
    rater: str
    quality: Optional[int]
    consistency: Optional[int]

    def value(self, criterion: str) -> Optional[int]:
        return self.quality if criterion == "quality" else self.consistency


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"the study's statistics need the {module!r} package: pip install 'refcoco-edit[study]'") from None


def _ci(values: np.ndarray) -> Optional[List[float]]:
    v = values[np.isfinite(values)]
    if v.size < max(2, values.size // 2):  # mostly undefined resamples: no honest interval
        return None
    a = (1 - CONFIDENCE) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def mean_summary(by_sample: Dict[str, List[float]], seed: int, resamples: int, *keys: Any) -> Dict[str, Any]:
    """{n, n_samples, mean, std, ci95} of every value; the CI resamples samples (clusters)."""
    sids = sorted(s for s, v in by_sample.items() if v)
    values = [x for s in sids for x in by_sample[s]]
    if not values:
        return {"n": 0, "n_samples": 0, "mean": None, "std": None, "ci95": None}
    arr = np.asarray(values, dtype=np.float64)
    sums = np.array([sum(by_sample[s]) for s in sids], dtype=np.float64)
    counts = np.array([len(by_sample[s]) for s in sids], dtype=np.float64)
    ci = None
    if len(sids) > 1 and resamples > 0:
        idx = rng_for(seed, "study-bootstrap", *keys).integers(0, len(sids), size=(resamples, len(sids)))
        ci = _ci(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    return {"n": int(arr.size), "n_samples": len(sids), "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else None, "ci95": ci}


def table3(ratings: Sequence[Rating], methods: Sequence[str], seed: int, resamples: int) -> Dict[str, Dict[str, Any]]:
    """Per method and criterion: the mean rating over every (sample, rater), with its CI."""
    out: Dict[str, Dict[str, Any]] = {}
    for m in methods:
        out[m] = {}
        for crit in CRITERIA:
            by_sample: Dict[str, List[float]] = {}
            for r in ratings:
                v = r.value(crit)
                if r.method == m and v is not None:
                    by_sample.setdefault(r.sample_id, []).append(float(v))
            out[m][crit] = mean_summary(by_sample, seed, resamples, "mean", m, crit)
    return out


def reliability_matrix(ratings: Sequence[Rating], criteria: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Raters x units (a unit: one output and criterion), NaN where a rater gave no value."""
    raters = sorted({r.rater for r in ratings})
    units = sorted({(r.sample_id, r.method, c) for r in ratings for c in criteria if r.value(c) is not None})
    col = {u: j for j, u in enumerate(units)}
    row = {x: i for i, x in enumerate(raters)}
    mat = np.full((len(raters), len(units)), np.nan)
    for r in ratings:
        for c in criteria:
            v = r.value(c)
            if v is not None:
                mat[row[r.rater], col[(r.sample_id, r.method, c)]] = float(v)
    return mat, raters


def krippendorff_alpha(ratings: Sequence[Rating], criteria: Sequence[str]) -> Dict[str, Any]:
    """Krippendorff's alpha, interval level, over the units rated by at least two raters."""
    krippendorff = _need("krippendorff")
    mat, raters = reliability_matrix(ratings, criteria)
    pairable = mat[:, (~np.isnan(mat)).sum(axis=0) >= 2] if mat.size else mat
    out = {"alpha": None, "raters": len(raters), "units": int(pairable.shape[1]) if pairable.ndim == 2 else 0,
           "values": int((~np.isnan(pairable)).sum()) if pairable.size else 0}
    if pairable.size and pairable.shape[1] > 0:
        try:
            a = float(krippendorff.alpha(reliability_data=pairable, level_of_measurement="interval"))
            out["alpha"] = a if math.isfinite(a) else None
        except ValueError:  # one value only in the whole domain: agreement is not defined
            out["alpha"] = None
    return out


# ----------------------------------------------------------------------------------------------
# metric - human alignment
# ----------------------------------------------------------------------------------------------

def human_scores(ratings: Sequence[Rating], criterion: str) -> Dict[Tuple[str, str], float]:
    """(sample_id, method) -> the mean rating of that output over its raters."""
    acc: Dict[Tuple[str, str], List[float]] = {}
    for r in ratings:
        v = r.value(criterion)
        if v is not None:
            acc.setdefault((r.sample_id, r.method), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _corr(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    from scipy import stats

    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if kind == "spearman":
        return float(stats.spearmanr(x, y).statistic)
    return float(stats.kendalltau(x, y).statistic)  # tau-b (ties in both)


def _pair_scores(units: Dict[str, List[Tuple[float, float]]]) -> Tuple[np.ndarray, np.ndarray]:
    """Per sample: (sum of pair scores, number of pairs). A pair of outputs counts when people did
    not tie; the metric scores 1 ordering it as people did, 0.5 tying, 0 otherwise."""
    sums, counts = [], []
    for sid in sorted(units):
        xs = units[sid]
        s = n = 0.0
        for i in range(len(xs)):
            for j in range(i + 1, len(xs)):
                h = np.sign(xs[i][1] - xs[j][1])
                if h == 0:
                    continue
                m = np.sign(xs[i][0] - xs[j][0])
                s += 1.0 if m == h else (0.5 if m == 0 else 0.0)
                n += 1
        sums.append(s)
        counts.append(n)
    return np.asarray(sums), np.asarray(counts)


def alignment(human: Dict[Tuple[str, str], float], metric: Dict[Tuple[str, str], float],
              higher_is_better: Optional[bool], seed: int, resamples: int, *keys: Any) -> Dict[str, Any]:
    """Spearman, Kendall and pairwise agreement between a metric and the human scores of the
    same outputs; the metric is negated when lower is better (positive: agrees with people)."""
    orient = -1.0 if higher_is_better is False else 1.0
    common = sorted(set(human) & set(metric))
    by_sample: Dict[str, List[Tuple[float, float]]] = {}
    for sid, m in common:
        by_sample.setdefault(sid, []).append((orient * metric[(sid, m)], human[(sid, m)]))
    sids = sorted(by_sample)
    x = np.array([orient * metric[u] for u in common], dtype=np.float64)
    y = np.array([human[u] for u in common], dtype=np.float64)
    sums, counts = _pair_scores(by_sample)
    out: Dict[str, Any] = {"n": len(common), "n_samples": len(sids)}
    boot = None
    if len(sids) > 1 and resamples > 0:
        boot = rng_for(seed, "study-bootstrap", *keys).integers(0, len(sids), size=(resamples, len(sids)))
    for kind in ("spearman", "kendall"):
        value = _corr(x, y, kind)
        ci = None
        if boot is not None and math.isfinite(value):
            res = np.empty(len(boot))
            for b, idx in enumerate(boot):
                pts = [p for i in idx for p in by_sample[sids[i]]]
                res[b] = _corr(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), kind)
            ci = _ci(res)
        out[kind] = {"value": value if math.isfinite(value) else None, "ci95": ci}
    n_pairs = int(counts.sum())
    rate = float(sums.sum() / n_pairs) if n_pairs and higher_is_better is not None else None
    ci = None
    if rate is not None and boot is not None:
        tot = counts[boot].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ci = _ci(np.where(tot > 0, sums[boot].sum(axis=1) / np.maximum(tot, 1), np.nan))
    out["pairwise"] = {"n_pairs": n_pairs, "rate": rate, "ci95": ci}
    return out
