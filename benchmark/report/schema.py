"""The results.json schema of a score run (``RESULTS_SCHEMA``) and its checker, no dependency.

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
               ``gt_mask, object_mask, edit_phrase, referring_phrase, edit_type, reference,
               reference_object`` (the exemplar of the reference-based track).
``data``       ``{path, kind: export|workspace, split, splits_available, status, limit, rows,
               samples, schema_version, sample_ids_sha256, view}``: ``rows`` read after the split and
               status filters, ``samples`` scorable; the hash is of the sorted scored sample_ids;
               ``view``: ``rie`` or ``reference-based`` (the export's view; absent in runs written
               before the reference-based track).
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
               ci95}}, by_attribute: {attr_*: {label: {n, mean, std, ci95}}}}}`` for each computed
               metric (``by_attribute``: the difficulty buckets, ``refcoco_edit.difficulty.BUCKETS``); values are raw (``display_scale`` is only
               what report.md multiplies by); ``n`` counts scored samples where it applies.
``not_computed`` ``{name: {family, title, reason}}``: requested metrics that were not computed
               (e.g. "needs --clip-model").
``judge``      only in a judged run (``score --judge`` or ``refcoco-edit judge RESULTS``; absent
               otherwise): ``{model, base_url_class (openai|loopback|private|public; never the
               key or address), api, prompt_version, params {temperature, max_tokens, json_mode,
               prompt_version, passes, protocols, attempts, questions, seed_rule, images, ...},
               definitions {scale, vie_sc, vie_pq, vie_o, referring, protocols, agreement,
               failures}, counts {samples, answers, valid, failed, failed_by_reason}, failures
               [{sample_id, question, pass, reason, error}], metrics {name: {title, description,
               higher_is_better, question, n, n_failed, n_not_applicable, mean, std, ci95,
               by_edit_type}}, agreement {protocol: {referring_accuracy {n, agreement,
               cohen_kappa, confusion}, distractor_preservation {n, mean_abs_diff, agreement}}},
               pass_agreement {protocol: {n, unanimous}} (passes > 1)}``; see
               ``refcoco_edit.benchmark.judge.summary``.

samples.parquet: one row per sample (scored, failed or skipped): ``sample_id, split, image_id,
category, edit_type, prompt, referring_span, edit_span, seed, n_distractors, status
(ok|failed|skipped), reason, error, resized, output (relative path), height, width``, the
difficulty buckets ``attr_*`` (strings; null: unknown) and one
float64 column per computed metric (NaN where it does not apply or the sample was not scored);
in a judged run also one float64 column per judge metric and ``judge_answers`` (JSON: per
question, per pass, the answer object or ``{failed, error}``). Every raw judge answer (text,
refusal, finish reason, verdict) is in ``judge/answers.parquet``.
"""
from __future__ import annotations

from typing import Any, Dict, List

from refcoco_edit.errors import InputError
from refcoco_edit.schema_check import schema_errors as check_schema

__all__ = ["RESULTS_SCHEMA_VERSION", "READABLE_RESULTS_VERSIONS", "RESULTS_SCHEMA", "JUDGE_SCHEMA", "schema_errors", "validate_results"]

RESULTS_SCHEMA_VERSION = "1.1"
READABLE_RESULTS_VERSIONS = ("1.0", "1.1")
"""1.1 adds ``by_attribute`` (difficulty breakdowns) to each metric and ``config.subset``; a 1.0
results.json (without them) is still read"""

_NUM = {"type": ["number", "null"]}
_CI = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_SUMMARY = {"type": "object", "required": ["n", "mean", "std", "ci95"],
            "properties": {"n": {"type": "integer"}, "mean": _NUM, "std": _NUM, "ci95": _CI}}
_BY_ATTRIBUTE = {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _SUMMARY}}
_RECORD_LIST = {"type": "array", "items": {"type": "object", "required": ["sample_id", "reason", "error"],
                                           "properties": {"sample_id": {"type": "string"}, "reason": {"type": "string"},
                                                          "error": {"type": ["string", "null"]}}}}
_COUNTS_MAP = {"type": "object", "additionalProperties": {"type": "integer"}}

_JUDGE_FAILURES = {"type": "array", "items": {
    "type": "object", "required": ["sample_id", "question", "pass", "reason", "error"],
    "properties": {"sample_id": {"type": "string"}, "question": {"enum": ["sc", "pq", "ref_blind", "ref_marked",
                                                                                  "same_object"]},
                   "pass": {"type": "integer"}, "reason": {"type": "string"}, "error": {"type": ["string", "null"]}}}}
JUDGE_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["model", "base_url_class", "api", "prompt_version", "params", "definitions", "counts", "failures",
                 "metrics", "agreement", "pass_agreement"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string"}, "base_url_class": {"enum": ["openai", "loopback", "private", "public"]},
        "api": {"type": "string"}, "prompt_version": {"type": "string"},
        "params": {"type": "object", "required": ["temperature", "max_tokens", "json_mode", "prompt_version", "passes",
                                                  "protocols", "attempts", "questions", "seed_rule", "images"]},
        "definitions": {"type": "object", "additionalProperties": {"type": "string"}},
        "counts": {"type": "object", "required": ["samples", "answers", "valid", "failed", "failed_by_reason"],
                   "properties": {"samples": {"type": "integer"}, "answers": {"type": "integer"},
                                  "valid": {"type": "integer"}, "failed": {"type": "integer"},
                                  "failed_by_reason": _COUNTS_MAP}},
        "failures": _JUDGE_FAILURES,
        "metrics": {"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["title", "description", "higher_is_better", "question", "n", "n_failed", "n_not_applicable",
                         "mean", "std", "ci95", "by_edit_type"],
            "properties": {"title": {"type": "string"}, "description": {"type": "string"},
                           "higher_is_better": {"type": ["boolean", "null"]}, "question": {"type": "string"},
                           "n": {"type": "integer"}, "n_failed": {"type": "integer"},
                           "n_not_applicable": {"type": "integer"}, "mean": _NUM, "std": _NUM, "ci95": _CI,
                           "by_edit_type": {"type": "object", "additionalProperties": _SUMMARY},
                           "by_attribute": _BY_ATTRIBUTE}}},
        "agreement": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["referring_accuracy", "distractor_preservation"]}},
        "pass_agreement": {"type": "object"},
    },
}

RESULTS_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "refcoco-edit score results",
    "type": "object",
    "required": ["results_schema_version", "tool", "editor", "data", "config", "versions", "counts", "failures",
                 "skipped", "edit_types", "metrics", "not_computed"],
    "additionalProperties": False,
    "properties": {
        "results_schema_version": {"enum": list(READABLE_RESULTS_VERSIONS)},
        "tool": {"type": "object", "required": ["name", "version", "git_revision", "git_dirty"],
                 "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                "git_revision": {"type": ["string", "null"]}, "git_dirty": {"type": ["boolean", "null"]}}},
        "editor": {"type": "object", "required": ["spec", "name", "class", "protocol", "config", "batch_size", "version"],
                   "properties": {"spec": {"type": "string"}, "name": {"type": "string"}, "class": {"type": "string"},
                                  "protocol": {"type": "array", "items": {"enum": ["gt_mask", "object_mask", "edit_phrase",
                                                                                   "referring_phrase", "edit_type", "reference",
                                                                                   "reference_object"]}},
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
                                "schema_version": {"type": ["string", "null"]}, "sample_ids_sha256": {"type": "string"},
                                "subset": {"type": ["object", "null"], "required": ["expr", "matched", "of"]},
                                "view": {"enum": ["rie", "reference-based"]}}},
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
            "properties": {"family": {"enum": ["paper", "pie", "magicbrush", "referring", "identity"]}, "title": {"type": "string"},
                           "description": {"type": "string"}, "higher_is_better": {"type": ["boolean", "null"]},
                           "display_scale": {"type": "number"}, "n": {"type": "integer"},
                           "n_not_applicable": {"type": "integer"}, "mean": _NUM, "std": _NUM, "ci95": _CI,
                           "by_edit_type": {"type": "object", "additionalProperties": _SUMMARY},
                           "by_attribute": _BY_ATTRIBUTE}}},
        "not_computed": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["family", "title", "reason"],
            "properties": {"family": {"type": "string"}, "title": {"type": "string"}, "reason": {"type": "string"}}}},
        "judge": JUDGE_SCHEMA,
    },
}

def schema_errors(doc: Any, schema: Dict[str, Any] = RESULTS_SCHEMA, path: str = "$") -> List[str]:
    """Violations of a JSON Schema subset (type, const, enum, required, properties,
    additionalProperties, items, minItems, maxItems, minimum, maximum): enough for RESULTS_SCHEMA
    and the judge's answers, no dependency (the checker is ``refcoco_edit.schema_check``, shared
    with study.json)."""
    return check_schema(doc, schema, path)


def validate_results(doc: Any) -> None:
    """Raise InputError listing what does not follow RESULTS_SCHEMA."""
    errs = schema_errors(doc)
    if errs:
        raise InputError("results.json does not follow results schema "
                         f"{RESULTS_SCHEMA_VERSION}: " + "; ".join(errs[:10]))
