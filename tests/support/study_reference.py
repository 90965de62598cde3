"""Independent reference computations for the human study's tests: Krippendorff's alpha
(interval) straight from its definition, Table 3 means, the oriented correlations and the
pairwise agreement rate - written without the study's code."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple


def interval_alpha(units: Sequence[Sequence[Optional[float]]]) -> float:
    """Krippendorff's alpha, interval metric, from the definition: 1 - D_o / D_e over the pairable
    values (units with at least two values), D_o within units weighted 1/(m_u - 1)."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    d_o = sum(sum((a - b) ** 2 for i, a in enumerate(u) for j, b in enumerate(u) if i != j) / (len(u) - 1)
              for u in pairable) / n
    d_e = sum((a - b) ** 2 for i, a in enumerate(values) for j, b in enumerate(values) if i != j) / (n * (n - 1))
    return 1.0 - d_o / d_e


def pairwise_rate(pairs: Dict[str, List[Tuple[float, float]]]) -> Tuple[float, int]:
    """(rate, number of pairs): per sample, every pair of (metric, human) points people did not tie;
    1 when the metric orders it the same way, 0.5 when the metric ties, 0 otherwise."""
    score, n = 0.0, 0
    for pts in pairs.values():
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                dh = pts[i][1] - pts[j][1]
                dm = pts[i][0] - pts[j][0]
                if dh == 0:
                    continue
                n += 1
                score += 0.5 if dm == 0 else (1.0 if (dm > 0) == (dh > 0) else 0.0)
    return score / n, n
