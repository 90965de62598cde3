"""study.json of a human study (``refcoco-edit study pull``): its versioned schema, its bytes,
reading it back, and its Markdown tables. In the core because two sides use it: the study
(``refcoco_edit.annotation.study``) writes it, ``refcoco-edit report --study`` (benchmark) reads it.

study.json (``study_schema_version`` "1.0")
===========================================
One JSON object, keys sorted, no NaN (a missing value is ``null``), no wall-clock time: pulling
the same server state twice gives the same bytes.

``tool``        ``{name, version}``.
``project``     ``{url, project_id, title}``: the Label Studio project the ratings came from.
``config``      ``seed``; ``scale`` [1, 5]; ``criteria`` [quality, consistency]; ``bootstrap``
                ``{resamples, confidence, method, unit, seed_rule}``; ``agreement`` (how alpha is
                computed); ``alignment`` (how the metric columns are compared with people);
                ``resolution`` (which annotation of a rater counts).
``methods``     ``[{key, label, run, editor}]``: the blind keys (m1, m2, ...) and what they are.
``counts``      ``{raters, tasks, tasks_annotated, annotations, skipped, ratings {quality,
                consistency}, missing_ratings, preferences, samples_rated}``.
``table``       ``{key: {quality, consistency: {n, n_samples, mean, std, ci95}, preferred: {n,
                wins, rate}}}``: the paper's Table 3 (mean rating per method, 95 % CI).
``agreement``   ``{quality, consistency, both: {alpha, raters, units, values}}``: Krippendorff's
                alpha (interval), units = rated outputs (``both``: every (output, criterion)).
``alignment``   ``[{metric, title, higher_is_better, criterion, n, n_samples, spearman {value,
                ci95}, kendall {value, ci95}, pairwise {n_pairs, rate, ci95}}]``: per metric column
                of the score runs and per criterion, sorted by (criterion, metric).
``problems``    what the pull could not use (unknown tasks, unreadable ratings), as text.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import InputError
from .schema_check import schema_errors

__all__ = ["STUDY_SCHEMA_VERSION", "STUDY_SCHEMA", "STUDY_FILE", "CRITERIA", "dumps", "study_errors", "load_study",
           "render_study_markdown", "alpha_verdict"]

STUDY_SCHEMA_VERSION = "1.0"
STUDY_FILE = "study.json"
CRITERIA = ("quality", "consistency")

_NUM = {"type": ["number", "null"]}
_CI = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_INT = {"type": "integer"}
_SUMMARY = {"type": "object", "required": ["n", "n_samples", "mean", "std", "ci95"], "additionalProperties": False,
            "properties": {"n": _INT, "n_samples": _INT, "mean": _NUM, "std": _NUM, "ci95": _CI}}
_STAT = {"type": "object", "required": ["value", "ci95"], "additionalProperties": False,
         "properties": {"value": _NUM, "ci95": _CI}}
_ALPHA = {"type": "object", "required": ["alpha", "raters", "units", "values"], "additionalProperties": False,
          "properties": {"alpha": _NUM, "raters": _INT, "units": _INT, "values": _INT}}

STUDY_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "refcoco-edit human study",
    "type": "object",
    "required": ["study_schema_version", "tool", "project", "config", "methods", "counts", "table", "agreement",
                 "alignment", "problems"],
    "additionalProperties": False,
    "properties": {
        "study_schema_version": {"const": STUDY_SCHEMA_VERSION},
        "tool": {"type": "object", "required": ["name", "version"]},
        "project": {"type": "object", "required": ["url", "project_id", "title"],
                    "properties": {"url": {"type": "string"}, "project_id": _INT, "title": {"type": "string"}}},
        "config": {"type": "object", "required": ["seed", "scale", "criteria", "bootstrap", "agreement", "alignment",
                                                  "resolution"],
                   "properties": {"seed": _INT, "scale": {"type": "array", "items": _INT},
                                  "criteria": {"type": "array", "items": {"enum": list(CRITERIA)}},
                                  "bootstrap": {"type": "object",
                                                "required": ["resamples", "confidence", "method", "unit", "seed_rule"]}}},
        "methods": {"type": "array", "items": {
            "type": "object", "required": ["key", "label", "run", "editor"], "additionalProperties": False,
            "properties": {"key": {"type": "string"}, "label": {"type": "string"}, "run": {"type": "string"},
                           "editor": {"type": "string"}}}},
        "counts": {"type": "object",
                   "required": ["raters", "tasks", "tasks_annotated", "annotations", "skipped", "ratings",
                                "missing_ratings", "preferences", "samples_rated"],
                   "properties": {k: _INT for k in ("raters", "tasks", "tasks_annotated", "annotations", "skipped",
                                                    "missing_ratings", "preferences", "samples_rated")}},
        "table": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["quality", "consistency", "preferred"], "additionalProperties": False,
            "properties": {"quality": _SUMMARY, "consistency": _SUMMARY,
                           "preferred": {"type": "object", "required": ["n", "wins", "rate"],
                                         "properties": {"n": _INT, "wins": _INT, "rate": _NUM}}}}},
        "agreement": {"type": "object", "required": ["quality", "consistency", "both"],
                      "properties": {"quality": _ALPHA, "consistency": _ALPHA, "both": _ALPHA}},
        "alignment": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["metric", "title", "higher_is_better", "criterion", "n", "n_samples", "spearman", "kendall",
                         "pairwise"],
            "properties": {"metric": {"type": "string"}, "title": {"type": "string"},
                           "higher_is_better": {"type": ["boolean", "null"]}, "criterion": {"enum": list(CRITERIA)},
                           "n": _INT, "n_samples": _INT, "spearman": _STAT, "kendall": _STAT,
                           "pairwise": {"type": "object", "required": ["n_pairs", "rate", "ci95"],
                                        "additionalProperties": False,
                                        "properties": {"n_pairs": _INT, "rate": _NUM, "ci95": _CI}}}}},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(doc: Any) -> bytes:
    """study.json's bytes: keys sorted, indented, NaN/Infinity as null, one final newline."""
    return (json.dumps(_clean(doc), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def study_errors(doc: Any) -> List[str]:
    """What in ``doc`` does not follow STUDY_SCHEMA (empty when it does)."""
    return schema_errors(doc, STUDY_SCHEMA)


def load_study(path: Path | str) -> Dict[str, Any]:
    """A study folder's study.json (or the file itself), checked: InputError when absent, not
    JSON, of another schema version or not following the schema."""
    p = Path(path)
    if p.is_dir():
        p = p / STUDY_FILE
    if not p.is_file():
        raise InputError(f"{path}: no {STUDY_FILE} (run `refcoco-edit study pull --out {path}` first)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    version = doc.get("study_schema_version") if isinstance(doc, dict) else None
    if version != STUDY_SCHEMA_VERSION:
        raise InputError(f"{p}: study schema version {version!r}, this refcoco-edit reads {STUDY_SCHEMA_VERSION}")
    errs = study_errors(doc)
    if errs:
        raise InputError(f"{p} does not follow study schema {STUDY_SCHEMA_VERSION}: " + "; ".join(errs[:10]))
    return doc


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------

def _md(text: Any) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _f(v: Optional[float], digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(value: Optional[float], ci: Optional[List[float]], digits: int = 2) -> str:
    if value is None:
        return "—"
    s = _f(value, digits)
    return s + (f" [{_f(ci[0], digits)}, {_f(ci[1], digits)}]" if ci else "")


def alpha_verdict(alpha: Optional[float]) -> str:
    """Krippendorff's reading of alpha: >= 0.800 reliable, >= 0.667 tentative, below unreliable."""
    if alpha is None:
        return "not computable (fewer than two raters on a unit, or no variation)"
    if alpha >= 0.8:
        return "reliable (>= 0.800)"
    if alpha >= 0.667:
        return "tentative (0.667-0.800): draw only tentative conclusions"
    return "unreliable (< 0.667): the raters do not agree well enough to trust the means"


def render_study_markdown(doc: Dict[str, Any], level: int = 1) -> str:
    """The study's tables: Table 3, inter-rater agreement, counts, metric-human alignment, methods."""
    h = "#" * level
    title = doc["project"]["title"]
    out = [f"{h} Human study: {_md(title)}", ""]
    labels = {m["key"]: m["label"] for m in doc["methods"]}
    c = doc["counts"]
    out += [f"{c['raters']} raters, {c['samples_rated']} rated samples of {c['tasks']} tasks, {c['annotations']} "
            f"annotations ({c['skipped']} skipped), {c['missing_ratings']} ratings left empty. Ratings 1-5; mean over "
            f"every (sample, rater) rating with a 95 % bootstrap CI (resampling samples, "
            f"{doc['config']['bootstrap']['resamples']} resamples).", ""]
    out += [f"{h}# Table 3: human ratings (1-5, higher is better)", "",
            "| Method | Quality | Consistency | Preferred (best of the outputs) | n ratings |", "|---|---|---|---|---:|"]
    for key in sorted(doc["table"]):
        t = doc["table"][key]
        pref = t["preferred"]
        pref_s = "—" if pref["rate"] is None else f"{100 * pref['rate']:.0f}% ({pref['wins']}/{pref['n']})"
        out.append(f"| {_md(labels.get(key, key))} | {_ci(t['quality']['mean'], t['quality']['ci95'])} | "
                   f"{_ci(t['consistency']['mean'], t['consistency']['ci95'])} | {pref_s} | "
                   f"{t['quality']['n']} / {t['consistency']['n']} |")
    out += ["", f"{h}# Inter-rater agreement (Krippendorff's alpha, interval level)", "",
            "| Ratings | alpha | reading | raters | units | values |", "|---|---:|---|---:|---:|---:|"]
    for k in ("quality", "consistency", "both"):
        a = doc["agreement"][k]
        out.append(f"| {k} | {_f(a['alpha'], 3)} | {alpha_verdict(a['alpha'])} | {a['raters']} | {a['units']} | "
                   f"{a['values']} |")
    out += ["", f"{h}# Which metric agrees with people", "",
            "Per metric column of the score runs: Spearman rho and Kendall tau-b between the metric and the mean "
            "human rating of each output (sample level), and how often the metric orders two methods' outputs of "
            "one sample as people do (pairwise agreement; metric ties count half). Signs are oriented so that "
            "positive means agreement (a lower-is-better metric is negated); `?`: direction unknown, raw sign. "
            "95 % bootstrap CIs over samples.", ""]
    for crit in CRITERIA:
        rows = [a for a in doc["alignment"] if a["criterion"] == crit]
        if not rows:
            continue
        out += [f"Against **{crit}**:", "",
                "| Metric | dir | Spearman rho | Kendall tau | Pairwise agreement | outputs | pairs |",
                "|---|---|---|---|---|---:|---:|"]
        for a in sorted(rows, key=lambda r: (-(r["spearman"]["value"] if r["spearman"]["value"] is not None else -9),
                                             r["metric"])):
            d = {True: "↑", False: "↓", None: "?"}[a["higher_is_better"]]
            p = a["pairwise"]
            out.append(f"| {_md(a['title'])} (`{_md(a['metric'])}`) | {d} | "
                       f"{_ci(a['spearman']['value'], a['spearman']['ci95'])} | "
                       f"{_ci(a['kendall']['value'], a['kendall']['ci95'])} | {_ci(p['rate'], p['ci95'])} | "
                       f"{a['n']} | {p['n_pairs']} |")
        out.append("")
    out += [f"{h}# Methods (the blind keys)", "", "| Key | Method | Editor | Score run |", "|---|---|---|---|"]
    for m in doc["methods"]:
        out.append(f"| {m['key']} | {_md(m['label'])} | `{_md(m['editor'])}` | `{_md(m['run'])}` |")
    if doc["problems"]:
        out += ["", f"{h}# Problems", ""] + [f"- {_md(p)}" for p in doc["problems"]]
    return "\n".join(out) + "\n"
