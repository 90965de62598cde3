"""The human study's ratings by difficulty attribute, for ``refcoco-edit report --study``: the
study's ``ratings.parquet`` (one row per rater and rated output: sample_id, method, quality,
consistency) joined on sample_id with the ``attr_*`` buckets of the score runs' samples.parquet.

Per (criterion, method, attribute, bucket): n ratings, n samples, the mean rating, and a
percentile bootstrap 95% CI over *samples* (a sample's ratings are averaged first, as the study's
own Table 3 does: the sample is the unit), seeded from (study seed, criterion, method, attribute,
bucket)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit.seeds import derive_seed

from ..score.aggregate import bootstrap_ci
from .format import _md
from .results import read_samples

__all__ = ["RATINGS_FILE", "study_by_attribute", "study_breakdown_markdown"]

RATINGS_FILE = "ratings.parquet"
CRITERIA = ("quality", "consistency")


def _buckets_of_runs(run_dirs: Sequence[Path]) -> Dict[str, Dict[str, Optional[str]]]:
    """sample_id -> {attr_*: label} from the runs' samples.parquet (the first run that has it)."""
    out: Dict[str, Dict[str, Optional[str]]] = {}
    for run in run_dirs:
        for r in read_samples(Path(run)):
            if r.get("sample_id") not in out and any(k.startswith("attr_") for k in r):
                out[r["sample_id"]] = {k: v for k, v in r.items() if k.startswith("attr_")}
    return out


def study_by_attribute(study: Path, doc: Dict[str, Any], run_dirs: Sequence[Path],
                       resamples: int = 1000) -> Dict[str, Any]:
    """``{criterion: {method key: {attr_*: {label: {n, n_samples, mean, ci95}}}}}`` ({} when the
    study has no ratings.parquet or the runs no attr_* columns)."""
    import pyarrow.parquet as pq

    path = Path(study) / RATINGS_FILE
    attrs = _buckets_of_runs(run_dirs)
    if not path.is_file() or not attrs:
        return {}
    seed = int(((doc.get("config") or {}).get("seed")) or 0)
    rows = pq.read_table(path).to_pylist()
    out: Dict[str, Any] = {}
    for crit in CRITERIA:
        per: Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]] = {}
        for r in rows:
            v = r.get(crit)
            b = attrs.get(r.get("sample_id"))
            if v is None or b is None or (isinstance(v, float) and math.isnan(v)):
                continue
            for a, label in b.items():
                if label is not None:
                    per.setdefault(r["method"], {}).setdefault(a, {}).setdefault(label, {}) \
                        .setdefault(r["sample_id"], []).append(float(v))
        for method, by_attr in sorted(per.items()):
            for a, cells in sorted(by_attr.items()):
                for label, samples in sorted(cells.items()):
                    means = np.array([np.mean(x) for _, x in sorted(samples.items())], dtype=np.float64)
                    ci = bootstrap_ci(means, derive_seed(seed, "study-bootstrap", crit, method, a, label), resamples)
                    out.setdefault(crit, {}).setdefault(method, {}).setdefault(a, {})[label] = {
                        "n": int(sum(len(x) for x in samples.values())), "n_samples": int(means.size),
                        "mean": float(means.mean()), "ci95": [ci[0], ci[1]] if ci else None}
    return out


def study_breakdown_markdown(breakdown: Dict[str, Any], doc: Dict[str, Any], level: int = 2) -> List[str]:
    """"Human ratings by difficulty": one table per (criterion, attribute), rows = methods."""
    from refcoco_edit.difficulty import BUCKETS, label_key

    if not breakdown:
        return []
    labels = {m["key"]: m.get("label") or m["key"] for m in doc.get("methods", [])}
    h = "#" * level
    lines = [f"{h} Human ratings by difficulty", "",
             "Mean rating (1-5) [bootstrap 95% CI over samples] (ratings / samples) per bucket.", ""]
    for crit in CRITERIA:
        methods = breakdown.get(crit) or {}
        for a in BUCKETS:
            labs = sorted({x for m in methods.values() for x in m.get(a, {})}, key=label_key)
            if not labs:
                continue
            lines += [f"{h}# {crit}: {_md(a[len('attr_'):])}", ""]
            lines.append("| Method | " + " | ".join(_md(x) for x in labs) + " |")
            lines.append("|---|" + "---:|" * len(labs))
            for key, m in sorted(methods.items()):
                cells = []
                for x in labs:
                    c = m.get(a, {}).get(x)
                    cells.append("—" if not c else f"{c['mean']:.2f}" + (
                        f" [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]" if c["ci95"] else "")
                        + f" ({c['n']}/{c['n_samples']})")
                lines.append(f"| {_md(labels.get(key, key))} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines
