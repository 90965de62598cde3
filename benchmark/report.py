"""Reports of a score run: results.json, samples.parquet, report.md, gallery.html, plots/*.png;
and ``refcoco-edit report RUN1 RUN2 ... --out DIR`` to put several runs side by side.

results.json (``results_schema_version`` "1.0")
================================================
One JSON object, keys sorted, no NaN/Infinity (a missing value is ``null``). Two runs of the
same command on the same data give the same bytes: wall times and cache reuse go to
``timing.json`` instead. ``RESULTS_SCHEMA`` is the JSON Schema; ``validate_results`` checks it.

``results_schema_version``  "1.0"; bumped on any incompatible change.
``tool``       ``{name, version, git_revision, git_dirty}``: the refcoco-edit that scored (git
               fields null outside a git checkout).
``editor``     ``{spec, name, class, protocol, config, batch_size, version}`` (+ ``timeout_s`` for
               cmd:). ``protocol``: what the editor saw beyond (image, prompt, seed), a subset of
               ``gt_mask, object_mask, edit_phrase, referring_phrase, edit_type, reference``.
``data``       ``{path, kind: export|workspace, split, splits_available, status, limit, rows,
               samples, schema_version, sample_ids_sha256}``: ``rows`` read after the split and
               status filters, ``samples`` scorable; the hash is of the sorted scored sample_ids.
``config``     the metric configuration: ``seed`` and ``editor_seed_rule``; ``metrics_requested``
               and ``metrics_computed``; ``image_size``, ``crop_rule``, ``resize_outputs``,
               ``resize_rule``; ``mask_protocol`` {background, target, distractors};
               ``metric_params`` (eps, tau, SSIM window, PSNR floor); ``models`` (clip_model,
               aesthetic_weights, dino_model, lpips_weights: ids/paths as given, or null);
               ``model_details`` (one object per model actually loaded: ``spec``, ``hub_id``,
               ``revision`` (the hub commit of a cached snapshot, else null), ``weights_sha256``
               (of the weight file, or of a folder's config.json + weight files), architecture,
               processor input size, device, dtype); ``model_metrics`` (``metrics``, ``device``,
               ``dtype`` as asked, ``batch_size``, ``local_files_only``, ``rules``: the crop,
               text, preprocessing and scale rules of every model metric) — both ``{}`` when no
               model metric ran; ``bootstrap`` {resamples, confidence, method, seed_rule};
               ``aggregation`` (how failures count).
``versions``   Python and package versions (numpy, pillow, opencv, pycocotools, pyarrow, pandas;
               torch, torchvision, transformers, diffusers, safetensors: null when absent).
``counts``     ``{rows, samples, scored, failed, skipped, resized, failed_by_reason,
               skipped_by_reason}``; ``skipped`` counts load-time and decode-time skips.
``failures``   ``[{sample_id, reason, error}]``: editor failures, sorted by sample_id.
``skipped``    ``[{sample_id, reason, error}]``: unscorable data rows, sorted by sample_id.
``edit_types`` ``{edit_type: number of scored samples}``.
``metrics``    ``{name: {family, title, description, higher_is_better, display_scale, n,
               n_not_applicable, mean, std, ci95: [lo, hi], by_edit_type: {type: {n, mean, std,
               ci95}}}}`` for each computed metric; values are raw (``display_scale`` is only
               what report.md multiplies by); ``n`` counts scored samples where it applies.
``not_computed`` ``{name: {family, title, reason}}``: requested metrics that were not computed
               (e.g. "needs --clip-model").

samples.parquet: one row per sample (scored, failed or skipped): ``sample_id, split, image_id,
category, edit_type, prompt, referring_span, edit_span, seed, n_distractors, status
(ok|failed|skipped), reason, error, resized, output (relative path), height, width`` and one
float64 column per computed metric (NaN where it does not apply or the sample was not scored).
"""
from __future__ import annotations

import functools
import html
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from refcoco_edit.errors import InputError
from refcoco_edit.workspace import atomic_write_bytes, atomic_write_table

RESULTS_SCHEMA_VERSION = "1.0"
TABLE_FAMILIES = (
    ("paper", "Table 1 (the paper's metrics)"),
    ("pie", "PIE-Bench (background preservation; over pixels outside M_e)"),
    ("magicbrush", "MagicBrush (against the reference image)"),
    ("referring", "Referring (instance level: the referred object vs its same-category distractors)"),
)

# ----------------------------------------------------------------------------------------------
# schema
# ----------------------------------------------------------------------------------------------

_NUM = {"type": ["number", "null"]}
_CI = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_SUMMARY = {"type": "object", "required": ["n", "mean", "std", "ci95"],
            "properties": {"n": {"type": "integer"}, "mean": _NUM, "std": _NUM, "ci95": _CI}}
_RECORD_LIST = {"type": "array", "items": {"type": "object", "required": ["sample_id", "reason", "error"],
                                           "properties": {"sample_id": {"type": "string"}, "reason": {"type": "string"},
                                                          "error": {"type": ["string", "null"]}}}}
_COUNTS_MAP = {"type": "object", "additionalProperties": {"type": "integer"}}

RESULTS_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "refcoco-edit score results",
    "type": "object",
    "required": ["results_schema_version", "tool", "editor", "data", "config", "versions", "counts", "failures",
                 "skipped", "edit_types", "metrics", "not_computed"],
    "additionalProperties": False,
    "properties": {
        "results_schema_version": {"const": RESULTS_SCHEMA_VERSION},
        "tool": {"type": "object", "required": ["name", "version", "git_revision", "git_dirty"],
                 "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                "git_revision": {"type": ["string", "null"]}, "git_dirty": {"type": ["boolean", "null"]}}},
        "editor": {"type": "object", "required": ["spec", "name", "class", "protocol", "config", "batch_size", "version"],
                   "properties": {"spec": {"type": "string"}, "name": {"type": "string"}, "class": {"type": "string"},
                                  "protocol": {"type": "array", "items": {"enum": ["gt_mask", "object_mask", "edit_phrase",
                                                                                   "referring_phrase", "edit_type", "reference"]}},
                                  "config": {"type": "object"}, "batch_size": {"type": "integer"},
                                  "version": {"type": "string"}, "timeout_s": {"type": "number"}}},
        "data": {"type": "object",
                 "required": ["path", "kind", "split", "splits_available", "status", "limit", "rows", "samples",
                              "schema_version", "sample_ids_sha256"],
                 "properties": {"path": {"type": "string"}, "kind": {"enum": ["export", "workspace"]},
                                "split": {"type": ["string", "null"]},
                                "splits_available": {"type": "array", "items": {"type": "string"}},
                                "status": {"enum": ["all", "accepted"]}, "limit": {"type": ["integer", "null"]},
                                "rows": {"type": "integer"}, "samples": {"type": "integer"},
                                "schema_version": {"type": ["string", "null"]}, "sample_ids_sha256": {"type": "string"}}},
        "config": {"type": "object",
                   "required": ["seed", "editor_seed_rule", "metrics_requested", "metrics_computed", "image_size",
                                "crop_rule", "resize_outputs", "resize_rule", "mask_protocol", "metric_params", "models",
                                "bootstrap", "aggregation"],
                   "properties": {
                       "seed": {"type": "integer"}, "editor_seed_rule": {"type": "string"},
                       "metrics_requested": {"type": "array", "items": {"type": "string"}},
                       "metrics_computed": {"type": "array", "items": {"type": "string"}},
                       "image_size": {"type": "string"}, "crop_rule": {"type": "string"},
                       "resize_outputs": {"type": "boolean"}, "resize_rule": {"type": "string"},
                       "mask_protocol": {"type": "object", "required": ["background", "target", "distractors"]},
                       "metric_params": {"type": "object"},
                       "models": {"type": "object", "required": ["clip_model", "aesthetic_weights", "dino_model", "lpips_weights"],
                                  "additionalProperties": {"type": ["string", "null"]}},
                       "model_details": {"type": "object", "additionalProperties": {"type": "object"}},
                       "model_metrics": {"type": "object"},
                       "bootstrap": {"type": "object", "required": ["resamples", "confidence", "method", "seed_rule"]},
                       "aggregation": {"type": "string"}}},
        "versions": {"type": "object", "required": ["python"], "additionalProperties": {"type": ["string", "null"]}},
        "counts": {"type": "object",
                   "required": ["rows", "samples", "scored", "failed", "skipped", "resized", "failed_by_reason",
                                "skipped_by_reason"],
                   "properties": {"rows": {"type": "integer"}, "samples": {"type": "integer"}, "scored": {"type": "integer"},
                                  "failed": {"type": "integer"}, "skipped": {"type": "integer"},
                                  "resized": {"type": "integer"}, "failed_by_reason": _COUNTS_MAP,
                                  "skipped_by_reason": _COUNTS_MAP}},
        "failures": _RECORD_LIST,
        "skipped": _RECORD_LIST,
        "edit_types": _COUNTS_MAP,
        "metrics": {"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["family", "title", "description", "higher_is_better", "display_scale", "n", "n_not_applicable",
                         "mean", "std", "ci95", "by_edit_type"],
            "properties": {"family": {"enum": ["paper", "pie", "magicbrush", "referring"]}, "title": {"type": "string"},
                           "description": {"type": "string"}, "higher_is_better": {"type": ["boolean", "null"]},
                           "display_scale": {"type": "number"}, "n": {"type": "integer"},
                           "n_not_applicable": {"type": "integer"}, "mean": _NUM, "std": _NUM, "ci95": _CI,
                           "by_edit_type": {"type": "object", "additionalProperties": _SUMMARY}}}},
        "not_computed": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["family", "title", "reason"],
            "properties": {"family": {"type": "string"}, "title": {"type": "string"}, "reason": {"type": "string"}}}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, _TYPES[t])


def schema_errors(doc: Any, schema: Dict[str, Any] = RESULTS_SCHEMA, path: str = "$") -> List[str]:
    """Violations of a JSON Schema subset (type, const, enum, required, properties,
    additionalProperties, items, minItems, maxItems): enough for RESULTS_SCHEMA, no dependency."""
    errs: List[str] = []
    if "const" in schema and doc != schema["const"]:
        errs.append(f"{path}: expected {schema['const']!r}, got {doc!r}")
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{path}: {doc!r} is not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(doc, t) for t in types):
            return errs + [f"{path}: expected {'/'.join(types)}, got {type(doc).__name__}"]
    if isinstance(doc, dict):
        for k in schema.get("required", []):
            if k not in doc:
                errs.append(f"{path}: missing key {k!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in doc.items():
            if k in props:
                errs += schema_errors(v, props[k], f"{path}.{k}")
            elif extra is False:
                errs.append(f"{path}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                errs += schema_errors(v, extra, f"{path}.{k}")
    if isinstance(doc, list):
        if "minItems" in schema and len(doc) < schema["minItems"]:
            errs.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(doc) > schema["maxItems"]:
            errs.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(doc):
                errs += schema_errors(v, schema["items"], f"{path}[{i}]")
    return errs


def validate_results(doc: Any) -> None:
    """Raise InputError listing what does not follow RESULTS_SCHEMA."""
    errs = schema_errors(doc)
    if errs:
        raise InputError("results.json does not follow results schema "
                         f"{RESULTS_SCHEMA_VERSION}: " + "; ".join(errs[:10]))


# ----------------------------------------------------------------------------------------------
# building results.json
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def git_info() -> Tuple[Optional[str], Optional[bool]]:
    """(revision, dirty) of the checkout holding this package; (None, None) when not in git.
    Read-only: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, env=env)
        if rev.returncode != 0:
            return None, None
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10, env=env)
        dirty = bool(st.stdout.strip()) if st.returncode == 0 else None
        return rev.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def package_versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out: Dict[str, Optional[str]] = {"python": sys.version.split()[0]}
    for key, dist in (("numpy", "numpy"), ("pillow", "pillow"), ("opencv", "opencv-python-headless"),
                      ("pycocotools", "pycocotools"), ("pyarrow", "pyarrow"), ("pandas", "pandas"),
                      ("torch", "torch"), ("torchvision", "torchvision"), ("transformers", "transformers"),
                      ("diffusers", "diffusers"), ("safetensors", "safetensors")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    if out.get("opencv") is None:
        try:
            import cv2

            out["opencv"] = cv2.__version__
        except ImportError:
            pass
    return out


def _json_clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    return v


def dumps(doc: Any) -> bytes:
    return (json.dumps(_json_clean(doc), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def build_results(cfg: Any, dataset: Any, editor: Dict[str, Any], records: Sequence[Dict[str, Any]], names: Sequence[str],
                  computable: Sequence[str], not_computed: Dict[str, str], aggregates: Dict[str, Dict[str, Any]],
                  params: Any, resize_rule: str, model_metrics: Any = None) -> Dict[str, Any]:
    from refcoco_edit import __version__

    from .metrics import METRICS

    rev, dirty = git_info()
    failures = sorted(({"sample_id": r["sample_id"], "reason": r["reason"], "error": r["error"]}
                       for r in records if r["status"] == "failed"), key=lambda d: d["sample_id"])
    skipped = sorted([dict(d) for d in dataset.skipped] +
                     [{"sample_id": r["sample_id"], "reason": r["reason"], "error": r["error"]}
                      for r in records if r["status"] == "skipped"], key=lambda d: (d["sample_id"], d["reason"]))
    scored = [r for r in records if r["status"] == "ok"]
    metrics = {}
    for n in computable:
        spec = METRICS[n]
        metrics[n] = {"family": spec.family, "title": spec.title, "description": spec.description,
                      "higher_is_better": spec.higher_is_better, "display_scale": spec.display_scale, **aggregates[n]}
    return {
        "results_schema_version": RESULTS_SCHEMA_VERSION,
        "tool": {"name": "refcoco-edit", "version": __version__, "git_revision": rev, "git_dirty": dirty},
        "editor": editor,
        "data": {**{k: dataset.info.get(k) for k in ("path", "kind", "split", "splits_available", "status", "limit",
                                                      "rows", "schema_version")},
                 "samples": len(dataset.samples), "sample_ids_sha256": dataset.sample_ids_sha256()},
        "config": {
            "seed": int(cfg.seed),
            "editor_seed_rule": "derive_seed(seed, 'editor', sample_id) mod (2**31 - 1) (refcoco_edit.seeds)",
            "metrics_requested": list(names),
            "metrics_computed": list(computable),
            "image_size": "native: the weight-free metrics and LPIPS_bg at the source image's resolution; CLIP and "
                          "DINO at their image processor's input size (model_details)",
            "crop_rule": "none for the weight-free metrics; CLIP-Sim_fg (both texts): the output cropped to the tight "
                         "box of M_e, then the CLIP processor (resize + center crop); CLIP edited: the output with "
                         "the pixels outside M_e set to 0, full frame; AP, CLIP whole, CLIP-I/T, DINO: the whole "
                         "image through the model's processor; LPIPS_bg: native resolution (model_metrics.rules)",
            "resize_outputs": bool(cfg.resize_outputs),
            "resize_rule": resize_rule,
            "mask_protocol": {
                "background": "pixels outside edit_mask (M_e, the reference's edited area), at source resolution",
                "target": "source_mask (M, the referred object)",
                "distractors": "distractor_masks whose distractor_categories equal the sample's category, minus the "
                               "target's pixels",
            },
            "metric_params": params.to_json(),
            "models": cfg.models(),
            "model_details": model_metrics.describe() if model_metrics is not None else {},
            "model_metrics": model_metrics.settings() if model_metrics is not None else {},
            "bootstrap": {"resamples": int(cfg.bootstrap), "confidence": 0.95, "method": "percentile",
                          "seed_rule": "numpy default_rng(derive_seed(seed, 'bootstrap', metric, edit_type or 'all'))"},
            "aggregation": "mean over scored samples where the metric applies; failed and skipped samples are "
                           "left out of the means and counted in counts",
        },
        "versions": package_versions(),
        "counts": {
            "rows": int(dataset.info.get("rows") or 0),
            "samples": len(records),
            "scored": len(scored),
            "failed": len(failures),
            "skipped": len(skipped),
            "resized": sum(1 for r in scored if r.get("resized")),
            "failed_by_reason": dict(sorted(Counter(f["reason"] for f in failures).items())),
            "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        },
        "failures": failures,
        "skipped": skipped,
        "edit_types": dict(sorted(Counter(str(r["edit_type"]) for r in scored).items())),
        "metrics": metrics,
        "not_computed": {n: {"family": METRICS[n].family, "title": METRICS[n].title, "reason": reason}
                         for n, reason in not_computed.items()},
    }


# ----------------------------------------------------------------------------------------------
# samples.parquet
# ----------------------------------------------------------------------------------------------

def samples_table(records: Sequence[Dict[str, Any]], metric_names: Sequence[str], skipped: Sequence[Dict[str, Any]] = ()):
    import pyarrow as pa

    span = pa.list_(pa.int32())
    fields = [("sample_id", pa.string()), ("split", pa.string()), ("image_id", pa.int64()), ("category", pa.string()),
              ("edit_type", pa.string()), ("prompt", pa.string()), ("referring_span", span), ("edit_span", span),
              ("seed", pa.int64()), ("n_distractors", pa.int32()), ("status", pa.string()), ("reason", pa.string()),
              ("error", pa.string()), ("resized", pa.bool_()), ("output", pa.string()), ("height", pa.int32()),
              ("width", pa.int32())]
    schema = pa.schema([pa.field(n, t) for n, t in fields] + [pa.field(m, pa.float64()) for m in metric_names],
                       metadata={"refcoco_edit.results_schema_version": RESULTS_SCHEMA_VERSION})
    rows = list(records) + [{"sample_id": s["sample_id"], "status": "skipped", "reason": s["reason"],
                             "error": s["error"], "resized": False} for s in skipped]
    rows.sort(key=lambda r: r["sample_id"])
    cols: Dict[str, Any] = {}
    for name, t in fields:
        cols[name] = pa.array([r.get(name) for r in rows], type=t)
    for m in metric_names:
        cols[m] = pa.array([float((r.get("metrics") or {}).get(m, math.nan)) for r in rows], type=pa.float64())
    return pa.Table.from_pydict(cols, schema=schema)


def read_samples(run: Path) -> List[Dict[str, Any]]:
    import pyarrow.parquet as pq

    p = Path(run) / "samples.parquet"
    if not p.exists():
        return []
    return pq.read_table(p).to_pylist()


# ----------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------

def _md(text: Any) -> str:
    """A table cell: no pipes or newlines, HTML-escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _fmt(v: Optional[float], scale: float = 1.0) -> str:
    if v is None:
        return "—"
    x = v * scale
    a = abs(x)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3f}" if a < 10 else f"{x:.2f}"


def _cell(m: Optional[Dict[str, Any]], scale: float, ci: bool = True) -> str:
    if not m or m.get("mean") is None:
        return "—"
    s = _fmt(m["mean"], scale)
    if ci and m.get("ci95"):
        s += f" [{_fmt(m['ci95'][0], scale)}, {_fmt(m['ci95'][1], scale)}]"
    return s


def _arrow(hib: Optional[bool]) -> str:
    return " ↑" if hib is True else (" ↓" if hib is False else "")


def protocol_text(editor: Dict[str, Any]) -> str:
    p = editor.get("protocol") or []
    return "image+prompt" + "".join(f"+{x}" for x in p)


def run_label(results: Dict[str, Any]) -> str:
    e = results.get("editor", {})
    spec = e.get("spec") or e.get("name") or "?"
    return spec if len(spec) <= 40 else spec[:37] + "..."


def render_markdown(runs: Sequence[Dict[str, Any]], labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None) -> str:
    """Markdown tables in the layout of the paper's Table 1 (one row per run), then the PIE-Bench,
    MagicBrush and referring families, the breakdown by edit type, exclusions and the config."""
    from .metrics import FAMILIES, METRICS

    labels = list(labels or [run_label(r) for r in runs])
    lines: List[str] = [f"# {_md(title or 'refcoco-edit score: ' + ', '.join(labels))}", ""]
    first = runs[0]
    for lab, r in zip(labels, runs):
        c, d = r["counts"], r["data"]
        lines.append(f"- **{_md(lab)}** (protocol `{_md(protocol_text(r['editor']))}`): data `{_md(d['path'])}` "
                     f"({_md(d['kind'])}), split `{_md(d['split'] or 'all')}`; {c['samples']} samples: "
                     f"{c['scored']} scored, {c['failed']} failed, {c['skipped']} skipped"
                     + (f", {c['resized']} outputs resized" if c["resized"] else "") + ".")
    hashes = {r["data"]["sample_ids_sha256"] for r in runs}
    if len(hashes) > 1:
        lines += ["", "**Warning: these runs were scored on different sample sets; compare with care.**"]
    lines += ["", "Values: mean over scored samples [bootstrap 95% CI]; — = not computed (see below). "
              "Protocol: what the editor saw beyond (image, prompt, seed); `reference` marks an oracle.", ""]
    for fam, heading in TABLE_FAMILIES:
        cols = [n for n in FAMILIES[fam] if any(n in r["metrics"] or n in r["not_computed"] for r in runs)]
        if not cols:
            continue
        lines += [f"## {heading}", ""]
        head = ["Method", "Protocol"] + [METRICS[n].title + _arrow(METRICS[n].higher_is_better) for n in cols]
        lines.append("| " + " | ".join(_md(h) for h in head) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * len(cols))
        for lab, r in zip(labels, runs):
            cells = [_md(lab), _md(protocol_text(r["editor"]))]
            for n in cols:
                cells.append(_cell(r["metrics"].get(n), METRICS[n].display_scale) if n in r["metrics"] else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    # by edit type
    types = sorted({t for r in runs for m in r["metrics"].values() for t in m.get("by_edit_type", {})})
    shown = [n for n in METRICS if any(n in r["metrics"] for r in runs)]
    if types and shown:
        lines += ["## By edit type", "", "Mean (n) per edit type.", ""]
        lines.append("| Metric | Method | " + " | ".join(_md(t) for t in types) + " |")
        lines.append("|---|---|" + "---:|" * len(types))
        for n in shown:
            for lab, r in zip(labels, runs):
                m = r["metrics"].get(n)
                if m is None:
                    continue
                cells = []
                for t in types:
                    b = m["by_edit_type"].get(t)
                    cells.append(f"{_cell(b, METRICS[n].display_scale, ci=False)} ({b['n']})" if b else "—")
                lines.append(f"| {_md(METRICS[n].title)} | {_md(lab)} | " + " | ".join(cells) + " |")
        lines.append("")
    # not computed
    nc = sorted({(n, r["not_computed"][n]["reason"]) for r in runs for n in r["not_computed"]},
                key=lambda x: list(METRICS).index(x[0]) if x[0] in METRICS else 999)
    if nc:
        lines += ["## Not computed", ""]
        lines += [f"- `{_md(n)}` ({_md(METRICS[n].title) if n in METRICS else ''}): {_md(reason)}" for n, reason in nc]
        lines.append("")
    # exclusions
    rows = []
    for lab, r in zip(labels, runs):
        for kind, key in (("failed", "failed_by_reason"), ("skipped", "skipped_by_reason")):
            for reason, cnt in r["counts"][key].items():
                rows.append(f"| {_md(lab)} | {kind} | `{_md(reason)}` | {cnt} |")
    if rows:
        lines += ["## Failed and skipped samples", "", "Left out of every mean.", "",
                  "| Method | kind | reason | count |", "|---|---|---|---:|"] + rows + [""]
    # config
    cfgs = first["config"]
    lines += ["## Metric configuration", "",
              f"- image size: {_md(cfgs['image_size'])}; crop: {_md(cfgs['crop_rule'])}",
              f"- outputs of another size: {'resized (' + _md(cfgs['resize_rule']) + ')' if cfgs['resize_outputs'] else 'failures (wrong_size)'}",
              f"- background: {_md(cfgs['mask_protocol']['background'])}",
              f"- target: {_md(cfgs['mask_protocol']['target'])}; distractors: {_md(cfgs['mask_protocol']['distractors'])}",
              f"- referring: eps = {cfgs['metric_params'].get('referring_eps')}, "
              f"tau = {cfgs['metric_params'].get('preservation_tau')}; seed {cfgs['seed']}; "
              f"bootstrap {cfgs['bootstrap']['resamples']} resamples, {cfgs['bootstrap']['method']}",
              "- models: " + ", ".join(f"{k} = {_md(v) if v else 'none'}" for k, v in sorted(cfgs["models"].items())),
              *[f"  - {_md(k)}: {_md(d.get('spec'))}" + (f" (revision {_md(d['revision'])})" if d.get("revision") else "")
                + (f", sha256 {_md(str(d['weights_sha256'])[:16])}…" if d.get("weights_sha256") else "")
                + (f", {_md(d.get('device'))}/{_md(d.get('dtype'))}" if d.get("device") else "")
                for k, d in sorted((cfgs.get("model_details") or {}).items())],
              f"- refcoco-edit {_md(first['tool']['version'])}, git {_md(first['tool']['git_revision'] or 'unknown')}"
              + (" (dirty)" if first["tool"]["git_dirty"] else ""),
              ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# gallery.html
# ----------------------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}img{max-width:256px;max-height:256px}
.ref{background:#ffe08a}.edit{background:#b7e4c7}.fail{color:#a00}.m{font-size:smaller;color:#444}"""


def _prompt_html(prompt: str, rspan: Any, espan: Any) -> str:
    """The prompt, escaped, with the referring part and the edit part marked."""
    spans = []
    for cls, sp in (("ref", rspan), ("edit", espan)):
        if sp is not None and len(sp) == 2 and 0 <= int(sp[0]) < int(sp[1]) <= len(prompt):
            spans.append((int(sp[0]), int(sp[1]), cls))
    spans.sort()
    if len(spans) == 2 and spans[0][1] > spans[1][0]:
        spans = []  # overlapping: no marks
    out, pos = [], 0
    for a, b, cls in spans:
        out.append(html.escape(prompt[pos:a]))
        out.append(f'<span class="{cls}">{html.escape(prompt[a:b])}</span>')
        pos = b
    out.append(html.escape(prompt[pos:]))
    return "".join(out)


def _src(path: str) -> str:
    return html.escape(quote(path.replace(os.sep, "/")), quote=True)


def _metrics_html(rec: Dict[str, Any], names: Sequence[str]) -> str:
    from .metrics import METRICS

    parts = []
    for n in names:
        v = rec.get(n)
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{html.escape(METRICS[n].title if n in METRICS else n)}={_fmt(v, METRICS[n].display_scale if n in METRICS else 1.0)}")
    return html.escape(", ".join(parts), quote=False) if parts else ""


def _output_cell(rec: Optional[Dict[str, Any]], run_rel: str, names: Sequence[str]) -> str:
    if rec is None:
        return "<td>—</td>"
    if rec.get("status") == "ok" and rec.get("output"):
        p = _src(os.path.join(run_rel, rec["output"]) if run_rel else rec["output"])
        extra = " (resized)" if rec.get("resized") else ""
        return (f'<td><a href="{p}"><img loading="lazy" src="{p}" alt="output"></a>'
                f'<div class="m">{_metrics_html(rec, names)}{extra}</div></td>')
    return (f'<td class="fail">{html.escape(str(rec.get("status")))}: {html.escape(str(rec.get("reason")))}'
            f'<div class="m">{html.escape(str(rec.get("error") or ""))}</div></td>')


def render_gallery(runs: Sequence[Tuple[str, str, List[Dict[str, Any]]]], thumbs_rel: str, title: str,
                   names: Sequence[str]) -> str:
    """HTML with one row per sample: id, prompt (referring part and edit part marked), source,
    reference, and each run's output with its metrics. ``runs``: (label, relative path of the
    run folder from the page, sample records). Every text is escaped; images are relative links."""
    base = runs[0][2]
    by_run = [{r["sample_id"]: r for r in recs} for _, _, recs in runs]
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _, _ in runs)
    rows = []
    for rec in base:
        sid = rec["sample_id"]
        sid_h = html.escape(sid)
        if rec.get("status") == "skipped" and not rec.get("prompt"):
            continue
        th = thumbs_rel.rstrip("/") + "/" if thumbs_rel else ""
        src = _src(f"{th}gallery/{sid}.source.jpg")
        ref = _src(f"{th}gallery/{sid}.reference.jpg")
        cells = "".join(_output_cell(m.get(sid), rel, names) for m, (_, rel, _) in zip(by_run, runs))
        rows.append(
            f'<tr id="{sid_h}"><td>{sid_h}<div class="m">{html.escape(str(rec.get("edit_type") or ""))} · '
            f'{html.escape(str(rec.get("category") or ""))} · {html.escape(str(rec.get("split") or ""))}</div></td>'
            f'<td>{_prompt_html(str(rec.get("prompt") or ""), rec.get("referring_span"), rec.get("edit_span"))}</td>'
            f'<td><img loading="lazy" src="{src}" alt="source"></td><td><img loading="lazy" src="{ref}" alt="reference"></td>'
            f"{cells}</tr>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            '<p>Prompt: <span class="ref">referring part</span>, <span class="edit">edit part</span>.</p>\n'
            f"<table><tr><th>sample</th><th>prompt</th><th>source</th><th>reference</th>{head}</tr>\n"
            + "\n".join(rows) + "\n</table></body></html>\n")


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def _figure(n: int, ncols: int = 4, size: Tuple[float, float] = (3.2, 2.4)):
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.94, wspace=0.3, hspace=0.55)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _style(ax: Any, title: str, x_bins: bool = True) -> None:
    # a plain text title (no auto-positioning pass) and few ticks: drawing stays fast
    ax.text(0.5, 1.03, title, transform=ax.transAxes, ha="center", va="bottom", fontsize=9)
    ax.locator_params(axis="y", nbins=4)
    if x_bins:
        ax.locator_params(axis="x", nbins=4)
    ax.tick_params(labelsize=7)


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def write_plots(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str],
                samples: Sequence[Sequence[Dict[str, Any]]]) -> List[Path]:
    """plots/distributions.png (per-sample histograms), plots/by_edit_type.png (means with CI per
    edit type, one bar per run). Needs matplotlib (figure API only: no global backend change)."""
    from .metrics import METRICS

    names = [n for n in METRICS if any(n in r["metrics"] for r in runs)]
    written: List[Path] = []
    if not names:
        return written
    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig, axes = _figure(len(names))
    for ax, n in zip(axes, names):
        for lab, recs in zip(labels, samples):
            vals = [r[n] * METRICS[n].display_scale for r in recs
                    if r.get("status") == "ok" and isinstance(r.get(n), float) and math.isfinite(r[n])]
            if vals:
                ax.hist(vals, bins=20, alpha=0.6, label=lab)
        _style(ax, METRICS[n].title)
    if len(labels) > 1:
        axes[0].legend(fontsize=6)
    p = out / "plots" / "distributions.png"
    _save(fig, p)
    written.append(p)

    types = sorted({t for r in runs for m in r["metrics"].values() for t in m.get("by_edit_type", {})})
    fig, axes = _figure(len(names))
    width = 0.8 / max(1, len(runs))
    for ax, n in zip(axes, names):
        for k, (lab, r) in enumerate(zip(labels, runs)):
            m = r["metrics"].get(n)
            if not m:
                continue
            xs, ys, lo, hi = [], [], [], []
            for i, t in enumerate(types):
                b = m["by_edit_type"].get(t)
                if b and b["mean"] is not None:
                    sc = METRICS[n].display_scale  # as in report.md's column title
                    mean = b["mean"] * sc
                    ci = [c * sc for c in (b["ci95"] or [b["mean"], b["mean"]])]
                    xs.append(i + k * width)
                    ys.append(mean)
                    lo.append(max(0.0, mean - ci[0]))
                    hi.append(max(0.0, ci[1] - mean))
            if xs:
                ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=lab)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(types))])
        ax.set_xticklabels(types, fontsize=7)
        _style(ax, METRICS[n].title, x_bins=False)
    if len(labels) > 1:
        axes[0].legend(fontsize=6)
    p = out / "plots" / "by_edit_type.png"
    _save(fig, p)
    written.append(p)
    return written


def _plots_safely(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str],
                  samples: Sequence[Sequence[Dict[str, Any]]], log: Callable[[str], None]) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return
    write_plots(out, runs, labels, samples)


# ----------------------------------------------------------------------------------------------
# one run / several runs
# ----------------------------------------------------------------------------------------------

def write_run(out: Path, results: Dict[str, Any], records: Sequence[Dict[str, Any]], skipped: Sequence[Dict[str, Any]] = (),
              gallery: bool = True, plots: bool = True, log: Callable[[str], None] = print) -> None:
    """Write results.json, samples.parquet, report.md, gallery.html and plots/ of one run."""
    out = Path(out)
    errs = schema_errors(json.loads(dumps(results)))
    if errs:  # our own bug, not the user's input: exit 1, not 2
        raise RuntimeError("results do not follow the results schema: " + "; ".join(errs[:10]))
    names = list(results["metrics"])
    atomic_write_table(out / "samples.parquet", samples_table(records, names, skipped))
    label = run_label(results)
    atomic_write_bytes(out / "report.md", render_markdown([results], [label]).encode("utf-8"))
    flat = read_samples(out)
    if gallery:
        page = render_gallery([(label, "", flat)], "", f"refcoco-edit gallery: {label}", names)
        atomic_write_bytes(out / "gallery.html", page.encode("utf-8"))
    if plots:
        _plots_safely(out, [results], [label], [flat], log)
    atomic_write_bytes(out / "results.json", dumps(results))  # last: a complete run has results.json


def load_run(run: Path) -> Dict[str, Any]:
    p = Path(run) / "results.json"
    if not p.is_file():
        raise InputError(f"{run}: no results.json (not a finished `refcoco-edit score` run)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    version = doc.get("results_schema_version") if isinstance(doc, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        raise InputError(f"{p}: results schema version {version!r}, this refcoco-edit reads {RESULTS_SCHEMA_VERSION}")
    validate_results(doc)
    return doc


def compare_runs(run_dirs: Sequence[Path], out: Path, gallery: bool = True, plots: bool = True,
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """``refcoco-edit report RUN1 RUN2 ... --out DIR``: report.md with one row per run in every
    table, comparison.json, gallery.html with the runs' outputs side by side, plots/."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise InputError("report needs at least one results folder")
    runs = [load_run(r) for r in run_dirs]
    labels = [run_label(r) for r in runs]
    seen: Counter = Counter()
    for i, lab in enumerate(labels):  # make labels unique: the same editor scored twice
        seen[lab] += 1
        if seen[lab] > 1 or labels.count(lab) > 1:
            labels[i] = f"{lab} ({run_dirs[i].name})"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(runs, labels, title="refcoco-edit report: " + ", ".join(labels))
    atomic_write_bytes(out / "report.md", md.encode("utf-8"))
    comparison = {"results_schema_version": RESULTS_SCHEMA_VERSION,
                  "runs": [{"path": str(d), "label": lab, "editor": r["editor"], "counts": r["counts"],
                            "data": r["data"], "metrics": {n: {k: m[k] for k in ("n", "mean", "std", "ci95")}
                                                           for n, m in r["metrics"].items()},
                            "not_computed": r["not_computed"]}
                           for d, lab, r in zip(run_dirs, labels, runs)]}
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
        _plots_safely(out, runs, labels, samples, log)
    return comparison
