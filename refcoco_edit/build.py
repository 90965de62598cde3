"""`refcoco-edit build`: RefCOCO -> select -> prompts -> generate -> export, resumable.

This module holds ``build``, the thin function that
wires the stage modules of ``refcoco_edit.stages`` together (as img2dataset's ``download``). With
``cli.py`` and ``refcoco_edit.stages`` it sits at the CLI layer: the one place in ``refcoco_edit``
that imports ``refcoco_edit.pipelines``. Stages:

1. ``select``   one shard: the seeded selection of objects and edits (``stages.select``)
2. ``prompts``  shards of ``shard_size`` samples: instruction text and exact spans (``stages.prompts``)
3. ``generate`` the same shards: ground-truth candidates from the backend's pipelines, the
                reference image and its edit mask M_e, all in the upright image frame
                (``stages.generate``)
4. export       Parquet + dataset card (``stages.export``), rewritten from the shards; a build
                without a generated sample (every one quarantined, or none selected) exports
                nothing and still succeeds: ``BuildResult.export_dir`` is None and
                ``BuildResult.export["nothing"]`` says why (quarantined samples never fail a run)

Each shard is written atomically with a stats file last (``refcoco_edit.workspace``); a re-run
skips done shards, so a killed build continues where it stopped and ends with the same bytes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .errors import InputError
from .stages.config import BuildConfig
from .stages.context import STAGES
from .stages.workers import ShardTask
from .workspace import Workspace

__all__ = ["BuildConfig", "BuildResult", "build", "ShardTask", "STAGES", "weight_free_notice", "format_quarantine"]


@dataclass
class BuildResult:
    """What a build did: where its workspace and export are (``export_dir`` None: nothing was
    exported, ``export["nothing"]`` says why), the selection report, row counts per stage (and LLM
    counts), quarantined samples per stage and reason, and its duration."""

    workdir: Path
    export_dir: Optional[Path]
    selection: Dict[str, Any]
    counts: Dict[str, int]
    quarantine: Dict[str, Dict[str, int]]
    seconds: float
    export: Dict[str, Any] = field(default_factory=dict)
    # per stage: {"shards": all, "ran": run now (the rest were done already), "rows_ran": their rows}
    shards: Dict[str, Dict[str, int]] = field(default_factory=dict)
    # the ground-truth audit of the other annotated objects, summed over the generate shards
    # (``audit_summary``)
    audit: Dict[str, Any] = field(default_factory=dict)
    # candidates left out of their samples, "pipeline/reason" -> count, summed over the generate
    # shards (e.g. ``classical-attribute/duplicate_candidate``; a sample left with none is quarantined)
    candidate_failures: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line on what this run did, honest about a resumed or no-op run."""
        g = self.shards.get("generate", {})
        total, ran = g.get("shards", 0), g.get("ran", 0)
        rows = self.counts.get("generate", 0)
        tail = (f"exported {self.export.get('rows', 0)} to {self.export_dir}" if self.export_dir is not None
                else "nothing exported (no sample came through)")
        if total and ran == 0:
            return (f"nothing to generate: all {total} shards were done already ({rows} samples); "
                    f"{tail} in {self.seconds:.1f}s")
        if ran < total:
            return (f"generated {g.get('rows_ran', 0)} samples in {ran} of {total} shards ({total - ran} were done "
                    f"already; {rows} samples in all) in {self.seconds:.1f}s; {tail}")
        return f"generated {rows} samples ({total} shards) in {self.seconds:.1f}s; {tail}"


def _check(cfg: BuildConfig) -> None:
    """Settings that make no build (``InputError``), before anything is written."""
    from .vocab import BUILD_EDIT_TYPES

    if cfg.backend == "diffusion":
        from .stages.backend import check_diffusion_config

        check_diffusion_config(cfg)  # models, SAM, CLIP from their JSON configs (no torch yet)
    bad = [t for t in cfg.edit_types if t not in BUILD_EDIT_TYPES]
    if bad:
        raise InputError(f"unknown edit type(s) {bad}; choose from {', '.join(BUILD_EDIT_TYPES)}")
    if cfg.shard_size < 1:
        raise InputError("--shard-size must be at least 1")
    if cfg.num_candidates < 1:
        raise InputError("--num-candidates must be at least 1")
    from .stages.backend import check_pipeline_params

    check_pipeline_params(cfg)


AUDIT_KEYS = ("samples", "samples_unknown", "objects", "candidates", "candidates_marked", "samples_marked",
              "references_marked")


def audit_summary(ws: Workspace, n: int) -> Dict[str, Any]:
    """The other-objects audit of the generate shards ``0..n-1``: each count of ``AUDIT_KEYS``
    summed, and ``marked_sample_ids`` (sorted) of the samples with a marked candidate."""
    stage = ws.stage("generate")
    out: Dict[str, Any] = {k: 0 for k in AUDIT_KEYS}
    ids: List[str] = []
    for i in range(n):
        a = (stage.stats(i).get("others_audit") or {}) if stage.is_done(i) else {}
        for k in AUDIT_KEYS:
            out[k] += int(a.get(k, 0))
        ids += a.get("marked_sample_ids", [])
    out["marked_sample_ids"] = sorted(ids)
    return out


def format_audit(a: Dict[str, Any]) -> str:
    """The audit as one line of the build report."""
    line = (f"audit of the other annotated objects: {a['samples']} samples ({a['objects']} objects), "
            f"{a['candidates_marked']} of {a['candidates']} candidates changed another object "
            f"({a['samples_marked']} samples); {a['references_marked']} references changed one (no clean candidate)")
    if a.get("samples_unknown"):
        line += f"; {a['samples_unknown']} samples without other-object masks (not audited)"
    return line


def format_quarantine(quarantine: Dict[str, Dict[str, int]], workdir: Path) -> List[str]:
    """The report of a build that generated no sample: every quarantined count per stage and
    reason with what the reason means (``refcoco_edit.reasons``), where the records are, and what
    to do next."""
    from .reasons import REASONS
    from .workspace import QUARANTINE_DIR

    n = sum(sum(d.values()) for d in quarantine.values())
    if not n:
        return ["no sample came through: the selection kept none (see its report above); nothing exported"]
    lines = [f"no sample came through: {n} quarantined, nothing exported (an export of no samples is no dataset)"]
    for st, d in sorted(quarantine.items()):
        for reason, c in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])):
            what = REASONS[reason].description if reason in REASONS else "see the records"
            lines.append(f"  {st}/{reason}: {c}  ({what})")
    lines.append(f"the records (stage, key, reason, error): {workdir / QUARANTINE_DIR}/*.parquet; fix the inputs and "
                 "run the same command with --overwrite to redo them")
    return lines


def weight_free_notice(cfg: BuildConfig, demo: bool) -> Optional[str]:
    """What to expect of the weight-free backend on real data and how to switch to the diffusion
    one; None on the bundled demo data or with another backend."""
    if cfg.backend != "classical" or demo:
        return None
    return ("note: the weight-free `classical` backend on your data: expect cut-and-paste references "
            "(smooth, textureless removal fills; pasted objects that keep their own photo's lighting and may sit at "
            "the wrong scale; flat recolours) -- fine to try the pipeline or as a floor, not the paper's diffusion-made "
            "ground truth. For diffusion references: pip install 'refcoco-edit[diffusion]' and rebuild with "
            "--backend diffusion (models: --pbe-model, --sd-model, --inpaint-model; a GPU in practice). "
            "See docs/building.md, \"Classical and diffusion backends\".")


def _candidate_failures(ws: Workspace, n: int) -> Dict[str, int]:
    """The generate shards' ``candidate_failures`` stats, summed."""
    stage = ws.stage("generate")
    out: Dict[str, int] = {}
    for i in range(n):
        for k, v in ((stage.stats(i).get("candidate_failures") or {}) if stage.is_done(i) else {}).items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


def _quarantine_counts(ws: Workspace) -> Dict[str, Dict[str, int]]:
    """Quarantined samples per stage and reason."""
    by_reason: Dict[str, Dict[str, int]] = {}
    for q in ws.quarantine().to_pylist():
        by_reason.setdefault(q["stage"], {}).setdefault(q["reason"], 0)
        by_reason[q["stage"]][q["reason"]] += 1
    return by_reason


def build(cfg: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    """Run (or resume) every stage, then export. Raises InputError on unusable input."""
    from .executors import get_executor
    from .select import format_report
    from .stages import export, prompts, select
    from .stages.context import BuildContext, load_refer, resolve_data
    from .stages.workers import stage_fn

    t0 = time.perf_counter()
    _check(cfg)
    ws = Workspace(cfg.out)
    data = resolve_data(cfg)
    refer = load_refer(cfg, data)  # InputError on unsafe pickles / escaping paths: before any write
    notice = weight_free_notice(cfg, data.demo)
    if notice:
        log(notice)
    settings = cfg.settings()
    if data.demo:  # a newer demo generator makes other data: never mix it with old shards
        from .demo import DEMO_VERSION

        settings["demo_version"] = DEMO_VERSION
    ws.prepare(settings, STAGES, overwrite=cfg.run.overwrite)
    ctx = BuildContext(cfg, ws, data, refer)
    workers = cfg.run.workers
    if cfg.backend == "diffusion" and cfg.run.executor == "ray":
        log("diffusion backend on Ray: each actor loads the models (on its GPU with --num-gpus-per-worker)")
    elif cfg.backend == "diffusion":
        for note in ctx.backend.load_models():  # before any shard runs: a bad model is exit 2
            log(note)
        if workers > 1:
            log("diffusion backend: --workers ignored (one process holds the models and batches their calls)")
            workers = 1
    sel = select.run(ctx)
    log(format_report(sel["report"]))
    n = ctx.num_shards()
    executor = get_executor(cfg.run.executor, workers=workers, progress=cfg.run.progress, ray_address=cfg.run.ray_address,
                            num_gpus_per_worker=cfg.run.num_gpus_per_worker)
    counts: Dict[str, int] = {}
    shards: Dict[str, Dict[str, int]] = {}
    with executor:  # Ray: the actors (and the pipelines they loaded) serve both stages, then go
        for stage_name in ("prompts", "generate"):
            stage = ws.stage(stage_name)
            todo = [i for i in range(n) if not stage.is_done(i)]
            if todo and stage_name == "prompts" and cfg.llm.model and cfg.llm.batch:
                log(f"llm batch mode: {prompts.llm_batch(ctx, todo, log)}")
            ran: List[Dict[str, Any]] = []
            if todo:
                # Ray runs shards in other processes (other machines): a picklable factory that
                # rebuilds the context there; the local executor reuses this process's (forked) one
                factory: Callable[[], Any] = (ShardTask(cfg, stage_name) if cfg.run.executor == "ray"
                                              else lambda s=stage_name: stage_fn(ctx, s))
                ran = executor.run(factory, todo, desc=stage_name)
            counts[stage_name] = sum(stage.stats(i)["rows"] for i in range(n))
            shards[stage_name] = {"shards": n, "ran": len(todo), "rows_ran": sum(stage.stats(i)["rows"] for i in todo)}
            if stage_name == "prompts" and cfg.llm.model:  # requests made by this run
                counts["llm_calls"] = sum(r.get("llm_calls", 0) for r in ran)
                counts["llm_cache_hits"] = sum(r.get("llm_cache_hits", 0) for r in ran)
    by_reason = _quarantine_counts(ws)
    audit = audit_summary(ws, n)
    log(format_audit(audit))
    exp = export.run(ctx, sel["report"])  # nothing, when no sample came through (exp["nothing"] says why)
    if exp.get("removed"):
        log(f"removed the earlier export {ws.root / 'export'}: the workspace no longer holds its samples")
    return BuildResult(ws.root, Path(exp["out"]) if exp.get("out") else None, sel["report"], counts, by_reason,
                       time.perf_counter() - t0, exp, shards, audit, _candidate_failures(ws, n))
