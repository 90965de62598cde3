"""The statistics of ``refcoco-edit compare``: paired differences, their bootstrap CI, the
Wilcoxon signed-rank test, Holm's step-down correction, win/tie/loss counts and the compact
letter display of a leaderboard. Pure functions of numpy vectors (scipy only for the Wilcoxon
test), each written so that a test can redo it in a few lines:

* ``paired_bootstrap_ci(d, resamples, seed)``::

      rng = np.random.default_rng(seed)
      idx = rng.integers(0, n, size=(resamples, n))     # the same indices for both runs
      lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])

  where ``d = a - b`` are the paired differences (resampling the pairs = resampling the sample
  indices of both runs together).
* ``wilcoxon_p(d)``: ``scipy.stats.wilcoxon(d[d != 0], zero_method="wilcox",
  alternative="two-sided", method="auto")``: zero differences (both runs scored the sample the
  same) carry no evidence either way and are dropped, as in Wilcoxon's original test; all
  differences zero -> p = 1 (nothing to test: "not different").
* ``holm(pvalues)``: Holm (1979) step-down, monotone adjusted p-values:
  ``adj_(k) = max_{j <= k} min(1, (m - j + 1) * p_(j))`` over the ascending p-values.
* ``compact_letters(order, different)``: Piepho's (2004) insert-and-absorb algorithm; runs that
  share a letter are not significantly different.
"""
from __future__ import annotations

import math
import string
import warnings
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import numpy as np

__all__ = ["WILCOXON_SETTINGS", "paired_bootstrap_ci", "mean_bootstrap_ci", "wilcoxon_p", "holm",
           "win_tie_loss", "compact_letters"]

CONFIDENCE = 0.95
PERCENTILES = (2.5, 97.5)
WILCOXON_SETTINGS = {
    "function": "scipy.stats.wilcoxon",
    "input": "the non-zero paired differences d[d != 0] (d = A - B over the samples where both values are finite)",
    "zero_method": "wilcox",
    "alternative": "two-sided",
    "method": "auto",
    "all_zero": "every difference zero (or no pair): p = 1, not different",
}


def mean_bootstrap_ci(x: np.ndarray, resamples: int, seed: int) -> Optional[List[float]]:
    """Percentile bootstrap 95% CI of the mean of ``x`` (None when ``x`` is empty or
    ``resamples`` is 0): the score run's own ``score.aggregate.bootstrap_ci``, so a leaderboard
    row's CI and results.json's are computed the same way."""
    from ..score.aggregate import bootstrap_ci

    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0 or resamples <= 0:
        return None
    ci = bootstrap_ci(x, seed, int(resamples), CONFIDENCE)
    return None if ci is None else [float(ci[0]), float(ci[1])]


def paired_bootstrap_ci(d: np.ndarray, resamples: int, seed: int) -> Optional[List[float]]:
    """Percentile bootstrap 95% CI of the mean paired difference ``d = a - b``: the sample
    indices are resampled with replacement, the same indices for both runs (which is resampling
    the differences)."""
    return mean_bootstrap_ci(d, resamples, seed)


def wilcoxon_p(d: np.ndarray) -> Tuple[float, Optional[float]]:
    """(two-sided p, statistic) of the Wilcoxon signed-rank test on the paired differences ``d``
    (see ``WILCOXON_SETTINGS``); (1.0, None) when every difference is zero or there is none."""
    d = np.asarray(d, dtype=np.float64)
    nz = d[d != 0]
    if nz.shape[0] == 0:
        return 1.0, None
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():  # "sample size too small for the normal approximation" and the like
        warnings.simplefilter("ignore")
        res = wilcoxon(nz, zero_method="wilcox", alternative="two-sided", method="auto")
    p = float(res.pvalue)
    return (min(1.0, p) if math.isfinite(p) else 1.0), float(res.statistic)


def rank_sums(d: np.ndarray) -> Tuple[float, float]:
    """(R+, R-): the sums of the ranks of |d| (zeros dropped, ties averaged) of the positive and
    of the negative differences; which one is larger is the direction the test found."""
    d = np.asarray(d, dtype=np.float64)
    nz = d[d != 0]
    if nz.shape[0] == 0:
        return 0.0, 0.0
    from scipy.stats import rankdata

    r = rankdata(np.abs(nz))
    return float(r[nz > 0].sum()), float(r[nz < 0].sum())


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm step-down adjusted p-values, in the input order (None stays None and is not counted
    in the family). Monotone: a smaller raw p never gets a larger adjusted p."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: List[Optional[float]] = [None] * len(pvalues)
    order = sorted(idx, key=lambda i: (pvalues[i], i))
    running = 0.0
    for k, i in enumerate(order):
        adj = min(1.0, (m - k) * float(pvalues[i]))  # type: ignore[arg-type]
        running = max(running, adj)
        out[i] = running
    return out


def win_tie_loss(a: np.ndarray, b: np.ndarray, higher_is_better: Optional[bool]) -> Tuple[int, int, int]:
    """(wins, ties, losses) of A against B on paired values: a win is A better (higher when
    ``higher_is_better``, lower when not; with None: A higher), a tie equal values."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    higher = int(np.sum(a > b))
    lower = int(np.sum(a < b))
    ties = int(np.sum(a == b))
    return (lower, ties, higher) if higher_is_better is False else (higher, ties, lower)


def _letter(k: int) -> str:
    alphabet = string.ascii_lowercase
    out = ""
    k += 1
    while k > 0:
        k, r = divmod(k - 1, len(alphabet))
        out = alphabet[r] + out
    return out


def compact_letters(order: Sequence[str], different: Set[FrozenSet[str]]) -> Dict[str, str]:
    """Compact letter display (Piepho 2004, insert-and-absorb): ``order`` = the runs best first,
    ``different`` = the pairs found significantly different. Runs that share a letter are not
    significantly different; letters are given in rank order (``a`` holds the best run)."""
    pos = {r: i for i, r in enumerate(order)}
    cols: List[FrozenSet[str]] = [frozenset(order)] if order else []
    for pair in sorted(different, key=lambda p: sorted(pos[x] for x in p)):
        i, j = sorted(pair, key=lambda x: pos[x])
        new: List[FrozenSet[str]] = []
        for c in cols:
            if i in c and j in c:
                new += [c - {i}, c - {j}]
            else:
                new.append(c)
        uniq = list(dict.fromkeys(new))
        cols = [c for c in uniq if c and not any(c < o for o in uniq)]
    cols.sort(key=lambda c: sorted(pos[x] for x in c))
    letters = {r: "" for r in order}
    for k, c in enumerate(cols):
        for r in sorted(c, key=lambda x: pos[x]):
            letters[r] += _letter(k)
    return letters
