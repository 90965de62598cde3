"""The generate stage: ground-truth candidates of each sample from the backend's pipelines, the
best one as the reference image with its edit mask M_e, all in the upright image frame.

A shard runs in three steps (``run_shard``):

1. ``prepare_sample`` per sample: its image and masks, its exemplar, one ``EditRequest`` per
   pipeline and candidate -> a ``PreparedSample``;
2. each pipeline runs once over all its requests of the shard (batched model calls); a failed
   request is recorded on its sample, the others go on; a candidate with the pixels of an
   earlier candidate of its sample is re-drawn with another seed, at most ``MAX_REDRAWS`` times
   (``redraw_duplicates``), and then left out (reason ``duplicate_candidate`` in the shard stats'
   ``candidate_failures``; the sample keeps its other candidates);
3. ``assemble`` per sample: the candidates that kept the pipeline contract, their filter scores
   (diffusion backend) and the ground-truth audit of the other annotated objects (every backend:
   a candidate that changed another object is marked and is not the reference while a clean one
   exists), the best one as ``reference_image`` -> the sample row.

A sample that fails is quarantined with its reason; the rest of the shard continues.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import rle as rle_mod
from ..errors import SampleError, is_disk_error
from ..schema import SCHEMA_VERSION, rows_to_table
from ..seeds import derive_seed
from ..workspace import quarantine_record
from ..imageio import LoadedImage, encode_png
from .context import BuildContext
from .exemplars import exemplar_for

# how many times a candidate with the pixels of an earlier candidate of its sample is re-drawn
# with another seed before it is left out (``redraw_duplicates``)
MAX_REDRAWS = 3


@dataclass
class CandidateRequest:
    """One candidate to make: pipeline ``pipeline``, candidate number ``index``, its request
    (``redraws``: how many times it was re-drawn as a duplicate, each with another seed)."""

    pipeline: str
    index: int
    request: Any  # refcoco_edit.pipelines.base.EditRequest
    redraws: int = 0


@dataclass
class PreparedSample:
    """A sample ready for the pipelines (step 1), then their results (step 2).

    ``row`` is the prompts-stage row; ``assemble`` completes it into the sample row."""

    row: Dict[str, Any]
    image: LoadedImage  # the upright RGB array + the encoded source bytes
    mask: np.ndarray  # HxW bool: the source object, upright
    distractor_masks: List[np.ndarray]
    other_masks: Optional[List[np.ndarray]]  # every other annotated object; None: unknown (old rows)
    exemplar: Optional[np.ndarray]  # hxwx4 RGBA cut-out (replace edits), or None
    source_rle: Dict[str, Any]
    requests: List[CandidateRequest]
    results: Dict[Tuple[str, int], Union[Any, Exception]] = field(default_factory=dict)  # (pipeline, index)


def prepare_sample(ctx: BuildContext, row: Dict[str, Any], cache: Dict[int, Any]) -> PreparedSample:
    """Load a sample's image and masks, cut its exemplar and make its edit requests."""
    from refcoco_edit.pipelines.base import EditRequest, PipelineError

    cfg = ctx.cfg
    li = ctx.load_image(int(row["image_id"]), cache)
    image = li.array
    mask = li.orient_mask(rle_mod.decode(row["source_mask"]))
    if not mask.any():
        raise SampleError("empty_mask", "the source mask is empty")
    dmasks = [li.orient_mask(rle_mod.decode(r)) for r in row["distractor_masks"]]
    omasks = ([li.orient_mask(rle_mod.decode(r)) for r in row["other_masks"]]
              if row.get("other_masks") is not None else None)
    exemplar = exemplar_for(ctx.bank, ctx.cfg, row)
    source_rle = rle_mod.encode(mask)
    names = ctx.backend.active(row["edit_type"])
    if not names:
        raise PipelineError("pipeline_error", f"backend {cfg.backend!r} has no pipeline for {row['edit_type']!r} edits")
    sp = row["edit_span"]
    requests = []
    for name in names:
        for c in range(cfg.num_candidates):
            requests.append(CandidateRequest(name, c, EditRequest(
                sample_id=row["sample_id"], edit_type=row["edit_type"], image=image, mask=mask,
                bbox=rle_mod.to_bbox(source_rle), prompt=row["prompt"], edit_phrase=row["prompt"][sp[0]:sp[1]],
                edit_target=row["edit_target"], seed=derive_seed(cfg.seed, row["sample_id"], name, c),
                category=row["category"], exemplar=exemplar, distractor_masks=dmasks, other_masks=omasks,
                other_categories=row.get("other_categories"),
                vary=c > 0,  # candidate 0 is the pipeline's canonical edit, the others variations of it
            )))
    return PreparedSample(row, li, mask, dmasks, omasks, exemplar, source_rle, requests)


def _run_jobs(ctx: BuildContext, items: List[Tuple[PreparedSample, CandidateRequest]]) -> None:
    """Each pipeline once over its requests among ``items``; results land on their samples."""
    jobs: Dict[str, List[Tuple[PreparedSample, CandidateRequest]]] = {}
    for prep, cr in items:
        jobs.setdefault(cr.pipeline, []).append((prep, cr))
    for name, group in jobs.items():
        for (prep, cr), out in zip(group, ctx.backend.run(name, [cr.request for _, cr in group])):
            prep.results[(name, cr.index)] = out


def run_pipelines(ctx: BuildContext, prepared: List[PreparedSample]) -> None:
    """Step 2: each pipeline once over all its requests, then the duplicates re-drawn
    (``redraw_duplicates``); results land on their samples."""
    _run_jobs(ctx, [(prep, cr) for prep in prepared for cr in prep.requests])
    redraw_duplicates(ctx, prepared)


def duplicates(prep: PreparedSample) -> List[CandidateRequest]:
    """The requests of a sample whose output has exactly the pixels of an earlier output of the
    same sample (in request order; failed requests are no candidates and are skipped)."""
    seen: List[np.ndarray] = []
    out: List[CandidateRequest] = []
    for cr in prep.requests:
        res = prep.results.get((cr.pipeline, cr.index))
        if res is None or isinstance(res, Exception):
            continue
        if any(s.shape == res.image.shape and np.array_equal(s, res.image) for s in seen):
            out.append(cr)
        else:
            seen.append(res.image)
    return out


def redraw_duplicates(ctx: BuildContext, prepared: List[PreparedSample], max_redraws: int = MAX_REDRAWS) -> None:
    """Re-draw every candidate with the pixels of an earlier candidate of its sample: the same
    request as a variation (``EditRequest.vary``) with another seed, derived from (seed,
    sample_id, pipeline, candidate, "redraw", k), batched per pipeline, up to ``max_redraws``
    rounds. A candidate still a duplicate then becomes a ``duplicate_candidate`` failure: it is
    left out and the sample keeps its distinct candidates (never quarantined for it: its first
    candidate is never a duplicate)."""
    from refcoco_edit.pipelines.base import PipelineError

    for k in range(1, max_redraws + 1):
        todo = [(prep, cr) for prep in prepared for cr in duplicates(prep)]
        if not todo:
            return
        for prep, cr in todo:
            seed = derive_seed(ctx.cfg.seed, prep.row["sample_id"], cr.pipeline, cr.index, "redraw", k)
            cr.request = dataclasses.replace(cr.request, seed=seed, vary=True)
            cr.redraws = k
        _run_jobs(ctx, todo)
    for prep in prepared:
        for cr in duplicates(prep):
            prep.results[(cr.pipeline, cr.index)] = PipelineError(
                "duplicate_candidate", f"{cr.pipeline} candidate {cr.index}: the same pixels as an earlier candidate of "
                f"the sample after {max_redraws} re-draws with other seeds")


def _filter_scores(ctx: BuildContext, prep: PreparedSample, outputs: List[Any]) -> List[Dict[str, Any]]:
    """The candidate filters' scores of each output (diffusion backend)."""
    from refcoco_edit.pipelines.blended_latent import edit_text
    from refcoco_edit.pipelines.filters import FilterItem

    row = prep.row
    text = edit_text(prep.requests[0].request) if row["edit_type"] != "remove" else ""
    items = [FilterItem(prep.image.array, o.image, prep.mask, o.edit_mask, row["edit_type"], text, row["category"])
             for o in outputs]
    return ctx.backend.candidate_filter().score_many(items)


def _audit(ctx: BuildContext, prep: PreparedSample, outputs: List[Any]) -> List[Optional[Dict[str, Any]]]:
    """The other-objects audit of each output (``pipelines.filters.audit_other_objects``); None
    each when the sample's other objects are unknown."""
    from refcoco_edit.pipelines.filters import AuditConfig, audit_other_objects

    if prep.other_masks is None:
        return [None] * len(outputs)
    cfg = AuditConfig(ctx.cfg.audit_pixel_threshold, ctx.cfg.audit_max_changed)
    return [audit_other_objects(prep.image.array, o.image, prep.mask, prep.other_masks, cfg,
                                edit_type=prep.row["edit_type"], other_categories=prep.row.get("other_categories"))
            for o in outputs]


def _count_audit(audit_stats: Dict[str, Any], prep: PreparedSample, audits: List[Optional[Dict[str, Any]]],
                 best_marked: bool) -> None:
    """Add one sample's audit to the shard's ``others_audit`` stats."""
    if prep.other_masks is None:
        audit_stats["samples_unknown"] = audit_stats.get("samples_unknown", 0) + 1
        return
    marked = [a for a in audits if a and a["others_damaged"] > 0]
    for key, n in (("samples", 1), ("objects", len(prep.other_masks)), ("candidates", len(audits)),
                   ("candidates_marked", len(marked)), ("samples_marked", int(bool(marked))),
                   ("references_marked", int(best_marked))):
        audit_stats[key] = audit_stats.get(key, 0) + n
    if marked:
        audit_stats.setdefault("marked_sample_ids", []).append(prep.row["sample_id"])


def assemble(ctx: BuildContext, prep: PreparedSample, cand_failures: Dict[str, int],
             audit_stats: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Step 3, the sample row: its candidates (failed ones left out, counted in
    ``cand_failures``), their filter scores and other-objects audit, and the best candidate as
    ``reference_image``: among the candidates the audit did not mark (all of them when every one
    is marked), the first with the classical backend, the best ranked with the diffusion
    backend. The audit is counted in ``audit_stats``. Raises the first error when no candidate
    is left."""
    from refcoco_edit.pipelines.base import PipelineError
    from refcoco_edit.pipelines.filters import is_marked

    cfg = ctx.cfg
    row, li, image = prep.row, prep.image, prep.image.array
    candidates, outputs, errors = [], [], []
    exemplar_used = prep.exemplar
    for cr in prep.requests:
        name, c = cr.pipeline, cr.index
        out = prep.results[(name, c)]
        if isinstance(out, Exception):
            errors.append(out)
            key = f"{name}/{getattr(out, 'reason', 'pipeline_error')}"
            cand_failures[key] = cand_failures.get(key, 0) + 1
            continue
        if out.image.shape != image.shape or not np.array_equal(out.image[~out.edit_mask], image[~out.edit_mask]):
            errors.append(PipelineError("pipeline_error", f"{name} changed pixels outside its edit mask"))
            continue
        if out.exemplar is not None and (c == 0 or exemplar_used is prep.exemplar):
            exemplar_used = out.exemplar  # a first candidate's (a variation's may be mirrored)
        outputs.append(out)
        params = dict(out.params, redraws=cr.redraws) if cr.redraws else out.params
        candidates.append({
            "pipeline": name,
            "params": json.dumps(params, sort_keys=True, default=str),
            "seed": int(cr.request.seed),
            "image": {"bytes": encode_png(out.image, cfg.png_compress_level), "path": f"{row['sample_id']}-{name}-{c}.png"},
            "edit_mask": rle_mod.encode(out.edit_mask),
            "filter_scores": json.dumps({}),
        })
    if not candidates:
        raise errors[0]
    scores: List[Dict[str, Any]] = [{} for _ in candidates]
    if cfg.backend == "diffusion":
        scores = _filter_scores(ctx, prep, outputs)
    for s, a in zip(scores, _audit(ctx, prep, outputs)):
        s.update(a or {})
    for cand, s in zip(candidates, scores):
        cand["filter_scores"] = json.dumps(s, sort_keys=True)
    pool = [i for i, s in enumerate(scores) if not is_marked(s)] or list(range(len(candidates)))
    best = pool[0]
    if cfg.backend == "diffusion":
        from refcoco_edit.pipelines.filters import rank_candidates

        best = pool[rank_candidates([scores[i] for i in pool])]
    if audit_stats is not None:
        _count_audit(audit_stats, prep, [s if "others_damaged" in s else None for s in scores], is_marked(scores[best]))
    chosen = candidates[best]
    source_rle = prep.source_rle
    row.update(
        source_image={"bytes": li.encoded, "path": row["source_image"]["path"]},
        source_mask=source_rle,
        bbox=rle_mod.to_bbox(source_rle),
        distractor_masks=[rle_mod.encode(m) for m in prep.distractor_masks],
        other_masks=[rle_mod.encode(m) for m in prep.other_masks] if prep.other_masks is not None else None,
        candidates=candidates,
        reference_image={"bytes": chosen["image"]["bytes"], "path": f"{row['sample_id']}.png"},
        edit_mask=chosen["edit_mask"],
        exemplar_image=({"bytes": encode_png(exemplar_used, cfg.png_compress_level), "path": f"{row['sample_id']}-exemplar.png"}
                        if exemplar_used is not None else None),
        schema_version=SCHEMA_VERSION,
    )
    return row


def _quarantine(row: Dict[str, Any], e: BaseException) -> Dict[str, Any]:
    """The quarantine record of a failed sample; a full disk is not the sample's fault and
    raises (quarantined, the sample would never be redone)."""
    from refcoco_edit.pipelines.base import PipelineError

    if is_disk_error(e):
        raise e
    if isinstance(e, (SampleError, PipelineError, rle_mod.MaskError)):
        return quarantine_record("generate", row["sample_id"], e.reason, str(e))
    # the shard boundary: one sample's surprise never stops the run
    return quarantine_record("generate", row["sample_id"], "pipeline_error", f"{type(e).__name__}: {e}")


def run_shard(ctx: BuildContext, i: int) -> Dict[str, Any]:
    """Generate shard ``i`` (steps in the module docstring) and write it; returns its stats."""
    t0 = time.perf_counter()
    cache: Dict[int, Any] = {}
    rows_in = ctx.ws.stage("prompts").read_shard(i).to_pylist()
    prepared: Dict[int, PreparedSample] = {}
    failed: Dict[int, Dict[str, Any]] = {}
    for k, row in enumerate(rows_in):  # 1
        try:
            prepared[k] = prepare_sample(ctx, row, cache)
        except Exception as e:  # noqa: BLE001 - the shard boundary: recorded per sample
            failed[k] = _quarantine(row, e)
    run_pipelines(ctx, list(prepared.values()))  # 2
    rows = []
    cand_failures: Dict[str, int] = {}
    audit_stats: Dict[str, Any] = {}
    for k, row in enumerate(rows_in):  # 3
        if k not in prepared:
            continue
        try:
            rows.append(assemble(ctx, prepared[k], cand_failures, audit_stats))
        except Exception as e:  # noqa: BLE001 - the shard boundary: recorded per sample
            failed[k] = _quarantine(row, e)
    quarantine = [failed[k] for k in sorted(failed)]
    stats: Dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 3)}
    if cand_failures:
        stats["candidate_failures"] = dict(sorted(cand_failures.items()))
    if audit_stats:
        stats["others_audit"] = audit_stats
    stage = ctx.ws.stage("generate")
    stage.write_samples(i, rows_to_table(rows), stats, quarantine)
    return stage.stats(i)

