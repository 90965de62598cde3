"""The files of one score run's report (``write_run``: results.json, samples.parquet, report.md,
gallery.html, plots/*.png) and ``refcoco-edit report RUN1 RUN2 ... --out DIR`` (``compare_runs``),
which puts several runs side by side. They write the parts of the ``report`` package together.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from refcoco_edit.errors import InputError
from refcoco_edit.workspace import atomic_write_bytes, atomic_write_table

from .gallery import render_gallery
from .markdown import render_markdown, run_label
from .plots import write_plots_if_possible
from .results import dumps, load_run, read_samples, samples_table
from .schema import RESULTS_SCHEMA_VERSION, schema_errors

__all__ = ["write_run", "compare_runs"]


def write_run(out: Path, results: Dict[str, Any], records: Sequence[Dict[str, Any]], skipped: Sequence[Dict[str, Any]] = (),
              gallery: bool = True, plots: bool = True, log: Callable[[str], None] = print) -> None:
    """Write results.json, samples.parquet, report.md, gallery.html and plots/ of one run."""
    out = Path(out)
    errs = schema_errors(json.loads(dumps(results)))
    if errs:  # our own bug, not the user's input: exit 1, not 2
        raise RuntimeError("results do not follow the results schema: " + "; ".join(errs[:10]))
    names = list(results["metrics"])
    judge_names = list((results.get("judge") or {}).get("metrics", {}))
    atomic_write_table(out / "samples.parquet", samples_table(records, names, skipped, judge_names=judge_names))
    label = run_label(results)
    atomic_write_bytes(out / "report.md", render_markdown([results], [label]).encode("utf-8"))
    flat = read_samples(out)
    if gallery:
        page = render_gallery([(label, "", flat)], "", f"refcoco-edit gallery: {label}", names)
        atomic_write_bytes(out / "gallery.html", page.encode("utf-8"))
    if plots:
        write_plots_if_possible(out, [results], [label], [flat], log)
    atomic_write_bytes(out / "results.json", dumps(results))  # last: a complete run has results.json


def study_section(study: Path, run_dirs: Sequence[Path]) -> Dict[str, Any]:
    """A human study (``refcoco-edit study pull --out STUDY``) for a report, read as a plain file:
    its study.json (checked), its tables as Markdown, and which of its methods are runs of the report."""
    from refcoco_edit.study_format import load_study, render_study_markdown

    from .study_breakdown import study_breakdown_markdown, study_by_attribute

    doc = load_study(study)
    ours = {str(Path(r).resolve()) for r in run_dirs}
    methods = [dict(m, in_report=m["run"] in ours) for m in doc["methods"]]
    runs = [*run_dirs, *[Path(m["run"]) for m in doc["methods"] if m.get("run")]]
    by_attr = study_by_attribute(Path(study), doc, [r for r in runs if Path(r).is_dir()])
    md = render_study_markdown(doc, level=2).rstrip("\n") + "\n\n" + "\n".join(study_breakdown_markdown(by_attr, doc))
    return {"doc": doc, "markdown": md,
            "summary": {"path": str(study), "study_schema_version": doc["study_schema_version"], "project": doc["project"],
                        "methods": methods, "counts": doc["counts"], "table": doc["table"], "agreement": doc["agreement"],
                        "alignment": doc["alignment"], "by_attribute": by_attr}}


def compare_runs(run_dirs: Sequence[Path], out: Path, gallery: bool = True, plots: bool = True,
                 log: Callable[[str], None] = print, study: Optional[Path] = None) -> Dict[str, Any]:
    """``refcoco-edit report RUN1 RUN2 ... --out DIR [--study STUDY]``: report.md with one row per
    run in every table (then the human study's tables), comparison.json, gallery.html with the
    runs' outputs side by side, plots/."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise InputError("report needs at least one results folder")
    runs = [load_run(r) for r in run_dirs]
    human = study_section(Path(study), run_dirs) if study is not None else None
    labels = [run_label(r) for r in runs]
    seen: Counter = Counter()
    for i, lab in enumerate(labels):  # make labels unique: the same editor scored twice
        seen[lab] += 1
        if seen[lab] > 1 or labels.count(lab) > 1:
            labels[i] = f"{lab} ({run_dirs[i].name})"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(runs, labels, title="refcoco-edit report: " + ", ".join(labels))
    if human is not None:
        md = md.rstrip("\n") + "\n\n" + human["markdown"]
    atomic_write_bytes(out / "report.md", md.encode("utf-8"))
    comparison = {"results_schema_version": RESULTS_SCHEMA_VERSION,
                  "runs": [{"path": str(d), "label": lab, "editor": r["editor"], "counts": r["counts"],
                            "data": r["data"], "metrics": {n: {k: m[k] for k in ("n", "mean", "std", "ci95")}
                                                           for n, m in r["metrics"].items()},
                            "not_computed": r["not_computed"],
                            **({"judge": {"model": r["judge"]["model"], "prompt_version": r["judge"]["prompt_version"],
                                          "metrics": {n: {k: m[k] for k in ("n", "n_failed", "mean", "std", "ci95")}
                                                      for n, m in r["judge"]["metrics"].items()},
                                          "agreement": r["judge"]["agreement"]}} if r.get("judge") else {})}
                           for d, lab, r in zip(run_dirs, labels, runs)]}
    if human is not None:
        comparison["study"] = human["summary"]
    atomic_write_bytes(out / "comparison.json", dumps(comparison))
    samples = [read_samples(d) for d in run_dirs]
    if gallery:
        names = [n for r in runs for n in r["metrics"]]
        names = list(dict.fromkeys(names))
        rels = [os.path.relpath(d.resolve(), out.resolve()) for d in run_dirs]
        page = render_gallery([(lab, rel, recs) for lab, rel, recs in zip(labels, rels, samples)], rels[0],
                              "refcoco-edit report: " + ", ".join(labels), names)
        atomic_write_bytes(out / "gallery.html", page.encode("utf-8"))
    if plots:
        write_plots_if_possible(out, runs, labels, samples, log)
    return comparison
