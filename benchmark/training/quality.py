"""The quality-tuning subset: the training samples a score run rated highest, chosen by a written rule.

A rule (``QualityRule``) names a score run (``refcoco-edit score`` RESULTS folder, or its
``samples.parquet``), one of its per-sample metric columns (an identity metric such as
``ref_dino``, or a judge metric such as ``judge_same_object``), the fraction of the candidates to
keep, an optional score floor and which candidates count (``status``: reviewed-accepted ones, or
all). :func:`select_quality` ranks the candidates that have a finite score (scored ``ok`` in that
run), keeps the top ``ceil(top_fraction * scored)`` of them (ties broken by sample id), then drops
those past ``min_score``; the result (rule, scores file and its SHA-256, counts, each chosen
sample id with its score) is what a trainer writes to ``output_dir/quality_subset.json``.
Pure Python + pyarrow: no torch.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from refcoco_edit.config import UsageError, setting
from refcoco_edit.errors import InputError

__all__ = ["QualityRule", "select_quality", "scores_file", "QUALITY_FILE"]

QUALITY_FILE = "quality_subset.json"
# samples.parquet columns that are not per-sample scores
_NOT_SCORES = {"seed", "image_id", "n_distractors", "height", "width"}


@dataclass
class QualityRule:
    """Which samples the quality-tuning phase trains on (``quality:`` of a trainer config)."""

    scores: Optional[str] = setting(None, "a `refcoco-edit score` RESULTS folder or its samples.parquet")
    metric: str = setting("ref_dino", "the per-sample score column (ref_dino, ref_clip_i, judge_same_object, ...)")
    top_fraction: float = setting(0.25, "keep this fraction of the scored candidates (the best ones)")
    min_score: Optional[float] = setting(None, "and only those scoring at least this (at most, when lower is better)")
    status: str = setting("accepted", "candidates: reviewed-accepted samples, or all", choices=("accepted", "all"))
    higher_is_better: bool = setting(True, "false for a metric where lower is better (an L2 distance)")

    def __post_init__(self) -> None:
        if not 0.0 < float(self.top_fraction) <= 1.0:
            raise UsageError(f"quality.top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.status not in ("accepted", "all"):
            raise UsageError(f"quality.status must be accepted or all, got {self.status!r}")


def scores_file(path: str) -> Path:
    """``samples.parquet`` of a score run folder, or the file itself; InputError when absent."""
    p = Path(path).expanduser()
    f = p / "samples.parquet" if p.is_dir() else p
    if not f.is_file():
        raise InputError(f"quality.scores: {path} is neither a `refcoco-edit score` RESULTS folder (with "
                         "samples.parquet) nor a samples.parquet file")
    return f


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select_quality(rule: QualityRule, candidates: Sequence[str]) -> Dict[str, Any]:
    """The quality subset of ``candidates`` (sample ids) under ``rule``: a JSON-ready record whose
    ``chosen`` lists {sample_id, score}, best first. InputError when the scores file lacks the
    metric or the rule selects no sample."""
    import pyarrow.parquet as pq

    if not rule.scores:
        raise UsageError("quality.scores is not set: name a `refcoco-edit score` RESULTS folder (or its "
                         "samples.parquet) whose per-sample scores choose the quality-tuning samples")
    f = scores_file(rule.scores)
    try:
        table = pq.read_table(f)
    except (OSError, ValueError) as e:
        raise InputError(f"quality.scores: cannot read {f} as Parquet ({e})") from None
    import pyarrow as pa

    numeric = [fld.name for fld in table.schema if pa.types.is_floating(fld.type) and fld.name not in _NOT_SCORES]
    if "sample_id" not in table.column_names:
        raise InputError(f"quality.scores: {f} has no sample_id column (not a score run's samples.parquet)")
    if rule.metric not in table.column_names:
        raise InputError(f"quality.metric {rule.metric!r} is not a column of {f}; its score columns: "
                         f"{', '.join(numeric) or '(none)'}")
    cols = ["sample_id", rule.metric] + (["status"] if "status" in table.column_names else [])
    rows = table.select(cols).to_pylist()
    wanted = set(candidates)
    scored: Dict[str, float] = {}
    for r in rows:
        sid, v = r["sample_id"], r[rule.metric]
        if sid not in wanted or r.get("status", "ok") != "ok" or v is None or not math.isfinite(float(v)):
            continue
        scored[str(sid)] = float(v)
    sign = -1.0 if rule.higher_is_better else 1.0
    ranked = sorted(scored.items(), key=lambda kv: (sign * kv[1], kv[0]))
    k = math.ceil(float(rule.top_fraction) * len(ranked)) if ranked else 0
    top = ranked[:k]
    if rule.min_score is not None:
        floor = float(rule.min_score)
        top = [(s, v) for s, v in top if (v >= floor if rule.higher_is_better else v <= floor)]
    if not top:
        raise InputError(
            f"the quality rule selects no sample: {len(wanted)} {rule.status} candidate(s), {len(scored)} with a "
            f"finite {rule.metric} in {f}, {k} in the top {rule.top_fraction:g}"
            + (f", 0 of them {'>=' if rule.higher_is_better else '<='} min_score {rule.min_score:g}"
               if rule.min_score is not None and k else "")
            + "; loosen the rule or score the training data first")
    return {"rule": asdict(rule), "scores_file": str(f.resolve()), "scores_sha256": _sha256(f),
            "candidates": len(wanted), "scored": len(scored), "top_k": k,
            "chosen": [{"sample_id": s, "score": v} for s, v in top]}


def chosen_ids(record: Dict[str, Any]) -> List[str]:
    """The chosen sample ids of a :func:`select_quality` record, best first."""
    return [c["sample_id"] for c in record["chosen"]]
