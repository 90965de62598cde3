"""From the judge's answers to numbers: per-sample values (``samples.parquet`` columns), their
means with bootstrap CIs per edit type, the agreement with the pixel-based referring metrics,
and results.json's ``judge`` section.

Per sample (NaN where the question behind it got no valid answer in any pass, or does not apply):

* ``vie_sc`` = mean over passes of min(editing_success, over_editing) (VIEScore SC, 0-10);
* ``vie_pq`` = mean over passes of min(naturalness, artifacts) (VIEScore PQ, 0-10);
* ``vie_o``  = mean over passes of sqrt(SC_pass * PQ_pass) (VIEScore O = sqrt(min(SC) * min(PQ)));
* with ``--judge-passes`` > 1 also ``vie_sc_spread`` / ``vie_pq_spread`` / ``vie_o_spread``: the
  standard deviation (ddof 0) of the per-pass values over the valid passes (NaN with fewer than 2);
* per protocol P (blind, marked): ``judge_target_edited_P`` (mean over passes of target_edited),
  ``judge_ref_acc_P`` (mean over passes of: target edited and no distractor changed),
  ``judge_distr_pres_P`` (mean over passes of (N - distractors_changed) / N; NaN when N = 0),
  ``judge_agree_P`` (1 when the judge's majority verdict, judge_ref_acc_P >= 0.5, equals the pixel
  metric ``referring_accuracy``; NaN where that is NaN or was not computed);
* on the reference-based track (the ``same_object`` question): ``judge_same_object`` (mean over
  passes of same_object) and ``judge_identity`` (mean over passes of its 0-10 score).
"""
from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..score.aggregate import aggregate
from .client import JudgeConfig, host_class
from .images import EXEMPLAR_RULE, MARK_RULE
from .protocol import JUDGE_PROMPT_VERSION, SCORE_MAX
from .run import JudgeRun, SampleJudgement, questions_of

__all__ = ["JudgeMetric", "metric_specs", "sample_values", "answers_json", "judge_section", "DEFINITIONS"]


@dataclass(frozen=True)
class JudgeMetric:
    """One judge number: its column title, meaning, direction and the question behind it."""

    title: str
    description: str
    higher_is_better: Optional[bool]
    question: str  # "sc", "pq", "sc+pq" or "ref_<protocol>"


DEFINITIONS = {
    "scale": f"VIEScore metrics are on 0-{SCORE_MAX} (higher is better), VIEScore's own scale (GEdit-Bench's "
             "SC/PQ/O use it too); judge referring metrics are fractions in [0, 1]",
    "vie_sc": "semantic consistency: per pass min(editing_success, over_editing) of the `sc` question (source + "
              "output + prompt), then the mean over passes",
    "vie_pq": "perceptual quality: per pass min(naturalness, artifacts) of the `pq` question (output only), then "
              "the mean over passes",
    "vie_o": "overall: per pass sqrt(SC * PQ) (VIEScore O = sqrt(min(SC scores) * min(PQ scores))), then the "
             "mean over passes; run-level value = mean over samples",
    "referring": "ref_<protocol> question: target_edited, distractors_changed (of the N same-category "
                 "distractors), other_changed; judge_ref_acc = target_edited and distractors_changed == 0",
    "protocols": "blind: the judge sees the source, the output and the prompt and must find the referred object "
                 "itself; marked: the source shows the referred object outlined (" + MARK_RULE + "), the judge "
                 "verifies",
    "agreement": "judge_agree_<protocol> = 1 when (judge_ref_acc >= 0.5) equals the pixel metric "
                 "referring_accuracy; per run: agreement rate, Cohen's kappa and the confusion counts",
    "same_object": "reference-based track: the `same_object` question (" + EXEMPLAR_RULE + "): "
                   "judge_same_object = fraction of passes where the judge saw the reference object itself in the "
                   "edited region; judge_identity = mean of its 0-10 identity score",
    "failures": "a question without a valid answer after the re-ask is a judge failure with a reason code, "
                "never a zero: the sample is left out of that metric's mean (n_failed)",
}


def metric_specs(cfg: JudgeConfig, questions: Optional[Sequence[str]] = None) -> "OrderedDict[str, JudgeMetric]":
    """The judge metrics of a run with ``cfg`` asking ``questions`` (default: ``questions_of(cfg)``), in table order."""
    out: "OrderedDict[str, JudgeMetric]" = OrderedDict()
    out["vie_sc"] = JudgeMetric("VIE-SC", "VIEScore semantic consistency (0-10): " + DEFINITIONS["vie_sc"], True, "sc")
    out["vie_pq"] = JudgeMetric("VIE-PQ", "VIEScore perceptual quality (0-10): " + DEFINITIONS["vie_pq"], True, "pq")
    out["vie_o"] = JudgeMetric("VIE-O", "VIEScore overall (0-10): " + DEFINITIONS["vie_o"], True, "sc+pq")
    for p in cfg.protocols:
        q = f"ref_{p}"
        out[f"judge_ref_acc_{p}"] = JudgeMetric(
            f"J-Ref-Acc ({p})", "fraction of passes where the judge saw the referred object edited and no "
            "same-category distractor changed", True, q)
        out[f"judge_distr_pres_{p}"] = JudgeMetric(
            f"J-Distr-Pres ({p})", "fraction of the same-category distractors the judge saw unchanged", True, q)
        out[f"judge_target_edited_{p}"] = JudgeMetric(
            f"J-Target-Edited ({p})", "fraction of passes where the judge saw the referred object get the edit", True, q)
        out[f"judge_agree_{p}"] = JudgeMetric(
            f"J-Agree ({p})", "1 when the judge's majority referring verdict equals the pixel Ref-Acc", None, q)
    if "same_object" in (questions if questions is not None else questions_of(cfg)):
        out["judge_same_object"] = JudgeMetric(
            "J-Same-Object", "fraction of passes where the judge saw the reference object itself (not only its "
            "category) in the edited region", True, "same_object")
        out["judge_identity"] = JudgeMetric(
            "J-Identity", "the judge's 0-10 score of the edited object being the reference object", True, "same_object")
    if cfg.passes > 1:
        for n, q in (("vie_sc", "sc"), ("vie_pq", "pq"), ("vie_o", "sc+pq")):
            out[f"{n}_spread"] = JudgeMetric(out[n].title + " spread", f"std (ddof 0) of {n} over the passes "
                                             "(self-ensembling with --judge-passes)", False, q)
    return out


def _mean(xs: List[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _std(xs: List[float]) -> float:
    return float(np.std(np.asarray(xs, dtype=np.float64))) if len(xs) >= 2 else math.nan


def sample_values(j: SampleJudgement, cfg: JudgeConfig, pixel_ref_acc: Optional[float]) -> Dict[str, float]:
    """The judge metrics of one sample (see the module docstring)."""
    v: Dict[str, float] = {}
    sc, pq, o = [], [], []
    for p in range(int(cfg.passes)):
        a_sc, a_pq = j.outcomes.get(("sc", p)), j.outcomes.get(("pq", p))
        s = float(min(a_sc.answer["score"])) if a_sc is not None and a_sc.answer is not None else None
        q = float(min(a_pq.answer["score"])) if a_pq is not None and a_pq.answer is not None else None
        if s is not None:
            sc.append(s)
        if q is not None:
            pq.append(q)
        if s is not None and q is not None:
            o.append(math.sqrt(s * q))
    v["vie_sc"], v["vie_pq"], v["vie_o"] = _mean(sc), _mean(pq), _mean(o)
    if cfg.passes > 1:
        v["vie_sc_spread"], v["vie_pq_spread"], v["vie_o_spread"] = _std(sc), _std(pq), _std(o)
    n = int(j.n_distractors)
    for proto in cfg.protocols:
        answers = [j.outcomes[(f"ref_{proto}", p)].answer for p in range(int(cfg.passes))
                   if (f"ref_{proto}", p) in j.outcomes and j.outcomes[(f"ref_{proto}", p)].answer is not None]
        edited = [1.0 if a["target_edited"] else 0.0 for a in answers]
        acc = [1.0 if (a["target_edited"] and int(a["distractors_changed"]) == 0) else 0.0 for a in answers]
        pres = [(n - int(a["distractors_changed"])) / n for a in answers] if n > 0 else []
        v[f"judge_target_edited_{proto}"] = _mean(edited)
        v[f"judge_ref_acc_{proto}"] = _mean(acc)
        v[f"judge_distr_pres_{proto}"] = _mean(pres)
        ra = v[f"judge_ref_acc_{proto}"]
        if pixel_ref_acc is None or not math.isfinite(pixel_ref_acc) or not math.isfinite(ra):
            v[f"judge_agree_{proto}"] = math.nan
        else:
            v[f"judge_agree_{proto}"] = 1.0 if (ra >= 0.5) == (pixel_ref_acc >= 0.5) else 0.0
    if any(k == "same_object" for k, _ in j.outcomes) or "same_object" in j.not_asked:
        same = [o.answer for (k, _), o in sorted(j.outcomes.items()) if k == "same_object" and o.answer is not None]
        v["judge_same_object"] = _mean([1.0 if a["same_object"] else 0.0 for a in same])
        v["judge_identity"] = _mean([float(a["score"]) for a in same])
    return v


def answers_json(j: SampleJudgement) -> str:
    """The sample's final answers for the gallery and samples.parquet's ``judge_answers``:
    ``{question: [per pass: the answer object, or {"failed": reason, "error": ...}]}``."""
    out: Dict[str, Any] = {}
    for (kind, p), o in sorted(j.outcomes.items()):
        out.setdefault(kind, []).append(o.answer if o.answer is not None else {"failed": o.reason, "error": o.error})
    for kind, why in sorted(j.not_asked.items()):
        out[kind] = {"not_asked": why}
    return json.dumps(out, sort_keys=True, ensure_ascii=False)


def _agreement(records: Sequence[Dict[str, Any]], values: Dict[str, Dict[str, float]], proto: str) -> Dict[str, Any]:
    pairs, pres = [], []
    for r in records:
        v = values.get(r["sample_id"])
        if v is None:
            continue
        px = (r.get("metrics") or {}).get("referring_accuracy")
        ja = v.get(f"judge_ref_acc_{proto}", math.nan)
        if px is not None and math.isfinite(px) and math.isfinite(ja):
            pairs.append((1 if ja >= 0.5 else 0, 1 if px >= 0.5 else 0))
        pp = (r.get("metrics") or {}).get("distractor_preservation")
        jp = v.get(f"judge_distr_pres_{proto}", math.nan)
        if pp is not None and math.isfinite(pp) and math.isfinite(jp):
            pres.append((jp, pp))
    n = len(pairs)
    conf = Counter(f"judge_{a}_pixel_{b}" for a, b in pairs)
    agree = sum(1 for a, b in pairs if a == b)
    kappa = None
    if n:
        po = agree / n
        pj, pp_ = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
        pe = pj * pp_ + (1 - pj) * (1 - pp_)
        kappa = None if pe >= 1.0 else (po - pe) / (1 - pe)
    return {
        "referring_accuracy": {"n": n, "agreement": agree / n if n else None, "cohen_kappa": kappa,
                               "confusion": {k: int(conf.get(k, 0)) for k in
                                             ("judge_1_pixel_1", "judge_1_pixel_0", "judge_0_pixel_1", "judge_0_pixel_0")}},
        "distractor_preservation": {
            "n": len(pres),
            "mean_abs_diff": float(np.mean([abs(a - b) for a, b in pres])) if pres else None,
            "agreement": (sum(1 for a, b in pres if (a >= 1.0) == (b >= 1.0)) / len(pres)) if pres else None},
    }


def judge_section(cfg: JudgeConfig, run: JudgeRun, records: Sequence[Dict[str, Any]],
                  values: Dict[str, Dict[str, float]], seed: int, resamples: int) -> Dict[str, Any]:
    """results.json's ``judge`` section (schema in ``report.schema``). Deterministic: request
    counts and wall times go to timing.json instead."""
    specs = metric_specs(cfg, run.questions or None)
    judged = [r for r in records if r["sample_id"] in values]
    pseudo = [{"status": "ok", "edit_type": r.get("edit_type"), "metrics": values[r["sample_id"]],
               **{k: v for k, v in r.items() if k.startswith("attr_")}} for r in judged]  # difficulty buckets
    agg = aggregate(pseudo, list(specs), seed, resamples)
    failures = []
    for sid in sorted(run.judged):
        for (kind, p), o in sorted(run.judged[sid].outcomes.items()):
            if o.answer is None:
                failures.append({"sample_id": sid, "question": kind, "pass": p, "reason": o.reason, "error": o.error})
    failed_q = {(f["sample_id"], f["question"]) for f in failures}
    metrics: Dict[str, Any] = {}
    for name, spec in specs.items():
        qs = spec.question.split("+")
        n_failed = 0
        for r in judged:
            v = values[r["sample_id"]].get(name, math.nan)
            if not math.isfinite(v) and any((r["sample_id"], q) in failed_q for q in qs):
                n_failed += 1
        metrics[name] = {"title": spec.title, "description": spec.description,
                         "higher_is_better": spec.higher_is_better, "question": spec.question,
                         "n_failed": n_failed, **agg[name]}
    n_answers = sum(len(j.outcomes) for j in run.judged.values())
    ref_votes = {}
    if cfg.passes > 1:
        for proto in cfg.protocols:
            same = [len({bool(o.answer["target_edited"] and o.answer["distractors_changed"] == 0)
                         for (k, _), o in j.outcomes.items() if k == f"ref_{proto}" and o.answer is not None}) == 1
                    for j in run.judged.values()
                    if any(k == f"ref_{proto}" and o.answer is not None for (k, _), o in j.outcomes.items())]
            ref_votes[proto] = {"n": len(same), "unanimous": (sum(same) / len(same)) if same else None}
    return {
        "model": cfg.model,
        "base_url_class": host_class(cfg.base_url),
        "api": "openai chat.completions (images as base64 data URLs)",
        "prompt_version": JUDGE_PROMPT_VERSION,
        "params": {**cfg.params(), "passes": int(cfg.passes), "protocols": list(cfg.protocols),
                   "attempts": int(cfg.attempts), "questions": list(run.questions or questions_of(cfg)),
                   "seed_rule": "the request's seed is the pass index (0 .. passes-1)",
                   "images": "source: decoded pixels as PNG; output: the cached PNG; marked: " + MARK_RULE
                             + ("; same_object: " + EXEMPLAR_RULE if "same_object" in run.questions else ""),
                   "bootstrap_seed_rule": "numpy default_rng(derive_seed(seed, 'bootstrap', metric, edit_type or 'all'))"},
        "definitions": dict(DEFINITIONS),
        "counts": {"samples": len(run.judged), "answers": n_answers,
                   "valid": n_answers - len(failures), "failed": len(failures),
                   "failed_by_reason": dict(sorted(Counter(str(f["reason"]) for f in failures).items()))},
        "failures": failures,
        "metrics": metrics,
        "agreement": {p: _agreement(judged, values, p) for p in cfg.protocols},
        "pass_agreement": ref_votes,
    }
