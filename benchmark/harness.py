"""Run an editor over a dataset split, resumably, and score every sample.

``run_score(ScoreConfig(model="identity", data="refcoco-edit-work", out="results/identity"))``
is what ``refcoco-edit score`` does:

1. **plan** — resolve ``--metrics`` (names or families); metrics whose weights are not given are
   "not computed" with the reason, everything else runs. The model metrics that can run load
   their backbones now (``refcoco_edit.benchmark.metrics.model_based.ModelMetrics``), before any editing, so
   a bad ``--clip-model`` stops the run at once (exit 2).
2. **data** — ``refcoco_edit.benchmark.data.load_dataset``: an export folder (of either view: rie or
   reference-based, read from the export's marker) or a workspace, one split, ordered by
   ``sample_id``; unscorable rows are skipped with a reason.
3. **editor** — ``refcoco_edit.benchmark.editors.get_editor(--model)``, loaded lazily: a run whose outputs
   are all cached never loads it. An editor that declares ``reference_object`` (the exemplar of the
   reference-based track) on data of the rie view is refused at once (``check_track``, exit 2).
4. **one pass** over the samples in chunks: each sample's images and masks are decoded once (a
   thread pool: PIL's decoders, numpy and OpenCV release the GIL), uncached samples are edited in batches of
   the editor's ``batch_size`` (the editor sees only what its protocol declares), every output is
   checked (``check_output``) and cached, then all metrics are computed from the same decoded
   arrays: the weight-free ones in the pool, the model-based ones batched over the chunk
   (``--metric-batch-size`` images per forward pass, on ``--device``).
   With ``--executor ray`` (``edit_on_ray``) the editing runs first, on Ray actors that each load
   the editor once, one chunk at a time, writing the checked outputs into the output cache; the
   pass then finds them cached, so results equal a local run's.
5. **aggregate** — per metric: mean, std and a seeded percentile bootstrap 95% CI, overall and
   per edit type (``aggregate``). With ``--judge MODEL`` the VLM judge then looks at every
   scored sample's cached output (``refcoco_edit.benchmark.judge``): VIEScore SC/PQ/O and the
   referring questions, aggregated the same way, in results.json's ``judge`` section.
6. **report** — ``RESULTS/results.json`` (schema in ``refcoco_edit.benchmark.report.schema``), ``samples.parquet``,
   ``report.md``, ``gallery.html`` (+ ``gallery/`` thumbnails), ``plots/*.png``, and
   ``timing.json`` (wall times and cache reuse: the only file that differs between two runs).

Output cache and resume: ``RESULTS/run.json`` fingerprints the run (editor, its config and
protocol, seed, --resize-outputs; a different one is refused without --overwrite) and
``RESULTS/outputs/`` caches each checked output with a marker (layout in
``refcoco_edit.benchmark.score.cache``).

A rerun (after a kill, or to add metrics) skips done samples and edits only the rest; failed
samples are kept as failed unless ``--retry-failed``. ``input_sha256`` hashes what the editor saw
(source bytes, prompt, seed, protocol inputs): a cached output made from other inputs (a rebuilt
dataset, a corrected prompt) is edited again. Metrics are recomputed from the cache on
every run (cheap next to editing), so results.json and samples.parquet of a resumed run equal a
clean run's, byte for byte.

Per-sample editor seeds: ``derive_seed(seed, "editor", sample_id) % (2**31 - 1)``.
Failures (reason codes in ``refcoco_edit.benchmark.editors.FAILURE_REASONS``) and skips (``SKIP_REASONS``)
never stop the run; they are counted in results.json and left out of the metric means.

Where the steps live, in the ``score`` package: ``score.cache`` (run.json, outputs/), ``score.items``
(a sample's state in the pass: cache lookup, decoding), ``score.editing`` (batches, output checks),
``score.ray`` (``--executor ray``), ``score.samples`` (records, metrics, thumbnails), ``score.aggregate``
(means and bootstrap CIs); and the ``report`` package (the files of step 6). This module wires them.
"""
from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from refcoco_edit.errors import InputError
from refcoco_edit.seeds import derive_seed
from refcoco_edit.workspace import atomic_write_bytes

from .data import REFERENCE_BASED, load_dataset
from .editors.base import Editor
from .metrics import METRICS, MetricParams, plan, select_metrics
from .score.aggregate import aggregate, bootstrap_ci
from .score.cache import CACHE_VERSION, OUTPUTS_DIR, RUN_MANIFEST, input_key, prepare_out, run_manifest
from .score.config import ScoreConfig
from .score.editing import edit_batches, edit_items, finish_output
from .score.items import Item, chunks, decode_item, lookup_cache
from .score.ray import EditChunks, edit_on_ray
from .score.samples import score_item, score_models, write_thumbnails

__all__ = ["ScoreConfig", "ScoreResult", "run_score", "aggregate", "bootstrap_ci", "editor_seed", "check_track",
           "RUN_MANIFEST", "OUTPUTS_DIR",
           # the names this module held before its steps moved out (still importable from here)
           "CACHE_VERSION", "RESIZE_RULE", "default_out", "input_key", "finish_output", "edit_items",
           "EditChunks", "edit_on_ray"]

SEED_MODULUS = 2 ** 31 - 1
RESIZE_RULE = "PIL bicubic to the source's width x height, only with --resize-outputs (recorded per sample)"


@dataclass
class ScoreResult:
    """What ``run_score`` wrote: the results folder, results.json's content, timing.json's, and
    the per-sample records."""

    out: Path
    results: Dict[str, Any]
    timing: Dict[str, Any]
    records: List[Dict[str, Any]]


def editor_seed(seed: int, sample_id: str) -> int:
    """The seed the editor gets for ``sample_id`` (recorded in results.json's editor_seed_rule)."""
    return derive_seed(seed, "editor", sample_id) % SEED_MODULUS


def default_out(model: str) -> str:
    """``refcoco-edit-results/<model as a file name>``: the results folder when --out is not given."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-.")[:60] or "model"
    return str(Path("refcoco-edit-results") / slug)


class _Timer:
    def __init__(self) -> None:
        self.t: Dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + seconds


def run_score(cfg: ScoreConfig, editor: Optional[Editor] = None, log: Callable[[str], None] = print,
              model_metrics: Any = None, judge_client: Any = None) -> ScoreResult:
    """Score ``cfg.model`` (or an editor instance) on ``cfg.data``; see the module docstring.
    ``model_metrics``: a ``ModelMetrics`` with injected backbones (tests, benchmarks); by default
    one is built from the ``--clip-model`` etc. options for the model metrics that can run.
    ``judge_client``: an ``openai`` client for ``--judge`` (default: one built from the settings)."""
    t_start = time.perf_counter()
    timer = _Timer()
    _check(cfg)
    params = cfg.params()
    # 1. plan
    names = select_metrics(cfg.metrics)
    # 2. data
    t = time.perf_counter()
    ds = load_dataset(cfg.data, split=cfg.split, status=cfg.status, limit=cfg.limit, subset=cfg.subset)
    timer.add("load_data_s", time.perf_counter() - t)
    computable, not_computed = plan(names, cfg.models(), view=ds.view)  # the view: identity needs exemplars
    # 3. editor (built, not loaded)
    if editor is None:
        editor = _build_editor(cfg)
    if cfg.batch_size is not None:
        editor.batch_size = int(cfg.batch_size)
    check_track(editor, ds.view)
    wants_mask = bool(getattr(editor, "returns_mask", False))
    if "mask_iou" in computable and not wants_mask:
        computable.remove("mask_iou")
        not_computed["mask_iou"] = "the editor returns no predicted mask (Editor.returns_mask)"
    # the metric models load now (the editor is only built): a bad --clip-model stops before editing
    mm = _load_metric_models(cfg, [n for n in computable if METRICS[n].needs], model_metrics, timer)
    desc = editor.describe()
    desc["spec"] = cfg.model
    out = Path(cfg.out or default_out(cfg.model))
    prepare_out(out, run_manifest(cfg.model, desc, cfg.seed, cfg.resize_outputs), cfg.overwrite)
    jc = _open_judge(cfg, out, judge_client)  # a bad judge setting or a missing key stops before editing

    # 4. the pass
    items = [Item(sample=s, seed=editor_seed(cfg.seed, s.sample_id)) for s in ds.samples]
    chunk = max(int(cfg.chunk_size), int(editor.batch_size))
    ray_stats: Optional[Dict[str, Any]] = None
    if cfg.executor == "ray":  # edit on Ray actors first; the pass below then reuses their outputs
        ray_stats = edit_on_ray(cfg, editor, items, chunk, out, wants_mask, log)
    counts = _run_pass(cfg, editor, items, chunk, out, wants_mask, computable, params, mm, timer)

    # 5. aggregate
    records = [it.record for it in items]  # type: ignore[misc]
    t = time.perf_counter()
    agg = aggregate(records, computable, cfg.seed, cfg.bootstrap)
    timer.add("aggregate_s", time.perf_counter() - t)
    judged = None
    if jc is not None:  # 5b. the VLM judge, on the cached outputs
        from .judge.api import attach, judge_records

        judged = judge_records(jc, ds.samples, records, out, cfg.seed, cfg.bootstrap, log, cfg.progress)
        attach(records, judged)

    # 6. report
    from . import report

    results = report.build_results(cfg=cfg, dataset=ds, editor=desc, records=records, names=names,
                                   computable=computable, not_computed=not_computed, aggregates=agg, params=params,
                                   resize_rule=RESIZE_RULE, model_metrics=mm)
    if judged is not None:
        results["judge"] = judged.section
    t = time.perf_counter()
    report.write_run(out, results, records, skipped=ds.skipped, gallery=cfg.gallery, plots=cfg.plots, log=log)
    timer.add("report_s", time.perf_counter() - t)
    n = len(items)
    total = time.perf_counter() - t_start
    if ray_stats is not None:  # outputs the actors made were "reused" by the pass: count them as edited
        counts["edited"] += ray_stats["edited"]
        counts["reused"] -= ray_stats["edited"]
    timing = {"total_s": round(total, 4), **{k: round(v, 4) for k, v in sorted(timer.t.items())},
              "samples": n, "outputs_reused": counts["reused"], "outputs_edited": counts["edited"],
              "samples_per_s": round(n / total, 3) if total > 0 else None, "workers": int(cfg.workers),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "executor": cfg.executor}
    if ray_stats is not None:
        timing["ray"] = ray_stats
    if judged is not None:
        timing["judge"] = judged.timing
    atomic_write_bytes(out / "timing.json", (json.dumps(timing, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return ScoreResult(out=out, results=results, timing=timing, records=records)


def check_track(editor: Editor, view: str) -> None:
    """Refuse (exit 2, one line) an editor that needs the reference object on data without one:
    ``reference_object`` exists only on a reference-based export (``Dataset.view``)."""
    if "reference_object" in editor.protocol and view != REFERENCE_BASED:
        name = editor.name or type(editor).__name__
        raise InputError(f"editor {name!r} needs the reference object (protocol reference_object), and this data is "
                         f"the {view!r} view: score a reference-based export (`refcoco-edit export --view "
                         "reference-based`)")


def _check(cfg: ScoreConfig) -> None:
    """Reject settings no run can use (exit 2), before anything is read or loaded."""
    if cfg.bootstrap < 0:
        raise InputError("--bootstrap must be >= 0")
    if cfg.workers < 1:
        raise InputError("--workers must be >= 1")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    if cfg.executor not in ("local", "ray"):
        raise InputError(f"--executor must be local or ray, got {cfg.executor!r}")
    if cfg.chunk_size < 1:
        raise InputError("--chunk-size must be >= 1")


def _open_judge(cfg: ScoreConfig, out: Path, client: Any) -> Any:
    """The judge's client and cache with ``--judge`` (checked now: exit 2 before editing), else None."""
    if not cfg.judge:
        return None
    from .judge.api import open_judge

    return open_judge(cfg, out, client)


def _build_editor(cfg: ScoreConfig) -> Editor:
    """The editor of ``--model`` with ``--editor-arg`` options (and the cmd: options), not loaded."""
    from .editors import get_editor

    options = dict(cfg.editor_args)
    if cfg.model.startswith("cmd:"):
        options.setdefault("shell", cfg.cmd_shell)
        if cfg.cmd_timeout is not None:
            options.setdefault("timeout", cfg.cmd_timeout)
    elif cfg.cmd_shell or cfg.cmd_timeout is not None:
        raise InputError("--cmd-shell / --cmd-timeout only apply to --model cmd:\"...\"")
    return get_editor(cfg.model, options)


def _load_metric_models(cfg: ScoreConfig, model_names: Sequence[str], model_metrics: Any, timer: _Timer) -> Any:
    """The loaded ``ModelMetrics`` of ``model_names`` (``model_metrics`` when given), or None."""
    if not model_names:
        return None
    from .metrics.model_based import ModelMetrics

    mm = model_metrics or ModelMetrics(list(model_names), cfg.models(), device=cfg.device, dtype=cfg.dtype,
                                       batch_size=cfg.metric_batch_size, local_files_only=cfg.local_files_only)
    t = time.perf_counter()
    mm.load()
    timer.add("metric_models_load_s", time.perf_counter() - t)
    return mm


def _run_pass(cfg: ScoreConfig, editor: Editor, items: Sequence[Item], chunk: int, out: Path, wants_mask: bool,
              computable: Sequence[str], params: MetricParams, mm: Any, timer: _Timer) -> Dict[str, int]:
    """Step 4, chunk by chunk: cache lookup, decoding, editing what is not cached, metrics,
    thumbnails; then the chunk's arrays are dropped. Sets every item's record; returns the
    counts of reused and edited outputs."""
    counts = {"reused": 0, "edited": 0}
    bar = _progress(cfg, len(items))
    with ThreadPoolExecutor(max_workers=int(cfg.workers)) as pool:
        for part in chunks(items, chunk):
            for it in part:
                lookup_cache(out, it, editor, cfg.retry_failed, wants_mask)
            t = time.perf_counter()
            list(pool.map(lambda it: decode_item(out, it), part))
            timer.add("decode_s", time.perf_counter() - t)
            todo = [it for it in part if it.skip is None and it.meta is None]
            counts["reused"] += sum(1 for it in part if it.skip is None and it.meta is not None)
            if todo:
                t = time.perf_counter()
                editor.ensure_loaded()
                timer.add("editor_load_s", time.perf_counter() - t)
                edit_s, write_s = edit_batches(editor, out, todo, cfg.resize_outputs, wants_mask, pool)
                timer.add("edit_s", edit_s)
                timer.add("write_outputs_s", write_s)
                counts["edited"] += len(todo)
            t = time.perf_counter()
            list(pool.map(lambda it: score_item(it, computable, params), part))
            timer.add("metrics_s", time.perf_counter() - t)
            if mm is not None:
                t = time.perf_counter()
                score_models(mm, part)
                timer.add("model_metrics_s", time.perf_counter() - t)
            if cfg.gallery:
                t = time.perf_counter()
                list(pool.map(lambda it: write_thumbnails(out, it), part))
                timer.add("thumbnails_s", time.perf_counter() - t)
            for it in part:  # free the arrays of this chunk
                it.decoded = None
                it.output = None
                it.pred_mask = None
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return counts


def _progress(cfg: ScoreConfig, total: int) -> Any:
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="score", unit="sample")
