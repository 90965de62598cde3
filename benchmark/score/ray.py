"""Editing on Ray (``score --executor ray``): every uncached sample is edited on Ray actors before
the local pass, which then finds each output cached and computes the metrics and the report.

The unit of work is a chunk of the local pass (``--chunk-size`` samples): an actor decodes a
chunk's uncached samples, edits them in the same batches a clean local run forms, runs the same
output checks (``score.editing.finish_output``) and writes the same files, so the results equal
the local executor's.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from ..editors.base import Editor
from .config import ScoreConfig
from .editing import edit_items
from .items import Item, chunks, lookup_cache

__all__ = ["EditChunks", "edit_on_ray"]


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
            items = [Item(sample=s, seed=seed, key=key) for s, seed, key in ray.get(self.chunks[i])]
            stats = edit_items(editor, self.out, items, self.resize, self.wants_mask)
            stats.update(chunk=i, pid=os.getpid(), editor_load_s=load_s)
            return stats

        return run


def edit_on_ray(cfg: ScoreConfig, editor: Editor, items: Sequence[Item], chunk: int, out: Path,
                wants_mask: bool, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Edit every sample of ``items`` with no usable cached output on Ray actors, before the
    local pass (which then finds every output cached, and computes the metrics and the report).

    ``cfg.workers`` actors (``cfg.num_gpus_per_worker`` GPUs each) each load their copy of the
    editor (pickled on the driver, not loaded) once. ``out`` must be on storage every node sees
    under the same path. Returns counts and timings (for timing.json)."""
    from refcoco_edit.executors import RayExecutor, _import_ray

    t0 = time.perf_counter()
    pending: List[List[Item]] = []
    for part in chunks(items, chunk):
        for it in part:
            lookup_cache(out, it, editor, cfg.retry_failed, wants_mask)
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
