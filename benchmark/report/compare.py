"""``refcoco-edit compare RUN RUN ... --out DIR``: paired statistics between score runs and a
leaderboard with significance groups.

What it does, in order (``run_compare``):

1. **Load** each run (results.json, checked, and samples.parquet) and name it (``run_label``,
   made unique with the folder name).
2. **Protocols** (``check_protocols``): what the runs did differently is flagged in every output.
   *Refused* (exit 2): different data views (``rie`` vs ``reference-based``: another ground truth).
   *Not compared* for the pairs concerned (each metric listed with the reason): a metric whose
   measurement differs -- a metric parameter it reads (``config.metric_params``: ``referring_eps``
   -> Ref-Acc, ...), the identity of a model it needs (``config.model_details`` without device and
   dtype), the model metrics' rules, and every judge metric when the judge model or its
   ``prompt_version`` differ. *Warned*: different editor protocols (mask-aware vs mask-free:
   compared, but an editor that sees more has an advantage), data paths, split/status/export
   schema, refcoco-edit versions, ``resize_outputs``, metric model device/dtype, other judge
   parameters, a judge in some runs only. *Noted*: different seeds, metrics computed by some runs
   only.
3. **Samples**: runs are joined by ``sample_id`` over the rows with status ``ok`` in each run. A
   sample that is not ok in every run (failed, skipped, absent) makes the sets differ: refused
   with one line, or with ``intersect`` compared on the intersection, each run's loss printed and
   recorded.
4. **Pairs**: for every pair of runs (A, B in the order given) and every metric both computed
   with a direction (``higher_is_better`` not None; with ``diagnostics`` also the diagnostic ones;
   judge metrics included when both runs were judged alike): over the samples where both values
   are finite, the mean difference A - B, its paired bootstrap 95% CI, the Wilcoxon signed-rank
   p-value, Holm-adjusted over the metrics of the pair, wins/ties/losses (see ``report.stats``).
5. **Leaderboard** (``report.leaderboard``): the runs ranked on one metric, with compact letters
   from the pairwise tests on that metric, Holm-adjusted over the pairs; and the per-bucket means
   of that metric for ``edit_type`` and every ``attr_*`` column of samples.parquet.
6. **Outputs**: compare.json (``COMPARE_SCHEMA_VERSION``), leaderboard.md, leaderboard.html, all
   pure functions of the inputs and the settings (sorted keys, fixed formats, no clock).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.seeds import derive_seed

from .format import protocol_text
from .markdown import run_label
from .results import dumps, load_run
from .stats import (CONFIDENCE, WILCOXON_SETTINGS, holm, paired_bootstrap_ci, rank_sums, wilcoxon_p,
                    win_tie_loss)

__all__ = ["COMPARE_SCHEMA_VERSION", "DEFAULT_METRICS", "Run", "load_compare_run", "check_protocols",
           "join_samples", "pair_stats", "run_compare"]

COMPARE_SCHEMA_VERSION = "1.0"
# the leaderboard metric when --metric is not given: the first of these every run computed
DEFAULT_METRICS = ("referring_accuracy", "referring_margin", "vie_o", "clip_sim_fg", "l2_bg")
# which weight-free metrics read which MetricParams field (a field not listed: all of them)
PARAM_METRICS: Dict[str, Tuple[str, ...]] = {
    "referring_eps": ("referring_accuracy",),
    "preservation_tau": ("distractor_preservation", "others_preservation"),
    "psnr_mse_floor": ("psnr_bg",),
    "ssim_sigma": ("ssim_bg",), "ssim_win": ("ssim_bg",), "ssim_k1": ("ssim_bg",), "ssim_k2": ("ssim_bg",),
}
JUDGE_WARN_PARAMS = ("temperature", "max_tokens", "json_mode", "passes", "protocols", "attempts", "images")
SEED_RULE = ("numpy default_rng(derive_seed(seed, 'compare', kind, ...)) per CI (refcoco_edit.seeds): "
             "kind 'diff' (A, B, metric) for a pair, 'mean' (run, metric) for a leaderboard row, "
             "'bucket' (attribute, bucket, run, metric) for a bucket cell")


@dataclass
class MetricInfo:
    name: str
    title: str
    higher_is_better: Optional[bool]
    display_scale: float
    source: str  # "pixel" (results.json metrics) or "judge"
    needs: Tuple[str, ...] = ()

    def to_json(self) -> Dict[str, Any]:
        return {"title": self.title, "higher_is_better": self.higher_is_better, "display_scale": self.display_scale,
                "source": self.source}


@dataclass
class Run:
    """One score run as compare reads it."""

    path: str  # as given on the command line
    label: str
    results: Dict[str, Any]
    ids: List[str]
    status: List[str]
    columns: Dict[str, Any]  # samples.parquet columns (numpy float arrays for metrics, lists otherwise)
    metrics: Dict[str, MetricInfo] = field(default_factory=dict)
    row: Dict[str, int] = field(default_factory=dict)

    def ok_ids(self) -> set:
        return {s for s, st in zip(self.ids, self.status) if st == "ok"}

    def values(self, name: str, ids: Sequence[str]) -> np.ndarray:
        col = self.columns[name]
        return np.asarray(col, dtype=np.float64)[[self.row[s] for s in ids]]

    def strings(self, name: str, ids: Sequence[str]) -> List[Optional[str]]:
        col = self.columns[name]
        return [None if col[self.row[s]] is None else str(col[self.row[s]]) for s in ids]


def load_compare_run(path: str) -> Run:
    """A finished run's results.json (checked) and samples.parquet (InputError when absent)."""
    import pyarrow.parquet as pq

    from ..metrics import METRICS

    results = load_run(Path(path))
    sp = Path(path) / "samples.parquet"
    if not sp.is_file():
        raise InputError(f"{path}: no samples.parquet (compare needs every sample's values)")
    table = pq.read_table(sp)
    names = set(table.column_names)
    for col in ("sample_id", "status"):
        if col not in names:
            raise InputError(f"{sp}: no {col} column")
    metrics: Dict[str, MetricInfo] = {}
    for n, m in results["metrics"].items():
        if n in names:
            spec = METRICS.get(n)
            metrics[n] = MetricInfo(n, spec.title if spec else m["title"],
                                    spec.higher_is_better if spec else m["higher_is_better"],
                                    float(spec.display_scale if spec else m.get("display_scale", 1.0)), "pixel",
                                    tuple(spec.needs) if spec else ())
    for n, m in ((results.get("judge") or {}).get("metrics") or {}).items():
        if n in names and n not in metrics:
            metrics[n] = MetricInfo(n, m["title"], m["higher_is_better"], 1.0, "judge")
    wanted = (["sample_id", "status", "edit_type"] + [c for c in table.column_names if c.startswith("attr_")]
              + list(metrics))  # attr_* in samples.parquet's order
    cols: Dict[str, Any] = {}
    for c in wanted:
        if c not in names:
            continue
        arr = table.column(c)
        cols[c] = (np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64) if c in metrics
                   else arr.to_pylist())
    ids = [str(s) for s in cols["sample_id"]]
    if len(set(ids)) != len(ids):
        raise InputError(f"{sp}: a sample_id appears twice")
    run = Run(path=str(path), label="", results=results, ids=ids, status=[str(s) for s in cols["status"]],
              columns=cols, metrics=metrics)
    run.row = {s: i for i, s in enumerate(ids)}
    return run


def _unique_labels(runs: Sequence[Run]) -> None:
    base = [run_label(r.results) for r in runs]
    labels = [f"{lab} ({Path(r.path).name})" if base.count(lab) > 1 else lab  # the same editor scored twice
              for lab, r in zip(base, runs)]
    seen: Counter = Counter()
    for i, lab in enumerate(labels):  # still equal (the same folder twice): number them
        seen[lab] += 1
        if seen[lab] > 1 or labels.count(lab) > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    for r, lab in zip(runs, labels):
        r.label = lab


# ------------------------------------------------------------------------------------------------
# protocols
# ------------------------------------------------------------------------------------------------


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _differs(values: Sequence[Any]) -> bool:
    return len({_key(v) for v in values}) > 1


def _shown(v: Any) -> str:
    return v if isinstance(v, str) else _key(v)


def check_protocols(runs: Sequence[Run]) -> Tuple[List[Dict[str, Any]], Dict[Tuple[int, int], Dict[str, str]]]:
    """(flags, exclusions) of runs that did something differently. A flag is ``{kind, severity
    (warn | exclude | note), message, values {label: value}}``; ``exclusions[(i, j)]`` maps the
    metrics not compared between runs i and j to the reason. Different data views raise
    InputError (refused)."""
    from ..metrics import METRICS

    labels = [r.label for r in runs]
    flags: List[Dict[str, Any]] = []
    excl: Dict[Tuple[int, int], Dict[str, str]] = {}
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]

    def flag(kind: str, severity: str, message: str, values: Sequence[Any]) -> None:
        flags.append({"kind": kind, "severity": severity, "message": message,
                      "values": {lab: v for lab, v in zip(labels, values)}})

    def listing(values: Sequence[Any]) -> str:
        return "; ".join(f"{lab}: {_shown(v)}" for lab, v in zip(labels, values))

    def exclude(i: int, j: int, metrics: Sequence[str], reason: str) -> None:
        for m in metrics:
            if m in runs[i].metrics and m in runs[j].metrics:
                excl.setdefault((i, j), {}).setdefault(m, reason)

    # refused: another ground truth
    views = [r.results["data"].get("view") or "rie" for r in runs]
    if _differs(views):
        raise InputError("compare: the runs were scored on different data views (" + listing(views) +
                         "): their ground truth differs, so they are not compared")
    # the editors' protocols: compared, loudly
    protos = [protocol_text(r.results["editor"]) for r in runs]
    if _differs(protos):
        flag("editor_protocol", "warn", "editor protocols differ (what each editor saw beyond image, prompt and "
             "seed; one that sees more, e.g. gt_mask or reference, has an advantage): " + listing(protos), protos)
    # the data
    for kind, key, what in (("data_path", "path", "data paths"), ("data_split", "split", "splits"),
                            ("data_status", "status", "review status filters"),
                            ("data_schema", "schema_version", "export schema versions")):
        vals = [r.results["data"].get(key) for r in runs]
        if _differs(vals):
            flag(kind, "warn", f"{what} differ: " + listing(vals), vals)
    tools = [f"{r.results['tool']['version']} git {(r.results['tool'].get('git_revision') or 'unknown')[:12]}"
             + (" dirty" if r.results["tool"].get("git_dirty") else "") for r in runs]
    if _differs(tools):
        flag("tool", "warn", "scored by different refcoco-edit versions (the metric code may differ): "
             + listing(tools), tools)
    resize = [bool(r.results["config"].get("resize_outputs")) for r in runs]
    if _differs(resize):
        flag("resize_outputs", "warn", "resize_outputs differs (outputs of the wrong size resized vs failed): "
             + listing(resize), resize)
    # metric parameters: the metrics that read them are not compared
    params = [r.results["config"].get("metric_params") or {} for r in runs]
    weight_free = tuple(n for n, s in METRICS.items() if not s.needs)
    for key in sorted({k for p in params for k in p}):
        vals = [p.get(key) for p in params]
        if _differs(vals):
            affected = PARAM_METRICS.get(key, weight_free)
            flag("metric_params", "exclude", f"metric parameter {key} differs ({listing(vals)}): "
                 f"{', '.join(affected)} not compared between runs that differ", vals)
            for i, j in pairs:
                if _key(vals[i]) != _key(vals[j]):
                    exclude(i, j, affected, f"metric parameter {key} differs ({_shown(vals[i])} vs {_shown(vals[j])})")
    # metric models: a metric whose model differs is not compared; device/dtype only warn
    details = [r.results["config"].get("model_details") or {} for r in runs]
    for opt in sorted({k for d in details for k in d}):
        ident = [{k: v for k, v in d[opt].items() if k not in ("device", "dtype")} if opt in d else None
                 for d in details]
        needing = [n for n, s in METRICS.items() if opt in s.needs]
        present = [v for v in ident if v is not None]
        if _differs(present):
            flag("metric_model", "exclude", f"the {opt} model differs ({listing(ident)}): {', '.join(needing)} "
                 "not compared between runs that differ", ident)
            for i, j in pairs:
                if ident[i] is not None and ident[j] is not None and _key(ident[i]) != _key(ident[j]):
                    exclude(i, j, needing, f"the {opt} model differs")
        run_on = [None if opt not in d else f"{d[opt].get('device')}/{d[opt].get('dtype')}" for d in details]
        if _differs([v for v in run_on if v is not None]):
            flag("metric_model_device", "warn", f"the {opt} model ran on different devices/dtypes (values may "
                 "differ in the last digits): " + listing(run_on), run_on)
    rules = [(r.results["config"].get("model_metrics") or {}).get("rules") for r in runs]
    if _differs([v for v in rules if v]):
        model_based = [n for n, s in METRICS.items() if s.needs]
        flag("metric_rules", "exclude", "the model metrics' rules (crop, text, preprocessing) differ: "
             f"{', '.join(model_based)} not compared between runs that differ", rules)
        for i, j in pairs:
            if rules[i] and rules[j] and _key(rules[i]) != _key(rules[j]):
                exclude(i, j, model_based, "the model metrics' rules differ")
    # the judge
    judges = [r.results.get("judge") for r in runs]
    if any(judges) and not all(judges):
        flag("judge_presence", "warn", "only some runs were judged (judge metrics compared between judged runs only): "
             + listing(["judged" if j else "not judged" for j in judges]), [bool(j) for j in judges])
    jid = [{"model": j["model"], "prompt_version": j["prompt_version"]} if j else None for j in judges]
    if _differs([v for v in jid if v]):
        flag("judge", "exclude", "the judge model or prompt version differs (" + listing(jid) +
             "): judge metrics not compared between runs that differ", jid)
        for i, j in pairs:
            if jid[i] and jid[j] and _key(jid[i]) != _key(jid[j]):
                names = [m for m, info in runs[i].metrics.items() if info.source == "judge"]
                exclude(i, j, names, f"judge {_shown(jid[i])} vs {_shown(jid[j])}")
    jp = [{k: (j.get("params") or {}).get(k) for k in JUDGE_WARN_PARAMS} if j else None for j in judges]
    if _differs([v for v in jp if v]):
        flag("judge_params", "warn", "judge parameters differ: " + listing(jp), jp)
    # notes
    seeds = [r.results["config"].get("seed") for r in runs]
    if _differs(seeds):
        flag("seed", "note", "editor seeds differ: " + listing(seeds), seeds)
    computed = [sorted(r.metrics) for r in runs]
    if _differs(computed):
        every = set.intersection(*(set(c) for c in computed))
        some = sorted({m for c in computed for m in c} - every)
        flag("metrics_computed", "note", "metrics computed by some runs only (compared where both have them): "
             + ", ".join(f"{m} ({', '.join(lab for lab, r in zip(labels, runs) if m in r.metrics)})" for m in some),
             [[m for m in c if m in some] for c in computed])
    return flags, excl


# ------------------------------------------------------------------------------------------------
# samples
# ------------------------------------------------------------------------------------------------


def join_samples(runs: Sequence[Run], intersect: bool, log: Callable[[str], None] = print) -> Tuple[List[str], Dict[str, Any]]:
    """(the sample_ids every run scored ok, sorted; the samples section of compare.json). Sets
    that differ raise InputError (one line) unless ``intersect``."""
    ok = [r.ok_ids() for r in runs]
    union = set().union(*ok)
    joined = sorted(set.intersection(*ok))
    per_run = []
    for r, o in zip(runs, ok):
        missing = sorted(union - o)
        why = Counter(r.status[r.row[s]] if s in r.row else "absent" for s in missing)
        per_run.append({"label": r.label, "scored": len(o), "used": len(joined), "lost": len(o) - len(joined),
                        "missing": len(missing), "missing_by_status": dict(sorted(why.items()))})
    differ = len(joined) != len(union)
    if differ:
        parts = []
        for p in per_run:
            s = f"{p['label']}: {p['scored']} scored"
            if p["missing"]:
                s += f", {p['missing']} not (" + ", ".join(f"{k} {v}" for k, v in p["missing_by_status"].items()) + ")"
            parts.append(s)
        if not intersect:
            raise InputError(f"compare: the runs did not score the same samples ({'; '.join(parts)}): "
                             f"{len(union) - len(joined)} of {len(union)} are not scored by every run; pass --intersect "
                             f"to compare on the {len(joined)} samples every run scored")
        if not joined:
            raise InputError(f"compare: the runs have no scored sample in common ({'; '.join(parts)})")
        log(f"compare: --intersect: {len(joined)} of {len(union)} samples are scored by every run; "
            + "; ".join(f"{p['label']} loses {p['lost']} of its {p['scored']}" for p in per_run))
    sha = hashlib.sha256("\n".join(joined).encode("utf-8")).hexdigest()
    excluded = sorted(union - set(joined))
    return joined, {"n": len(joined), "union": len(union), "intersect": bool(intersect), "intersected": differ,
                    "sample_ids_sha256": sha, "excluded_sample_ids": excluded, "runs": per_run}


# ------------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------------


def pair_stats(a: np.ndarray, b: np.ndarray, higher_is_better: Optional[bool], resamples: int,
               seed: int) -> Dict[str, Any]:
    """The paired statistics of one metric between runs A and B (before Holm): over the samples
    where both values are finite, n, the means, the mean difference A - B, its paired bootstrap
    95% CI (``seed``), wins/ties/losses of A, the Wilcoxon p and statistic and the rank sums."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mask = np.isfinite(a) & np.isfinite(b)
    a, b = a[mask], b[mask]
    n = int(a.shape[0])
    out: Dict[str, Any] = {"n": n, "n_dropped": int((~mask).sum()), "bootstrap_seed": int(seed)}
    if n == 0:
        out.update(mean_a=None, mean_b=None, diff=None, ci95=None, wins=0, ties=0, losses=0, p=None, statistic=None,
                   rank_sum_pos=0.0, rank_sum_neg=0.0)
        return out
    d = a - b
    p, stat = wilcoxon_p(d)
    rp, rm = rank_sums(d)
    w, t, l = win_tie_loss(a, b, higher_is_better)
    out.update(mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float(d.mean()),
               ci95=paired_bootstrap_ci(d, resamples, seed), wins=w, ties=t, losses=l, p=p, statistic=stat,
               rank_sum_pos=rp, rank_sum_neg=rm)
    return out


def _verdict(s: Dict[str, Any], hib: Optional[bool], alpha: float) -> str:
    """not_different | a_better | b_better (a_higher | b_higher for a diagnostic metric)."""
    if s["p_holm"] is None or not s["p_holm"] < alpha or s["rank_sum_pos"] == s["rank_sum_neg"]:
        return "not_different"
    a_higher = s["rank_sum_pos"] > s["rank_sum_neg"]
    if hib is None:
        return "a_higher" if a_higher else "b_higher"
    return "a_better" if a_higher == bool(hib) else "b_better"


def _metric_order(runs: Sequence[Run]) -> List[str]:
    from ..metrics import METRICS

    names = {m for r in runs for m in r.metrics}
    pixel = [n for n in METRICS if n in names]
    rest = [m for r in runs for m in r.metrics if m in names and m not in pixel]
    return pixel + list(dict.fromkeys(rest))


def _compare_pairs(runs: Sequence[Run], joined: Sequence[str], excl: Dict[Tuple[int, int], Dict[str, str]],
                   resamples: int, seed: int, alpha: float, diagnostics: bool,
                   seeds: Dict[str, int]) -> List[Dict[str, Any]]:
    order = _metric_order(runs)
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            A, B = runs[i], runs[j]
            ex = excl.get((i, j), {})
            stats: Dict[str, Dict[str, Any]] = {}
            skipped: Dict[str, str] = {}
            for m in order:
                if m not in A.metrics or m not in B.metrics:
                    continue
                info = A.metrics[m]
                if info.higher_is_better is None and not diagnostics:
                    continue
                if m in ex:
                    skipped[m] = ex[m]
                    continue
                s = derive_seed(seed, "compare", "diff", A.label, B.label, m)
                seeds[f"diff|{A.label}|{B.label}|{m}"] = s
                st = pair_stats(A.values(m, joined), B.values(m, joined), info.higher_is_better, resamples, s)
                if st["n"] == 0:
                    skipped[m] = "no sample where both values are finite (the metric does not apply)"
                    continue
                st["diagnostic"] = info.higher_is_better is None
                stats[m] = st
            names = list(stats)
            for m, adj in zip(names, holm([stats[m]["p"] for m in names])):
                stats[m]["p_holm"] = adj
                stats[m]["verdict"] = _verdict(stats[m], A.metrics[m].higher_is_better, alpha)
            verdicts = Counter(stats[m]["verdict"] for m in names)
            pairs.append({"a": A.label, "b": B.label, "metrics": stats, "not_compared": skipped,
                          "summary": {"compared": len(names), **{k: verdicts.get(k, 0) for k in
                                                                  ("a_better", "b_better", "a_higher", "b_higher",
                                                                   "not_different")}}})
    return pairs


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def _choose_metric(runs: Sequence[Run], metric: Optional[str], excl: Dict[Tuple[int, int], Dict[str, str]]) -> str:
    """The leaderboard metric: ``metric`` (InputError when some run lacks it, it has no direction
    or some pair measured it differently), else the first of ``DEFAULT_METRICS`` (then of the
    table order) that every run computed and every pair measured alike."""
    for (i, j), ex in sorted(excl.items()):
        if metric is not None and metric in ex:
            raise InputError(f"compare: the leaderboard metric {metric} was measured differently by {runs[i].label} "
                             f"and {runs[j].label} ({ex[metric]}); rank on another --metric")
    unlike = {m for ex in excl.values() for m in ex}
    common = [m for m in _metric_order(runs) if all(m in r.metrics for r in runs)]
    if metric is not None:
        if metric not in common:
            lacking = [r.label for r in runs if metric not in r.metrics]
            raise InputError(f"compare: --metric {metric}: not computed by {', '.join(lacking)} (every run computed: "
                             f"{', '.join(m for m in common if runs[0].metrics[m].higher_is_better is not None) or 'none'})")
        if runs[0].metrics[metric].higher_is_better is None:
            raise InputError(f"compare: --metric {metric} is a diagnostic (no better direction); it cannot rank runs")
        return metric
    for m in DEFAULT_METRICS:
        if m in common and m not in unlike:
            return m
    ranked = [m for m in common if runs[0].metrics[m].higher_is_better is not None and m not in unlike]
    if not ranked:
        raise InputError("compare: the runs have no metric with a better direction in common (and measured alike) "
                         "to rank them on")
    return ranked[0]


def run_compare(run_dirs: Sequence[Any], out: Path, metric: Optional[str] = None, intersect: bool = False,
                bootstrap: int = 2000, seed: int = 0, alpha: float = 0.05, diagnostics: bool = False,
                log: Callable[[str], None] = print) -> Dict[str, Any]:
    """``refcoco-edit compare RUN RUN ... --out DIR``: write DIR/compare.json, leaderboard.md and
    leaderboard.html; return compare.json's content. InputError (exit 2) on unusable input:
    fewer than two runs, different data views, different sample sets without ``intersect``, a
    ``metric`` not every run computed or measured alike."""
    import scipy

    from refcoco_edit.workspace import atomic_write_bytes

    from .leaderboard import build_leaderboard, render_html, render_markdown

    if len(run_dirs) < 2:
        raise InputError("compare needs at least two results folders")
    if int(bootstrap) < 1:
        raise InputError(f"compare: --bootstrap must be at least 1 (got {bootstrap})")
    if not 0.0 < float(alpha) < 1.0:
        raise InputError(f"compare: --alpha must be in (0, 1) (got {alpha})")
    runs = [load_compare_run(str(d)) for d in run_dirs]
    _unique_labels(runs)
    flags, excl = check_protocols(runs)
    joined, samples = join_samples(runs, intersect, log)
    lb_metric = _choose_metric(runs, metric, excl)
    seeds: Dict[str, int] = {}
    pairs = _compare_pairs(runs, joined, excl, int(bootstrap), int(seed), float(alpha), diagnostics, seeds)
    board = build_leaderboard(runs, joined, pairs, lb_metric, int(bootstrap), int(seed), float(alpha), seeds, flags)
    metrics = {m: info.to_json() for r in runs for m, info in r.metrics.items()}
    doc = {
        "compare_schema_version": COMPARE_SCHEMA_VERSION,
        "runs": [{"label": r.label, "path": r.path,
                  "editor": {k: r.results["editor"].get(k) for k in ("spec", "name", "protocol", "config")},
                  "protocol": protocol_text(r.results["editor"]),
                  "data": {k: r.results["data"].get(k) for k in ("path", "view", "split", "status", "schema_version",
                                                                 "sample_ids_sha256")},
                  "seed": r.results["config"].get("seed"),
                  "judge": ({"model": r.results["judge"]["model"], "prompt_version": r.results["judge"]["prompt_version"]}
                            if r.results.get("judge") else None),
                  "metrics": sorted(r.metrics)} for r in runs],
        "samples": samples,
        "protocol": {"flags": flags,
                     "not_compared": [{"a": runs[i].label, "b": runs[j].label, "metric": m, "reason": why}
                                      for (i, j), ex in sorted(excl.items()) for m, why in ex.items()],
                     "rules": {"refuse": "different data views (rie vs reference-based)",
                               "exclude": "a metric whose parameters, model or rules differ; judge metrics when the "
                                          "judge model or prompt version differs",
                               "warn": "editor protocols, data paths/split/status/schema, refcoco-edit versions, "
                                       "resize_outputs, metric model device/dtype, other judge parameters, a judge in "
                                       "some runs only",
                               "note": "seeds, metrics computed by some runs only"}},
        "metrics": metrics,
        "pairs": pairs,
        "leaderboard": board,
        "seeds": {"base": int(seed), "rule": SEED_RULE, "bootstrap": dict(sorted(seeds.items()))},
        "settings": {"alpha": float(alpha), "bootstrap": int(bootstrap), "confidence": CONFIDENCE,
                     "ci_method": "percentile bootstrap of the mean (paired: the same resampled sample indices "
                                  "for both runs)",
                     "seed": int(seed), "intersect": bool(intersect), "diagnostics": bool(diagnostics),
                     "metric": lb_metric, "wilcoxon": WILCOXON_SETTINGS,
                     "holm": {"pairs": "within each pair, over the metrics compared for it (family-wise error of "
                                       "one pair's table; not across pairs)",
                              "leaderboard": "over the pairs of runs on the leaderboard metric"},
                     "versions": {"numpy": np.__version__, "scipy": scipy.__version__}},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.json", dumps(doc))
    atomic_write_bytes(out / "leaderboard.md", render_markdown(doc).encode("utf-8"))
    atomic_write_bytes(out / "leaderboard.html", render_html(doc).encode("utf-8"))
    return doc
