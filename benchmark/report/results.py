"""results.json and samples.parquet of a score run: what goes in them (``build_results``,
``samples_table``), how they are written (``dumps``: sorted keys, no NaN) and read back
(``load_run``, ``read_samples``). The schema is in ``report.schema``."""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from refcoco_edit.errors import InputError

from .schema import READABLE_RESULTS_VERSIONS, RESULTS_SCHEMA_VERSION, validate_results

__all__ = ["git_info", "package_versions", "dumps", "build_results", "samples_table", "read_samples", "load_run"]


@functools.lru_cache(maxsize=1)
def git_info() -> Tuple[Optional[str], Optional[bool]]:
    """(revision, dirty) of the checkout holding this package; (None, None) when not in git.
    Read-only: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index."""
    root = Path(__file__).resolve().parents[2]
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
    """Python and the versions of the packages that can change a score (None when absent)."""
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
    """results.json's bytes: keys sorted, indented, NaN/Infinity as null, one final newline."""
    return (json.dumps(_json_clean(doc), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def build_results(cfg: Any, dataset: Any, editor: Dict[str, Any], records: Sequence[Dict[str, Any]], names: Sequence[str],
                  computable: Sequence[str], not_computed: Dict[str, str], aggregates: Dict[str, Dict[str, Any]],
                  params: Any, resize_rule: str, model_metrics: Any = None) -> Dict[str, Any]:
    """results.json's content (see ``report.schema``) from a run's parts; no I/O but git."""
    from refcoco_edit import __version__

    from ..metrics import METRICS

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
                                                      "rows", "schema_version", "view", "subset")},
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
                "others": "other_masks (every other annotated object of the image, any category), minus the target's "
                          "pixels; null other_masks (data before schema 1.1): the others metrics are NaN",
                **({"reference_object": "exemplar_mask (the object in exemplar_image, at the exemplar's own size); "
                                        "the reference-based view has no distractor or other-object masks: those "
                                        "metrics are NaN"} if dataset.view == "reference-based" else {}),
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


def samples_table(records: Sequence[Dict[str, Any]], metric_names: Sequence[str], skipped: Sequence[Dict[str, Any]] = (),
                  judge_names: Sequence[str] = ()) -> Any:
    """samples.parquet as an Arrow table: one row per record and per load-time skip, by
    sample_id; the difficulty bucket of each ``attr_*`` column (``refcoco_edit.difficulty.BUCKETS``;
    null: unknown); one float64 column per metric (NaN where it does not apply). With ``judge_names``
    (a judged run) also one float64 column per judge metric (from ``record["judge_values"]``) and
    ``judge_answers`` (the sample's final judge answers as JSON)."""
    import pyarrow as pa

    from refcoco_edit.difficulty import BUCKETS

    span = pa.list_(pa.int32())
    fields = [("sample_id", pa.string()), ("split", pa.string()), ("image_id", pa.int64()), ("category", pa.string()),
              ("edit_type", pa.string()), ("prompt", pa.string()), ("referring_span", span), ("edit_span", span),
              ("seed", pa.int64()), ("n_distractors", pa.int32()), ("status", pa.string()), ("reason", pa.string()),
              ("error", pa.string()), ("resized", pa.bool_()), ("output", pa.string()), ("height", pa.int32()),
              ("width", pa.int32())] + [(k, pa.string()) for k in BUCKETS]  # attr_*: difficulty buckets
    extra = [pa.field(m, pa.float64()) for m in judge_names] + ([pa.field("judge_answers", pa.string())]
                                                                 if judge_names else [])
    schema = pa.schema([pa.field(n, t) for n, t in fields] + [pa.field(m, pa.float64()) for m in metric_names] + extra,
                       metadata={"refcoco_edit.results_schema_version": RESULTS_SCHEMA_VERSION})
    rows = list(records) + [{"sample_id": s["sample_id"], "status": "skipped", "reason": s["reason"],
                             "error": s["error"], "resized": False} for s in skipped]
    rows.sort(key=lambda r: r["sample_id"])
    cols: Dict[str, Any] = {}
    for name, t in fields:
        cols[name] = pa.array([r.get(name) for r in rows], type=t)
    for m in metric_names:
        cols[m] = pa.array([float((r.get("metrics") or {}).get(m, math.nan)) for r in rows], type=pa.float64())
    for m in judge_names:
        cols[m] = pa.array([float((r.get("judge_values") or {}).get(m, math.nan)) for r in rows], type=pa.float64())
    if judge_names:
        cols["judge_answers"] = pa.array([r.get("judge_answers") for r in rows], type=pa.string())
    return pa.Table.from_pydict(cols, schema=schema)


def read_samples(run: Path) -> List[Dict[str, Any]]:
    """samples.parquet of ``run`` as a list of rows ([] when there is none)."""
    import pyarrow.parquet as pq

    p = Path(run) / "samples.parquet"
    if not p.exists():
        return []
    return pq.read_table(p).to_pylist()


def load_run(run: Path) -> Dict[str, Any]:
    """A finished run's results.json, checked (InputError when absent, invalid or of another schema version)."""
    p = Path(run) / "results.json"
    if not p.is_file():
        raise InputError(f"{run}: no results.json (not a finished `refcoco-edit score` run)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    version = doc.get("results_schema_version") if isinstance(doc, dict) else None
    if version not in READABLE_RESULTS_VERSIONS:
        raise InputError(f"{p}: results schema version {version!r}, this refcoco-edit reads "
                         f"{', '.join(READABLE_RESULTS_VERSIONS)}")
    validate_results(doc)
    return doc
