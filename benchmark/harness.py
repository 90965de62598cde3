"""Run an editor over a dataset split, resumably, and score every sample.

``run_score(ScoreConfig(model="identity", data="refcoco-edit-work", out="results/identity"))``
is what ``refcoco-edit score`` does:

1. **plan** — resolve ``--metrics`` (names or families); metrics whose weights are not given are
   "not computed" with the reason, everything else runs. The model metrics that can run load
   their backbones now (``refcoco_edit.benchmark.metrics.model_based.ModelMetrics``), before any editing, so
   a bad ``--clip-model`` stops the run at once (exit 2).
2. **data** — ``refcoco_edit.benchmark.data.load_dataset``: an export folder or a workspace, one split,
   ordered by ``sample_id``; unscorable rows are skipped with a reason.
3. **editor** — ``refcoco_edit.benchmark.editors.get_editor(--model)``, loaded lazily: a run whose outputs
   are all cached never loads it.
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
   per edit type (``aggregate``).
6. **report** — ``RESULTS/results.json`` (schema in ``refcoco_edit.benchmark.report``), ``samples.parquet``,
   ``report.md``, ``gallery.html`` (+ ``gallery/`` thumbnails), ``plots/*.png``, and
   ``timing.json`` (wall times and cache reuse: the only file that differs between two runs).

Output cache and resume (``RESULTS/outputs/``)::

    run.json                 at RESULTS/: the fingerprint of (editor, its config and protocol,
                             seed, --resize-outputs); a different one is refused without --overwrite
    outputs/{sample_id}.png  the checked output, lossless PNG (written atomically)
    outputs/{sample_id}.mask.png  the predicted mask M_hat of an editor with ``returns_mask``
                             (grey levels round(255 * p)); ``mask_iou`` is computed from it
    outputs/{sample_id}.json {status: ok|failed, reason, error, resized, output_hw, input_sha256
                             [, mask: true]}; written after the PNGs, so its presence marks the
                             sample done

A rerun (after a kill, or to add metrics) skips done samples and edits only the rest; failed
samples are kept as failed unless ``--retry-failed``. ``input_sha256`` hashes what the editor saw
(source bytes, prompt, seed, protocol inputs): a cached output made from other inputs (a rebuilt
dataset, a corrected prompt) is edited again. Metrics are recomputed from the cache on
every run (cheap next to editing), so results.json and samples.parquet of a resumed run equal a
clean run's, byte for byte.

Per-sample editor seeds: ``derive_seed(seed, "editor", sample_id) % (2**31 - 1)``.
Failures (reason codes in ``refcoco_edit.benchmark.editors.FAILURE_REASONS``) and skips (``SKIP_REASONS``)
never stop the run; they are counted in results.json and left out of the metric means.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import InputError, SampleError, is_disk_error
from refcoco_edit.seeds import derive_seed
from refcoco_edit.workspace import atomic_write_bytes, fingerprint

from .data import BenchSample, DecodedSample, decode_image, decode_sample, load_dataset
from .editors.base import EditFailure, Editor, check_mask, check_output, split_output
from .metrics import METRICS, MetricParams, SampleArrays, compute_sample, plan, select_metrics
from .score_config import ScoreConfig

__all__ = ["ScoreConfig", "ScoreResult", "run_score", "aggregate", "bootstrap_ci", "editor_seed",
           "RUN_MANIFEST", "OUTPUTS_DIR"]

RUN_MANIFEST = "run.json"
OUTPUTS_DIR = "outputs"
CACHE_VERSION = 1
SEED_MODULUS = 2 ** 31 - 1
RESIZE_RULE = "PIL bicubic to the source's width x height, only with --resize-outputs (recorded per sample)"


@dataclass
class ScoreResult:
    out: Path
    results: Dict[str, Any]
    timing: Dict[str, Any]
    records: List[Dict[str, Any]]


def editor_seed(seed: int, sample_id: str) -> int:
    return derive_seed(seed, "editor", sample_id) % SEED_MODULUS


def default_out(model: str) -> str:
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-.")[:60] or "model"
    return str(Path("refcoco-edit-results") / slug)


# ----------------------------------------------------------------------------------------------
# bootstrap + aggregation
# ----------------------------------------------------------------------------------------------

def bootstrap_ci(values: np.ndarray, seed: int, resamples: int = 1000, confidence: float = 0.95
                 ) -> Optional[Tuple[float, float]]:
    """Percentile bootstrap CI of the mean (``resamples`` draws of n with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return None
    if n == 1 or resamples <= 0:
        return (float(v[0]), float(v[0])) if n == 1 else None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    step = max(1, 2_000_000 // n)  # bound memory: at most ~2M indices at a time
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _summary(values: np.ndarray, seed: int, resamples: int) -> Dict[str, Any]:
    n = int(values.size)
    ci = bootstrap_ci(values, seed, resamples)
    return {
        "n": n,
        "mean": float(values.mean()) if n else None,
        "std": float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else None),
        "ci95": [ci[0], ci[1]] if ci is not None else None,
    }


def aggregate(records: Sequence[Dict[str, Any]], names: Sequence[str], seed: int, resamples: int = 1000
              ) -> Dict[str, Dict[str, Any]]:
    """Per metric: mean/std/CI over the scored samples where the metric applies, overall and per
    edit type. The bootstrap of (metric, group) is seeded from (seed, metric, group), so a metric's
    CI does not depend on which other metrics were selected."""
    ok = [r for r in records if r["status"] == "ok"]
    edit_types = sorted({str(r.get("edit_type")) for r in ok})
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        vals = np.array([r["metrics"].get(name, math.nan) for r in ok], dtype=np.float64)
        finite = np.isfinite(vals)
        entry = _summary(vals[finite], derive_seed(seed, "bootstrap", name, "all"), resamples)
        entry["n_not_applicable"] = int((~finite).sum())
        by_type = {}
        for et in edit_types:
            sel = np.array([str(r.get("edit_type")) == et for r in ok], dtype=bool) & finite
            by_type[et] = _summary(vals[sel], derive_seed(seed, "bootstrap", name, et), resamples)
        entry["by_edit_type"] = by_type
        out[name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# the results folder
# ----------------------------------------------------------------------------------------------

def _prepare_out(out: Path, manifest: Dict[str, Any], overwrite: bool) -> None:
    man_path = out / RUN_MANIFEST
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not man_path.exists():
        raise InputError(f"--out {out} exists, is not empty and holds no {RUN_MANIFEST}: "
                         "not a refcoco-edit results folder; refusing to write into it")
    old = json.loads(man_path.read_text()) if man_path.exists() else None
    if old is not None and old.get("fingerprint") != manifest["fingerprint"]:
        if not overwrite:
            a, b = old.get("settings", {}), manifest["settings"]
            diffs = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise InputError(f"--out {out} holds outputs of another run ({diffs or 'other settings'}); "
                             "pass --overwrite to discard them, or choose another --out")
    if overwrite and out.exists():
        for name in (OUTPUTS_DIR, "gallery", "plots"):
            if (out / name).exists():
                shutil.rmtree(out / name)
        for name in ("results.json", "samples.parquet", "report.md", "gallery.html", "timing.json"):
            if (out / name).exists():
                (out / name).unlink()
    (out / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)
    for p in (out / OUTPUTS_DIR).glob("*.tmp-*"):  # left by a killed run
        p.unlink()
    for d in (out, out / "gallery"):
        for p in d.glob("*.tmp-*") if d.is_dir() else ():
            if p.is_file():
                p.unlink()
    atomic_write_bytes(man_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def input_key(sample: BenchSample, seed: int, protocol: Sequence[str]) -> str:
    """A hash of everything the editor sees for a sample: source bytes, prompt, seed and the
    protocol inputs. A cached output whose key differs (the dataset was rebuilt with another
    prompt for the same sample_id, say) is edited again instead of reused."""
    import hashlib

    h = hashlib.sha256()

    def add(tag: str, data: Any) -> None:
        b = data if isinstance(data, bytes) else json.dumps(data, sort_keys=True, default=str).encode("utf-8")
        h.update(tag.encode() + b"\x00" + str(len(b)).encode() + b"\x00" + b)

    add("source", bytes(sample.source_bytes))
    add("prompt", sample.prompt)
    add("seed", int(seed))
    p = set(protocol)
    if "gt_mask" in p:
        add("gt_mask", sample.edit_mask)
    if "object_mask" in p:
        add("object_mask", sample.source_mask)
    if "edit_phrase" in p:
        add("edit_phrase", sample.edit_phrase)
    if "referring_phrase" in p:
        add("referring_phrase", sample.referring_phrase)
    if "edit_type" in p:
        add("edit_type", sample.edit_type)
    if "reference" in p:
        add("reference", bytes(sample.reference_bytes))
    return h.hexdigest()


def _read_meta(out: Path, sid: str, key: Optional[str] = None) -> Optional[Dict[str, Any]]:
    p = out / OUTPUTS_DIR / f"{sid}.json"
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return None  # unreadable marker: redo the sample
    if meta.get("cache_version") != CACHE_VERSION:
        return None
    if key is not None and meta.get("input_sha256") != key:
        return None  # made from other inputs: edit again
    if meta.get("status") == "ok" and not (out / OUTPUTS_DIR / f"{sid}.png").exists():
        return None
    if meta.get("mask") and not (out / OUTPUTS_DIR / f"{sid}.mask.png").exists():
        return None
    return meta


# ----------------------------------------------------------------------------------------------
# the pass
# ----------------------------------------------------------------------------------------------

@dataclass
class _Item:
    sample: BenchSample
    seed: int
    key: str = ""
    meta: Optional[Dict[str, Any]] = None
    decoded: Optional[DecodedSample] = None
    output: Optional[np.ndarray] = None
    pred_mask: Optional[np.ndarray] = None
    skip: Optional[Tuple[str, str]] = None
    record: Optional[Dict[str, Any]] = None


class _Timer:
    def __init__(self) -> None:
        self.t: Dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + seconds


def _lookup_cache(out: Path, it: _Item, editor: Editor, retry_failed: bool, wants_mask: bool) -> None:
    """Set ``it.key`` and ``it.meta`` (the cached output's marker, or None: edit this sample)."""
    it.key = input_key(it.sample, it.seed, editor.protocol)
    it.meta = _read_meta(out, it.sample.sample_id, it.key)
    if it.meta is not None and it.meta["status"] == "failed" and retry_failed:
        it.meta = None
    if it.meta is not None and it.meta["status"] == "ok" and wants_mask and not it.meta.get("mask"):
        it.meta = None  # cached without the predicted mask: edit again


def _extras(editor: Editor, item: _Item) -> Dict[str, Any]:
    s, d = item.sample, item.decoded
    assert d is not None
    e: Dict[str, Any] = {"sample_id": s.sample_id}
    p = editor.protocol
    if "gt_mask" in p:
        e["gt_mask"] = d.edit_mask
    if "object_mask" in p:
        e["object_mask"] = d.target_mask if d.target_mask is not None else np.zeros(d.hw, dtype=bool)
    if "edit_phrase" in p:
        e["edit_phrase"] = s.edit_phrase
    if "referring_phrase" in p:
        e["referring_phrase"] = s.referring_phrase
    if "edit_type" in p:
        e["edit_type"] = s.edit_type
    if "reference" in p:
        e["reference"] = d.reference
    return e


def _call_editor(editor: Editor, items: List[_Item]) -> List[Any]:
    """Outputs for ``items``; an exception fails the batch, then each sample is retried alone so
    one bad sample cannot fail its neighbours."""
    def call(batch: List[_Item]) -> List[Any]:
        outs = editor.edit([it.decoded.source for it in batch], [it.sample.prompt for it in batch],  # type: ignore[union-attr]
                           [it.seed for it in batch], [_extras(editor, it) for it in batch])
        if not isinstance(outs, (list, tuple)) or len(outs) != len(batch):
            got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
            return [EditFailure("wrong_count", f"edit() returned {got} outputs for {len(batch)} inputs")] * len(batch)
        return list(outs)

    try:
        return call(items)
    except Exception as e:  # noqa: BLE001 - the per-sample boundary: an editor error fails samples, not the run
        if is_disk_error(e):  # a full disk is no fault of the samples: stop (cached as failed, never redone)
            raise
        if len(items) == 1:
            return [EditFailure("editor_error", f"{type(e).__name__}: {e}"[:2000])]
    out: List[Any] = []
    for it in items:
        try:
            out.extend(call([it]))
        except Exception as e:  # noqa: BLE001 - same boundary, one sample
            if is_disk_error(e):
                raise
            out.append(EditFailure("editor_error", f"{type(e).__name__}: {e}"[:2000]))
    return out


def _write_output(out: Path, sid: str, array: Optional[np.ndarray], meta: Dict[str, Any],
                  mask: Optional[np.ndarray] = None) -> None:
    from refcoco_edit.imageio import encode_png

    if array is not None:
        atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.png", encode_png(array))
    if mask is not None:
        atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.mask.png", encode_png(mask))
    atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.json", (json.dumps(meta, sort_keys=True) + "\n").encode("utf-8"))


def finish_output(out: Path, it: _Item, output: Any, resize: bool, wants_mask: bool) -> None:
    """Check one editor output (and, for a ``returns_mask`` editor, its predicted mask), cache it
    under ``out/outputs`` and set ``it.meta`` / ``it.output`` / ``it.pred_mask``. Called once per
    edited sample, wherever the editing ran."""
    assert it.decoded is not None
    image, mask = split_output(output)
    arr, fail, resized = check_output(image, it.decoded.hw, resize)
    levels = None
    if fail is None and wants_mask:
        levels, fail = check_mask(mask, it.decoded.hw, resize)
        if fail is not None:
            arr, resized = None, False
    if fail is not None:
        meta: Dict[str, Any] = {"status": "failed", "reason": fail.reason, "error": fail.message, "resized": False}
    else:
        meta = {"status": "ok", "reason": None, "error": None, "resized": resized,
                "output_hw": list(np.shape(image)[:2])}
        if levels is not None:
            meta["mask"] = True
        it.output = arr
        it.pred_mask = levels
    meta["cache_version"] = CACHE_VERSION
    meta["input_sha256"] = it.key
    _write_output(out, it.sample.sample_id, arr, meta, levels)
    it.meta = meta


def _edit_batches(editor: Editor, out: Path, todo: Sequence[_Item], resize: bool, wants_mask: bool,
                  pool: Optional[ThreadPoolExecutor] = None) -> Tuple[float, float]:
    """Edit ``todo`` (decoded) in batches of ``editor.batch_size`` and cache each batch's outputs as
    soon as it returns (``finish_output``, in ``pool`` when given): a kill loses one batch at most.
    Returns (editing seconds, checking + writing seconds)."""
    edit_s = write_s = 0.0
    for batch in _chunks(todo, int(editor.batch_size)):
        t = time.perf_counter()
        results = list(zip(batch, _call_editor(editor, list(batch))))
        t2 = time.perf_counter()

        def finish(pair: Tuple[_Item, Any]) -> None:
            finish_output(out, pair[0], pair[1], resize, wants_mask)

        list(pool.map(finish, results) if pool is not None else map(finish, results))
        edit_s += t2 - t
        write_s += time.perf_counter() - t2
    return edit_s, write_s


# ----------------------------------------------------------------------------------------------
# editing on Ray (--executor ray)
# ----------------------------------------------------------------------------------------------

def edit_items(editor: Editor, out: Path, items: Sequence[_Item], resize: bool, wants_mask: bool) -> Dict[str, Any]:
    """Decode, edit (in batches of ``editor.batch_size``), check and cache the outputs of
    ``items`` (samples with no usable cached output), as one chunk of the local pass does; the
    editor must be loaded. Used by the Ray actors; returns counts and seconds."""
    t0 = time.perf_counter()
    for it in items:
        _decode(out, it)
    todo = [it for it in items if it.skip is None]
    t1 = time.perf_counter()
    edit_s, write_s = _edit_batches(editor, out, todo, resize, wants_mask)
    stats = {"edited": len(todo), "failed": sum(1 for it in todo if it.meta and it.meta["status"] != "ok"),
             "skipped": len(items) - len(todo), "decode_s": t1 - t0, "edit_s": edit_s, "write_outputs_s": write_s}
    for it in items:
        it.decoded = it.output = it.pred_mask = None
    return stats


class EditChunks:
    """A picklable shard-function factory for ``refcoco_edit.executors.RayExecutor``: shard ``i``
    = the samples of chunk ``i`` of the pass that have no usable cached output, as Ray object
    references (each actor fetches only the chunks it runs). Called in an actor, it loads its copy
    of the editor once (a load error reaches the driver as that error) and returns the function
    that edits a chunk and writes its outputs into ``out`` (shared storage)."""

    def __init__(self, editor: Editor, out: Path, chunks: List[Any], resize: bool, wants_mask: bool):
        self.editor, self.out, self.chunks = editor, Path(out).resolve(), chunks
        self.resize, self.wants_mask = bool(resize), bool(wants_mask)

    def __call__(self) -> Callable[[int], Dict[str, Any]]:
        import ray

        editor = self.editor
        t = time.perf_counter()
        editor.ensure_loaded()
        load_s = time.perf_counter() - t

        def run(i: int) -> Dict[str, Any]:
            items = [_Item(sample=s, seed=seed, key=key) for s, seed, key in ray.get(self.chunks[i])]
            stats = edit_items(editor, self.out, items, self.resize, self.wants_mask)
            stats.update(chunk=i, pid=os.getpid(), editor_load_s=load_s)
            return stats

        return run


def edit_on_ray(cfg: ScoreConfig, editor: Editor, items: Sequence[_Item], chunk: int, out: Path,
                wants_mask: bool, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Edit every sample of ``items`` with no usable cached output on Ray actors, before the
    local pass (which then finds every output cached, and computes the metrics and the report).

    The unit of work is a chunk of the local pass (``--chunk-size`` samples): an actor decodes a
    chunk's uncached samples, edits them in the same batches a clean local run forms, runs the
    same output checks (``finish_output``) and writes the same files, so the results equal the
    local executor's. ``cfg.workers`` actors (``cfg.num_gpus_per_worker`` GPUs each) each load
    their copy of the editor (pickled on the driver, not loaded) once. ``out`` must be on storage
    every node sees under the same path. Returns counts and timings (for timing.json)."""
    from refcoco_edit.executors import RayExecutor, _import_ray

    t0 = time.perf_counter()
    pending: List[List[_Item]] = []
    for part in _chunks(items, chunk):
        for it in part:
            _lookup_cache(out, it, editor, cfg.retry_failed, wants_mask)
        todo = [it for it in part if it.meta is None]
        if todo:
            pending.append(todo)
    stats: Dict[str, Any] = {"workers": int(cfg.workers), "chunks": len(pending), "edited": 0, "failed": 0,
                             "actors": 0}
    for it in items:
        it.meta = None
    if not pending:
        return stats
    with RayExecutor(workers=cfg.workers, address=cfg.ray_address, num_gpus_per_worker=cfg.num_gpus_per_worker,
                     progress=cfg.progress) as ex:
        t = time.perf_counter()
        ex.start()  # timed apart from the editing
        stats["ray_start_s"] = time.perf_counter() - t
        ray = _import_ray()
        refs = [ray.put([(it.sample, it.seed, it.key) for it in todo]) for todo in pending]
        task = EditChunks(editor, out, refs, cfg.resize_outputs, wants_mask)
        log(f"editing {sum(len(p) for p in pending)} samples in {len(pending)} chunks on "
            f"{min(cfg.workers, len(pending))} Ray actor(s)")
        ran = ex.run(task, range(len(pending)), desc="edit (ray)")
    for key in ("edited", "failed", "skipped"):
        stats[key] = sum(r[key] for r in ran)
    for key in ("decode_s", "edit_s", "write_outputs_s", "editor_load_s"):
        stats[key] = round(sum(r[key] for r in ran) if key != "editor_load_s"
                           else sum({r["pid"]: r[key] for r in ran}.values()), 4)
    stats["actors"] = len({r["pid"] for r in ran})
    stats["total_s"] = round(time.perf_counter() - t0, 4)
    stats["ray_start_s"] = round(stats["ray_start_s"], 4)
    return stats


def _thumbnail(out: Path, sid: str, kind: str, array: np.ndarray, size: int = 256) -> None:
    from PIL import Image

    p = out / "gallery" / f"{sid}.{kind}.jpg"
    if p.exists():
        return
    im = Image.fromarray(array)
    im.thumbnail((size, size), Image.BICUBIC)
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    _replace_bytes(p, buf.getvalue())


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name and rename: readers never see half a file. No fsync (unlike outputs,
    which use atomic_write_bytes): a thumbnail lost to a power cut is simply made again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _record(item: _Item) -> Dict[str, Any]:
    s = item.sample
    return {
        "sample_id": s.sample_id, "split": s.split, "image_id": s.image_id, "category": s.category,
        "edit_type": s.edit_type, "prompt": s.prompt, "referring_span": list(s.referring_span),
        "edit_span": list(s.edit_span), "seed": item.seed,
        "n_distractors": len(s.distractor_masks), "status": "ok", "reason": None, "error": None,
        "resized": False, "output": None, "height": None, "width": None, "metrics": {},
    }


def run_score(cfg: ScoreConfig, editor: Optional[Editor] = None, log: Callable[[str], None] = print,
              model_metrics: Any = None) -> ScoreResult:
    """Score ``cfg.model`` (or an editor instance) on ``cfg.data``; see the module docstring.
    ``model_metrics``: a ``ModelMetrics`` with injected backbones (tests, benchmarks); by default
    one is built from the ``--clip-model`` etc. options for the model metrics that can run."""
    t_start = time.perf_counter()
    timer = _Timer()
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
    params = cfg.params()
    # 1. plan
    names = select_metrics(cfg.metrics)
    computable, not_computed = plan(names, cfg.models())
    # 2. data
    t = time.perf_counter()
    ds = load_dataset(cfg.data, split=cfg.split, status=cfg.status, limit=cfg.limit)
    timer.add("load_data_s", time.perf_counter() - t)
    # 3. editor (built, not loaded)
    if editor is None:
        from .editors import get_editor

        options = dict(cfg.editor_args)
        if cfg.model.startswith("cmd:"):
            options.setdefault("shell", cfg.cmd_shell)
            if cfg.cmd_timeout is not None:
                options.setdefault("timeout", cfg.cmd_timeout)
        elif cfg.cmd_shell or cfg.cmd_timeout is not None:
            raise InputError("--cmd-shell / --cmd-timeout only apply to --model cmd:\"...\"")
        editor = get_editor(cfg.model, options)
    if cfg.batch_size is not None:
        editor.batch_size = int(cfg.batch_size)
    wants_mask = bool(getattr(editor, "returns_mask", False))
    if "mask_iou" in computable and not wants_mask:
        computable.remove("mask_iou")
        not_computed["mask_iou"] = "the editor returns no predicted mask (Editor.returns_mask)"
    # the metric models load now (the editor is only built): a bad --clip-model stops before editing
    model_names = [n for n in computable if METRICS[n].needs]
    mm = None
    if model_names:
        from .metrics.model_based import ModelMetrics

        mm = model_metrics or ModelMetrics(model_names, cfg.models(), device=cfg.device, dtype=cfg.dtype,
                                           batch_size=cfg.metric_batch_size, local_files_only=cfg.local_files_only)
        t = time.perf_counter()
        mm.load()
        timer.add("metric_models_load_s", time.perf_counter() - t)
    desc = editor.describe()
    desc["spec"] = cfg.model
    out = Path(cfg.out or default_out(cfg.model))
    settings = {"model": cfg.model, "editor_class": desc["class"], "editor_config": desc["config"],
                "editor_protocol": desc["protocol"], "editor_version": desc["version"], "seed": int(cfg.seed),
                "resize_outputs": bool(cfg.resize_outputs), "cache_version": CACHE_VERSION}
    _prepare_out(out, {"fingerprint": fingerprint(settings), "settings": settings}, cfg.overwrite)

    # 4. the pass
    items = [_Item(sample=s, seed=editor_seed(cfg.seed, s.sample_id)) for s in ds.samples]
    counts = {"reused": 0, "edited": 0}
    bar = _progress(cfg, len(items))
    workers = int(cfg.workers)
    chunk = max(int(cfg.chunk_size), int(editor.batch_size))
    ray_stats: Optional[Dict[str, Any]] = None
    if cfg.executor == "ray":  # edit on Ray actors first; the pass below then reuses their outputs
        ray_stats = edit_on_ray(cfg, editor, items, chunk, out, wants_mask, log)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in _chunks(items, chunk):
            for it in part:
                _lookup_cache(out, it, editor, cfg.retry_failed, wants_mask)
            t = time.perf_counter()
            list(pool.map(lambda it: _decode(out, it), part))
            timer.add("decode_s", time.perf_counter() - t)
            todo = [it for it in part if it.skip is None and it.meta is None]
            counts["reused"] += sum(1 for it in part if it.skip is None and it.meta is not None)
            if todo:
                t = time.perf_counter()
                editor.ensure_loaded()
                timer.add("editor_load_s", time.perf_counter() - t)
                edit_s, write_s = _edit_batches(editor, out, todo, cfg.resize_outputs, wants_mask, pool)
                timer.add("edit_s", edit_s)
                timer.add("write_outputs_s", write_s)
                counts["edited"] += len(todo)
            t = time.perf_counter()
            list(pool.map(lambda it: _score(it, computable, params), part))
            timer.add("metrics_s", time.perf_counter() - t)
            if mm is not None:
                t = time.perf_counter()
                _score_models(mm, part)
                timer.add("model_metrics_s", time.perf_counter() - t)
            if cfg.gallery:
                t = time.perf_counter()
                list(pool.map(lambda it: _thumbs(out, it), part))
                timer.add("thumbnails_s", time.perf_counter() - t)
            for it in part:  # free the arrays of this chunk
                it.decoded = None
                it.output = None
                it.pred_mask = None
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()

    # 5. aggregate
    records = [it.record for it in items]  # type: ignore[misc]
    t = time.perf_counter()
    agg = aggregate(records, computable, cfg.seed, cfg.bootstrap)
    timer.add("aggregate_s", time.perf_counter() - t)

    # 6. report
    from . import report

    results = report.build_results(cfg=cfg, dataset=ds, editor=desc, records=records, names=names,
                                   computable=computable, not_computed=not_computed, aggregates=agg, params=params,
                                   resize_rule=RESIZE_RULE, model_metrics=mm)
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
              "samples_per_s": round(n / total, 3) if total > 0 else None, "workers": workers,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "executor": cfg.executor}
    if ray_stats is not None:
        timing["ray"] = ray_stats
    atomic_write_bytes(out / "timing.json", (json.dumps(timing, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return ScoreResult(out=out, results=results, timing=timing, records=records)


def _progress(cfg: ScoreConfig, total: int) -> Any:
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="score", unit="sample")


def _decode(out: Path, it: _Item) -> None:
    """Decode a sample's inputs (and its cached output, if any): each image once."""
    try:
        it.decoded = decode_sample(it.sample)
    except SampleError as e:
        it.skip = (e.reason, str(e))
        return
    it.decoded.source.setflags(write=False)  # editors get read-only inputs: metrics read them after
    it.decoded.reference.setflags(write=False)
    if it.meta is not None and it.meta["status"] == "ok":
        try:
            arr = decode_image((out / OUTPUTS_DIR / f"{it.sample.sample_id}.png").read_bytes(), "cached output")
        except (SampleError, OSError):
            it.meta = None  # a damaged cache file: edit again
            return
        if arr.shape != it.decoded.source.shape:
            it.meta = None
            return
        it.output = arr
        if it.meta.get("mask"):
            try:
                from PIL import Image

                with Image.open(out / OUTPUTS_DIR / f"{it.sample.sample_id}.mask.png") as im:
                    mask = np.asarray(im.convert("L"))
            except (OSError, ValueError):
                mask = None
            if mask is None or mask.shape != it.decoded.hw:
                it.meta, it.output = None, None  # a damaged cached mask: edit again
                return
            it.pred_mask = mask


def _score(it: _Item, names: Sequence[str], params: MetricParams) -> None:
    rec = _record(it)
    it.record = rec
    if it.skip is not None:
        rec.update(status="skipped", reason=it.skip[0], error=it.skip[1])
        return
    d, meta = it.decoded, it.meta
    assert d is not None and meta is not None
    rec["height"], rec["width"] = d.hw
    if meta["status"] != "ok":
        rec.update(status="failed", reason=meta.get("reason"), error=meta.get("error"))
        return
    rec["resized"] = bool(meta.get("resized"))
    rec["output"] = f"{OUTPUTS_DIR}/{it.sample.sample_id}.png"
    arrays = SampleArrays(source=d.source, output=it.output, edit_mask=d.edit_mask, reference=d.reference,  # type: ignore[arg-type]
                          target_mask=d.target_mask, distractor_masks=d.distractor_masks, pred_mask=it.pred_mask)
    rec["metrics"] = compute_sample(arrays, names, params)


def _score_models(mm: Any, items: Sequence[_Item]) -> None:
    """The model metrics of a chunk's scored samples, one batched pass (same decoded arrays)."""
    from .metrics.model_based import ModelSample, target_text

    todo = [it for it in items if it.record is not None and it.record["status"] == "ok"]
    if not todo:
        return
    batch = []
    for it in todo:
        s, d = it.sample, it.decoded
        assert d is not None and it.output is not None
        batch.append(ModelSample(output=it.output, source=d.source, edit_mask=d.edit_mask, reference=d.reference,
                                 prompt=s.prompt, edit_phrase=s.edit_phrase, referring_phrase=s.referring_phrase,
                                 target_text=target_text(s.edit_type, s.edit_target, s.category)))
    for it, values in zip(todo, mm.compute(batch)):
        it.record["metrics"].update(values)  # type: ignore[index]


def _thumbs(out: Path, it: _Item) -> None:
    if it.decoded is None:
        return
    _thumbnail(out, it.sample.sample_id, "source", it.decoded.source)
    _thumbnail(out, it.sample.sample_id, "reference", it.decoded.reference)
