"""What ``study pull`` writes into ``STUDY/``:

* ``ratings.parquet``  one row per rater and rated output, de-blinded (sample_id, method, slot,
                       rater, quality, consistency, Label Studio ids), sorted;
* ``study.json``       the numbers (schema: ``refcoco_edit.study_format``);
* ``study.md``         its tables (Table 3, agreement, alignment);
* ``plots/table3.png`` the mean ratings with their CIs; ``plots/alignment.png`` Spearman rho of
                       every metric with its CI, per criterion.

Each file is written atomically and only when its bytes change; study.json last.
"""
from __future__ import annotations

import io
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from refcoco_edit import __version__
from refcoco_edit.errors import InputError
from refcoco_edit.study_format import CRITERIA, STUDY_FILE, STUDY_SCHEMA_VERSION, dumps, render_study_markdown, study_errors
from refcoco_edit.workspace import atomic_write_bytes

from . import stats
from .runs import load_run

RATINGS_FILE = "ratings.parquet"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def _metric_values(state: Dict[str, Any], problems: List[str]) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict]]:
    """Metric columns of the study's runs: name -> {title, higher_is_better}, and name ->
    {(sample_id, method): value}. A run that cannot be read any more is a problem, not an error."""
    columns: Dict[str, Dict[str, Any]] = {}
    values: Dict[str, Dict] = {}
    for key, m in state["methods"].items():
        try:
            run = load_run(m["run"])
        except InputError as e:
            problems.append(f"method {key}: its score run cannot be read ({e}); its metrics are left out")
            continue
        for col in run.metrics:
            info = columns.setdefault(col.name, {"title": col.title, "higher_is_better": col.higher_is_better})
            if info["higher_is_better"] is None:
                info["higher_is_better"] = col.higher_is_better
            for sid, v in run.metric_values(col.name).items():
                values.setdefault(col.name, {})[(sid, key)] = v
    return dict(sorted(columns.items())), values


def build_study(state: Dict[str, Any], c: Any, url: str, project_id: int, resamples: int) -> Tuple[Dict[str, Any], Any]:
    """study.json's content and the ratings table from the collected ratings; no I/O but the runs."""
    import pyarrow as pa

    seed = int(state.get("seed", 0))
    problems = list(c.problems)
    methods = list(state["methods"])
    table = stats.table3(c.ratings, methods, seed, resamples)
    for m in methods:
        shown = [p for p in c.preferences if m in p["shown"]]
        wins = sum(1 for p in shown if p["preferred"] == m)
        table[m]["preferred"] = {"n": len(shown), "wins": wins, "rate": wins / len(shown) if shown else None}
    agreement = {crit: stats.krippendorff_alpha(c.ratings, [crit]) for crit in CRITERIA}
    agreement["both"] = stats.krippendorff_alpha(c.ratings, list(CRITERIA))
    columns, values = _metric_values(state, problems)
    align = []
    for crit in CRITERIA:
        human = stats.human_scores(c.ratings, crit)
        for name, info in columns.items():
            a = stats.alignment(human, values.get(name, {}), info["higher_is_better"], seed, resamples,
                                "align", crit, name)
            align.append({"metric": name, "title": info["title"], "higher_is_better": info["higher_is_better"],
                          "criterion": crit, **a})
    doc = {
        "study_schema_version": STUDY_SCHEMA_VERSION,
        "tool": {"name": "refcoco-edit", "version": __version__},
        "project": {"url": url, "project_id": int(project_id), "title": state["title"]},
        "config": {
            "seed": seed, "scale": [1, 5], "criteria": list(CRITERIA),
            "bootstrap": {"resamples": int(resamples), "confidence": stats.CONFIDENCE, "method": "percentile",
                          "unit": "sample (all ratings of a resampled sample go along)",
                          "seed_rule": "numpy default_rng(derive_seed(seed, 'study-bootstrap', what, ...))"},
            "agreement": {"statistic": "Krippendorff's alpha", "level": "interval",
                          "library": f"krippendorff {_version('krippendorff')}",
                          "units": "one output (sample, method) per criterion; 'both': every (output, criterion); "
                                   "units with fewer than two ratings are left out"},
            "alignment": {"human_score": "mean rating of an output over its raters",
                          "correlation": f"scipy {_version('scipy')} spearmanr and kendalltau (tau-b) over outputs",
                          "orientation": "a metric with higher_is_better false is negated: positive = agrees with "
                                         "people; unknown direction: raw sign, no pairwise rate",
                          "pairwise": "per sample, every pair of methods people did not tie: 1 when the metric "
                                      "orders it as people do, 0.5 when the metric ties, else 0",
                          "metrics": "every numeric per-sample column of the runs' samples.parquet"},
            "resolution": "per rater and task the most recently updated annotation; skipped ones do not count",
        },
        "methods": [{"key": k, "label": m["label"], "run": m["run"], "editor": m["editor"]}
                    for k, m in state["methods"].items()],
        "counts": {"raters": len(c.raters), "tasks": len(state.get("tasks") or {}), "tasks_annotated": c.tasks_annotated,
                   "annotations": c.annotations, "skipped": c.skipped,
                   "ratings": {crit: sum(1 for r in c.ratings if r.value(crit) is not None) for crit in CRITERIA},
                   "missing_ratings": c.missing, "preferences": len(c.preferences),
                   "samples_rated": len({r.sample_id for r in c.ratings})},
        "table": table,
        "agreement": agreement,
        "alignment": sorted(align, key=lambda a: (a["criterion"], a["metric"])),
        "problems": problems,
    }
    errs = study_errors(doc)
    if errs:  # our own bug: exit 1
        raise RuntimeError("study.json would not follow its schema: " + "; ".join(errs[:10]))
    fields = [("sample_id", pa.string()), ("method", pa.string()), ("slot", pa.int32()), ("rater", pa.string()),
              ("quality", pa.int32()), ("consistency", pa.int32()), ("ls_task_id", pa.int64()),
              ("ls_annotation_id", pa.int64()), ("updated_at", pa.string())]
    schema = pa.schema(fields, metadata={"refcoco_edit.study_schema_version": STUDY_SCHEMA_VERSION})
    rows = sorted(c.records, key=lambda r: (r["sample_id"], r["method"], r["rater"]))
    ratings = pa.Table.from_pydict({n: pa.array([r[n] for r in rows], type=t) for n, t in fields}, schema=schema)
    return doc, ratings


def _plots(doc: Dict[str, Any]) -> Dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: Dict[str, bytes] = {}
    labels = {m["key"]: m["label"] for m in doc["methods"]}
    keys = sorted(doc["table"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(keys), 3.6))
    for i, crit in enumerate(CRITERIA):
        means = [doc["table"][k][crit]["mean"] or 0 for k in keys]
        err = [[max(0.0, (doc["table"][k][crit]["mean"] or 0) - (doc["table"][k][crit]["ci95"] or [0, 0])[0])
                for k in keys],
               [max(0.0, (doc["table"][k][crit]["ci95"] or [0, 0])[1] - (doc["table"][k][crit]["mean"] or 0))
                for k in keys]]
        ax.bar(np.arange(len(keys)) + (i - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, label=crit)
    ax.set_xticks(np.arange(len(keys)), [labels[k] for k in keys], rotation=20, ha="right")
    ax.set_ylim(0, 5.2)
    ax.set_ylabel("mean rating (1-5)")
    ax.set_title("Human ratings (95% bootstrap CI)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out["table3.png"] = _png(fig, plt)
    rows = [a for a in doc["alignment"] if a["spearman"]["value"] is not None]
    names = sorted({a["metric"] for a in rows})
    if names:
        fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.32 * len(names)))
        for i, crit in enumerate(CRITERIA):
            vals = {a["metric"]: a["spearman"] for a in rows if a["criterion"] == crit}
            y = np.arange(len(names)) + (i - 0.5) * 0.38
            v = [vals[n]["value"] if n in vals else 0 for n in names]
            lo = [max(0.0, vals[n]["value"] - vals[n]["ci95"][0]) if n in vals and vals[n]["ci95"] else 0 for n in names]
            hi = [max(0.0, vals[n]["ci95"][1] - vals[n]["value"]) if n in vals and vals[n]["ci95"] else 0 for n in names]
            ax.barh(y, v, 0.38, xerr=[lo, hi], capsize=2, label=crit)
        ax.set_yticks(np.arange(len(names)), names)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("Spearman rho with human ratings (oriented: > 0 agrees)")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out["alignment.png"] = _png(fig, plt)
    return out


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _table_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_study(study: Path, doc: Dict[str, Any], ratings: Any, log: Callable[[str], None] = print) -> List[str]:
    """Write the study's files (only those whose bytes change; study.json last); returns their names."""
    files: Dict[str, bytes] = {RATINGS_FILE: _table_bytes(ratings),
                               "study.md": render_study_markdown(doc).encode("utf-8")}
    try:
        files.update({f"plots/{k}": v for k, v in _plots(doc).items()})
    except ImportError as e:  # matplotlib is a dependency; a broken install still gets the numbers
        log(f"warning: no plots ({e})")
    files[STUDY_FILE] = dumps(doc)
    changed = []
    for name, data in files.items():
        p = Path(study) / name
        if not (p.exists() and p.read_bytes() == data):
            atomic_write_bytes(p, data)
            changed.append(name)
    return changed
